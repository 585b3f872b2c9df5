//! Crypto-key routing, inbound: a packet that arrives through a peer's session but carries an
//! inner source outside that peer's allowed prefixes is dropped and counted, and never reaches
//! the cluster behind the receiving gateway. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{counter, counters, dropped, icmp_in_echos, icmp_packet_len, peer, pod};
use isthmus_lab::{netns, plan};

/// Not in any peer's allowed prefixes: 10.99.0.0 is outside 10.2.0.0/16 and 100.96.0.2/32.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const COUNT: u32 = 3;
const PAYLOAD: u32 = 56;

#[test]
fn inner_source_outside_allowed_ips_is_dropped_and_counted() {
    let lab = common::lab_with_gateways(2);
    let (gw2, pod1) = (lab.gw_ns(2), lab.pod_ns(1));
    common::wait_reachable(&lab, &lab.pod_ns(2), pod(1), common::HANDSHAKE_DEADLINE);
    common::wait_reachable(&lab, &pod1, pod(2), common::HANDSHAKE_DEADLINE);
    common::wait_quiet(
        &lab,
        &[1, 2],
        Duration::from_secs(1),
        Duration::from_secs(15),
    );

    netns::add_addr(&gw2, "lo", &format!("{SPOOFED}/32")).expect("extra address on gw2's lo");
    let gw1_before = peer(&lab, 1, "c2");
    let gw2_before = peer(&lab, 2, "c1");
    let echos_before = icmp_in_echos(&pod1);

    // gw2 routes 10.1.0.0/16 into its tunnel to c1, so these are encrypted to gw1 with inner
    // source 10.99.0.1.
    let received = common::ping_sized(&gw2, Some(SPOOFED), pod(1), COUNT, PAYLOAD);
    assert_eq!(received, 0, "pings from {SPOOFED} were answered");
    // Let the last one land before reading counters.
    std::thread::sleep(Duration::from_millis(300));

    let gw1_after = peer(&lab, 1, "c2");
    let gw2_after = peer(&lab, 2, "c1");
    let echos_after = icmp_in_echos(&pod1);
    let delta =
        |a: &serde_json::Value, b: &serde_json::Value, f: &str| counter(a, f) - counter(b, f);
    let bytes = u64::from(COUNT) * icmp_packet_len(PAYLOAD);

    // The packets did go into the tunnel on gw2 and arrived at gw1: the drop is gw1's doing.
    assert_eq!(
        delta(&gw2_after, &gw2_before, "tx_bytes"),
        bytes,
        "gw2 did not send the spoofed echoes through its tunnel: before {}; after {}",
        counters(&gw2_before),
        counters(&gw2_after)
    );
    assert!(
        delta(&gw1_after, &gw1_before, "rx_wire_bytes") >= bytes,
        "gw1 did not receive the spoofed echoes on the wire: before {}; after {}",
        counters(&gw1_before),
        counters(&gw1_after)
    );
    assert_eq!(
        dropped(&gw1_after, "source_not_allowed") - dropped(&gw1_before, "source_not_allowed"),
        u64::from(COUNT),
        "gw1 peer c2 dropped.source_not_allowed; before {}; after {}",
        gw1_before["dropped"],
        gw1_after["dropped"]
    );
    assert_eq!(
        delta(&gw1_after, &gw1_before, "rx_bytes"),
        0,
        "gw1 counted the dropped packets as received inner bytes: before {}; after {}",
        counters(&gw1_before),
        counters(&gw1_after)
    );
    assert_eq!(
        echos_after, echos_before,
        "pod 1 received echo requests from the spoofed source"
    );

    // Positive control from the same namespace, with a source inside c2's prefixes: the same
    // path delivers, and counts.
    let gw1_before = gw1_after;
    let legit = plan::gw_lan_addr(2);
    let received = common::ping_sized(&gw2, Some(legit), pod(1), COUNT, PAYLOAD);
    assert_eq!(
        received, COUNT,
        "gw2 ({legit}) -> pod 1: {received}/{COUNT}"
    );
    let gw1_after = peer(&lab, 1, "c2");
    assert_eq!(icmp_in_echos(&pod1) - echos_after, u64::from(COUNT));
    assert_eq!(
        delta(&gw1_after, &gw1_before, "rx_bytes"),
        bytes,
        "gw1 peer c2 rx_bytes for {COUNT} legitimate echoes: before {}; after {}",
        counters(&gw1_before),
        counters(&gw1_after)
    );
    assert_eq!(
        dropped(&gw1_after, "source_not_allowed"),
        dropped(&gw1_before, "source_not_allowed"),
        "legitimate packets counted as source_not_allowed"
    );
    common::assert_pings(&lab, &lab.pod_ns(2), pod(1), COUNT);
}
