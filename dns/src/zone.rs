//! The answer to one question, built from the resolver's view of one service. No I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::op::{Query, ResponseCode};
use hickory_server::proto::rr::domain::Label;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use tracing::debug;

use crate::names::{classify, Target};
use crate::{EndpointAnswer, PortAnswer, ServiceAnswer, ServiceKind, ServiceResolver, ZoneName};

/// The MCS DNS schema version this server implements (MCS DNS spec §1, §2.2).
pub(crate) const SCHEMA_VERSION: &str = "1.0.0";

// SOA timers (RFC 1035 §3.3.13). Nothing transfers this zone, so only `minimum` (the
// negative-caching TTL, RFC 2308 §5) matters; the others are the common defaults.
const SOA_SERIAL: u32 = 1;
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// Total SRV weight shared by the targets of one SRV name (RFC 2782: equal weights give each
/// target an equal share; CoreDNS uses the same 100).
const SRV_WEIGHT_TOTAL: u16 = 100;

/// The sections and code of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub rcode: ResponseCode,
    /// Set for every answer about a name inside the zone.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Addresses of SRV targets (MCS DNS spec §2.3.2, §2.4.2: "may include").
    pub additionals: Vec<Record>,
}

impl Answer {
    pub(crate) fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// The records at one existing name (all types), and the addresses of its SRV targets.
#[derive(Default)]
struct Node {
    records: Vec<Record>,
    srv_additionals: Vec<Record>,
}

/// The zone: its fixed records and how to answer questions in it.
pub(crate) struct Zone {
    origin: LowerName,
    ttl: u32,
    soa: Record,
    ns: Record,
    nameserver_addr: Option<IpAddr>,
}

impl Zone {
    /// `nameserver_addr` is what `ns.dns.<zone>` answers, if the server listens on a specific
    /// address.
    pub(crate) fn new(zone: &ZoneName, ttl: u32, nameserver_addr: Option<IpAddr>) -> Self {
        let origin = zone.name().clone();
        let nameserver = child(&origin, &["dns", "ns"]).expect("ns.dns.<zone> is a valid name");
        let hostmaster = child(&origin, &["hostmaster"]).expect("hostmaster.<zone> is valid");
        let soa = SOA::new(
            nameserver.clone(),
            hostmaster,
            SOA_SERIAL,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            ttl,
        );
        Self {
            soa: Record::from_rdata(origin.clone(), ttl, RData::SOA(soa)),
            ns: Record::from_rdata(origin.clone(), ttl, RData::NS(NS(nameserver))),
            origin: LowerName::new(&origin),
            ttl,
            nameserver_addr: nameserver_addr.filter(|addr| !addr.is_unspecified()),
        }
    }

    /// Answers one question. `query.name()` keeps the client's case; answers at that name use
    /// it as their owner, every other name is lowercase.
    pub(crate) fn answer(&self, query: &Query, resolver: &dyn ServiceResolver) -> Answer {
        let qname = query.name();
        let lower = LowerName::new(qname);
        // Only the zone's own names are answered, and there is no recursion.
        if query.query_class() != DNSClass::IN || !self.origin.zone_of(&lower) {
            return Answer::error(ResponseCode::Refused);
        }
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::error(ResponseCode::Refused);
        }

        let depth = lower.iter().count() - self.origin.iter().count();
        let relative: Option<Vec<&str>> = lower
            .iter()
            .take(depth)
            .map(|label| std::str::from_utf8(label).ok())
            .collect();
        let node = match relative {
            Some(relative) => self.node(classify(&relative), qname, resolver),
            None => None,
        };
        let Some(node) = node else {
            return self.negative(ResponseCode::NXDomain);
        };

