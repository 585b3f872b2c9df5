//! The crate's error type.

use std::io;
use std::net::SocketAddr;

use hickory_server::net::NetError;
use hickory_server::proto::ProtoError;

/// Everything that can go wrong configuring, binding or running the DNS server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The configured zone is not a valid domain name.
    #[error("invalid DNS zone {zone:?}")]
    InvalidZone {
        /// The zone as given.
        zone: String,
        /// Why it does not parse.
        #[source]
        source: ProtoError,
    },
    /// The configured zone is the root, which would make the server answer for every name.
    #[error("DNS zone must not be the root")]
    RootZone,
    /// The UDP socket could not be bound.
    #[error("failed to bind DNS UDP socket on {addr}")]
    BindUdp {
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("failed to bind DNS TCP listener on {addr}")]
    BindTcp {
        /// The address asked for.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// A listener task stopped on its own (not through shutdown).
    #[error("DNS listener failed")]
    Listener(#[source] NetError),
}
