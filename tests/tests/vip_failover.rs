//! Failover through a clusterset VIP (issue 9): with `[control] down_after = 0.6` (the
//! documented fast-failover setting), c2's gateway is SIGKILLed while a client in c1 opens a
//! connection to the VIP every 50 ms. Within the stated time every new connection reaches c3,
//! and none fails after that; the time is measured and printed. c2 restarted gets connections
//! again. Its own lab and binary, so nothing else loads the machine while it measures. Needs
//! root.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_lab::vip::{node_agent, programmed_vip, vip_lab, VipLabOptions, VIP_PORT};
use isthmus_lab::{Lab, Probe, Signal};

/// `[control] down_after` of this lab, seconds: heartbeats every 200 ms.
const DOWN_AFTER: f64 = 0.6;
/// The stated failover time: from the kill to the first connection after which every one
/// reaches a live cluster.
const STATED: Duration = Duration::from_secs(1);
const PROBE_FOR: Duration = Duration::from_secs(7);
const KILL_AFTER: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_millis(50);

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

#[test]
fn a_killed_cluster_stops_getting_connections_within_a_second_and_gets_them_back() {
    let lab = vip_lab(&VipLabOptions {
        down_after: Some(DOWN_AFTER),
        all_agents: false,
        ..VipLabOptions::default()
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checks(&lab)));
    if let Err(e) = result {
        if let Ok(t) = lab.agent_status_text(&node_agent(1)) {
            eprintln!("--- agent node1\n{t}");
        }
        lab.dump_gateway_logs();
        lab.dump_agent_logs();
        std::panic::resume_unwind(e);
    }
}

fn checks(lab: &Lab) {
    let client = lab.pod_ns(1);
    let agent = node_agent(1);
    let vip = programmed_vip(lab, &agent, "rr").expect("demo/rr programmed");
    let target = SocketAddr::from((vip, VIP_PORT));
    let warm = lab.probe(&client, &Probe::tcp(target).count(20)).unwrap();
    assert_eq!(warm.summary.ok, 20);
    assert!(
        warm.count("c2") > 0 && warm.count("c3") > 0,
        "{:?}",
        warm.summary.by_name
    );

    lab.start_probe(
        &client,
        "failover",
        &Probe::tcp(target)
            .duration(PROBE_FOR)
            .interval(INTERVAL)
            .timeout(Duration::from_millis(1000)),
    )
    .unwrap();
    // Connections before the kill, to see them spread over both clusters.
    std::thread::sleep(KILL_AFTER);
    let killed_at = SystemTime::now();
    lab.signal_gateway(2, Signal::Kill).unwrap();
    let report = lab
        .wait_probe("failover", PROBE_FOR + Duration::from_secs(10))
        .expect("the failover probe");

    let kill_ms = unix_ms(killed_at).saturating_sub(report.summary.start_unix_ms);
    let before: Vec<_> = report
        .attempts
        .iter()
        .filter(|a| a.start_ms < kill_ms)
        .collect();
    assert!(
        before.iter().filter(|a| a.ok).count() >= 20,
        "too few connections before the kill: {}",
        before.len()
    );
    // The last attempt that failed or reached c2 after the kill; every later one reached c3.
    let after: Vec<_> = report
        .attempts
        .iter()
        .filter(|a| a.start_ms >= kill_ms)
        .collect();
    let last_bad = after.iter().rposition(|a| !a.ok || a.name() != Some("c3"));
    let settled = last_bad.map_or(0, |k| k + 1);
    assert!(
        settled < after.len(),
        "no connection after the kill reached c3: {:?}",
        after.iter().take(5).collect::<Vec<_>>()
    );
    let failover = Duration::from_millis(after[settled].start_ms.saturating_sub(kill_ms));
    let failed = after[..settled].iter().filter(|a| !a.ok).count();
    let to_c2 = after[..settled]
        .iter()
        .filter(|a| a.name() == Some("c2"))
        .count();
    eprintln!(
        "failover: every connection opened {} ms after c2's gateway was killed reached c3 \
         (stated: {} ms, down_after {DOWN_AFTER} s); in between {failed} failed and {to_c2} \
         reached c2 (still up for a moment); {} connections after that, all to c3",
        failover.as_millis(),
        STATED.as_millis(),
        after.len() - settled
    );
    assert!(
        failover <= STATED,
        "failover took {} ms, more than the stated {} ms",
        failover.as_millis(),
        STATED.as_millis()
    );
    assert!(
        after.len() - settled >= 40,
        "only {} connections after the failover: the run proved too little",
        after.len() - settled
    );
    let s = lab.agent_status(&agent).unwrap();
    let rr = s
        .services
        .iter()
        .find(|x| x.name == "rr")
        .expect("demo/rr still programmed");
    assert!(
        rr.backends.iter().all(|b| b.cluster == "c3"),
        "c2 still programmed: {:?}",
        rr.backends
    );

    // c2 back: after its hold-down, new connections reach it again.
    lab.start_gateway(2).expect("restarting gateway 2");
    let (ok, last) = lab.wait_agent(&agent, Duration::from_secs(30), |s| {
        s.services
            .iter()
            .any(|x| x.name == "rr" && x.backends.iter().any(|b| b.cluster == "c2"))
    });
    assert!(ok, "c2 did not come back to demo/rr: {last:?}");
    let back = lab.probe(&client, &Probe::tcp(target).count(40)).unwrap();
    assert_eq!(
        back.summary.ok,
        40,
        "{:?}",
        back.failures().take(3).collect::<Vec<_>>()
    );
    assert!(
        back.count("c2") >= 10 && back.count("c3") >= 10,
        "after c2's return: {:?}",
        back.summary.by_name
    );
}