        let answers: Vec<Record> = node
            .records
            .into_iter()
            .filter(|record| qtype == RecordType::ANY || record.record_type() == qtype)
            .collect();
        if answers.is_empty() {
            return self.negative(ResponseCode::NoError);
        }
        let has_srv = answers.iter().any(|r| r.record_type() == RecordType::SRV);
        Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authorities: Vec::new(),
            additionals: if has_srv {
                node.srv_additionals
            } else {
                Vec::new()
            },
        }
    }

    /// NXDOMAIN or NODATA, with the SOA in the authority section for negative caching
    /// (RFC 2308 §3).
    fn negative(&self, rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authorities: vec![self.soa.clone()],
            additionals: Vec::new(),
        }
    }

    /// The records at an existing name, or `None` if the name does not exist.
    fn node(
        &self,
        target: Target<'_>,
        qname: &Name,
        resolver: &dyn ServiceResolver,
    ) -> Option<Node> {
        let at_qname = |data: RData| Record::from_rdata(qname.clone(), self.ttl, data);
        match target {
            Target::Apex => Some(Node {
                records: vec![self.soa.clone(), self.ns.clone()],
                ..Node::default()
            }),
            Target::DnsVersion => Some(Node {
                records: vec![at_qname(RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])))],
                ..Node::default()
            }),
            Target::Nameserver => Some(Node {
                records: self
                    .nameserver_addr
                    .map(address)
                    .into_iter()
                    .map(at_qname)
                    .collect(),
                ..Node::default()
            }),
            Target::EmptyNonTerminal => Some(Node::default()),
            Target::Service { ns, svc } => {
                let service = resolver.resolve(ns, svc)?;
                let records = match &service.kind {
                    ServiceKind::ClusterSetIp { v4, v6 } => {
                        vips(*v4, *v6).map(|vip| at_qname(address(vip))).collect()
                    }
                    ServiceKind::Headless { endpoints } => endpoints
                        .iter()
                        .map(|endpoint| at_qname(address(endpoint.address)))
                        .collect(),
                };
                Some(Node {
                    records,
                    ..Node::default()
                })
            }
            Target::SrvProtocol { ns, svc, proto } => {
                let service = resolver.resolve(ns, svc)?;
                let exists = named_ports(&service).any(|p| p.protocol.as_str() == proto);
                exists.then(Node::default)
            }
            Target::Srv {
                ns,
                svc,
                proto,
                port,
            } => {
                let service = resolver.resolve(ns, svc)?;
                let port = named_ports(&service)
                    .find(|p| p.protocol.as_str() == proto && p.name.eq_ignore_ascii_case(port))?
                    .port;
                let service_name = self.service_name(ns, svc)?;
                Some(self.srv_node(&service, &service_name, port, qname))
            }
            Target::Cluster { ns, svc, cluster } => {
                let service = resolver.resolve(ns, svc)?;
                let ServiceKind::Headless { endpoints } = &service.kind else {
                    // ClusterSetIP services have no per-cluster names (MCS DNS spec §2.3.4).
                    return None;
                };
                let exists = endpoints
                    .iter()
                    .any(|e| e.cluster.eq_ignore_ascii_case(cluster));
                exists.then(Node::default)
            }
            Target::Endpoint {
                ns,
                svc,
                cluster,
                host,
            } => {
                let service = resolver.resolve(ns, svc)?;
                let ServiceKind::Headless { endpoints } = &service.kind else {
                    return None;
                };
                let records: Vec<Record> = endpoints
                    .iter()
                    .filter(|e| e.cluster.eq_ignore_ascii_case(cluster) && e.host_label() == host)
                    .map(|e| at_qname(address(e.address)))
                    .collect();
                (!records.is_empty()).then_some(Node {
                    records,
                    ..Node::default()
                })
            }
            Target::Nonexistent => None,
        }
    }

    /// SRV records for one port: the service name for ClusterSetIP (MCS DNS spec §2.3.2), one
    /// per endpoint name for headless (§2.4.2), with the targets' addresses as additionals.
    fn srv_node(
        &self,
        service: &ServiceAnswer,
        service_name: &Name,
        port: u16,
        qname: &Name,
    ) -> Node {
        let mut targets: Vec<(Name, Vec<IpAddr>)> = Vec::new();
        match &service.kind {
            ServiceKind::ClusterSetIp { v4, v6 } => {
                targets.push((service_name.clone(), vips(*v4, *v6).collect()));
            }
            ServiceKind::Headless { endpoints } => {
                for endpoint in endpoints {
                    let Some(name) = endpoint_name(service_name, endpoint) else {
                        continue;
                    };
                    // Endpoints sharing a hostname and cluster share one name and one SRV.
                    match targets.iter_mut().find(|(target, _)| *target == name) {
                        Some((_, addrs)) => addrs.push(endpoint.address),
                        None => targets.push((name, vec![endpoint.address])),
                    }
                }
            }
        }
        let count = u16::try_from(targets.len()).unwrap_or(u16::MAX).max(1);
        let weight = (SRV_WEIGHT_TOTAL / count).max(1);
        let mut node = Node::default();
        for (target, addrs) in targets {
            let srv = SRV::new(0, weight, port, target.clone());
            node.records
                .push(Record::from_rdata(qname.clone(), self.ttl, RData::SRV(srv)));
            node.srv_additionals.extend(
                addrs
                    .into_iter()
                    .map(|addr| Record::from_rdata(target.clone(), self.ttl, address(addr))),
            );
        }
        node
    }

    /// `<svc>.<ns>.svc.<zone>`, lowercase.
    fn service_name(&self, ns: &str, svc: &str) -> Option<Name> {
        child(&Name::from(&self.origin), &["svc", ns, svc])
    }
}

/// `<hostname>.<cluster>.<svc>.<ns>.svc.<zone>`, or `None` (and the endpoint gets no name) if
/// the resolver gave a hostname or cluster that is not a DNS label.
fn endpoint_name(service_name: &Name, endpoint: &EndpointAnswer) -> Option<Name> {
    let cluster = endpoint.cluster.to_ascii_lowercase();
    let host = endpoint.host_label();
    let name = [cluster.as_str(), host.as_str()]
        .iter()
        .all(|label| is_host_label(label))
        .then(|| child(service_name, &[&cluster, &host]))
        .flatten();
    if name.is_none() {
        debug!(%cluster, %host, "endpoint hostname or cluster is not a DNS label; no SRV record");
    }
    name
}

