//! Failover on a virtual clock: down detection, flap damping, record expiry.

mod common;

use std::time::{Duration, Instant};

use common::*;
use isthmus_catalog::{
    Applied, ClusterName, Event, HealthConfig, Liveness, MergedCatalog, SyncMessage, Unchanged,
};

const NS: Duration = Duration::from_nanos(1);

/// A catalog that has heard `east` (exporting shop/api) at `t`.
fn with_east(t: Instant) -> (MergedCatalog, ClusterName) {
    let mut c = catalog("local");
    let east = cluster("east");
    let snapshot = state(
        "east",
        1,
        1,
        vec![export("shop/api", &[("10.1.0.1", true)])],
    );
    c.apply(&east, SyncMessage::Snapshot(snapshot), t).unwrap();
    assert_eq!(c.handle_timeout(t), vec![Event::ClusterUp(east.clone())]);
    (c, east)
}

fn healthy(c: &MergedCatalog, now: Instant) -> usize {
    c.view(now).iter().map(|s| s.endpoints_healthy).sum()
}

/// Heartbeats from `cluster` every second in `[from, to)`.
fn heartbeats(
    c: &mut MergedCatalog,
    cluster: &ClusterName,
    from: Instant,
    to: Instant,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut t = from;
    while t < to {
        c.observe_alive(cluster, t);
        events.extend(c.handle_timeout(t));
        t += secs(1.0);
    }
    events
}

#[test]
fn down_exactly_at_down_after() {
    let t = t0();
    let (mut c, east) = with_east(t);
    let down_at = t + secs(3.0);
    assert_eq!(c.poll_timeout(), Some(down_at));
    assert_eq!(c.handle_timeout(down_at - NS), vec![]);
    assert!(c.offered(&east, down_at - NS));
    assert_eq!(healthy(&c, down_at - NS), 1);
    // Withdrawn at exactly down_after, even before the timer runs.
    assert!(!c.offered(&east, down_at));
    assert_eq!(healthy(&c, down_at), 0);
    assert!(c.lookup(&svc("shop/api"), down_at).unwrap().vips.is_empty());
    assert_eq!(
        c.handle_timeout(down_at),
        vec![Event::ClusterDown(east.clone())]
    );
    assert_eq!(
        c.health(&east, down_at).unwrap().liveness,
        Liveness::Down { since: down_at }
    );
    // The records stay until they expire.
    assert_eq!(c.view(down_at)[0].endpoints_total, 1);
    assert_eq!(c.poll_timeout(), Some(down_at + secs(300.0)));
}

#[test]
fn heartbeats_keep_a_cluster_up() {
    let t = t0();
    let (mut c, east) = with_east(t);
    let events = heartbeats(&mut c, &east, t + secs(1.0), t + secs(600.0));
    assert_eq!(events, vec![]);
    assert!(c.offered(&east, t + secs(600.0)));
}

#[test]
fn a_late_timer_still_reports_transitions_in_order() {
    let t = t0();
    let (mut c, east) = with_east(t);
    // The daemon slept through the fall; the cluster is heard again at +5 s.
    c.observe_alive(&east, t + secs(5.0));
    let events = c.handle_timeout(t + secs(5.0));
    assert_eq!(events, vec![Event::ClusterDown(east.clone())]);
    assert_eq!(
        c.health(&east, t + secs(5.0)).unwrap().liveness,
        Liveness::HoldDown {
            until: t + secs(6.0)
        }
    );
}

/// Takes `east` down (silent from `t`) and brings it back at `t + 5 s`, heartbeating from then
/// on; returns when it is offered again and the hold-down it sat out.
fn flap(c: &mut MergedCatalog, east: &ClusterName, t: Instant) -> (Instant, Duration) {
    let down_at = t + secs(3.0);
    assert_eq!(
        c.handle_timeout(down_at),
        vec![Event::ClusterDown(east.clone())]
    );
    let back = t + secs(5.0);
    c.observe_alive(east, back);
    let until = match c.health(east, back).unwrap().liveness {
        Liveness::HoldDown { until } => until,
        other => panic!("{other:?}"),
    };
    assert!(!c.offered(east, back));
    // Heartbeats every 0.5 s through the hold-down.
    let mut now = back;
    loop {
        let next = now + secs(0.5);
        let deadline = c.poll_timeout().unwrap();
        if deadline <= next {
            assert_eq!(
                deadline, until,
                "the next timer is the end of the hold-down"
            );
            assert!(!c.offered(east, until - NS));
            assert_eq!(
                c.handle_timeout(until),
                vec![Event::ClusterUp(east.clone())]
            );
            assert!(c.offered(east, until));
            return (until, until - back);
        }
        now = next;
        c.observe_alive(east, now);
        assert_eq!(c.handle_timeout(now), vec![]);
    }
}

