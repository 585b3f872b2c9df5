//! The seam between the DNS server and the service catalog.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Answers "what is `<service>.<namespace>` right now?" for the DNS server.
///
/// The gateway implements this over its catalog. The server calls [`resolve`](Self::resolve)
/// once per query and keeps nothing, so an answer follows catalog changes at once (clients may
/// still cache it for the configured TTL).
///
/// Health is the implementor's business: the server answers exactly what it is given.
/// * `None` makes the name (and every name below it) NXDOMAIN.
/// * A ClusterSetIP service should be answered `None` while it has no healthy endpoint, so that
///   clients fail fast instead of connecting to a VIP with nothing behind it.
/// * A headless service with no healthy endpoint may be answered with an empty endpoint list
///   (NOERROR, no records: NODATA) or `None` (NXDOMAIN, what the MCS DNS specification §2.4.1
///   asks for).
pub trait ServiceResolver: Send + Sync + 'static {
    /// Looks up `<service>.<namespace>.svc.<zone>`.
    ///
    /// Both labels arrive lowercased (DNS names compare case-insensitively and Kubernetes object
    /// names are lowercase). Must not block: it runs on the server's tokio worker.
    fn resolve(&self, namespace: &str, service: &str) -> Option<ServiceAnswer>;
}

/// What the DNS server knows about one exported service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAnswer {
    /// ClusterSetIP or headless, with the addresses to answer.
    pub kind: ServiceKind,
    /// The service's ports. Only named ports get SRV records (MCS DNS spec §2.3.2, §2.4.2).
    pub ports: Vec<PortAnswer>,
}

/// The two kinds of multi-cluster service and the addresses each answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A service with clusterset VIPs: `A`/`AAAA` answer the VIPs, SRV targets the service name,
    /// and there are no per-cluster or per-endpoint names (MCS DNS spec §2.3.4).
    ClusterSetIp {
        /// The IPv4 clusterset VIP, if the service has one.
        v4: Option<Ipv4Addr>,
        /// The IPv6 clusterset VIP, if the service has one.
        v6: Option<Ipv6Addr>,
    },
    /// A headless service: `A`/`AAAA` answer every endpoint address, SRV has one record per
    /// endpoint and port, and each endpoint has a name `<hostname>.<cluster>.<svc>.<ns>.svc.<zone>`.
    Headless {
        /// Healthy, ready endpoints only, across all clusters.
        endpoints: Vec<EndpointAnswer>,
    },
}

/// One healthy endpoint of a headless service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAnswer {
    /// The endpoint's address.
    pub address: IpAddr,
    /// The cluster ID the endpoint lives in (a DNS label, MCS DNS spec §2.1).
    pub cluster: String,
    /// The endpoint's hostname label; `None` uses the address with `.` and `:` replaced by `-`
    /// (`10-1-2-3`, `fd00--1`). Endpoints that share a hostname and cluster share a name, which
    /// then answers all their addresses.
    pub hostname: Option<String>,
}

impl EndpointAnswer {
    /// The first label of the endpoint's name: its hostname, or one derived from its address.
    pub fn host_label(&self) -> String {
        match &self.hostname {
            Some(hostname) => hostname.to_ascii_lowercase(),
            None => self.address.to_string().replace(['.', ':'], "-"),
        }
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAnswer {
    /// The port's name; an empty name means an unnamed port, which has no SRV record.
    pub name: String,
    /// The port's transport protocol.
    pub protocol: PortProtocol,
    /// The port number.
    pub port: u16,
}

/// A port's transport protocol, as used in the `_<proto>` label of SRV names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// TCP (`_tcp`).
    Tcp,
    /// UDP (`_udp`).
    Udp,
    /// SCTP (`_sctp`).
    Sctp,
}

impl PortProtocol {
    /// The lowercase protocol name used in SRV labels, without the underscore.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// Parses a protocol name case-insensitively (`"TCP"`, `"udp"`, …).
    pub fn try_from_name(name: &str) -> Option<Self> {
        [Self::Tcp, Self::Udp, Self::Sctp]
            .into_iter()
            .find(|protocol| protocol.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_label_defaults_to_dashed_address() {
        let endpoint = |address: &str, hostname: Option<&str>| EndpointAnswer {
            address: address.parse().unwrap(),
            cluster: "east".into(),
            hostname: hostname.map(str::to_owned),
        };
        assert_eq!(endpoint("10.1.2.3", None).host_label(), "10-1-2-3");
        assert_eq!(endpoint("fd00::1", None).host_label(), "fd00--1");
        assert_eq!(endpoint("10.1.2.3", Some("Web-0")).host_label(), "web-0");
    }

    #[test]
    fn protocol_names_parse_case_insensitively() {
        assert_eq!(PortProtocol::try_from_name("TCP"), Some(PortProtocol::Tcp));
        assert_eq!(
            PortProtocol::try_from_name("sctp"),
            Some(PortProtocol::Sctp)
        );
        assert_eq!(PortProtocol::try_from_name("quic"), None);
    }
}