/// Letters, digits and hyphens, 1–63 of them (RFC 1123 §2.1 without the hyphen-position rule,
/// so that address-derived IPv6 labels such as `--1` fit). Rejects `.`, `*` and `_`, which
/// would make another name, a wildcard, or collide with SRV labels.
fn is_host_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `base` with `labels` prepended one by one: `child(zone, ["svc", ns])` is `ns.svc.zone`.
fn child(base: &Name, labels: &[&str]) -> Option<Name> {
    labels.iter().try_fold(base.clone(), |name, label| {
        let label = Label::from_ascii(label).ok()?;
        name.prepend_label(label).ok()
    })
}

fn address(addr: IpAddr) -> RData {
    match addr {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn vips(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> impl Iterator<Item = IpAddr> {
    v4.map(IpAddr::V4).into_iter().chain(v6.map(IpAddr::V6))
}

/// Ports with a name; unnamed ports have no SRV record (MCS DNS spec §2.3.2).
fn named_ports(service: &ServiceAnswer) -> impl Iterator<Item = &PortAnswer> {
    service.ports.iter().filter(|p| !p.name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PortProtocol, ServiceAnswer};

    struct One(ServiceAnswer);

    impl ServiceResolver for One {
        fn resolve(&self, namespace: &str, service: &str) -> Option<ServiceAnswer> {
            (namespace == "prod" && service == "db").then(|| self.0.clone())
        }
    }

    fn headless(endpoints: Vec<EndpointAnswer>) -> One {
        One(ServiceAnswer {
            kind: ServiceKind::Headless { endpoints },
            ports: vec![PortAnswer {
                name: "pg".into(),
                protocol: PortProtocol::Tcp,
                port: 5432,
            }],
        })
    }

    fn endpoint(address: &str, cluster: &str, hostname: Option<&str>) -> EndpointAnswer {
        EndpointAnswer {
            address: address.parse().unwrap(),
            cluster: cluster.into(),
            hostname: hostname.map(str::to_owned),
        }
    }

    fn ask(resolver: &dyn ServiceResolver, name: &str, qtype: RecordType) -> Answer {
        let zone = Zone::new(&ZoneName::default(), 5, None);
        zone.answer(
            &Query::query(Name::from_ascii(name).unwrap(), qtype),
            resolver,
        )
    }

    fn srv_targets(answer: &Answer) -> Vec<String> {
        answer
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.target.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn endpoints_whose_labels_are_not_dns_labels_get_no_name() {
        let resolver = headless(vec![
            endpoint("10.0.0.1", "east", Some("a.b")),
            endpoint("10.0.0.2", "east", Some("*")),
            endpoint("10.0.0.3", "east_1", Some("ok")),
            endpoint("10.0.0.4", "East", Some("Good")),
        ]);
        let srv = ask(
            &resolver,
            "_pg._tcp.db.prod.svc.clusterset.local.",
            RecordType::SRV,
        );
        assert_eq!(
            srv_targets(&srv),
            ["good.east.db.prod.svc.clusterset.local."]
        );
        assert_eq!(srv.additionals.len(), 1);
        // Their addresses are still part of the service's answer.
        let a = ask(&resolver, "db.prod.svc.clusterset.local.", RecordType::A);
        assert_eq!(a.answers.len(), 4);
        // A wildcard-looking hostname does not make a wildcard.
        let star = ask(
            &resolver,
            "x.east.db.prod.svc.clusterset.local.",
            RecordType::A,
        );
        assert_eq!(star.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn srv_weights_split_100_between_distinct_targets() {
        let endpoints = (1..=7)
            .map(|i| endpoint(&format!("10.0.0.{i}"), "east", None))
            .collect();
        let srv = ask(
            &headless(endpoints),
            "_pg._tcp.db.prod.svc.clusterset.local.",
            RecordType::SRV,
        );
        let weights: Vec<u16> = srv
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.weight),
                _ => None,
            })
            .collect();
        assert_eq!(weights, [14; 7]);
    }

    #[test]
    fn other_classes_are_refused_and_an_unbound_nameserver_has_no_address() {
        let resolver = headless(Vec::new());
        let mut chaos = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        chaos.set_query_class(DNSClass::CH);
        let zone = Zone::new(&ZoneName::default(), 5, "0.0.0.0".parse().ok());
        assert_eq!(zone.answer(&chaos, &resolver).rcode, ResponseCode::Refused);

        let ns = zone.answer(
            &Query::query(
                Name::from_ascii("ns.dns.clusterset.local.").unwrap(),
                RecordType::A,
            ),
            &resolver,
        );
        assert_eq!((ns.rcode, ns.answers.len()), (ResponseCode::NoError, 0));
    }
}
