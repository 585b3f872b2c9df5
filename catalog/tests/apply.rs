//! Applying sync messages: authority, ordering, refusals and their counts.

mod common;

use common::*;
use isthmus_catalog::{
    Applied, Change, Error, Event, LocalCatalog, Refused, SyncMessage, Unchanged, Violation,
    Watermark,
};

fn counts(c: &isthmus_catalog::MergedCatalog) -> Vec<(&'static str, u64)> {
    c.refusals().filter(|(_, n)| *n > 0).collect()
}

fn updated(r: Result<Applied, Refused>) -> Vec<String> {
    match r {
        Ok(Applied::Updated { changed, .. }) => changed.iter().map(|n| n.to_string()).collect(),
        other => panic!("expected an update, got {other:?}"),
    }
}

#[test]
fn a_sender_may_publish_only_its_own_records() {
    let mut c = catalog("local");
    let now = t0();
    let east = cluster("east");
    let forged = SyncMessage::Snapshot(state("west", 1, 1, vec![export("shop/api", &[])]));
    assert_eq!(c.apply(&east, forged, now), Err(Refused::WrongOrigin));
    let forged = delta("west", 1, 0, 1, vec![]);
    assert_eq!(c.apply(&east, forged, now), Err(Refused::WrongOrigin));
    let hello = c.hello(&east);
    // Our own hello, sent back by someone else, names our cluster.
    assert_eq!(c.apply(&east, hello, now), Err(Refused::WrongOrigin));
    assert!(c.remote(&cluster("west")).is_none());
    assert!(c.view(now).is_empty());
    assert_eq!(counts(&c), vec![("wrong_origin", 3)]);
    // A refused message still proves the sender is alive.
    assert!(c.health(&east, now).is_some());
}

#[test]
fn nobody_else_speaks_for_the_local_cluster() {
    let mut c = catalog("local");
    let me = cluster("local");
    let snapshot = SyncMessage::Snapshot(state("local", 9, 9, vec![export("shop/api", &[])]));
    assert_eq!(c.apply(&me, snapshot, t0()), Err(Refused::OwnCluster));
    assert_eq!(
        c.apply(&me, SyncMessage::Heartbeat(Watermark::default()), t0()),
        Err(Refused::OwnCluster)
    );
    assert!(c.view(t0()).is_empty());
    assert!(c.health(&me, t0()).is_none());
    // Membership records from a gateway of our own cluster still reach the gateway.
    assert_eq!(
        c.apply(&me, SyncMessage::Members(vec![]), t0()),
        Ok(Applied::Members(vec![]))
    );
    assert_eq!(counts(&c), vec![("own_cluster", 2)]);
}

#[test]
fn gaps_apply_nothing_and_ask_for_a_snapshot() {
    let mut c = catalog("local");
    let (east, now) = (cluster("east"), t0());
    let up = |n: &str| Change::Upsert(export(n, &[("10.1.0.1", true)]));
    // No base yet.
    assert_eq!(
        c.apply(&east, delta("east", 1, 0, 1, vec![up("shop/a")]), now),
        Err(Refused::Gap)
    );
    assert_eq!(
        c.apply(
            &east,
            SyncMessage::Heartbeat(Watermark {
                generation: 1,
                version: 0
            }),
            now
        ),
        Err(Refused::Gap)
    );
    updated(c.apply(
        &east,
        SyncMessage::Snapshot(state("east", 1, 1, vec![])),
        now,
    ));
    // Skipped version 2.
    assert_eq!(
        c.apply(&east, delta("east", 1, 2, 3, vec![up("shop/b")]), now),
        Err(Refused::Gap)
    );
    // A newer generation must come as a snapshot.
    assert_eq!(
        c.apply(&east, delta("east", 2, 1, 2, vec![up("shop/c")]), now),
        Err(Refused::Gap)
    );
    // The origin is ahead of us.
    assert_eq!(
        c.apply(
            &east,
            SyncMessage::Heartbeat(Watermark {
                generation: 1,
                version: 5
            }),
            now
        ),
        Err(Refused::Gap)
    );
    assert_eq!(
        c.remote(&east).unwrap().watermark(),
        Watermark {
            generation: 1,
            version: 1
        }
    );
    assert!(c.view(now).is_empty(), "nothing half-applied");
    assert_eq!(counts(&c), vec![("gap", 5)]);
}

#[test]
fn invalid_messages_are_refused_and_name_the_rule() {
    let mut c = catalog("local");
    let (east, now) = (cluster("east"), t0());
    let mut bad = export("shop/api", &[("10.1.0.1", true)]);
    bad.ports[0].port = 0;
    let snapshot = SyncMessage::Snapshot(state("east", 1, 1, vec![bad]));
    assert_eq!(
        c.apply(&east, snapshot, now),
        Err(Refused::Invalid(Violation {
            field: "ports[].port",
            reason: "must be 1 to 65535"
        }))
    );
    assert_eq!(
        c.apply(&east, delta("east", 1, 3, 2, vec![]), now),
        Err(Refused::Invalid(Violation {
            field: "to_version",
            reason: "must be greater than from_version"
        }))
    );
    // Map key and export name disagree (only possible for a message built in-process).
    let mut s = state("east", 1, 1, vec![export("shop/api", &[])]);
    let e = s.services.remove(&svc("shop/api")).unwrap();
    s.services.insert(svc("shop/other"), e);
    assert_eq!(
        c.apply(&east, SyncMessage::Snapshot(s), now),
        Err(Refused::Invalid(Violation {
            field: "services[].name",
            reason: "differs from its key"
        }))
    );
    assert_eq!(counts(&c), vec![("invalid", 3)]);
    assert_eq!(Refused::Gap.to_string(), "out of sequence, snapshot needed");
}

