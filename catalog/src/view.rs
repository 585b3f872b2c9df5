//! What the merged catalog offers: the per-service view (`tunctl services`, the store), DNS
//! lookups, and backend sets for the route agents.
//!
//! A service's shared properties (headless, policy, port names) are taken from the export of
//! the first exporting cluster in name order, healthy or not, so every gateway resolves a
//! conflict the same way and a failover does not change them. (The MCS API picks the oldest
//! export, which needs creation times this protocol does not carry.) Ports are the union over
//! all exports by (port, protocol). Every list is sorted.

use std::net::IpAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::merged::MergedCatalog;
use crate::model::{Endpoint, Policy, ServiceExport, ServicePort};
use crate::names::{ClusterName, ServiceName};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: ServiceName,
    /// Clusterset VIPs (IPv4, then IPv6 if configured). Empty for a headless service or while
    /// the range is full.
    pub vips: Vec<IpAddr>,
    pub headless: bool,
    pub policy: Policy,
    pub ports: Vec<ServicePort>,
    /// Exporting clusters whose endpoints are offered now: the local one and healthy remotes.
    pub clusters: Vec<ClusterName>,
    /// Exporting clusters that are down or held down.
    pub unavailable: Vec<ClusterName>,
    /// Ready endpoints of the offered clusters.
    pub endpoints_healthy: usize,
    /// Every endpoint of every exporting cluster.
    pub endpoints_total: usize,
}

/// A DNS answer for `<name>.<namespace>.svc.clusterset.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub name: ServiceName,
    pub headless: bool,
    /// For a non-headless service with at least one offered cluster: its VIPs. Else empty.
    pub vips: Vec<IpAddr>,
    /// For a headless service: ready endpoint addresses of the offered clusters, deduplicated.
    pub addresses: Vec<IpAddr>,
    /// For SRV records.
    pub ports: Vec<ServicePort>,
    /// Offered clusters; empty means the name exists but nothing answers now (NODATA).
    pub clusters: Vec<ClusterName>,
}

/// One backend for the route agents' tc programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub cluster: ClusterName,
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// One cluster's offer of a service, input to [`resolve_backends`].
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub cluster: &'a ClusterName,
    pub weight: u32,
    pub endpoints: &'a [Endpoint],
}

/// Total of the backend weights under [`Policy::Weighted`] (± rounding).
pub const WEIGHT_SCALE: u64 = 1_000_000;

/// The backend set of a service under `policy`, from the offers of healthy clusters. Only ready
/// endpoints. Order: the local cluster first, then by cluster name, then by (address, port).
///
/// - `LocalFirst`: the local cluster's ready endpoints if it has any, else every other's; all
///   weight 1.
/// - `RoundRobin`: every ready endpoint, weight 1.
/// - `Weighted`: each cluster's endpoints share its `weight / Σ weights` of [`WEIGHT_SCALE`]
///   evenly (each at least 1); clusters of weight 0 get nothing unless all are 0, when all count
///   equally.
pub fn resolve_backends(policy: Policy, local: &ClusterName, offers: &[Offer<'_>]) -> Vec<Backend> {
    let mut offers: Vec<(&ClusterName, u32, Vec<&Endpoint>)> = offers
        .iter()
        .map(|o| {
            let mut ready: Vec<&Endpoint> = o.endpoints.iter().filter(|e| e.ready).collect();
            ready.sort_by_key(|e| (e.address, e.port));
            ready.dedup_by_key(|e| (e.address, e.port));
            (o.cluster, o.weight, ready)
        })
        .filter(|(_, _, ready)| !ready.is_empty())
        .collect();
    offers.sort_by_key(|(cluster, _, _)| (*cluster != local, (*cluster).clone()));

    if policy == Policy::LocalFirst && offers.first().is_some_and(|(c, _, _)| *c == local) {
        offers.truncate(1);
    }
    let total: u64 = offers.iter().map(|(_, w, _)| u64::from(*w)).sum();
    let mut out = Vec::new();
    for (cluster, weight, ready) in offers {
        let each = match policy {
            Policy::LocalFirst | Policy::RoundRobin => 1,
            Policy::Weighted if total == 0 => 1,
            Policy::Weighted if weight == 0 => continue,
            Policy::Weighted => {
                let share = u128::from(weight) * u128::from(WEIGHT_SCALE) / u128::from(total);
                let each = share / ready.len() as u128;
                u32::try_from(each.max(1)).unwrap_or(u32::MAX)
            }
        };
        out.extend(ready.into_iter().map(|e| Backend {
            cluster: cluster.clone(),
            address: e.address,
            port: e.port,
            weight: each,
        }));
    }
    out
}

struct Exporter<'a> {
    cluster: &'a ClusterName,
    export: &'a ServiceExport,
    offered: bool,
}

