//! The bench's DNS probe: a thread that enters a pod's network namespace and asks a gateway
//! for A records over TCP, far cheaper than a `dig` process per probe.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use isthmus_lab::netns;

/// Timeout of one query (connect, send, receive).
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Moves the calling thread into network namespace `ns`: the sockets it opens from then on
/// live there. Other threads stay where they are (setns(2) on CLONE_NEWNET is per thread).
pub(crate) fn enter_netns(ns: &str) -> Result<()> {
    let path = Path::new(netns::NETNS_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {ns}"))
}

/// The A records `server`:53 answers for `name` over TCP (RFC 1035 §4.2.2: two-byte length,
/// then the message), sorted; empty for NXDOMAIN. TCP because a 100-endpoint answer is
/// truncated over UDP without EDNS.
pub(crate) fn query_a(server: Ipv4Addr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii(format!("{name}."))?,
        RecordType::A,
    ));
    let body = query.to_vec()?;
    let len = u16::try_from(body.len()).context("query too long")?;
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from((server, 53)), QUERY_TIMEOUT)?;
    stream.set_read_timeout(Some(QUERY_TIMEOUT))?;
    stream.set_write_timeout(Some(QUERY_TIMEOUT))?;
    stream.write_all(&[&len.to_be_bytes()[..], &body].concat())?;
    let mut len = [0; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply)?;
    let reply = Message::from_vec(&reply)?;
    anyhow::ensure!(
        reply.metadata.id == query.metadata.id,
        "reply to another query"
    );
    match reply.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Vec::new()),
        other => bail!("{name}: {other}"),
    }
    let mut out: Vec<Ipv4Addr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}
