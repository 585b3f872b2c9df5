//! The merged view, DNS lookups, backend policies and VIPs through the catalog.

mod common;

use std::net::IpAddr;

use common::*;
use isthmus_catalog::{
    resolve_backends, Backend, Event, HealthConfig, LocalCatalog, MergedCatalog, Offer, Policy,
    Protocol, ServicePort, SyncMessage, VipAllocator,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// local, east and west all export shop/api; west goes down at +3 s (east keeps talking).
fn three_clusters() -> (MergedCatalog, std::time::Instant) {
    let t = t0();
    let mut c = catalog("local");
    let mut local = export("shop/api", &[("10.0.0.2", true), ("10.0.0.1", false)]);
    local.policy = Policy::RoundRobin; // "local" sorts after "east": east's policy wins
    c.set_exports(vec![
        local,
        export("shop/local-only", &[("10.0.0.9", true)]),
    ])
    .unwrap();
    let mut east = export("shop/api", &[("10.1.0.1", true), ("10.1.0.2", true)]);
    east.policy = Policy::Weighted;
    east.ports.push(ServicePort {
        name: Some("grpc".into()),
        port: 9090,
        protocol: Protocol::Tcp,
    });
    let west = export("shop/api", &[("10.2.0.1", true)]);
    c.apply(
        &cluster("east"),
        SyncMessage::Snapshot(state("east", 1, 1, vec![east])),
        t,
    )
    .unwrap();
    c.apply(
        &cluster("west"),
        SyncMessage::Snapshot(state("west", 1, 1, vec![west])),
        t,
    )
    .unwrap();
    c.observe_alive(&cluster("east"), t + secs(2.0));
    (c, t + secs(3.5))
}

#[test]
fn the_view_merges_every_origin_deterministically() {
    let (c, now) = three_clusters();
    let view = c.view(now);
    let names: Vec<String> = view.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["shop/api", "shop/local-only"]);
    let api = &view[0];
    assert_eq!(api.clusters, vec![cluster("east"), cluster("local")]);
    assert_eq!(api.unavailable, vec![cluster("west")]);
    assert_eq!(
        api.endpoints_healthy, 3,
        "2 east + 1 ready local; west is down"
    );
    assert_eq!(api.endpoints_total, 5);
    assert_eq!(
        api.policy,
        Policy::Weighted,
        "from east, the first exporter by name"
    );
    assert_eq!(
        api.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [80, 9090]
    );
    assert_eq!(api.vips.len(), 1);
    assert!(!api.headless);
    assert_ne!(view[0].vips, view[1].vips);
    // Same inputs, same answer.
    assert_eq!(c.view(now), view);
    // And it serializes for `tunctl services -o json`.
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json[0]["name"]["namespace"], "shop");
}

#[test]
fn lookup_answers_vips_only_while_someone_offers_the_service() {
    let t = t0();
    let mut c = catalog("local");
    let east = cluster("east");
    c.apply(
        &east,
        SyncMessage::Snapshot(state(
            "east",
            1,
            1,
            vec![export("shop/api", &[("10.1.0.1", true)])],
        )),
        t,
    )
    .unwrap();
    let answer = c.lookup(&svc("shop/api"), t).unwrap();
    assert_eq!(answer.vips.len(), 1);
    assert!(answer.addresses.is_empty());
    assert_eq!(answer.ports[0].name.as_deref(), Some("http"));
    let later = t + secs(3.0);
    let answer = c.lookup(&svc("shop/api"), later).unwrap();
    assert!(
        answer.vips.is_empty() && answer.clusters.is_empty(),
        "NODATA while down"
    );
    assert_eq!(c.lookup(&svc("shop/none"), t), None, "NXDOMAIN");
}

