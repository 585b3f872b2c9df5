//! Signals: SIGTERM and SIGINT stop a gateway cleanly (exit 0, no TUN, route, UDP socket or
//! socket file left behind); SIGHUP reloads peers without disturbing sessions of unchanged
//! peers, and a broken file changes nothing. Needs root.

mod common;

use std::time::Duration;

use common::{counter, path_exists, peer, pod, routes_via, uapi_socket};
use isthmus_lab::{netns, plan, wait_for, Lab, Signal};

/// Everything gateway `i` leaves in the system, each line a finding; empty when it is clean.
fn leftovers(lab: &Lab, i: usize) -> Vec<String> {
    let ns = lab.gw_ns(i);
    let tun = lab.id().tun_name(i);
    let mut found = Vec::new();
    let links = netns::ip(&ns, &["-o", "link", "show"]).expect("ip link");
    for line in links.lines().filter(|l| l.contains(&format!(" {tun}:"))) {
        found.push(format!("interface: {line}"));
    }
    let cfg = lab.gateway_config(i);
    let prefixes: Vec<String> = cfg
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.iter().cloned())
        .collect();
    for line in common::routes(&ns).lines() {
        let dest = line.split_whitespace().next().unwrap_or_default();
        let host = format!("{dest}/32");
        if line.contains(&tun) || prefixes.iter().any(|p| *p == dest || *p == host) {
            found.push(format!("route: {line}"));
        }
    }
    let udp = netns::run(&ns, &["ss", "-uanpH"]).expect("ss");
    for line in udp
        .lines()
        .filter(|l| l.contains(&format!(":{} ", plan::LISTEN_PORT)))
    {
        found.push(format!("udp socket: {line}"));
    }
    for path in [lab.admin_socket(i), uapi_socket(lab, i)] {
        if path_exists(&path) {
            found.push(format!("file: {}", path.display()));
        }
    }
    found
}

fn stop_leaves_nothing_behind(sig: Signal) {
    let lab = common::lab_with_gateways(2);
    common::wait_reachable(&lab, &lab.pod_ns(1), pod(2), common::HANDSHAKE_DEADLINE);
    // Positive control: while running, every kind of leftover is there to be found.
    let running = leftovers(&lab, 1);
    for kind in ["interface:", "route:", "udp socket:", "file:"] {
        assert!(
            running.iter().any(|l| l.starts_with(kind)),
            "the running gateway shows no {kind} (so the check below could not see one): \
             {running:#?}"
        );
    }
    assert_eq!(
        running.iter().filter(|l| l.starts_with("file:")).count(),
        2,
        "{running:#?}"
    );

    let status = lab.stop_gateway(1, sig).expect("stopping gateway 1");
    assert_eq!(
        status.code(),
        Some(0),
        "gateway 1 after SIG{}: {status}\n{}",
        sig.name(),
        lab.gateway_stderr(1)
    );
    let left = leftovers(&lab, 1);
    assert!(
        left.is_empty(),
        "gateway 1 left behind after SIG{}: {left:#?}\n{}",
        sig.name(),
        lab.gateway_stderr(1)
    );
    // The other gateway is untouched by this one's exit.
    assert!(lab.gateway_running(2));
    assert!(leftovers(&lab, 2).len() >= 4);
}

#[test]
fn sigterm_leaves_nothing_behind() {
    stop_leaves_nothing_behind(Signal::Term);
}

#[test]
fn sigint_leaves_nothing_behind() {
    stop_leaves_nothing_behind(Signal::Int);
}

/// `handshakes` and `last_handshake_unix_ms` of gateway 1's peer `name`.
fn session(lab: &Lab, name: &str) -> (u64, u64) {
    let p = peer(lab, 1, name);
    (
        counter(&p, "handshakes"),
        counter(&p, "last_handshake_unix_ms"),
    )
}