impl MergedCatalog {
    fn exporters<'a>(&'a self, name: &ServiceName, now: Instant) -> Vec<Exporter<'a>> {
        let Some(clusters) = self.index.get(name) else {
            return Vec::new();
        };
        clusters
            .iter()
            .filter_map(|cluster| {
                let export = if cluster == self.local.cluster() {
                    self.local.state().services.get(name)
                } else {
                    self.remote(cluster).and_then(|s| s.services.get(name))
                }?;
                Some(Exporter {
                    cluster,
                    export,
                    offered: self.offered(cluster, now),
                })
            })
            .collect()
    }

    fn vip_list(&self, name: &ServiceName) -> Vec<IpAddr> {
        self.vips
            .vips(name)
            .map(|v| v.addresses())
            .unwrap_or_default()
    }

    fn service_view(&self, name: &ServiceName, now: Instant) -> Option<ServiceView> {
        let exporters = self.exporters(name, now);
        let first = exporters.first()?.export;
        let mut ports: Vec<ServicePort> = Vec::new();
        for e in &exporters {
            for p in &e.export.ports {
                if !ports
                    .iter()
                    .any(|q| (q.port, q.protocol) == (p.port, p.protocol))
                {
                    ports.push(p.clone());
                }
            }
        }
        ports.sort_by_key(|p| (p.port, p.protocol));
        let (offered, down): (Vec<&Exporter<'_>>, Vec<&Exporter<'_>>) =
            exporters.iter().partition(|e| e.offered);
        Some(ServiceView {
            name: name.clone(),
            vips: if first.headless {
                Vec::new()
            } else {
                self.vip_list(name)
            },
            headless: first.headless,
            policy: first.policy,
            ports,
            clusters: offered.iter().map(|e| e.cluster.clone()).collect(),
            unavailable: down.iter().map(|e| e.cluster.clone()).collect(),
            endpoints_healthy: offered
                .iter()
                .map(|e| e.export.ready_endpoints().count())
                .sum(),
            endpoints_total: exporters.iter().map(|e| e.export.endpoints.len()).sum(),
        })
    }

    /// Every service any origin exports, by name.
    pub fn view(&self, now: Instant) -> Vec<ServiceView> {
        self.index
            .keys()
            .filter_map(|name| self.service_view(name, now))
            .collect()
    }

    /// The DNS answer for one service; `None` if no cluster exports it (NXDOMAIN).
    pub fn lookup(&self, name: &ServiceName, now: Instant) -> Option<Lookup> {
        let view = self.service_view(name, now)?;
        let mut addresses = Vec::new();
        if view.headless {
            for e in self.exporters(name, now).iter().filter(|e| e.offered) {
                addresses.extend(e.export.ready_endpoints().map(|ep| ep.address));
            }
            addresses.sort();
            addresses.dedup();
        }
        Some(Lookup {
            vips: if view.clusters.is_empty() {
                Vec::new()
            } else {
                view.vips
            },
            name: view.name,
            headless: view.headless,
            addresses,
            ports: view.ports,
            clusters: view.clusters,
        })
    }

    /// The service's backends under its policy ([`resolve_backends`]), from the local cluster's
    /// point of view; empty if nothing is offered.
    pub fn backends(&self, name: &ServiceName, now: Instant) -> Vec<Backend> {
        let exporters = self.exporters(name, now);
        let Some(first) = exporters.first() else {
            return Vec::new();
        };
        let policy = first.export.policy;
        let offers: Vec<Offer<'_>> = exporters
            .iter()
            .filter(|e| e.offered)
            .map(|e| Offer {
                cluster: e.cluster,
                weight: e.export.weight,
                endpoints: &e.export.endpoints,
            })
            .collect();
        resolve_backends(policy, self.local.cluster(), &offers)
    }
}
