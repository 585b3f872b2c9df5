//! Interop: a stock WireGuard peer — `boringtun-cli`, configured with `wg` — and
//! `isthmus-gateway` handshake and carry traffic both ways, and `wg show` reads our daemon's
//! UAPI. Needs root, `boringtun-cli`, `wg` and `python3`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use isthmus_lab::{plan, try_wait_for, wait_for, KeyPair, Lab, WG_SOCKET_DIR};
use support::{assert_pings, num, peer, tcp_echo, tcp_echo_server, tool, wait_ping};

/// `wg show <ifname> <what>` in `ns`, as text.
fn wg(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["wg"];
    argv.extend_from_slice(args);
    lab.run(ns, &argv)
        .unwrap_or_else(|e| panic!("wg {} in {ns}: {e:#}", args.join(" ")))
}

/// The fields of the `wg show IF dump` line of peer `key` (the first line is the interface):
/// public-key, preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx,
/// transfer-tx, persistent-keepalive.
fn dump_peer(dump: &str, key: &str) -> Vec<String> {
    dump.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .find(|f| f.first().map(String::as_str) == Some(key))
        .unwrap_or_else(|| panic!("peer {key} not in wg dump:\n{dump}"))
}

#[test]
fn boringtun_peer_interoperates_with_isthmus_gateway() {
    let lab = support::lab(2);
    let (gw2, pod1, pod2) = (lab.gw_ns(2), lab.pod_ns(1), lab.pod_ns(2));
    let gw1_if = lab.gateway_config(1).interface.name;

    // Cluster 2's "gateway" is boringtun-cli with its own key, configured by `wg`.
    let bt = KeyPair::generate();
    let bt_key_file = lab.dir().join("boringtun.key");
    bt.write_private_key(&bt_key_file).unwrap();
    // `<lab id>-bt`: unique per lab, and the lab removes /var/run/wireguard/<id>-*.sock.
    let bt_if = format!("{}-bt", lab.id());
    assert!(bt_if.len() <= 15);
    let bt_sock = Path::new(WG_SOCKET_DIR).join(format!("{bt_if}.sock"));

    let mut cfg = lab.gateway_config(1);
    cfg.peer_mut("c2").unwrap().public_key = bt.public_key().to_owned();
    lab.write_gateway_config(1, &cfg).unwrap();
    lab.start_gateway(1).unwrap();

    let mut cmd = Command::new(tool("boringtun-cli"));
    cmd.args(["--foreground", "--disable-drop-privileges", &bt_if])
        .env("WG_SUDO", "1");
    let mut boringtun = lab.spawn(&gw2, &cmd).unwrap();
    let up = wait_for(
        || bt_sock.exists() || !boringtun.is_running(),
        Duration::from_secs(10),
    );
    assert!(
        up && boringtun.is_running(),
        "boringtun-cli did not create {}:\n{}{}",
        bt_sock.display(),
        boringtun.stdout(),
        boringtun.stderr()
    );

    let gw1_endpoint = format!("{}:{}", plan::wan_addr(1), plan::LISTEN_PORT);
    let bt_key_arg = bt_key_file.to_string_lossy().into_owned();
    let listen_port = plan::LISTEN_PORT.to_string();
    let allowed = format!("{},{}/32", plan::cluster_cidr(1), plan::mesh_addr(1));
    let mesh2 = plan::with_prefix(plan::mesh_addr(2));
    let cidr1 = plan::cluster_cidr(1);
    wg(
        &lab,
        &gw2,
        &[
            "set",
            &bt_if,
            "private-key",
            &bt_key_arg,
            "listen-port",
            &listen_port,
            "peer",
            lab.public_key(1),
            "endpoint",
            &gw1_endpoint,
            "allowed-ips",
            &allowed,
        ],
    );
    for args in [
        vec!["addr", "add", mesh2.as_str(), "dev", bt_if.as_str()],
        vec!["link", "set", bt_if.as_str(), "up"],
        vec!["route", "add", cidr1.as_str(), "dev", bt_if.as_str()],
    ] {
        isthmus_lab::netns::ip(&gw2, &args).unwrap();
    }

    // Handshake, driven by traffic from cluster 1. boringtun-cli (0.7.1 here) answers the UAPI's
    // last_handshake_time with the seconds *since* the handshake rather than a Unix time (so
    // `wg show` prints "56 years ago"); all we can ask of it is that there was one.
    wait_ping(&lab, &pod1, plan::pod_addr(2), Duration::from_secs(20));
    let handshake_at = |lab: &Lab| -> u64 {
        let out = wg(lab, &gw2, &["show", &bt_if, "latest-handshakes"]);
        out.lines()
            .find(|l| l.starts_with(lab.public_key(1)))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    try_wait_for(
        "boringtun to report a handshake with gw1",
        || handshake_at(&lab) > 0,
        Duration::from_secs(10),
    )
    .unwrap();
    try_wait_for(
        "gw1 to report peer c2 (boringtun) connected",
        || peer(&lab, 1, "c2")["status"] == "connected",
        Duration::from_secs(10),
    )
    .unwrap();
    let c2 = peer(&lab, 1, "c2");
    assert_eq!(c2["public_key"], bt.public_key());
    assert_eq!(
        c2["endpoint"],
        format!("{}:{}", plan::wan_addr(2), plan::LISTEN_PORT)
    );

    // Traffic both ways: ICMP from each side, then 1 MiB over TCP each way on a connection
    // opened from each side, every byte echoed back and compared.
    assert_pings(&lab, &pod1, plan::pod_addr(2), 5);
    assert_pings(&lab, &pod2, plan::pod_addr(1), 5);

    let before = peer(&lab, 1, "c2");
    let server2 = tcp_echo_server(&lab, &pod2, 7000);
    let server1 = tcp_echo_server(&lab, &pod1, 7000);
    const MIB: u64 = 1 << 20;
    tcp_echo(&lab, &pod1, plan::pod_addr(2), 7000, MIB as usize);
    tcp_echo(&lab, &pod2, plan::pod_addr(1), 7000, MIB as usize);

    // Our counters saw both megabytes each way (inner IP bytes: at least the TCP payload).
    let after = peer(&lab, 1, "c2");
    let tx = num(&after, "tx_bytes") - num(&before, "tx_bytes");
    let rx = num(&after, "rx_bytes") - num(&before, "rx_bytes");
    assert!(tx >= 2 * MIB, "gw1 tx_bytes to boringtun grew by {tx}");
    assert!(rx >= 2 * MIB, "gw1 rx_bytes from boringtun grew by {rx}");

    // boringtun's own view agrees that traffic flowed both ways.
    let bt_dump = wg(&lab, &gw2, &["show", &bt_if, "dump"]);
    let bt_peer = dump_peer(&bt_dump, lab.public_key(1));
    let (bt_rx, bt_tx): (u64, u64) = (bt_peer[5].parse().unwrap(), bt_peer[6].parse().unwrap());
    assert!(
        bt_rx >= 2 * MIB && bt_tx >= 2 * MIB,
        "boringtun transfer rx {bt_rx} tx {bt_tx}:\n{bt_dump}"
    );

    // `wg` against our daemon's UAPI, in gw1's namespace.
    let show = wg(&lab, &lab.gw_ns(1), &["show", &gw1_if]);
    assert!(
        show.contains(&format!("interface: {gw1_if}")),
        "wg show:\n{show}"
    );
    assert!(
        show.contains(&format!("public key: {}", lab.public_key(1))),
        "wg show:\n{show}"
    );
    assert!(
        show.contains(&format!("peer: {}", bt.public_key())),
        "wg show does not list the boringtun peer:\n{show}"
    );
    assert!(
        show.contains(&format!(
            "endpoint: {}:{}",
            plan::wan_addr(2),
            plan::LISTEN_PORT
        )),
        "wg show has no endpoint for the boringtun peer:\n{show}"
    );
    assert!(
        show.contains("latest handshake:"),
        "wg show has no handshake:\n{show}"
    );
    assert!(show.contains("transfer:"), "wg show:\n{show}");

    let dump = wg(&lab, &lab.gw_ns(1), &["show", &gw1_if, "dump"]);
    let fields = dump_peer(&dump, bt.public_key());
    assert_eq!(fields.len(), 8, "peer line of wg dump: {fields:?}");
    assert_eq!(
        fields[2],
        format!("{}:{}", plan::wan_addr(2), plan::LISTEN_PORT)
    );
    let allowed_ips: Vec<&str> = fields[3].split(',').collect();
    assert!(
        allowed_ips.contains(&"10.2.0.0/16") && allowed_ips.contains(&"100.96.0.2/32"),
        "allowed ips {:?}",
        fields[3]
    );
    let (hs, rx, tx): (u64, u64, u64) = (
        fields[4].parse().unwrap(),
        fields[5].parse().unwrap(),
        fields[6].parse().unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        hs > 0 && hs <= now && now - hs < 180,
        "latest handshake {hs} (now {now})"
    );
    assert!(
        rx >= 2 * MIB && tx >= 2 * MIB,
        "wg dump transfer rx {rx} tx {tx}:\n{dump}"
    );
    assert_eq!(
        fields[7], "25",
        "persistent keepalive of the boringtun peer"
    );

    assert!(lab.gateway_running(1), "gateway 1 died");
    assert!(boringtun.is_running(), "boringtun died");
    drop(server1);
    drop(server2);
    drop(boringtun);
    drop(lab);
    assert!(
        !bt_sock.exists(),
        "{} left behind after teardown",
        bt_sock.display()
    );
}
