//! Endpoint roaming: when a gateway's WAN address or UDP port changes, its peer learns the new
//! endpoint from the first authenticated packet and sends there from then on. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{peer, pod};
use isthmus_lab::{netns, plan, wait_for, Signal};

/// A free address on the lab's WAN (gateways use 10.255.0.11 and up).
const ROAMED: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 99);
const NEW_PORT: u16 = 51999;

fn endpoint(lab: &isthmus_lab::Lab, i: usize, name: &str) -> String {
    peer(lab, i, name)["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn peer_follows_a_new_wan_address() {
    let lab = common::lab_with_gateways(2);
    let (pod1, pod2) = (lab.pod_ns(1), lab.pod_ns(2));
    common::wait_reachable(&lab, &pod1, pod(2), common::HANDSHAKE_DEADLINE);
    common::wait_reachable(&lab, &pod2, pod(1), common::HANDSHAKE_DEADLINE);
    // Traffic flowing both ways before the move.
    common::assert_pings(&lab, &pod1, pod(2), 3);
    common::assert_pings(&lab, &pod2, pod(1), 3);
    let old = format!("{}:{}", plan::wan_addr(2), plan::LISTEN_PORT);
    assert_eq!(endpoint(&lab, 1, "c2"), old);

    // A continuous flow from pod 1 to pod 2 through the move, timestamped per reply.
    let mut flow = Command::new("ping");
    flow.args(["-n", "-D", "-i", "0.1", "-W", "1"])
        .arg(pod(2).to_string());
    let mut flow = lab.spawn_named(&pod1, "flow", &flow).expect("ping flow");
    std::thread::sleep(Duration::from_millis(500));

    lab.set_wan_addr(2, ROAMED).expect("moving gateway 2");

    // Negative control: until gateway 2 speaks from its new address, gateway 1 keeps sending
    // to the old one, where nobody listens any more.
    let received = lab.ping(&pod1, pod(2), 2).expect("ping pod 1 -> pod 2");
    assert_eq!(
        received, 0,
        "pod 1 reached pod 2 before gateway 2 sent anything from its new address"
    );
    assert_eq!(endpoint(&lab, 1, "c2"), old);

    // Gateway 2 sends from its new address; gateway 1 roams to it and answers there.
    common::wait_reachable(&lab, &pod2, pod(1), Duration::from_secs(5));
    let new = format!("{ROAMED}:{}", plan::LISTEN_PORT);
    assert_eq!(
        endpoint(&lab, 1, "c2"),
        new,
        "gateway 1's endpoint for c2 after roaming"
    );
    let roamed_at = unix_now();
    common::assert_pings(&lab, &pod2, pod(1), 3);
    common::assert_pings(&lab, &pod1, pod(2), 3);
    assert_eq!(peer(&lab, 1, "c2")["status"], "connected");

    // The flow that was running all along resumed after the roam.
    std::thread::sleep(Duration::from_millis(500));
    flow.signal(Signal::Int).expect("stopping the flow");
    assert!(flow
        .wait_timeout(Duration::from_secs(5))
        .expect("waiting for ping")
        .is_some());
    let replies = common::reply_times(&flow.stdout());
    assert!(
        replies.iter().any(|&t| t > roamed_at),
        "the pod 1 -> pod 2 flow got no reply after roaming:\n{}",
        flow.stdout()
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

#[test]
fn peer_follows_a_restart_on_another_port() {
    let lab = common::lab_with_gateways(2);
    let (pod1, pod2) = (lab.pod_ns(1), lab.pod_ns(2));
    common::wait_reachable(&lab, &pod1, pod(2), common::HANDSHAKE_DEADLINE);
    common::wait_reachable(&lab, &pod2, pod(1), common::HANDSHAKE_DEADLINE);
    assert_eq!(
        endpoint(&lab, 1, "c2"),
        format!("{}:{}", plan::wan_addr(2), plan::LISTEN_PORT)
    );

    let status = lab
        .stop_gateway(2, Signal::Term)
        .expect("stopping gateway 2");
    assert!(status.success(), "gateway 2 exited with {status}");
    let mut cfg = lab.gateway_config(2);
    cfg.interface.listen_port = NEW_PORT;
    lab.write_gateway_config(2, &cfg).expect("writing config");
    lab.start_gateway(2).expect("restarting gateway 2");
    let sockets = netns::run(&lab.gw_ns(2), &["ss", "-uanH"]).expect("ss");
    assert!(
        sockets.contains(&format!(":{NEW_PORT} ")),
        "gateway 2 is not listening on {NEW_PORT}:\n{sockets}"
    );

    // Gateway 1's config still names port 51820 for c2; only roaming can find 51999.
    common::wait_reachable(&lab, &pod2, pod(1), Duration::from_secs(10));
    let new = format!("{}:{NEW_PORT}", plan::wan_addr(2));
    assert!(
        wait_for(|| endpoint(&lab, 1, "c2") == new, Duration::from_secs(2)),
        "gateway 1's endpoint for c2 is {}, expected {new}",
        endpoint(&lab, 1, "c2")
    );
    common::assert_pings(&lab, &pod1, pod(2), 3);
    common::assert_pings(&lab, &pod2, pod(1), 3);
}
