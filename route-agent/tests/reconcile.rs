//! Any sequence of catalogs, applied through the in-memory dataplane, ends with maps equal to
//! the desired state; after every single op the maps are consistent, and a service whose
//! backend set goes from one non-empty set to another only ever points at the old or the new
//! set, never at an empty, missing or mixed one. Injected op failures leave consistent maps,
//! and the next reconcile converges.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;

use isthmus_ebpf::layout::{Proto, ServiceKey};
use isthmus_ebpf::Capacity;
use isthmus_route_agent::agent::Agent;
use isthmus_route_agent::catalog::{Backend, Catalog, Policy, Service, ServiceName};
use isthmus_route_agent::dataplane::MemDataplane;
use isthmus_route_agent::desired::{desired, BackendAddr, Family};
use isthmus_route_agent::reconcile::{consistent, matches, MapState};
use proptest::prelude::*;

type Tables = BTreeMap<ServiceKey, Vec<BackendAddr>>;

/// Which service each entry belongs to.
fn owners(state: &MapState) -> BTreeMap<ServiceKey, ServiceName> {
    state
        .services
        .iter()
        .filter_map(|(k, v)| Some((*k, state.names.get(&v.service_id)?.clone())))
        .collect()
}

fn tables(state: &MapState) -> Tables {
    state
        .services
        .iter()
        .map(|(k, v)| {
            let t = if v.count == 0 {
                Vec::new()
            } else {
                state.slots.get(&v.selection).map_or(Vec::new(), |ids| {
                    ids.iter()
                        .filter_map(|b| state.backends.get(b))
                        .map(|b| BackendAddr {
                            addr: b.addr,
                            port: b.port,
                        })
                        .collect()
                })
            };
            (*k, t)
        })
        .collect()
}

#[derive(Default)]
struct Expect {
    before: Tables,
    after: Tables,
    /// Entries that stay with the same service: only they must never break.
    same_owner: std::collections::BTreeSet<ServiceKey>,
    violations: Vec<String>,
}

fn name(i: usize) -> ServiceName {
    ServiceName {
        namespace: "demo".into(),
        name: format!("s{i}"),
    }
}

fn service_strategy(i: usize) -> impl Strategy<Value = Service> {
    let backends = prop::collection::vec((0u8..10, 1usize..=3, 1u32..=4), 0..7);
    (
        prop::sample::select(vec![
            Policy::LocalFirst,
            Policy::RoundRobin,
            Policy::Weighted,
        ]),
        prop::collection::btree_set(
            (prop::sample::select(vec![80u16, 443, 7000]), any::<bool>()),
            1..=3,
        ),
        backends,
        any::<bool>(),
        // Now and then a VIP moves to another service.
        0u8..8,
    )
        .prop_map(move |(policy, ports, backends, v6, vip_shift)| {
            let v4 = if vip_shift == 0 { (i + 1) % 6 } else { i };
            let mut vips: Vec<IpAddr> = vec![IpAddr::from([241, 0, 0, v4 as u8 + 1])];
            if v6 {
                vips.push(format!("fd00:241::{}", i + 1).parse().unwrap());
            }
            Service {
                name: name(i),
                vips,
                headless: false,
                policy,
                ports: ports
                    .into_iter()
                    .map(|(p, udp)| (p, if udp { Proto::Udp } else { Proto::Tcp }))
                    .collect(),
                skipped_ports: vec![],
                backends: backends
                    .into_iter()
                    .map(|(a, c, w)| Backend {
                        cluster: format!("c{c}"),
                        address: if a < 8 {
                            IpAddr::from([10, c as u8, 1, a + 2])
                        } else {
                            format!("fd00:{c}::{a}").parse().unwrap()
                        },
                        port: 7000,
                        weight: w * 250_000,
                    })
                    .collect(),
            }
        })
}

fn catalog_strategy() -> impl Strategy<Value = Catalog> {
    let services: Vec<_> = (0..6)
        .map(|i| prop::option::weighted(0.7, service_strategy(i)))
        .collect();
    services.prop_map(|list| {
        let mut services: BTreeMap<ServiceName, Service> = BTreeMap::new();
        let mut seen_vips = std::collections::BTreeSet::new();
        for s in list.into_iter().flatten() {
            // The gateway never hands one VIP to two services at once.
            if s.vips.iter().all(|v| seen_vips.insert(*v)) {
                services.insert(s.name.clone(), s);
            }
        }
        Catalog {
            revision: 0,
            cluster: "c1".into(),
            services,
            routes: vec![],
        }
    })
}

