//! What the maps should hold for a catalog: per service its VIP ports, its backends and, per
//! address family, the slot table the programs walk round-robin. Policy is decided here (the
//! gateway already chose the backend set; weights become slot counts) so the C stays small.
//!
//! Services that do not fit the map capacity are left out whole, never written in part: those
//! already programmed are admitted first, then the rest by name, while everything admitted
//! (plus room for one service's update in flight) fits.

use std::collections::BTreeMap;
use std::net::IpAddr;

use isthmus_ebpf::layout::{Proto, ServiceKey};
use isthmus_ebpf::Capacity;

use crate::catalog::{Catalog, Policy, ServiceName};

/// Slots of a weighted table with few backends: enough for a 1 % share to show.
pub const WEIGHTED_SLOTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A backend as the maps hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub addr: IpAddr,
    /// 0 keeps the VIP's port (a service with several port numbers).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub name: ServiceName,
    pub policy: Policy,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<(u16, Proto)>,
    /// Distinct backends with the cluster each is in.
    pub backends: BTreeMap<BackendAddr, String>,
    /// Per family of VIP: the slot table, as backends in slot order (a backend appears as many
    /// times as its weight earns). Empty: no healthy backend of that family.
    pub tables: BTreeMap<Family, Vec<BackendAddr>>,
}

impl DesiredService {
    /// Every `ist_services` key of the service.
    pub fn keys(&self) -> Vec<ServiceKey> {
        let mut keys = Vec::with_capacity(self.vips.len() * self.ports.len());
        for &vip in &self.vips {
            for &(port, proto) in &self.ports {
                keys.push(ServiceKey { vip, port, proto });
            }
        }
        keys
    }

    pub fn slot_count(&self) -> usize {
        self.tables.values().map(Vec::len).sum()
    }

    fn need(&self) -> Need {
        Need {
            keys: self.vips.len() * self.ports.len(),
            vips: self.vips.len(),
            backends: self.backends.len(),
            slots: self.slot_count(),
        }
    }
}

/// A service left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprogrammed {
    pub name: ServiceName,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceName, DesiredService>,
    /// Services with VIPs that do not fit the maps.
    pub unprogrammed: Vec<Unprogrammed>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Need {
    keys: usize,
    vips: usize,
    backends: usize,
    slots: usize,
}

/// The desired map state for `catalog` within `capacity`; `programmed(name)` says whether a
/// service is in the maps now (it keeps its place before newcomers).
pub fn desired(
    catalog: &Catalog,
    capacity: Capacity,
    programmed: impl Fn(&ServiceName) -> bool,
) -> Desired {
    let mut candidates: Vec<DesiredService> = catalog
        .services
        .values()
        .filter(|s| !s.headless && !s.vips.is_empty() && !s.ports.is_empty())
        .map(|s| {
            let numbers: std::collections::BTreeSet<u16> = s.ports.iter().map(|p| p.0).collect();
            let one_target = numbers.len() == 1;
            let mut backends = BTreeMap::new();
            let mut weights: BTreeMap<BackendAddr, u32> = BTreeMap::new();
            for b in &s.backends {
                let addr = BackendAddr {
                    addr: b.address,
                    port: if one_target { b.port } else { 0 },
                };
                backends.insert(addr, b.cluster.clone());
                weights.insert(addr, b.weight);
            }
            let mut tables = BTreeMap::new();
            for family in s.vips.iter().map(|v| Family::of(*v)) {
                let of_family: Vec<(BackendAddr, u32)> = weights
                    .iter()
                    .filter(|(a, _)| Family::of(a.addr) == family)
                    .map(|(a, w)| (*a, *w))
                    .collect();
                tables.insert(family, expand(s.policy, &of_family));
            }
            DesiredService {
                name: s.name.clone(),
                policy: s.policy,
                vips: s.vips.clone(),
                ports: s.ports.clone(),
                backends,
                tables,
            }
        })
        .collect();
    // Programmed services first, then by name: a newcomer never pushes out what runs.
    candidates
        .sort_by(|a, b| (!programmed(&a.name), &a.name).cmp(&(!programmed(&b.name), &b.name)));

    let mut out = Desired::default();
    let mut used = Need::default();
    let mut services = 0usize;
    let mut largest = Need::default();
    let cap = |n: u32| n as usize;
    for s in candidates {
        let need = s.need();
        // Room for one update in flight: a service's new backends and table are written
        // before its old ones are removed.
        let spare_backends = largest.backends.max(need.backends);
        let spare_slots = largest.slots.max(need.slots);
        let problem = if services + 1 > cap(capacity.services) {
            Some(format!("more than {} services", capacity.services))
        } else if used.keys + need.keys > cap(capacity.services) {
            Some(format!(
                "more than {} VIP ports (service map full)",
                capacity.services
            ))
        } else if used.vips + need.vips > cap(capacity.services) {
            Some(format!("more than {} VIPs", capacity.services))
        } else if used.backends + need.backends + spare_backends > cap(capacity.backends) {
            Some(format!(
                "{} backends would exceed the backend map ({})",
                need.backends, capacity.backends
            ))
        } else if used.slots + need.slots + spare_slots > cap(capacity.slots) {
            Some(format!(
                "{} slots would exceed the slot map ({})",
                need.slots, capacity.slots
            ))
        } else {
            None
        };
        match problem {
            Some(reason) => out.unprogrammed.push(Unprogrammed {
                name: s.name,
                reason,
            }),
            None => {
                services += 1;
                used.keys += need.keys;
                used.vips += need.vips;
                used.backends += need.backends;
                used.slots += need.slots;
                largest.backends = largest.backends.max(need.backends);
                largest.slots = largest.slots.max(need.slots);
                out.services.insert(s.name.clone(), s);
            }
        }
    }
    out
}

