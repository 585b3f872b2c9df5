//! No plaintext on the underlay: what pods send each other crosses the WAN only inside
//! WireGuard datagrams. A capture on cluster 1's WAN link while pods exchange recognisable
//! payloads must not contain them, and the same capture setup must see them when they are
//! sent in the clear (the positive control). Needs root, `tcpdump` and `python3`.

mod support;

use std::net::Ipv4Addr;

use isthmus_lab::{plan, Lab};
use support::{
    contains, hex, pcap_datagrams, random_bytes, udp_echo, udp_echo_server, wait_ping, wg_type,
    Capture, MESH_UP_TIMEOUT,
};

/// ICMP payload size of the marked pings: the 16-byte pattern repeats over it.
const PING_SIZE: usize = 200;
const PINGS: u32 = 10;
/// UDP port of the echo server in pod 2, and of the positive control's datagram.
const ECHO_PORT: u16 = 7001;
/// Where the capture's sync datagrams go (gw2's WAN address; nothing listens there).
const SYNC_PORT: u16 = 9;

/// `ping -p PATTERN -s PING_SIZE` `count` times from `ns`; asserts every echo came back.
fn ping_pattern(lab: &Lab, ns: &str, addr: Ipv4Addr, pattern: &[u8], count: u32) {
    let (addr, count_arg, size, pattern_hex) = (
        addr.to_string(),
        count.to_string(),
        PING_SIZE.to_string(),
        hex(pattern),
    );
    let out = lab
        .exec(
            ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count_arg,
                "-i",
                "0.2",
                "-W",
                "1",
                "-s",
                &size,
                "-p",
                &pattern_hex,
                &addr,
            ],
        )
        .expect("run ping");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!(" {count} received")),
        "ping -p from {ns} to {addr}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_plaintext_on_the_underlay() {
    let lab = support::lab(2);
    support::start_gateways(&lab);
    let (wan, gw1, pod1, pod2) = (lab.wan_ns(), lab.gw_ns(1), lab.pod_ns(1), lab.pod_ns(2));
    let (pod2_addr, gw2_wan) = (plan::pod_addr(2), plan::wan_addr(2));
    // Sessions first: the capture below is about data, and handshakes must not skew it.
    wait_ping(&lab, &pod1, pod2_addr, MESH_UP_TIMEOUT);

    // Fresh random markers, so nothing else on the wire can contain them by accident.
    let pattern = random_bytes(16);
    let marker = format!("ISTHMUS-PLAINTEXT-{}", hex(&random_bytes(12))).into_bytes();
    let echo = udp_echo_server(&lab, &pod2, ECHO_PORT);

    // The wire: cluster 1's port on the WAN bridge, every frame, both directions.
    let tunnel = Capture::start(&lab, &wan, "c1", "tunnel", &[]);
    ping_pattern(&lab, &pod1, pod2_addr, &pattern, PINGS);
    udp_echo(&lab, &pod1, pod2_addr, ECHO_PORT, &marker);
    tunnel.sync(&lab, &gw1, gw2_wan, SYNC_PORT);
    let pcap = tunnel.stop();

    assert!(
        !contains(&pcap, &pattern),
        "the ping pattern {} crossed the WAN in the clear",
        hex(&pattern)
    );
    assert!(
        !contains(&pcap, &marker),
        "the UDP marker {} crossed the WAN in the clear",
        String::from_utf8_lossy(&marker)
    );
    // The capture did see the tunnel: WireGuard data messages between the gateways' port
    // 51820 both ways, big enough to hold the marked pings (inner IP packet 20 + 8 + 200
    // bytes, plus the 16-byte header and 16-byte tag).
    let datagrams = pcap_datagrams(&pcap);
    let min_len = 32 + 28 + PING_SIZE;
    let carried = |src: usize, dst: usize| {
        datagrams
            .iter()
            .filter(|d| {
                (d.src, d.sport, d.dst, d.dport)
                    == (
                        plan::wan_addr(src),
                        plan::LISTEN_PORT,
                        plan::wan_addr(dst),
                        plan::LISTEN_PORT,
                    )
                    && wg_type(&d.payload) == Some(4)
                    && d.payload.len() >= min_len
            })
            .count()
    };
    let (out, back) = (carried(1, 2), carried(2, 1));
    assert!(
        out >= PINGS as usize && back >= PINGS as usize,
        "expected at least {PINGS} WireGuard data datagrams of >= {min_len} bytes each way \
         between the gateways' port {}, saw {out} out and {back} back (of {} UDP datagrams)",
        plan::LISTEN_PORT,
        datagrams.len()
    );

    // Positive control: the same capture on the same link sees both markers when they cross
    // it unencrypted (gw1 to gw2's WAN address directly, outside the tunnel).
    let clear = Capture::start(&lab, &wan, "c1", "clear", &[]);
    ping_pattern(&lab, &gw1, gw2_wan, &pattern, 3);
    support::send_udp(&lab, &gw1, gw2_wan, ECHO_PORT, &marker);
    clear.sync(&lab, &gw1, gw2_wan, SYNC_PORT);
    let pcap = clear.stop();
    assert!(
        contains(&pcap, &pattern),
        "positive control: the capture does not show the ping pattern sent in the clear"
    );
    assert!(
        contains(&pcap, &marker),
        "positive control: the capture does not show the UDP marker sent in the clear"
    );

    assert!(lab.gateway_running(1) && lab.gateway_running(2));
    drop(echo);
}