#[test]
fn headless_lookup_lists_ready_endpoints_of_healthy_clusters() {
    let t = t0();
    let mut c = catalog("local");
    let mut mine = export("db/pg", &[("10.0.0.5", true), ("10.0.0.6", false)]);
    mine.headless = true;
    c.set_exports(vec![mine]).unwrap();
    let mut east = export("db/pg", &[("10.1.0.7", true), ("10.0.0.5", true)]);
    east.headless = true;
    let mut west = export("db/pg", &[("10.2.0.1", true)]);
    west.headless = true;
    c.apply(
        &cluster("east"),
        SyncMessage::Snapshot(state("east", 1, 1, vec![east])),
        t,
    )
    .unwrap();
    c.apply(
        &cluster("west"),
        SyncMessage::Snapshot(state("west", 1, 1, vec![west])),
        t,
    )
    .unwrap();
    c.observe_alive(&cluster("east"), t + secs(2.0));
    let answer = c.lookup(&svc("db/pg"), t + secs(4.0)).unwrap();
    assert!(answer.headless && answer.vips.is_empty());
    assert_eq!(
        answer.addresses,
        vec![ip("10.0.0.5"), ip("10.1.0.7")],
        "sorted, deduplicated, no west"
    );
    assert!(c.view(t).iter().all(|s| s.vips.is_empty()));
}

#[test]
fn backends_follow_the_policy() {
    let (c, now) = three_clusters();
    // Weighted (east's policy), weights 1 and 1: each cluster gets half.
    let b = c.backends(&svc("shop/api"), now);
    let summary: Vec<(String, String, u32)> = b
        .iter()
        .map(|b| (b.cluster.to_string(), b.address.to_string(), b.weight))
        .collect();
    assert_eq!(
        summary,
        [
            ("local".into(), "10.0.0.2".into(), 500_000),
            ("east".into(), "10.1.0.1".into(), 250_000),
            ("east".into(), "10.1.0.2".into(), 250_000),
        ]
    );
    assert_eq!(c.backends(&svc("shop/none"), now), vec![]);
}

fn offer<'a>(
    cluster: &'a isthmus_catalog::ClusterName,
    weight: u32,
    eps: &'a [isthmus_catalog::Endpoint],
) -> Offer<'a> {
    Offer {
        cluster,
        weight,
        endpoints: eps,
    }
}

fn addrs(b: &[Backend]) -> Vec<(String, u32)> {
    b.iter()
        .map(|b| (b.address.to_string(), b.weight))
        .collect()
}

#[test]
fn resolve_backends_per_policy() {
    let (local, east, west) = (cluster("local"), cluster("east"), cluster("west"));
    let l = vec![
        ep("10.0.0.2", 80, true),
        ep("10.0.0.1", 80, true),
        ep("10.0.0.3", 80, false),
    ];
    let e = vec![ep("10.1.0.1", 80, true)];
    let w = vec![
        ep("10.2.0.1", 80, true),
        ep("10.2.0.2", 80, true),
        ep("10.2.0.3", 80, true),
    ];
    let offers = [
        offer(&west, 3, &w),
        offer(&east, 1, &e),
        offer(&local, 0, &l),
    ];

    let lf = resolve_backends(Policy::LocalFirst, &local, &offers);
    assert_eq!(addrs(&lf), [("10.0.0.1".into(), 1), ("10.0.0.2".into(), 1)]);
    let no_local_ready = vec![ep("10.0.0.3", 80, false)];
    let offers2 = [
        offer(&west, 1, &w),
        offer(&east, 1, &e),
        offer(&local, 1, &no_local_ready),
    ];
    let lf = resolve_backends(Policy::LocalFirst, &local, &offers2);
    assert_eq!(lf.len(), 4, "falls back to every other cluster");
    assert_eq!(lf[0].cluster, east);

    let rr = resolve_backends(Policy::RoundRobin, &local, &offers);
    assert_eq!(rr.len(), 6);
    assert_eq!(rr[0].cluster, local);
    assert!(rr.iter().all(|b| b.weight == 1));

    // Weights 3 (west), 1 (east), 0 (local: drained).
    let wt = resolve_backends(Policy::Weighted, &local, &offers);
    assert_eq!(
        addrs(&wt),
        [
            ("10.1.0.1".into(), 250_000),
            ("10.2.0.1".into(), 250_000),
            ("10.2.0.2".into(), 250_000),
            ("10.2.0.3".into(), 250_000),
        ]
    );
    // All weights 0: equal.
    let zero = [offer(&west, 0, &w), offer(&east, 0, &e)];
    assert!(resolve_backends(Policy::Weighted, &local, &zero)
        .iter()
        .all(|b| b.weight == 1));
    assert!(resolve_backends(Policy::RoundRobin, &local, &[]).is_empty());
}

