//! A gateway killed with SIGKILL and started again reconnects on its own, quickly, even though
//! the dead process left its admin and UAPI socket files behind. Needs root.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{path_exists, peer, pod, reply_times, uapi_socket};
use isthmus_lab::Signal;

/// Keepalive (25 s in the lab) is not needed here: the restarted gateway initiates a handshake
/// to every peer with an endpoint at start. 15 s is keepalive-timeout plus rekey-timeout, the
/// protocol's own bound for a stale session to be replaced.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

#[test]
fn sigkilled_gateway_restarts_and_recovers() {
    let lab = common::lab_with_gateways(2);
    let pod1 = lab.pod_ns(1);
    common::wait_reachable(&lab, &pod1, pod(2), common::HANDSHAKE_DEADLINE);
    common::wait_reachable(&lab, &lab.pod_ns(2), pod(1), common::HANDSHAKE_DEADLINE);
    let handshakes_before = common::counter(&peer(&lab, 1, "c2"), "handshakes");

    // Continuous probes, one every 100 ms, each reply timestamped.
    let mut flow = Command::new("ping");
    flow.args(["-n", "-D", "-i", "0.1", "-W", "1"])
        .arg(pod(2).to_string());
    let mut flow = lab.spawn_named(&pod1, "flow", &flow).expect("ping flow");
    std::thread::sleep(Duration::from_secs(1));

    let killed_at = SystemTime::now();
    let status = lab
        .stop_gateway(2, Signal::Kill)
        .expect("SIGKILL gateway 2");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "gateway 2 did not die of SIGKILL: {status}"
    );
    // Precondition of the stale-socket check: SIGKILL gave it no chance to clean up.
    let admin = lab.admin_socket(2);
    let uapi = uapi_socket(&lab, 2);
    assert!(
        path_exists(&admin),
        "no stale admin socket {} after SIGKILL",
        admin.display()
    );
    assert!(
        path_exists(&uapi),
        "no stale UAPI socket {} after SIGKILL",
        uapi.display()
    );
    std::thread::sleep(Duration::from_secs(2));

    // Restart by hand: `Lab::start_gateway` would remove the stale socket for us.
    let restarted_at = SystemTime::now();
    let restarted = Instant::now();
    let gateway = common::spawn_gateway_raw(&lab, 2, Duration::from_secs(10));
    let admin_up = restarted.elapsed();
    common::wait_reachable(&lab, &pod1, pod(2), RECOVERY_BOUND + Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));

    flow.signal(Signal::Int).expect("stopping the flow");
    assert!(flow
        .wait_timeout(Duration::from_secs(5))
        .expect("waiting for ping")
        .is_some());
    let out = flow.stdout();
    let replies = reply_times(&out);
    let (killed, restart) = (unix(killed_at), unix(restarted_at));
    assert!(
        replies.iter().any(|&t| t < killed),
        "no replies before the kill: the flow never worked\n{out}"
    );
    // The outage is real: nothing answered while gateway 2 was dead.
    let during: Vec<f64> = replies
        .iter()
        .copied()
        .filter(|&t| t > killed + 0.5 && t < restart)
        .collect();
    assert!(
        during.is_empty(),
        "replies while gateway 2 was dead: {during:?}"
    );
    let first = replies
        .iter()
        .copied()
        .find(|&t| t > restart)
        .unwrap_or_else(|| panic!("no reply after the restart\n{out}"));
    let recovery = Duration::from_secs_f64(first - restart);
    eprintln!(
        "recovery after SIGKILL restart: {recovery:?} (admin socket answering after {admin_up:?})"
    );
    assert!(
        recovery < RECOVERY_BOUND,
        "traffic came back {recovery:?} after the restart, bound {RECOVERY_BOUND:?}"
    );

    // The new process replaced both stale sockets and serves them.
    let stderr = gateway.stderr();
    assert!(
        !stderr.contains("UAPI socket not available"),
        "UAPI socket not taken over after SIGKILL:\n{stderr}"
    );
    let tun = lab.id().tun_name(2);
    let wg = lab
        .run(&lab.gw_ns(2), &["wg", "show", &tun, "public-key"])
        .unwrap_or_else(|e| panic!("wg show on the restarted gateway: {e:#}"));
    assert_eq!(wg.trim(), lab.public_key(2), "wg show {tun} public-key");
    let status = common::status(&lab, 2);
    assert_eq!(status["pid"].as_u64(), Some(u64::from(gateway.pid())));
    let c2 = peer(&lab, 1, "c2");
    assert!(
        common::counter(&c2, "handshakes") > handshakes_before,
        "gateway 1 shows no new handshake with the restarted gateway: {c2}"
    );
    assert_eq!(c2["status"], "connected");
    common::assert_pings(&lab, &lab.pod_ns(2), pod(1), 3);
}