#[test]
fn sighup_reload_keeps_sessions_and_refuses_a_broken_file() {
    const EXTRA: &str = "10.33.0.0/16";
    let lab = common::lab_with_gateways(3);
    let (gw1, pod1) = (lab.gw_ns(1), lab.pod_ns(1));
    let tun = lab.id().tun_name(1);
    for j in [2, 3] {
        common::wait_reachable(&lab, &pod1, pod(j), common::HANDSHAKE_DEADLINE);
        common::wait_reachable(&lab, &lab.pod_ns(j), pod(1), common::HANDSHAKE_DEADLINE);
    }
    common::wait_quiet(&lab, &[1], Duration::from_secs(1), Duration::from_secs(15));
    let (c2, c3) = (session(&lab, "c2"), session(&lab, "c3"));
    let routes_before = routes_via(&gw1, &tun);
    assert!(
        !routes_before.iter().any(|r| r.starts_with(EXTRA)),
        "{routes_before:?}"
    );

    // Reload with one more prefix for c3 and nothing else changed.
    let mut cfg = lab.gateway_config(1);
    cfg.peer_mut("c3")
        .expect("peer c3")
        .allowed_ips
        .push(EXTRA.to_owned());
    lab.write_gateway_config(1, &cfg).expect("writing config");
    lab.signal_gateway(1, Signal::Hup).expect("SIGHUP");
    assert!(
        wait_for(
            || routes_via(&gw1, &tun).iter().any(|r| r.starts_with(EXTRA)),
            Duration::from_secs(5)
        ),
        "no route for {EXTRA} via {tun} after reload: {:?}\n{}",
        routes_via(&gw1, &tun),
        lab.gateway_stderr(1)
    );
    for j in [2, 3] {
        common::assert_pings(&lab, &pod1, pod(j), 3);
        common::assert_pings(&lab, &lab.pod_ns(j), pod(1), 3);
    }
    assert_eq!(
        session(&lab, "c2"),
        c2,
        "reload renewed the session with the unchanged peer c2 (handshakes, last handshake)"
    );
    assert_eq!(
        session(&lab, "c3"),
        c3,
        "reload renewed the session with c3, whose keys did not change"
    );
    let p3 = peer(&lab, 1, "c3");
    assert!(
        p3["allowed_ips"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == EXTRA)),
        "tunctl does not show {EXTRA} for c3: {p3}"
    );
    // The gateway's own crypto-key routing follows the file too, not just the kernel route: a
    // packet to the new prefix goes into the tunnel to c3.
    let tx_before = counter(&p3, "tx_bytes");
    let _ = common::ping_sized(&gw1, None, "10.33.1.1".parse().unwrap(), 1, 56);
    let tx_after = counter(&peer(&lab, 1, "c3"), "tx_bytes");
    assert_eq!(
        tx_after - tx_before,
        common::icmp_packet_len(56),
        "a packet to {EXTRA} did not go to c3"
    );
    let routes_reloaded = routes_via(&gw1, &tun);

    // A broken file is refused whole: everything keeps running as it was.
    let good = std::fs::read_to_string(lab.config_path(1)).expect("config");
    let broken = good.replacen(EXTRA, "10.33.0.0/33", 1);
    assert_ne!(broken, good);
    std::fs::write(lab.config_path(1), &broken).expect("writing broken config");
    let log_before = lab.gateway_stderr(1).len();
    lab.signal_gateway(1, Signal::Hup).expect("SIGHUP");
    let path = lab.config_path(1).display().to_string();
    let file_name = lab
        .config_path(1)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let logged = wait_for(
        || {
            let log = lab.gateway_stderr(1);
            log[log_before..]
                .lines()
                .any(|l| l.contains("ERROR") && (l.contains(&path) || l.contains(&file_name)))
        },
        Duration::from_secs(5),
    );
    let new_log = lab.gateway_stderr(1)[log_before..].to_owned();
    assert!(
        logged,
        "no error naming {path} logged after reloading a broken file:\n{new_log}"
    );
    for line in new_log.lines().filter(|l| l.contains("ERROR")) {
        eprintln!("broken reload logged: {line}");
    }
    assert!(
        new_log.contains("10.33.0.0/33"),
        "the reload error does not quote the bad value:\n{new_log}"
    );
    assert!(lab.gateway_running(1), "gateway 1 died on a broken reload");
    // `tunctl reload` refuses it the same way, and tells the operator why.
    let refused = lab.tunctl_text(1, &["reload"]);
    let message = format!(
        "{:#}",
        refused.expect_err("tunctl reload of a broken file succeeded")
    );
    assert!(
        message.contains("reload refused") && message.contains("10.33.0.0/33"),
        "tunctl reload does not say why the file was refused: {message}"
    );
    assert_eq!(routes_via(&gw1, &tun), routes_reloaded);
    for j in [2, 3] {
        common::assert_pings(&lab, &pod1, pod(j), 3);
    }
    assert_eq!(session(&lab, "c2"), c2);
    assert_eq!(session(&lab, "c3"), c3);
    let p3 = peer(&lab, 1, "c3");
    assert!(
        p3["allowed_ips"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == EXTRA)),
        "the broken reload changed c3's prefixes: {p3}"
    );

    // Fixed file, `tunctl reload`: it reports what it applied (nothing changed: both kept).
    std::fs::write(lab.config_path(1), &good).expect("restoring config");
    let report = lab
        .tunctl(1, &["-o", "json", "reload"])
        .expect("tunctl reload");
    assert_eq!(report["kept"], 2, "{report}");
    assert_eq!(report["added"], 0, "{report}");
    assert_eq!(report["rotated"], false, "{report}");
    assert_eq!(session(&lab, "c2"), c2);
}
