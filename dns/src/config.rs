//! Server configuration.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_server::proto::rr::Name;

use crate::DnsError;

/// The MCS API zone (MCS DNS spec §2.1 `<clustersetzone>`).
pub const DEFAULT_ZONE: &str = "clusterset.local";
/// Default TTL of every answer, and the negative-caching TTL (SOA minimum), in seconds.
pub const DEFAULT_TTL_SECS: u32 = 5;
/// Default time a TCP connection may sit idle between queries before it is closed.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the DNS server listens and what it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Address for both the UDP socket and the TCP listener. Port 0 picks one free port that
    /// both share.
    pub listen: SocketAddr,
    /// The zone the server is authoritative for; names outside it are REFUSED.
    pub zone: ZoneName,
    /// TTL of every record, and the SOA minimum (negative-caching TTL, RFC 2308 §5).
    pub ttl_secs: u32,
    /// Idle TCP connections are closed after this long.
    pub tcp_idle_timeout: Duration,
}

impl DnsConfig {
    /// The defaults (`clusterset.local`, 5 s TTL) on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            zone: ZoneName::default(),
            ttl_secs: DEFAULT_TTL_SECS,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }
}

/// A validated, lowercase, fully qualified zone name other than the root.
#[derive(Clone, PartialEq, Eq)]
pub struct ZoneName(Name);

impl ZoneName {
    /// The zone as a fully qualified domain name.
    pub fn name(&self) -> &Name {
        &self.0
    }
}

impl Default for ZoneName {
    fn default() -> Self {
        DEFAULT_ZONE
            .parse()
            .expect("the default zone is a valid name")
    }
}

impl FromStr for ZoneName {
    type Err = DnsError;

    /// Parses `clusterset.local` or `clusterset.local.`, in any case.
    fn from_str(zone: &str) -> Result<Self, Self::Err> {
        let mut name = Name::from_ascii(zone).map_err(|source| DnsError::InvalidZone {
            zone: zone.to_owned(),
            source,
        })?;
        name.set_fqdn(true);
        if name.is_root() {
            return Err(DnsError::RootZone);
        }
        Ok(Self(name.to_lowercase()))
    }
}

impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_are_lowercase_fqdns() {
        let zone: ZoneName = "ClusterSet.Local".parse().unwrap();
        assert_eq!(zone.to_string(), "clusterset.local.");
        assert_eq!(zone, ZoneName::default());
        assert_eq!(
            "mesh.example.".parse::<ZoneName>().unwrap().to_string(),
            "mesh.example."
        );
    }

    #[test]
    fn bad_zones_are_rejected() {
        assert!(matches!(".".parse::<ZoneName>(), Err(DnsError::RootZone)));
        assert!(matches!(
            "a..b".parse::<ZoneName>(),
            Err(DnsError::InvalidZone { .. })
        ));
        let long_label = "x".repeat(64);
        assert!(matches!(
            long_label.parse::<ZoneName>(),
            Err(DnsError::InvalidZone { .. })
        ));
    }
}
