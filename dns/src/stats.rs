//! Query counters for the gateway's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_server::proto::op::ResponseCode;

/// Live counters of answered queries by response code, shared with the running server.
///
/// Messages hickory drops or rejects before they reach the handler (shorter than a DNS header,
/// or a header followed by an undecodable body, which gets FORMERR) are not counted.
#[derive(Debug, Default)]
pub struct QueryStats {
    no_error: AtomicU64,
    nx_domain: AtomicU64,
    refused: AtomicU64,
    form_err: AtomicU64,
    serv_fail: AtomicU64,
    not_imp: AtomicU64,
    other: AtomicU64,
}

impl QueryStats {
    pub(crate) fn record(&self, rcode: ResponseCode) {
        let counter = match rcode {
            ResponseCode::NoError => &self.no_error,
            ResponseCode::NXDomain => &self.nx_domain,
            ResponseCode::Refused => &self.refused,
            ResponseCode::FormErr => &self.form_err,
            ResponseCode::ServFail => &self.serv_fail,
            ResponseCode::NotImp => &self.not_imp,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> QueryCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QueryCounts {
            no_error: load(&self.no_error),
            nx_domain: load(&self.nx_domain),
            refused: load(&self.refused),
            form_err: load(&self.form_err),
            serv_fail: load(&self.serv_fail),
            not_imp: load(&self.not_imp),
            other: load(&self.other),
        }
    }
}

/// Answered queries by response code at one moment. NODATA answers count as `no_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryCounts {
    /// NOERROR, with or without records.
    pub no_error: u64,
    /// NXDOMAIN: unknown names inside the zone.
    pub nx_domain: u64,
    /// REFUSED: names outside the zone, other classes, zone transfers.
    pub refused: u64,
    /// FORMERR: not exactly one question.
    pub form_err: u64,
    /// SERVFAIL: the response could not be sent.
    pub serv_fail: u64,
    /// NOTIMP: opcodes other than QUERY.
    pub not_imp: u64,
    /// Any other code (BADVERS).
    pub other: u64,
}

impl QueryCounts {
    /// `(rcode label, count)` pairs, e.g. for a Prometheus counter family with an `rcode` label.
    pub fn by_rcode(&self) -> [(&'static str, u64); 7] {
        [
            ("NOERROR", self.no_error),
            ("NXDOMAIN", self.nx_domain),
            ("REFUSED", self.refused),
            ("FORMERR", self.form_err),
            ("SERVFAIL", self.serv_fail),
            ("NOTIMP", self.not_imp),
            ("OTHER", self.other),
        ]
    }

    /// All answered queries.
    pub fn total(&self) -> u64 {
        self.by_rcode().iter().map(|(_, count)| count).sum()
    }
}