/// The slot table of one family's backends under `policy`, smoothly interleaved: backend `i`
/// with `q` slots takes them at the positions `(k + ½) / q`, merged in that order.
pub fn expand(policy: Policy, backends: &[(BackendAddr, u32)]) -> Vec<BackendAddr> {
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    let all_equal = backends.iter().all(|(_, w)| *w == backends[0].1);
    if policy != Policy::Weighted || all_equal {
        return backends.iter().map(|(a, _)| *a).collect();
    }
    let quotas = apportion(
        &backends.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        n.max(WEIGHTED_SLOTS),
    );
    let mut slots: Vec<(u64, u64, usize)> = Vec::new();
    for (i, &q) in quotas.iter().enumerate() {
        for k in 0..q as u64 {
            // Position (2k + 1) / 2q, kept as a fraction for an exact order.
            slots.push((2 * k + 1, 2 * q as u64, i));
        }
    }
    slots.sort_by(|a, b| {
        (u128::from(a.0) * u128::from(b.1))
            .cmp(&(u128::from(b.0) * u128::from(a.1)))
            .then(a.2.cmp(&b.2))
    });
    slots.into_iter().map(|(_, _, i)| backends[i].0).collect()
}

/// Splits `total` slots in proportion to `weights` (largest remainder), every positive weight
/// getting at least one; `total` must be at least the number of weights.
fn apportion(weights: &[u32], total: usize) -> Vec<usize> {
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if sum == 0 {
        return vec![total / weights.len().max(1); weights.len()];
    }
    let total128 = total as u128;
    let mut quotas: Vec<usize> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = u128::from(*w) * total128;
        quotas.push((exact / sum) as usize);
        remainders.push((exact % sum, i));
    }
    let mut left = total.saturating_sub(quotas.iter().sum());
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        quotas[i] += 1;
        left -= 1;
    }
    // Every positive weight gets a slot, taken from the largest quota.
    for i in 0..weights.len() {
        if weights[i] > 0 && quotas[i] == 0 {
            if let Some(j) = (0..quotas.len()).max_by_key(|&j| quotas[j]) {
                if quotas[j] > 1 {
                    quotas[j] -= 1;
                    quotas[i] = 1;
                }
            }
        }
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Backend, Service};

    fn b(last: u8) -> BackendAddr {
        BackendAddr {
            addr: IpAddr::from([10, 2, 1, last]),
            port: 7000,
        }
    }

    #[test]
    fn equal_weights_get_one_slot_each_in_order() {
        let t = expand(Policy::RoundRobin, &[(b(2), 1), (b(3), 1), (b(4), 1)]);
        assert_eq!(t, vec![b(2), b(3), b(4)]);
        // Weighted with equal weights is the same.
        let t = expand(Policy::Weighted, &[(b(2), 5), (b(3), 5)]);
        assert_eq!(t, vec![b(2), b(3)]);
    }

    #[test]
    fn weights_become_slot_shares_interleaved() {
        // The catalog's 3:1 between a cluster with two endpoints and one with one.
        let t = expand(
            Policy::Weighted,
            &[(b(2), 375_000), (b(3), 375_000), (b(4), 250_000)],
        );
        assert_eq!(t.len(), WEIGHTED_SLOTS);
        let count = |x| t.iter().filter(|&&y| y == x).count();
        assert_eq!(count(b(2)) + count(b(3)), 75);
        assert_eq!(count(b(4)), 25);
        // Interleaved: no run of one backend longer than its share needs.
        let longest = t
            .chunk_by(|a, b| a == b)
            .map(<[BackendAddr]>::len)
            .max()
            .unwrap();
        assert!(longest <= 2, "runs of {longest}: {t:?}");
        // Any window of 4 consecutive slots has 3 of c2 and 1 of c3 (± 1).
        for w in t.windows(4) {
            let c3 = w.iter().filter(|&&x| x == b(4)).count();
            assert!((0..=2).contains(&c3), "{w:?}");
        }
    }

    #[test]
    fn a_tiny_weight_still_gets_a_slot() {
        let t = expand(Policy::Weighted, &[(b(2), 999_999), (b(3), 1)]);
        assert_eq!(t.len(), WEIGHTED_SLOTS);
        assert_eq!(t.iter().filter(|&&x| x == b(3)).count(), 1);
    }

    fn service(name: &str, vips: &[&str], backends: usize) -> Service {
        Service {
            name: ServiceName {
                namespace: "demo".into(),
                name: name.into(),
            },
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            headless: false,
            policy: Policy::RoundRobin,
            ports: vec![(80, Proto::Tcp)],
            skipped_ports: vec![],
            backends: (0..backends)
                .map(|i| Backend {
                    cluster: "c2".into(),
                    address: IpAddr::from([10, 2, (i / 250) as u8, (i % 250) as u8 + 1]),
                    port: 8080,
                    weight: 1,
                })
                .collect(),
        }
    }

    fn catalog(services: Vec<Service>) -> Catalog {
        Catalog {
            services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
            ..Catalog::default()
        }
    }

    #[test]
    fn one_port_number_targets_the_endpoint_port_several_keep_the_vip_port() {
        let mut s = service("a", &["241.0.0.1"], 1);
        let d = desired(&catalog(vec![s.clone()]), Capacity::default(), |_| false);
        assert_eq!(
            d.services
                .values()
                .next()
                .unwrap()
                .backends
                .keys()
                .next()
                .unwrap()
                .port,
            8080
        );
        s.ports.push((443, Proto::Tcp));
        let d = desired(&catalog(vec![s]), Capacity::default(), |_| false);
        let ds = d.services.values().next().unwrap();
        assert_eq!(ds.backends.keys().next().unwrap().port, 0);
        assert_eq!(ds.keys().len(), 2);
    }

    #[test]
    fn families_get_their_own_tables() {
        let mut s = service("a", &["241.0.0.1", "fd00:241::1"], 2);
        s.backends.push(Backend {
            cluster: "c3".into(),
            address: "fd00:3::2".parse().unwrap(),
            port: 8080,
            weight: 1,
        });
        let d = desired(&catalog(vec![s]), Capacity::default(), |_| false);
        let ds = d.services.values().next().unwrap();
        assert_eq!(ds.tables[&Family::V4].len(), 2);
        assert_eq!(ds.tables[&Family::V6].len(), 1);
    }

    #[test]
    fn services_that_do_not_fit_are_left_out_whole_programmed_ones_first() {
        let cap = Capacity {
            services: 16,
            backends: 30,
            slots: 1000,
            flows: 16,
        };
        // Each needs 10 backends; with room for one update in flight, two fit in 30.
        let c = catalog(vec![
            service("a", &["241.0.0.1"], 10),
            service("b", &["241.0.0.2"], 10),
            service("c", &["241.0.0.3"], 10),
        ]);
        let d = desired(&c, cap, |_| false);
        assert_eq!(
            d.services
                .keys()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(d.unprogrammed.len(), 1);
        assert_eq!(d.unprogrammed[0].name.name, "c");
        assert!(
            d.unprogrammed[0].reason.contains("backend map (30)"),
            "{:?}",
            d.unprogrammed
        );
        // "c" already programmed keeps its place; "b" is the newcomer left out.
        let d = desired(&c, cap, |n| n.name == "c");
        assert_eq!(
            d.services
                .keys()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "c"]
        );
        // Headless services and services without a VIP are not programmed, nor refused.
        let mut h = service("h", &[], 1);
        h.headless = true;
        let d = desired(&catalog(vec![h]), cap, |_| false);
        assert!(d.services.is_empty() && d.unprogrammed.is_empty());
    }
}
