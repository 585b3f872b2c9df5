//! Isthmus `clusterset.local` DNS server (hickory).
//!
//! Answers the Kubernetes Multi-Cluster Services DNS names (KEP-1645 and its DNS specification,
//! schema 1.0.0) from a [`ServiceResolver`] the gateway implements over its catalog:
//!
//! * `<svc>.<ns>.svc.<zone>` `A`/`AAAA`: the clusterset VIPs of a ClusterSetIP service, or every
//!   endpoint address of a headless service.
//! * `_<port>._<proto>.<svc>.<ns>.svc.<zone>` `SRV` (priority 0, equal weights summing to about
//!   100, named ports only): targets `<svc>.<ns>.svc.<zone>` for ClusterSetIP, and one
//!   `<hostname>.<cluster>.<svc>.<ns>.svc.<zone>` per endpoint for headless, with the targets'
//!   addresses in the additional section when they fit.
//! * `<hostname>.<cluster>.<svc>.<ns>.svc.<zone>` `A`/`AAAA` for headless endpoints.
//! * `dns-version.<zone>` `TXT "1.0.0"`; `SOA` and `NS` (`ns.dns.<zone>`) at the apex.
//!
//! Rules: every answer inside the zone is authoritative (AA) with the configured TTL; unknown
//! names are NXDOMAIN and names with no record of the asked type NODATA, both with the SOA in
//! the authority section; names outside the zone, classes other than IN and zone transfers are
//! REFUSED (no recursion); names compare case-insensitively; a query must carry exactly one
//! question (else FORMERR); opcodes other than QUERY get NOTIMP.
//!
//! The resolver is asked on every query, so answers follow the catalog at once, and the
//! resolver decides health: see [`ServiceResolver`] for what `None` and empty lists mean.
//!
//! Contract for the caller: call [`DnsServer::bind`] inside a tokio runtime, keep the
//! `DnsServer` (or await [`DnsServer::run`]), and stop it with [`DnsServer::shutdown`] or a
//! [`ShutdownHandle`]; the sockets are closed when either returns. hickory logs every request
//! at INFO under the `hickory_server` target with the client address; the daemon's log filter
//! should hold that target at `warn`. This crate logs each query at DEBUG.

#![forbid(unsafe_code)]

mod config;
mod error;
mod handler;
mod names;
mod resolver;
mod server;
mod stats;
mod zone;

pub use config::{DnsConfig, ZoneName, DEFAULT_TCP_IDLE_TIMEOUT, DEFAULT_TTL_SECS, DEFAULT_ZONE};
pub use error::DnsError;
pub use resolver::{
    EndpointAnswer, PortAnswer, PortProtocol, ServiceAnswer, ServiceKind, ServiceResolver,
};
pub use server::{DnsServer, ShutdownHandle};
pub use stats::{QueryCounts, QueryStats};
