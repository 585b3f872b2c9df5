//! What the merged catalog looks like from outside: service records for `tunctl`, the watch
//! socket and etcd, and DNS answers.

use isthmus_catalog::{
    ClusterName, MergedCatalog, Policy, Protocol, ServiceExport, ServiceName, ServiceView,
};
use isthmus_catalog_view::{BackendInfo, ClusterEndpoints, PortInfo, ServiceInfo};
use isthmus_dns::{EndpointAnswer, PortAnswer, PortProtocol, ServiceAnswer, ServiceKind};
use std::net::IpAddr;
use std::time::Instant;

pub fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::LocalFirst => "local_first",
        Policy::RoundRobin => "round_robin",
        Policy::Weighted => "weighted",
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// `cluster`'s export of `name`, local or remote.
fn export_of<'a>(
    catalog: &'a MergedCatalog,
    cluster: &ClusterName,
    name: &ServiceName,
) -> Option<&'a ServiceExport> {
    if cluster == catalog.local_cluster() {
        catalog.local().state().services.get(name)
    } else {
        catalog.remote(cluster)?.services.get(name)
    }
}

fn record(catalog: &MergedCatalog, view: ServiceView, now: Instant) -> ServiceInfo {
    let mut per_cluster: Vec<ClusterEndpoints> = view
        .clusters
        .iter()
        .map(|c| (c, true))
        .chain(view.unavailable.iter().map(|c| (c, false)))
        .filter_map(|(c, offered)| {
            let e = export_of(catalog, c, &view.name)?;
            Some(ClusterEndpoints {
                cluster: c.to_string(),
                offered,
                ready: e.ready_endpoints().count(),
                total: e.endpoints.len(),
                weight: e.weight,
            })
        })
        .collect();
    per_cluster.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let backends = catalog
        .backends(&view.name, now)
        .into_iter()
        .map(|b| BackendInfo {
            cluster: b.cluster.to_string(),
            address: b.address.to_string(),
            port: b.port,
            weight: b.weight,
        })
        .collect();
    ServiceInfo {
        namespace: view.name.namespace().to_string(),
        name: view.name.name().to_string(),
        vips: view.vips.iter().map(IpAddr::to_string).collect(),
        headless: view.headless,
        policy: policy_name(view.policy).to_string(),
        ports: view
            .ports
            .iter()
            .map(|p| PortInfo {
                name: p.name.clone(),
                port: p.port,
                protocol: protocol_name(p.protocol).to_string(),
            })
            .collect(),
        clusters: view.clusters.iter().map(ToString::to_string).collect(),
        unavailable: view.unavailable.iter().map(ToString::to_string).collect(),
        endpoints_healthy: view.endpoints_healthy,
        endpoints_total: view.endpoints_total,
        per_cluster,
        backends,
    }
}

/// Every service of the merged catalog at `now`, sorted by namespace and name.
pub fn services(catalog: &MergedCatalog, now: Instant) -> Vec<ServiceInfo> {
    catalog
        .view(now)
        .into_iter()
        .map(|v| record(catalog, v, now))
        .collect()
}

/// The DNS answer for `name` at `now`: `None` (NXDOMAIN) for a service nobody exports, or
/// one with no offered cluster, no healthy endpoint (headless) or no VIP yet (ClusterSetIP).
pub fn answer(catalog: &MergedCatalog, name: &ServiceName, now: Instant) -> Option<ServiceAnswer> {
    let lookup = catalog.lookup(name, now)?;
    if lookup.clusters.is_empty() {
        return None;
    }
    let ports = lookup
        .ports
        .iter()
        .map(|p| PortAnswer {
            name: p.name.clone().unwrap_or_default(),
            protocol: match p.protocol {
                Protocol::Tcp => PortProtocol::Tcp,
                Protocol::Udp => PortProtocol::Udp,
                Protocol::Sctp => PortProtocol::Sctp,
            },
            port: p.port,
        })
        .collect();
    let kind = if lookup.headless {
        let mut endpoints: Vec<EndpointAnswer> = Vec::new();
        for cluster in &lookup.clusters {
            let Some(export) = export_of(catalog, cluster, name) else {
                continue;
            };
            for e in export.ready_endpoints() {
                if !endpoints
                    .iter()
                    .any(|a| a.address == e.address && a.cluster == cluster.as_str())
                {
                    endpoints.push(EndpointAnswer {
                        address: e.address,
                        cluster: cluster.to_string(),
                        hostname: None,
                    });
                }
            }
        }
        if endpoints.is_empty() {
            return None;
        }
        ServiceKind::Headless { endpoints }
    } else {
        // A ClusterSetIP service with nothing ready behind it fails fast (NXDOMAIN).
        let ready = lookup.clusters.iter().any(|c| {
            export_of(catalog, c, name).is_some_and(|e| e.ready_endpoints().next().is_some())
        });
        let v4 = lookup.vips.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let v6 = lookup.vips.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        if !ready || (v4.is_none() && v6.is_none()) {
            return None;
        }
        ServiceKind::ClusterSetIp { v4, v6 }
    };
    Some(ServiceAnswer { kind, ports })
}