#[test]
fn hold_down_doubles_with_each_flap_up_to_the_cap() {
    let t = t0();
    let (mut c, east) = with_east(t);
    let mut last = t;
    let mut holds = Vec::new();
    for _ in 0..8 {
        let (up, hold) = flap(&mut c, &east, last);
        holds.push(hold.as_secs());
        last = up;
    }
    assert_eq!(holds, vec![1, 2, 4, 8, 16, 32, 60, 60]);
}

#[test]
fn flaps_are_forgotten_one_per_quiet_minute() {
    let t = t0();
    let (mut c, east) = with_east(t);
    let (up1, _) = flap(&mut c, &east, t);
    let (up2, _) = flap(&mut c, &east, up1);
    let (up3, hold) = flap(&mut c, &east, up2);
    assert_eq!(hold.as_secs(), 4);
    assert_eq!(c.health(&east, up3).unwrap().flaps, 3);
    // Stable for a while: the third flap was at up3 - hold - 2 s.
    let last_flap = up3 - hold - secs(2.0);
    let quiet_until = last_flap + secs(125.0);
    heartbeats(&mut c, &east, up3, quiet_until);
    assert_eq!(c.health(&east, quiet_until).unwrap().flaps, 1);
    // Silent from the last heartbeat: one remembered flap + this one = 2 → 2 s hold.
    let last_beat = quiet_until - secs(1.0);
    let (_, hold) = flap(&mut c, &east, last_beat);
    assert_eq!(hold.as_secs(), 2);
}

#[test]
fn silence_during_hold_down_is_another_flap() {
    // A 10 s hold-down, so the cluster can fall silent again before it ends.
    let cfg = HealthConfig {
        hold_down_base: secs(10.0),
        ..HealthConfig::default()
    };
    let mut c = catalog_with("local", cfg);
    let (east, t) = (cluster("east"), t0());
    c.observe_alive(&east, t);
    c.handle_timeout(t + secs(3.0));
    let back = t + secs(5.0);
    c.observe_alive(&east, back);
    assert_eq!(
        c.health(&east, back).unwrap().liveness,
        Liveness::HoldDown {
            until: back + secs(10.0)
        }
    );
    assert_eq!(
        c.handle_timeout(back + secs(3.0)),
        vec![],
        "never offered: nothing to withdraw"
    );
    assert_eq!(c.health(&east, back + secs(3.0)).unwrap().flaps, 2);
    c.observe_alive(&east, back + secs(4.0));
    assert_eq!(
        c.health(&east, back + secs(4.0)).unwrap().liveness,
        Liveness::HoldDown {
            until: back + secs(24.0)
        }
    );
}

#[test]
fn records_expire_after_record_ttl_down() {
    let t = t0();
    let (mut c, east) = with_east(t);
    let vip = c.lookup(&svc("shop/api"), t).unwrap().vips;
    let expire_at = t + secs(3.0) + secs(300.0);
    c.handle_timeout(t + secs(3.0));
    assert_eq!(c.poll_timeout(), Some(expire_at));
    assert_eq!(c.handle_timeout(expire_at - NS), vec![]);
    assert_eq!(c.view(expire_at - NS).len(), 1);
    assert_eq!(
        c.handle_timeout(expire_at),
        vec![Event::Expired {
            cluster: east.clone(),
            services: vec![svc("shop/api")]
        }]
    );
    assert!(c.view(expire_at).is_empty());
    assert!(c.remote(&east).is_none());
    assert!(c.health(&east, expire_at).is_none());
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.vips().reserved(), 1, "the VIP stays reserved");

    // An older snapshot cannot bring back older records; the same or a newer one can.
    let later = expire_at + secs(1.0);
    let stale = SyncMessage::Snapshot(state("east", 1, 0, vec![export("shop/old", &[])]));
    assert_eq!(
        c.apply(&east, stale, later),
        Ok(Applied::Unchanged(Unchanged::Stale))
    );
    let same = SyncMessage::Snapshot(state(
        "east",
        1,
        1,
        vec![export("shop/api", &[("10.1.0.1", true)])],
    ));
    assert!(matches!(
        c.apply(&east, same, later),
        Ok(Applied::Updated { .. })
    ));
    // Heard again after expiry: a new cluster, offered at once, and its service gets its VIP back.
    assert!(c.offered(&east, later));
    assert_eq!(c.lookup(&svc("shop/api"), later).unwrap().vips, vip);
}