fn tiny_catalog(range: &str) -> MergedCatalog {
    let vips = VipAllocator::new(range.parse().unwrap(), None);
    MergedCatalog::new(
        LocalCatalog::new(cluster("local"), 1),
        HealthConfig::default(),
        vips,
    )
    .unwrap()
}

#[test]
fn vips_are_reserved_while_a_service_is_gone_and_wait_when_the_range_is_full() {
    let t = t0();
    let mut c = tiny_catalog("10.96.0.0/31"); // 2 addresses
    c.set_exports(vec![export("ns/a", &[]), export("ns/b", &[])])
        .unwrap();
    let a_vip = c.lookup(&svc("ns/a"), t).unwrap().vips;
    // A third service: no VIP, an event, nothing else breaks.
    let east = cluster("east");
    c.apply(
        &east,
        SyncMessage::Snapshot(state(
            "east",
            1,
            1,
            vec![export("ns/c", &[("10.1.0.1", true)])],
        )),
        t,
    )
    .unwrap();
    let events = c.handle_timeout(t);
    assert!(
        events.contains(&Event::VipUnavailable(svc("ns/c"))),
        "{events:?}"
    );
    assert!(c.lookup(&svc("ns/c"), t).unwrap().vips.is_empty());
    // a goes away: c takes its address (the only one left), and gets it without being asked.
    c.set_exports(vec![export("ns/b", &[])]).unwrap();
    assert_eq!(c.lookup(&svc("ns/c"), t).unwrap().vips, a_vip);
    // a comes back: the range is full again.
    c.set_exports(vec![export("ns/a", &[]), export("ns/b", &[])])
        .unwrap();
    assert!(c.lookup(&svc("ns/a"), t).unwrap().vips.is_empty());
    assert!(c
        .save_vips(&tempfile::tempdir().unwrap().path().join("v.json"))
        .unwrap());
}

#[test]
fn a_service_keeps_its_vip_across_a_gap_in_its_exports() {
    let t = t0();
    let mut c = catalog("local");
    c.set_exports(vec![export("ns/a", &[])]).unwrap();
    let vip = c.lookup(&svc("ns/a"), t).unwrap().vips;
    c.set_exports(vec![]).unwrap();
    assert_eq!(c.lookup(&svc("ns/a"), t), None);
    for i in 0..20 {
        c.set_exports(vec![export(&format!("ns/x{i}"), &[])])
            .unwrap();
    }
    c.set_exports(vec![export("ns/a", &[])]).unwrap();
    assert_eq!(c.lookup(&svc("ns/a"), t).unwrap().vips, vip);
}

#[test]
fn vips_survive_a_restart_of_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vips.json");
    let range = "10.96.0.0/16".parse().unwrap(); // as in common::catalog
    let t = t0();
    let mut c = catalog("local");
    let exports = vec![export("ns/a", &[]), export("ns/b", &[])];
    c.set_exports(exports.clone()).unwrap();
    let before = c.view(t);
    assert!(c.save_vips(&path).unwrap());
    assert!(!c.save_vips(&path).unwrap(), "nothing new to save");

    let vips = VipAllocator::load(&path, range, None).unwrap();
    let mut local = LocalCatalog::new(cluster("local"), 2);
    local.set_exports(exports).unwrap();
    let c2 = MergedCatalog::new(local, HealthConfig::default(), vips).unwrap();
    assert_eq!(c2.view(t), before);
}
