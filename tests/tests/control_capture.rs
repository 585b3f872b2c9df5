//! The control channel carries nothing outside the tunnel: while cluster 2 exports a service
//! with a recognisable name and cluster 1 learns it, a capture on cluster 1's WAN link sees
//! only WireGuard datagrams between the gateways — no TCP at all (the sync sessions run over
//! TCP between mesh addresses, inside WireGuard) and not the name. The same capture sees the
//! name when it is sent in the clear (the positive control). Needs root and `tcpdump`.

mod support;

use std::time::Duration;

use isthmus_lab::control::{control_lab, exports_toml};
use isthmus_lab::{plan, wait_for};
use support::{contains, hex, pcap_datagrams, pcap_frames, random_bytes, wg_type, Capture};

/// Where the capture's sync datagrams go (gw2's WAN address; nothing listens there).
const SYNC_PORT: u16 = 9;
const MARKER_PORT: u16 = 7002;

/// IPv4 frames of the capture that carry TCP (protocol 6).
fn tcp_frames(pcap: &[u8]) -> usize {
    pcap_frames(pcap)
        .iter()
        .filter(|f| f.len() >= 14 + 20 && f[12..14] == [0x08, 0x00] && f[14 + 9] == 6)
        .count()
}

#[test]
fn catalog_sync_crosses_the_wan_only_inside_wireguard() {
    let lab = control_lab(2);
    let (wan, gw1) = (lab.wan_ns(), lab.gw_ns(1));
    let gw2_wan = plan::wan_addr(2);
    // A service name nothing else on the wire can contain by accident (a DNS label).
    let name = format!("m{}", hex(&random_bytes(12)));
    let service = format!("demo/{name}");

    let capture = Capture::start(&lab, &wan, "c1", "sync", &[]);
    lab.write_exports(2, &exports_toml(&[(&service, true, &[plan::pod_addr(2)])]))
        .unwrap();
    let learned = wait_for(
        || {
            lab.services_json(1)
                .iter()
                .any(|s| s["name"] == name.as_str())
        },
        Duration::from_secs(5),
    );
    capture.sync(&lab, &gw1, gw2_wan, SYNC_PORT);
    let pcap = capture.stop();
    assert!(
        learned,
        "gw1 did not learn {service}: {:?}",
        lab.services_json(1)
    );

    assert!(
        !contains(&pcap, name.as_bytes()),
        "the service name {name} crossed the WAN in the clear"
    );
    assert_eq!(
        tcp_frames(&pcap),
        0,
        "TCP on the WAN during sync: the control channel must run inside the tunnel"
    );
    // The sync did cross this link, as WireGuard transport data between the gateways.
    let carried = pcap_datagrams(&pcap)
        .iter()
        .filter(|d| {
            d.sport == plan::LISTEN_PORT
                && d.dport == plan::LISTEN_PORT
                && wg_type(&d.payload) == Some(4)
                && d.payload.len() > 32
        })
        .count();
    assert!(
        carried > 0,
        "no WireGuard data between the gateways during the sync"
    );

    // Positive control: the same capture setup sees the name when it is sent in the clear.
    let clear = Capture::start(&lab, &wan, "c1", "clear", &[]);
    support::send_udp(&lab, &gw1, gw2_wan, MARKER_PORT, name.as_bytes());
    clear.sync(&lab, &gw1, gw2_wan, SYNC_PORT);
    let pcap = clear.stop();
    assert!(
        contains(&pcap, name.as_bytes()),
        "positive control: the capture does not show the name sent in the clear"
    );
}
