//! Shared fixtures: an in-memory resolver, a server on 127.0.0.1:0, and hickory clients.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::DnsResponse;
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use isthmus_dns::{
    DnsConfig, DnsServer, EndpointAnswer, PortAnswer, PortProtocol, ServiceAnswer, ServiceKind,
    ServiceResolver,
};

pub const ZONE: &str = "clusterset.local.";
pub const WEB_V4: &str = "10.96.0.10";
pub const WEB_V6: &str = "fd00:96::10";

/// A catalog stand-in whose services tests can change while the server runs.
#[derive(Default)]
pub struct MemResolver {
    services: RwLock<HashMap<(String, String), ServiceAnswer>>,
}

impl MemResolver {
    pub fn set(&self, ns: &str, svc: &str, answer: ServiceAnswer) {
        let key = (ns.to_owned(), svc.to_owned());
        self.services.write().unwrap().insert(key, answer);
    }

    pub fn remove(&self, ns: &str, svc: &str) {
        let key = (ns.to_owned(), svc.to_owned());
        self.services.write().unwrap().remove(&key);
    }
}

impl ServiceResolver for MemResolver {
    fn resolve(&self, namespace: &str, service: &str) -> Option<ServiceAnswer> {
        let key = (namespace.to_owned(), service.to_owned());
        self.services.read().unwrap().get(&key).cloned()
    }
}

pub fn port(name: &str, protocol: PortProtocol, port: u16) -> PortAnswer {
    PortAnswer {
        name: name.into(),
        protocol,
        port,
    }
}

pub fn endpoint(address: &str, cluster: &str, hostname: Option<&str>) -> EndpointAnswer {
    EndpointAnswer {
        address: address.parse().unwrap(),
        cluster: cluster.into(),
        hostname: hostname.map(str::to_owned),
    }
}

/// The services every test starts with, in namespace `prod`:
/// * `web`: ClusterSetIP, dual-stack VIPs, ports `http/tcp/80`, `dns/udp/53` and an unnamed 9000.
/// * `v4only`: ClusterSetIP with only an IPv4 VIP.
/// * `db`: headless; `db-0` in `east` (10.1.0.5), dual-stack `db-1` in `west` (10.2.0.7 and
///   fd00:2::7), and an endpoint without hostname in `north` (10.3.0.9); port `pg/tcp/5432`.
/// * `empty`: headless with no healthy endpoint; port `pg/tcp/5432`.
pub fn fixture() -> Arc<MemResolver> {
    let resolver = Arc::new(MemResolver::default());
    resolver.set(
        "prod",
        "web",
        ServiceAnswer {
            kind: ServiceKind::ClusterSetIp {
                v4: Some(WEB_V4.parse().unwrap()),
                v6: Some(WEB_V6.parse().unwrap()),
            },
            ports: vec![
                port("http", PortProtocol::Tcp, 80),
                port("dns", PortProtocol::Udp, 53),
                port("", PortProtocol::Tcp, 9000),
            ],
        },
    );
    resolver.set(
        "prod",
        "v4only",
        ServiceAnswer {
            kind: ServiceKind::ClusterSetIp {
                v4: Some("10.96.0.11".parse().unwrap()),
                v6: None,
            },
            ports: vec![port("http", PortProtocol::Tcp, 80)],
        },
    );
    resolver.set(
        "prod",
        "db",
        ServiceAnswer {
            kind: ServiceKind::Headless {
                endpoints: vec![
                    endpoint("10.1.0.5", "east", Some("db-0")),
                    endpoint("10.2.0.7", "west", Some("db-1")),
                    endpoint("fd00:2::7", "west", Some("db-1")),
                    endpoint("10.3.0.9", "north", None),
                ],
            },
            ports: vec![port("pg", PortProtocol::Tcp, 5432)],
        },
    );
    resolver.set(
        "prod",
        "empty",
        ServiceAnswer {
            kind: ServiceKind::Headless {
                endpoints: Vec::new(),
            },
            ports: vec![port("pg", PortProtocol::Tcp, 5432)],
        },
    );
    resolver
}

/// A server with the default zone and TTL on 127.0.0.1:0, answering from `fixture()`.
pub async fn start() -> (DnsServer, Arc<MemResolver>) {
    let resolver = fixture();
    let server = start_with(DnsConfig::new(loopback()), resolver.clone()).await;
    (server, resolver)
}

pub async fn start_with(config: DnsConfig, resolver: Arc<MemResolver>) -> DnsServer {
    DnsServer::bind(config, resolver)
        .await
        .expect("bind DNS server")
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub type DnsClient = Client<TokioRuntimeProvider>;

pub fn udp_client(server: SocketAddr) -> DnsClient {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let (client, background) = Client::from_sender(stream);
    tokio::spawn(background);
    client
}

pub async fn tcp_client(server: SocketAddr) -> DnsClient {
    let (stream, handle) = TcpClientStream::new(
        server,
        None,
        Some(Duration::from_secs(2)),
        TokioRuntimeProvider::default(),
    );
    let (client, background) = Client::with_timeout(
        stream.await.expect("TCP connect"),
        handle,
        Duration::from_secs(2),
    );
    tokio::spawn(background);
    client
}

pub fn name(name: &str) -> Name {
    Name::from_str(name).unwrap()
}

pub async fn query(client: &mut DnsClient, qname: &str, qtype: RecordType) -> DnsResponse {
    client
        .query(name(qname), DNSClass::IN, qtype)
        .await
        .unwrap_or_else(|error| panic!("{qname} {qtype}: {error}"))
}

/// The addresses in the answer section, sorted.
pub fn addresses(response: &DnsResponse) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    addrs.sort();
    addrs
}

pub fn ips(addrs: &[&str]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = addrs.iter().map(|addr| addr.parse().unwrap()).collect();
    ips.sort();
    ips
}

/// `(priority, weight, port, target)` of every SRV answer, sorted.
pub fn srvs(response: &DnsResponse) -> Vec<(u16, u16, u16, String)> {
    let mut srvs: Vec<_> = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.to_string())),
            _ => None,
        })
        .collect();
    srvs.sort();
    srvs
}