#[test]
fn a_cluster_that_never_exported_expires_too() {
    let t = t0();
    let mut c = catalog("local");
    let east = cluster("east");
    c.observe_alive(&east, t);
    assert_eq!(c.poll_timeout(), Some(t), "the ClusterUp event is waiting");
    assert_eq!(c.handle_timeout(t), vec![Event::ClusterUp(east.clone())]);
    let end = t + secs(303.0);
    assert_eq!(c.handle_timeout(end).len(), 2);
    assert!(c.health(&east, end).is_none());
}

#[test]
fn config_is_validated() {
    let bad = |f: fn(&mut HealthConfig)| {
        let mut cfg = HealthConfig::default();
        f(&mut cfg);
        cfg.validate().unwrap_err().to_string()
    };
    assert_eq!(
        bad(|c| c.down_after = Duration::ZERO),
        "health (ms): down_after = 0: must be more than 0"
    );
    assert_eq!(
        bad(|c| c.flap_decay = Duration::ZERO),
        "health (ms): flap_decay = 0: must be more than 0"
    );
    assert_eq!(
        bad(|c| c.hold_down_max = secs(0.5)),
        "health (ms): hold_down_max = 500: must be at least hold_down_base"
    );
    HealthConfig::default().validate().unwrap();
}

#[test]
fn a_shorter_down_after_is_honoured() {
    let cfg = HealthConfig {
        down_after: Duration::from_millis(300),
        ..HealthConfig::default()
    };
    let mut c = catalog_with("local", cfg);
    let (east, t) = (cluster("east"), t0());
    c.observe_alive(&east, t);
    c.handle_timeout(t);
    assert_eq!(c.poll_timeout(), Some(t + Duration::from_millis(300)));
}

#[test]
fn a_stall_of_this_gateway_is_not_counted_as_the_peers_silence() {
    let t = t0();
    // Heard at t; this process then does not run for 4 s (the machine was busy) and wakes at
    // t + 4.5 s, with the peer's heartbeats still unread in the socket.
    let (mut c, east) = with_east(t);
    let woke = t + secs(4.5);
    c.credit_stall(secs(4.0), woke);
    assert_eq!(c.handle_timeout(woke), vec![]);
    assert!(c.offered(&east, woke));
    // Its heartbeats are read now: still up, no flap, no resync.
    c.observe_alive(&east, woke);
    assert_eq!(c.handle_timeout(woke + secs(2.9)), vec![]);
    // Without the credit, the same wake-up marks it down.
    let (mut d, east) = with_east(t);
    assert_eq!(
        d.handle_timeout(woke),
        vec![Event::ClusterDown(east.clone())]
    );
    // A peer that really went silent is still marked down, only later by the stall.
    let (mut e, east) = with_east(t);
    e.credit_stall(secs(1.0), t + secs(2.5));
    assert_eq!(e.handle_timeout(t + secs(3.5)), vec![]);
    assert_eq!(
        e.handle_timeout(t + secs(4.0)),
        vec![Event::ClusterDown(east.clone())]
    );
    // The credit never moves the last sign of life past now, nor revives a cluster down.
    let (mut f, east) = with_east(t);
    assert_eq!(
        f.handle_timeout(t + secs(3.0)),
        vec![Event::ClusterDown(east.clone())]
    );
    f.credit_stall(secs(60.0), t + secs(3.5));
    assert!(!f.offered(&east, t + secs(3.5)));
}
