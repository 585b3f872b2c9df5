//! Benchmark (not a test): catalog convergence in a 100-gateway in-memory full mesh holding
//! 10,000 exported endpoints. The network is a function call, so the figures are message
//! processing time: encode, decode, validate, apply, and the lookup that shows the change.
//!
//! ```sh
//! cargo run --release -p isthmus-catalog --example convergence
//! ```
//!
//! Memory is measured without a counting allocator (the workspace forbids `unsafe`, which a
//! `GlobalAlloc` impl needs): as the growth of resident memory while extra replicas take the
//! whole catalog, and as an estimate from the data structures' sizes and capacities.

use std::hint::black_box;
use std::mem::size_of;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use isthmus_catalog::{
    decode_frame, encode, Applied, ClusterName, Endpoint, HealthConfig, LocalCatalog,
    MergedCatalog, OriginState, ServiceExport, ServiceName, SyncMessage, VipAllocator,
};

const GATEWAYS: usize = 100;
const SERVICES: usize = 100;
const SERVICES_PER_CLUSTER: usize = 10;
const ENDPOINTS_PER_EXPORT: usize = 10;

fn name(i: usize) -> ClusterName {
    ClusterName::new(format!("gw-{i:03}")).expect("valid name")
}

fn service(s: usize) -> ServiceName {
    ServiceName::new("bench", format!("svc-{s:02}")).expect("valid name")
}

/// Cluster `c` exports 10 of the 100 services (each service by 10 clusters), 10 endpoints each.
/// `variant` changes the first export only: its weight and which endpoints are ready.
fn exports(c: usize, variant: u32) -> Vec<ServiceExport> {
    (0..SERVICES_PER_CLUSTER)
        .map(|k| {
            let variant = if k == 0 { variant } else { 0 };
            let s = (c * SERVICES_PER_CLUSTER + k * 7) % SERVICES;
            let mut e = ServiceExport::new(service(s));
            e.ports = vec![isthmus_catalog::ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: isthmus_catalog::Protocol::Tcp,
            }];
            e.policy = isthmus_catalog::Policy::RoundRobin;
            e.weight = 1 + variant;
            e.endpoints = (0..ENDPOINTS_PER_EXPORT)
                .map(|i| Endpoint {
                    address: IpAddr::from([10, c as u8, k as u8, i as u8 + 1]),
                    port: 8080,
                    ready: !(i + variant as usize).is_multiple_of(5),
                    zone: Some(format!("zone-{}", i % 3)),
                })
                .collect();
            e
        })
        .collect()
}

fn gateway(i: usize) -> MergedCatalog {
    let vips = VipAllocator::new("10.96.0.0/16".parse().expect("valid range"), None);
    let mut local = LocalCatalog::new(name(i), 1);
    local.set_exports(exports(i, 0)).expect("valid exports");
    MergedCatalog::new(local, HealthConfig::default(), vips).expect("valid config")
}

fn through_wire(msg: &SyncMessage) -> SyncMessage {
    decode_frame(&encode(msg).expect("fits a frame")).expect("decodes")
}