/// Answers DNS from the shared catalog, read at each query.
pub struct CatalogResolver {
    pub catalog: std::sync::Arc<parking_lot::Mutex<MergedCatalog>>,
}

impl isthmus_dns::ServiceResolver for CatalogResolver {
    fn resolve(&self, namespace: &str, service: &str) -> Option<ServiceAnswer> {
        let name = ServiceName::new(namespace, service).ok()?;
        answer(&self.catalog.lock(), &name, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_catalog::{
        Endpoint, HealthConfig, LocalCatalog, OriginState, ServicePort, SyncMessage, VipAllocator,
    };
    use std::time::Duration;

    fn ep(addr: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: addr.parse().unwrap(),
            port: 80,
            ready,
            zone: None,
        }
    }

    fn export(name: &str, headless: bool, endpoints: Vec<Endpoint>) -> ServiceExport {
        let mut e = ServiceExport::new(ServiceName::new("demo", name).unwrap());
        e.headless = headless;
        e.endpoints = endpoints;
        e.ports.push(ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
        });
        e
    }

    /// c1's catalog holding c2's snapshot `services`, heard at `now`.
    fn with_remote(
        now: Instant,
        local: Vec<ServiceExport>,
        remote: Vec<ServiceExport>,
    ) -> MergedCatalog {
        let mut c = MergedCatalog::new(
            LocalCatalog::new(ClusterName::new("c1").unwrap(), 1),
            HealthConfig::default(),
            VipAllocator::new("241.0.0.0/16".parse().unwrap(), None),
        )
        .unwrap();
        c.set_exports(local).unwrap();
        let c2 = ClusterName::new("c2").unwrap();
        let mut state = OriginState::new(c2.clone(), 5);
        state.version = 1;
        for e in remote {
            state.services.insert(e.name.clone(), e);
        }
        c.apply(&c2, SyncMessage::Snapshot(state), now).unwrap();
        c
    }

    #[test]
    fn headless_answers_ready_endpoints_of_offered_clusters() {
        let now = Instant::now();
        let c = with_remote(
            now,
            vec![],
            vec![export(
                "db",
                true,
                vec![ep("10.2.1.2", true), ep("10.2.1.3", false)],
            )],
        );
        let name = ServiceName::new("demo", "db").unwrap();
        let a = answer(&c, &name, now).unwrap();
        assert_eq!(
            a.kind,
            ServiceKind::Headless {
                endpoints: vec![EndpointAnswer {
                    address: "10.2.1.2".parse().unwrap(),
                    cluster: "c2".into(),
                    hostname: None
                }]
            }
        );
        assert_eq!(a.ports[0].name, "http");
        // c2 silent past down_after: withdrawn.
        assert_eq!(answer(&c, &name, now + Duration::from_secs(4)), None);
        assert_eq!(
            answer(&c, &ServiceName::new("demo", "nope").unwrap(), now),
            None
        );
    }

    #[test]
    fn clusterset_ip_answers_the_vip_while_something_is_ready() {
        let now = Instant::now();
        let c = with_remote(
            now,
            vec![export("api", false, vec![ep("10.1.1.2", false)])],
            vec![export("api", false, vec![ep("10.2.1.2", true)])],
        );
        let name = ServiceName::new("demo", "api").unwrap();
        let vip = c.vips().vips(&name).unwrap().v4;
        assert!("241.0.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&vip));
        let a = answer(&c, &name, now).unwrap();
        assert_eq!(
            a.kind,
            ServiceKind::ClusterSetIp {
                v4: Some(vip),
                v6: None
            }
        );
        // Only the local (unready) export is left once c2 is down: fail fast.
        assert_eq!(answer(&c, &name, now + Duration::from_secs(4)), None);
        let s = services(&c, now);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].clusters, vec!["c1", "c2"]);
        assert_eq!((s[0].endpoints_healthy, s[0].endpoints_total), (1, 2));
        assert_eq!(s[0].vips, vec![vip.to_string()]);
        assert_eq!(s[0].policy, "local_first");
        assert_eq!(s[0].per_cluster.len(), 2);
        assert_eq!(s[0].backends.len(), 1);
        let later = services(&c, now + Duration::from_secs(4));
        assert_eq!(later[0].unavailable, vec!["c2"]);
    }
}