fn capacity_strategy() -> impl Strategy<Value = Capacity> {
    prop_oneof![
        Just(Capacity::default()),
        (2u32..8, 6u32..30, 40u32..400).prop_map(|(services, backends, slots)| Capacity {
            services,
            backends,
            slots,
            flows: 64,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_sequence_converges_and_never_shows_a_broken_service(
        capacity in capacity_strategy(),
        catalogs in prop::collection::vec(catalog_strategy(), 1..8),
        fail_at in prop::option::weighted(0.3, 0usize..60),
    ) {
        let expect = Rc::new(RefCell::new(Expect::default()));
        let check = expect.clone();
        let mut dp = MemDataplane {
            fail_at,
            ..MemDataplane::default()
        };
        dp.after_op = Some(Box::new(move |maps: &MapState, op| {
            let mut e = check.borrow_mut();
            if let Err(v) = consistent(maps) {
                e.violations.push(format!("after {op:?}: {v}"));
            }
            let now = tables(maps);
            let mut bad = Vec::new();
            for (key, before) in &e.before {
                let Some(after) = e.after.get(key) else { continue };
                if !e.same_owner.contains(key) {
                    continue;
                }
                if before.is_empty() || after.is_empty() {
                    continue;
                }
                match now.get(key) {
                    Some(t) if t == before || t == after => {}
                    other => bad.push(format!(
                        "after {op:?}: {key:?} shows {other:?}, neither {before:?} nor {after:?}"
                    )),
                }
            }
            e.violations.extend(bad);
        }));
        let mut agent = Agent::new(dp, capacity);
        let mut failed_once = false;
        for catalog in catalogs.iter().chain(std::iter::once(catalogs.last().unwrap())) {
            {
                let state = agent.state();
                let d = desired(catalog, capacity, |n| state.has(n));
                let mut after = Tables::new();
                let was = owners(state);
                let mut same_owner = std::collections::BTreeSet::new();
                for s in d.services.values() {
                    for k in s.keys() {
                        after.insert(k, s.tables[&Family::of(k.vip)].clone());
                        if was.get(&k) == Some(&s.name) {
                            same_owner.insert(k);
                        }
                    }
                }
                let mut e = expect.borrow_mut();
                e.same_owner = same_owner;
                e.before = tables(state);
                e.after = after;
            }
            let report = agent.reconcile(catalog);
            prop_assert!(expect.borrow().violations.is_empty(), "{:?}", expect.borrow().violations);
            prop_assert_eq!(&agent.dataplane().maps, agent.state(), "the agent's record drifted from the maps");
            match &report.error {
                Some(_) => {
                    prop_assert!(!failed_once, "failed twice with one injected failure");
                    failed_once = true;
                }
                None => {
                    if let Err(e) = matches(agent.desired(), agent.state()) {
                        prop_assert!(false, "not converged: {e}");
                    }
                }
            }
        }
        // The last catalog ran twice: whatever failed, the maps now say exactly it.
        prop_assert!(matches(agent.desired(), agent.state()).is_ok());
        // Unprogrammed services are named with a reason, and nothing of them is in the maps.
        for u in &agent.desired().unprogrammed {
            prop_assert!(!u.reason.is_empty());
            prop_assert!(!agent.state().has(&u.name));
        }
    }
}

#[test]
fn an_emptied_catalog_leaves_empty_maps() {
    let mut agent = Agent::new(MemDataplane::default(), Capacity::default());
    let mut services = BTreeMap::new();
    services.insert(
        name(0),
        Service {
            name: name(0),
            vips: vec![IpAddr::from([241, 0, 0, 1])],
            headless: false,
            policy: Policy::RoundRobin,
            ports: vec![(80, Proto::Tcp)],
            skipped_ports: vec![],
            backends: vec![Backend {
                cluster: "c2".into(),
                address: IpAddr::from([10, 2, 1, 2]),
                port: 80,
                weight: 1,
            }],
        },
    );
    let full = Catalog {
        services,
        ..Catalog::default()
    };
    assert!(agent.reconcile(&full).error.is_none());
    assert_eq!(agent.state().backends.len(), 1);
    assert!(agent.reconcile(&Catalog::default()).error.is_none());
    let maps = &agent.dataplane().maps;
    assert!(maps.services.is_empty() && maps.vips.is_empty() && maps.slots.is_empty());
    assert!(maps.backends.is_empty() && maps.names.is_empty());
}