#[test]
fn snapshots_replace_only_when_newer() {
    let mut c = catalog("local");
    let (east, now) = (cluster("east"), t0());
    let v =
        |version, n: &str| SyncMessage::Snapshot(state("east", 1, version, vec![export(n, &[])]));
    assert_eq!(updated(c.apply(&east, v(5, "shop/a"), now)), ["shop/a"]);
    assert_eq!(
        c.apply(&east, v(5, "shop/a"), now),
        Ok(Applied::Unchanged(Unchanged::Duplicate))
    );
    assert_eq!(
        c.apply(&east, v(4, "shop/old"), now),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
    assert_eq!(
        updated(c.apply(&east, v(6, "shop/b"), now)),
        ["shop/a", "shop/b"]
    );
    // A restart without state: new generation, version starts over, and it wins.
    let restarted = SyncMessage::Snapshot(state("east", 2, 0, vec![export("shop/c", &[])]));
    assert_eq!(
        updated(c.apply(&east, restarted, now)),
        ["shop/b", "shop/c"]
    );
    let old_generation = SyncMessage::Snapshot(state("east", 1, 99, vec![]));
    assert_eq!(
        c.apply(&east, old_generation, now),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
    let names: Vec<String> = c.view(now).iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["shop/c"]);
    assert_eq!(counts(&c), vec![]);
}

#[test]
fn deltas_apply_in_order_once() {
    let mut c = catalog("local");
    let (east, now) = (cluster("east"), t0());
    updated(c.apply(
        &east,
        SyncMessage::Snapshot(state("east", 1, 1, vec![export("shop/a", &[])])),
        now,
    ));
    let d2 = delta(
        "east",
        1,
        1,
        2,
        vec![
            Change::Upsert(export("shop/b", &[("10.1.0.1", true)])),
            Change::Remove(svc("shop/a")),
        ],
    );
    assert_eq!(
        updated(c.apply(&east, d2.clone(), now)),
        ["shop/a", "shop/b"]
    );
    assert_eq!(
        c.apply(&east, d2, now),
        Ok(Applied::Unchanged(Unchanged::Duplicate))
    );
    let d1 = delta("east", 1, 0, 1, vec![Change::Remove(svc("shop/b"))]);
    assert_eq!(
        c.apply(&east, d1, now),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
    let older_gen = delta("east", 0, 7, 8, vec![]);
    assert_eq!(
        c.apply(&east, older_gen, now),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
    assert_eq!(
        c.apply(
            &east,
            SyncMessage::Heartbeat(Watermark {
                generation: 1,
                version: 2
            }),
            now
        ),
        Ok(Applied::Unchanged(Unchanged::Current))
    );
    assert_eq!(
        c.apply(
            &east,
            SyncMessage::Heartbeat(Watermark {
                generation: 1,
                version: 1
            }),
            now
        ),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
    let view = c.view(now);
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].name, svc("shop/b"));
    assert_eq!(view[0].endpoints_total, 1);
}

#[test]
fn hello_gets_a_snapshot_unless_the_peer_is_current() {
    let mut a = catalog("alpha");
    let mut b = catalog("beta");
    let now = t0();
    let d = a
        .set_exports(vec![export("shop/api", &[("10.1.0.1", true)])])
        .unwrap();
    assert!(matches!(d, Some(SyncMessage::Delta(_))));
    let (alpha, beta) = (cluster("alpha"), cluster("beta"));
    // b knows nothing of alpha: its hello has no `have`, so alpha replies with a snapshot.
    let reply = match a.apply(&beta, b.hello(&alpha), now).unwrap() {
        Applied::Reply(m) => *m,
        other => panic!("{other:?}"),
    };
    assert_eq!(reply.kind(), "snapshot");
    assert_eq!(updated(b.apply(&alpha, reply, now)), ["shop/api"]);
    // Reconnecting with nothing new: no snapshot, but a heartbeat that tells b it is current.
    let reply = match a.apply(&beta, b.hello(&alpha), now).unwrap() {
        Applied::Reply(m) => *m,
        other => panic!("{other:?}"),
    };
    assert_eq!(reply.kind(), "heartbeat");
    assert_eq!(
        b.apply(&alpha, reply, now),
        Ok(Applied::Unchanged(Unchanged::Current))
    );
    // A snapshot request is always answered.
    assert!(matches!(
        a.apply(&beta, SyncMessage::SnapshotRequest, now),
        Ok(Applied::Reply(_))
    ));
    assert_eq!(
        b.apply(&alpha, a.heartbeat(), now),
        Ok(Applied::Unchanged(Unchanged::Current))
    );
}

#[test]
fn local_exports_produce_deltas_only_on_change() {
    let mut c = catalog("local");
    let a = export("shop/a", &[("10.1.0.1", true), ("10.1.0.2", true)]);
    let d = c.set_exports(vec![a.clone()]).unwrap().unwrap();
    let SyncMessage::Delta(d) = d else { panic!() };
    assert_eq!((d.from_version, d.to_version, d.changes.len()), (0, 1, 1));
    // Same set, endpoints in another order: nothing to send.
    let mut reordered = a.clone();
    reordered.endpoints.reverse();
    assert_eq!(c.set_exports(vec![reordered]).unwrap(), None);
    assert_eq!(c.local().watermark().version, 1);
    let b = export("shop/b", &[]);
    let Some(SyncMessage::Delta(d)) = c.set_exports(vec![b]).unwrap() else {
        panic!()
    };
    assert_eq!((d.from_version, d.to_version), (1, 2));
    assert_eq!(
        d.changes,
        vec![
            Change::Remove(svc("shop/a")),
            Change::Upsert(export("shop/b", &[]))
        ]
    );
    // The local cluster's exports are always offered.
    let view = c.view(t0());
    assert_eq!(view[0].clusters, vec![cluster("local")]);
}

#[test]
fn bad_local_exports_change_nothing_and_name_the_export() {
    let mut c = catalog("local");
    c.set_exports(vec![export("shop/a", &[])]).unwrap();
    let mut bad = export("shop/b", &[("10.0.0.1", true)]);
    bad.endpoints[0].zone = Some("bad zone".into());
    let err = c.set_exports(vec![export("shop/a", &[]), bad]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exports[1] shop/b: endpoints[0].zone = \"bad zone\": only letters, digits, '-', '_' and '.' are allowed"
    );
    let err = c
        .set_exports(vec![export("shop/a", &[]), export("shop/a", &[])])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "exports[1].name = \"shop/a\": exported twice"
    );
    assert_eq!(c.local().watermark().version, 1);
    assert_eq!(c.view(t0()).len(), 1);
}

#[test]
fn a_snapshot_too_large_for_a_frame_is_refused_locally() {
    let mut local = LocalCatalog::new(cluster("local"), 1);
    // 200 services of 10,000 endpoints with zones: far over 2 MiB.
    let exports: Vec<_> = (0..200)
        .map(|s| {
            let mut e = export(&format!("ns/s{s}"), &[]);
            e.endpoints = (0..10_000u32)
                .map(|i| isthmus_catalog::Endpoint {
                    address: std::net::IpAddr::from([10, s as u8, (i >> 8) as u8, i as u8]),
                    port: 8080,
                    ready: true,
                    zone: Some("zone-a".into()),
                })
                .collect();
            e
        })
        .collect();
    match local.set_exports(exports) {
        Err(Error::TooLarge {
            what: "snapshot",
            len,
            max,
        }) => assert!(len > max),
        other => panic!("{other:?}"),
    }
    assert_eq!(local.watermark().version, 0);
}

#[test]
fn bye_withdraws_at_once() {
    let mut c = catalog("local");
    let (east, now) = (cluster("east"), t0());
    updated(c.apply(
        &east,
        SyncMessage::Snapshot(state(
            "east",
            1,
            1,
            vec![export("shop/api", &[("10.1.0.1", true)])],
        )),
        now,
    ));
    assert_eq!(c.view(now)[0].clusters, vec![east.clone()]);
    assert_eq!(c.apply(&east, SyncMessage::Bye, now), Ok(Applied::Left));
    assert_eq!(c.view(now)[0].clusters, vec![]);
    assert_eq!(c.view(now)[0].unavailable, vec![east.clone()]);
    let events = c.handle_timeout(now);
    assert_eq!(
        events,
        vec![
            Event::ClusterUp(east.clone()),
            Event::ClusterDown(east.clone())
        ]
    );
    // Back without damping: a goodbye is not a flap.
    c.observe_alive(&east, now + secs(10.0));
    assert!(c.offered(&east, now + secs(10.0)));
}

#[test]
fn restored_records_wait_until_the_cluster_is_heard() {
    let mut c = catalog("local");
    let (east, now) = (cluster("east"), t0());
    c.restore(
        state(
            "east",
            1,
            4,
            vec![export("shop/api", &[("10.1.0.1", true)])],
        ),
        now,
    )
    .unwrap();
    let view = c.view(now);
    assert_eq!((view[0].clusters.len(), view[0].unavailable.len()), (0, 1));
    assert!(!view[0].vips.is_empty(), "the VIP is reserved for it");
    let err = c.restore(state("local", 1, 1, vec![]), now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "restored origin = local: is the local cluster"
    );
    c.observe_alive(&east, now + secs(1.0));
    assert!(c.offered(&east, now + secs(1.0)));
    // The restored watermark is what it is: an older snapshot is stale.
    let old = SyncMessage::Snapshot(state("east", 1, 3, vec![]));
    assert_eq!(
        c.apply(&east, old, now + secs(1.0)),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
}