/// `joiner` says hello to every other gateway and applies the snapshots they send back.
fn join(nodes: &mut [MergedCatalog], joiner: usize, now: Instant) {
    let me = nodes[joiner].local_cluster().clone();
    for other in 0..nodes.len() {
        if other == joiner {
            continue;
        }
        let peer = nodes[other].local_cluster().clone();
        let hello = through_wire(&nodes[joiner].hello(&peer));
        let reply = match nodes[other].apply(&me, hello, now).expect("hello accepted") {
            Applied::Reply(m) => through_wire(&m),
            other => panic!("expected a snapshot, got {other:?}"),
        };
        nodes[joiner]
            .apply(&peer, reply, now)
            .expect("snapshot accepted");
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Bytes a `BTreeMap` spends per entry beyond the entry itself (node headers, spare slots at the
/// typical 2/3 fill of B = 6 nodes with 11 slots): about half the entry again.
fn btree_overhead(entry: usize) -> usize {
    entry / 2 + 8
}

fn string_heap(s: &str) -> usize {
    s.len()
}

/// Heap held by one origin's records, from sizes and lengths.
fn state_heap(state: &OriginState) -> usize {
    state
        .services
        .iter()
        .map(|(name, e)| {
            let entry = size_of::<ServiceName>() + size_of::<ServiceExport>();
            let names = 2 * (string_heap(name.namespace()) + string_heap(name.name()));
            let ports: usize = e.ports.capacity() * size_of::<isthmus_catalog::ServicePort>()
                + e.ports
                    .iter()
                    .map(|p| p.name.as_ref().map_or(0, |n| n.len()))
                    .sum::<usize>();
            let endpoints: usize = e.endpoints.capacity() * size_of::<Endpoint>()
                + e.endpoints
                    .iter()
                    .map(|p| p.zone.as_ref().map_or(0, |z| z.len()))
                    .sum::<usize>();
            entry + btree_overhead(entry) + names + ports + endpoints
        })
        .sum()
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:>9.1?}  p90 {:>9.1?}  max {:>9.1?}",
        pick(0.5),
        pick(0.9),
        pick(1.0)
    )
}

fn main() {
    let now = Instant::now();
    let total_endpoints = GATEWAYS * SERVICES_PER_CLUSTER * ENDPOINTS_PER_EXPORT;
    println!(
        "{GATEWAYS} gateways, full mesh in memory; {total_endpoints} endpoints in \
         {SERVICES} services ({SERVICES_PER_CLUSTER} exports of {ENDPOINTS_PER_EXPORT} endpoints per cluster)"
    );

    // Everybody joins everybody.
    let mut nodes: Vec<MergedCatalog> = (0..GATEWAYS).map(gateway).collect();
    let started = Instant::now();
    for i in 0..GATEWAYS {
        let me = nodes[i].local_cluster().clone();
        let snapshot = encode(&nodes[i].snapshot()).expect("fits");
        for (j, node) in nodes.iter_mut().enumerate() {
            if j != i {
                node.apply(&me, decode_frame(&snapshot).expect("decodes"), now)
                    .expect("accepted");
            }
        }
    }
    let mesh = started.elapsed();
    println!(
        "initial sync: {} snapshots encoded once per origin, decoded and applied by {} replicas: {:.1?} ({:.1?} per snapshot)",
        GATEWAYS * (GATEWAYS - 1),
        GATEWAYS - 1,
        mesh,
        mesh / (GATEWAYS * (GATEWAYS - 1)) as u32
    );
    let view = nodes[0].view(now);
    let offered: usize = view.iter().map(|s| s.endpoints_total).sum();
    assert_eq!(
        offered, total_endpoints,
        "every endpoint is in every replica's view"
    );

    // One export change at one origin until every replica's view shows it.
    let mut totals = Vec::new();
    let mut per_replica = Vec::new();
    let mut encode_times = Vec::new();
    for round in 1..=200u32 {
        let origin = (round as usize * 37) % GATEWAYS;
        let t = Instant::now();
        let delta = nodes[origin]
            .set_exports(exports(origin, round))
            .expect("valid")
            .expect("a change");
        let frame = encode(&delta).expect("fits");
        encode_times.push(t.elapsed());
        let changed = match &delta {
            SyncMessage::Delta(d) => d.changes[0].name().clone(),
            _ => unreachable!("set_exports returns deltas"),
        };
        let sender = name(origin);
        for (j, node) in nodes.iter_mut().enumerate() {
            if j == origin {
                continue;
            }
            let r = Instant::now();
            let msg = decode_frame(&frame).expect("decodes");
            node.apply(&sender, msg, now).expect("in order");
            let backends = black_box(node.backends(&changed, now));
            per_replica.push(r.elapsed());
            // The replica now holds the new export and routes to the origin's ready endpoints.
            let held = &node.remote(&sender).expect("known origin").services[&changed];
            assert_eq!(held.weight, 1 + round);
            let ready = held.ready_endpoints().count();
            assert_eq!(
                backends.iter().filter(|b| b.cluster == sender).count(),
                ready
            );
        }
        totals.push(t.elapsed());
        let bytes = frame.len();
        if round == 1 {
            println!("one change (weight and readiness of one export) = a delta of {bytes} bytes");
        }
    }
    println!(
        "change → all {} replicas updated (sequential):   {}",
        GATEWAYS - 1,
        stats(totals)
    );
    println!(
        "  per replica (decode + apply + backends):    {}",
        stats(per_replica)
    );
    println!(
        "  at the origin (set_exports + encode):       {}",
        stats(encode_times)
    );

    // A new gateway joins and takes the whole catalog.
    let mut joins = Vec::new();
    for k in 0..10 {
        nodes.push(gateway(GATEWAYS + k));
        let joiner = nodes.len() - 1;
        let t = Instant::now();
        join(&mut nodes, joiner, now);
        joins.push(t.elapsed());
        let view = nodes[joiner].view(now);
        let seen: usize = view.iter().map(|s| s.endpoints_total).sum();
        assert!(seen >= total_endpoints);
        nodes.pop();
    }
    println!(
        "new replica: hello to {GATEWAYS} peers, {GATEWAYS} snapshots back, decoded and applied: {}",
        stats(joins)
    );

    let mut views = Vec::new();
    let mut lookups = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        black_box(nodes[0].view(now));
        views.push(t.elapsed());
        let t = Instant::now();
        for s in 0..SERVICES {
            black_box(nodes[0].lookup(&service(s), now));
        }
        lookups.push(t.elapsed() / SERVICES as u32);
    }
    println!(
        "view() of {SERVICES} services / {total_endpoints} endpoints: {}",
        stats(views)
    );
    println!(
        "lookup() of one service:                  {}",
        stats(lookups)
    );

    // Memory per 10,000 endpoints.
    let wire: usize = nodes
        .iter()
        .map(|n| encode(&n.snapshot()).expect("fits").len())
        .sum();
    let estimate: usize =
        nodes[0].remotes().map(state_heap).sum::<usize>() + state_heap(nodes[0].local().state());
    let extra = 20;
    let before = rss_bytes();
    let mut replicas = Vec::new();
    for k in 0..extra {
        let mut r = gateway(GATEWAYS + k);
        for n in &nodes {
            let s = through_wire(&n.snapshot());
            r.apply(n.local_cluster(), s, now).expect("accepted");
        }
        replicas.push(r);
    }
    let after = rss_bytes();
    black_box(&replicas);
    let per = |bytes: usize| bytes as f64 * 10_000.0 / total_endpoints as f64 / 1024.0;
    println!("memory per 10,000 endpoints:");
    println!(
        "  on the wire (100 snapshots):          {:>8.1} KiB ({:.1} bytes per endpoint)",
        per(wire),
        wire as f64 / total_endpoints as f64
    );
    println!(
        "  heap estimate from sizes:             {:>8.1} KiB",
        per(estimate)
    );
    println!(
        "  resident growth per full replica:     {:>8.1} KiB (RSS +{} KiB for {extra} replicas)",
        per((after - before) / extra),
        (after - before) / 1024
    );
}
