//! The hickory request handler: decodes nothing itself, answers from the [`Zone`], counts.

use std::iter;
use std::sync::Arc;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::{debug, warn};

use crate::zone::{Answer, Zone};
use crate::{QueryStats, ServiceResolver};

/// Largest UDP response we send, whatever the client advertises: the DNS Flag Day 2020
/// default, which avoids IP fragmentation on common paths. Larger answers get TC and the
/// client retries over TCP.
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Without EDNS a UDP response is at most 512 bytes (RFC 1035 §4.2.1).
const MIN_UDP_PAYLOAD: u16 = 512;
/// Our EDNS version (RFC 6891 §6.1.3).
const EDNS_VERSION: u8 = 0;

pub(crate) struct Handler {
    pub(crate) zone: Zone,
    pub(crate) resolver: Arc<dyn ServiceResolver>,
    pub(crate) stats: Arc<QueryStats>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let response_edns = request.edns.as_ref().map(|edns| {
            let mut response = Edns::new();
            response
                .set_max_payload(edns.max_payload().clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD))
                .set_version(EDNS_VERSION);
            response
        });
        let mut answer = self.answer(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.rcode;
        metadata.authoritative = answer.authoritative;
        // Additional records are optional; never let them truncate a UDP answer that fits
        // without them (hickory sets TC when any section overflows).
        if request.protocol() == Protocol::Udp && !answer.additionals.is_empty() {
            let limit = response_edns
                .as_ref()
                .map_or(MIN_UDP_PAYLOAD, Edns::max_payload);
            if !fits(request, response_edns.as_ref(), metadata, &answer, limit) {
                answer.additionals.clear();
            }
        }

        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            iter::empty(),
            answer.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "failed to send DNS response");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.stats.record(info.response_code);
        let question = request.queries.queries().first();
        debug!(
            src = %request.src(),
            protocol = %request.protocol(),
            qname = %question.map(|q| q.original().name().to_string()).unwrap_or_default(),
            qtype = %question.map(|q| q.query_type().to_string()).unwrap_or_default(),
            rcode = %info.response_code,
            answers = info.counts().answers,
            truncated = info.truncation,
            "dns query"
        );
        info
    }
}

impl Handler {
    fn answer(&self, request: &Request) -> Answer {
        if request.metadata.op_code != OpCode::Query {
            return Answer::error(ResponseCode::NotImp);
        }
        if request
            .edns
            .as_ref()
            .is_some_and(|edns| edns.version() > EDNS_VERSION)
        {
            return Answer::error(ResponseCode::BADVERS);
        }
        // Exactly one question (RFC 9619).
        match request.queries.queries() {
            [query] => self.zone.answer(query.original(), &*self.resolver),
            _ => Answer::error(ResponseCode::FormErr),
        }
    }
}

/// Whether the response encodes into `limit` bytes without truncation.
fn fits(
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    answer: &Answer,
    limit: u16,
) -> bool {
    let mut buffer = Vec::with_capacity(usize::from(limit));
    let mut encoder = BinEncoder::new(&mut buffer);
    encoder.set_max_size(limit);
    MessageResponseBuilder::new(&request.queries, edns)
        .build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            iter::empty(),
            answer.additionals.iter(),
        )
        .destructive_emit(&mut encoder)
        .is_ok_and(|info| !info.truncation)
}
