//! Builders and proptest strategies shared by the catalog's test crates.
#![allow(dead_code, reason = "each test crate uses a different part")]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use isthmus_catalog::{
    Change, ClusterName, Delta, Endpoint, HealthConfig, Hello, LocalCatalog, MergedCatalog,
    OpaqueMember, OriginState, Policy, Protocol, ServiceExport, ServiceName, ServicePort,
    SyncMessage, VipAllocator, Watermark,
};
use proptest::prelude::*;

pub fn cluster(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

pub fn svc(s: &str) -> ServiceName {
    s.parse().unwrap()
}

pub fn ep(addr: &str, port: u16, ready: bool) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        port,
        ready,
        zone: None,
    }
}

pub fn export(name: &str, endpoints: &[(&str, bool)]) -> ServiceExport {
    let mut e = ServiceExport::new(svc(name));
    e.ports = vec![ServicePort {
        name: Some("http".into()),
        port: 80,
        protocol: Protocol::Tcp,
    }];
    e.endpoints = endpoints.iter().map(|(a, r)| ep(a, 8080, *r)).collect();
    e
}

pub fn catalog(local: &str) -> MergedCatalog {
    catalog_with(local, HealthConfig::default())
}

pub fn catalog_with(local: &str, config: HealthConfig) -> MergedCatalog {
    let vips = VipAllocator::new("10.96.0.0/16".parse().unwrap(), None);
    MergedCatalog::new(LocalCatalog::new(cluster(local), 1), config, vips).unwrap()
}

/// A state of `origin` at `(generation, version)` exporting `services`.
pub fn state(
    origin: &str,
    generation: u64,
    version: u64,
    services: Vec<ServiceExport>,
) -> OriginState {
    let mut s = OriginState::new(cluster(origin), generation);
    s.version = version;
    s.services = services.into_iter().map(|e| (e.name.clone(), e)).collect();
    s
}

pub fn delta(
    origin: &str,
    generation: u64,
    from: u64,
    to: u64,
    changes: Vec<Change>,
) -> SyncMessage {
    SyncMessage::Delta(Delta {
        cluster: cluster(origin),
        generation,
        from_version: from,
        to_version: to,
        changes,
    })
}

pub fn t0() -> Instant {
    Instant::now()
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---- proptest strategies ----

pub fn arb_label() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]", "[a-z0-9][a-z0-9-]{0,12}[a-z0-9]"]
}

pub fn arb_cluster() -> impl Strategy<Value = ClusterName> {
    arb_label().prop_map(|s| ClusterName::new(s).unwrap())
}

pub fn arb_service() -> impl Strategy<Value = ServiceName> {
    (arb_label(), arb_label()).prop_map(|(ns, n)| ServiceName::new(ns, n).unwrap())
}

fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::LocalFirst),
        Just(Policy::RoundRobin),
        Just(Policy::Weighted)
    ]
}

fn arb_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..=223, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| IpAddr::from([a, b, c, d])),
        any::<[u16; 7]>()
            .prop_map(|s| IpAddr::from([0xfd00, s[0], s[1], s[2], s[3], s[4], s[5], s[6]])),
    ]
    .prop_filter("routable", |a| !a.is_loopback() && !a.is_multicast())
}

pub fn arb_export() -> impl Strategy<Value = ServiceExport> {
    (
        arb_service(),
        proptest::collection::btree_map(
            (1u16.., arb_protocol()),
            proptest::option::of(arb_label()),
            0..4,
        ),
        any::<bool>(),
        arb_policy(),
        any::<u32>(),
        proptest::collection::btree_map(
            (arb_address(), 1u16..),
            (
                any::<bool>(),
                proptest::option::of("[a-z][a-z0-9-]{0,8}[a-z0-9]"),
            ),
            0..6,
        ),
    )
        .prop_map(|(name, ports, headless, policy, weight, endpoints)| {
            let mut used = std::collections::BTreeSet::new();
            let ports = ports
                .into_iter()
                .map(|((port, protocol), name)| ServicePort {
                    // Port names must be distinct.
                    name: name.filter(|n| used.insert(n.clone())),
                    port,
                    protocol,
                })
                .collect();
            let endpoints = endpoints
                .into_iter()
                .map(|((address, port), (ready, zone))| Endpoint {
                    address,
                    port,
                    ready,
                    zone,
                })
                .collect();
            ServiceExport {
                name,
                ports,
                headless,
                policy,
                weight,
                endpoints,
            }
        })
}

fn arb_watermark() -> impl Strategy<Value = Watermark> {
    (any::<u64>(), any::<u64>()).prop_map(|(generation, version)| Watermark {
        generation,
        version,
    })
}

fn arb_state() -> impl Strategy<Value = OriginState> {
    (
        arb_cluster(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(arb_export(), 0..4),
    )
        .prop_map(|(cluster, generation, version, exports)| {
            let mut s = OriginState::new(cluster, generation);
            s.version = version;
            for e in exports {
                s.services.insert(e.name.clone(), e);
            }
            s
        })
}

fn arb_delta() -> impl Strategy<Value = Delta> {
    (
        arb_cluster(),
        any::<u64>(),
        0u64..u64::MAX - 10,
        1u64..10,
        proptest::collection::btree_map(arb_service(), proptest::option::of(arb_export()), 0..4),
    )
        .prop_map(|(cluster, generation, from, step, changes)| Delta {
            cluster,
            generation,
            from_version: from,
            to_version: from + step,
            changes: changes
                .into_iter()
                .map(|(name, upsert)| match upsert {
                    Some(mut e) => {
                        e.name = name;
                        Change::Upsert(e)
                    }
                    None => Change::Remove(name),
                })
                .collect(),
        })
}

fn arb_member() -> impl Strategy<Value = OpaqueMember> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(record, chain, signature)| OpaqueMember {
            record,
            chain,
            signature,
        })
}

pub fn arb_message() -> impl Strategy<Value = SyncMessage> {
    prop_oneof![
        (
            1u16..,
            arb_cluster(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(arb_watermark())
        )
            .prop_map(|(protocol_version, cluster, generation, version, have)| {
                SyncMessage::Hello(Hello {
                    protocol_version,
                    cluster,
                    generation,
                    version,
                    have,
                })
            }),
        arb_state().prop_map(SyncMessage::Snapshot),
        arb_delta().prop_map(SyncMessage::Delta),
        arb_watermark().prop_map(SyncMessage::Heartbeat),
        Just(SyncMessage::SnapshotRequest),
        proptest::collection::vec(arb_member(), 0..3).prop_map(SyncMessage::Members),
        Just(SyncMessage::Bye),
    ]
}
