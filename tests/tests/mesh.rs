//! A 3-gateway full mesh: every pod reaches every other cluster's pod (ICMP and a verified TCP
//! transfer, both directions of every pair), and the per-peer byte counters of `tunctl peers`
//! are exact. Needs root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{counter, counters, icmp_packet_len, lab_with_gateways, peer, pod};
use isthmus_lab::{wait_for, Lab};

const CLUSTERS: usize = 3;

/// Listens on the port in argv[1], accepts one connection, reads to EOF and prints
/// `<bytes> <sha256> <peer address>`.
const RECEIVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(30)
print("listening", flush=True)
c, addr = s.accept()
c.settimeout(30)
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
c.close()
print(n, h.hexdigest(), addr[0], flush=True)
"#;

/// Connects to argv[1]:argv[2], sends argv[3] pseudo-random bytes seeded by argv[4], half-closes,
/// waits for the receiver to close, and prints `<bytes> <sha256>`.
const SENDER: &str = r#"
import hashlib, random, socket, sys
host, port, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = random.Random(seed).randbytes(n)
s = socket.create_connection((host, port), timeout=30)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
while s.recv(4096):
    pass
print(n, hashlib.sha256(data).hexdigest(), flush=True)
"#;

const PYTHON: &str = "/usr/bin/python3";

/// Odd on purpose: not a multiple of any segment or pad size.
const TRANSFER_BYTES: usize = 3_000_017;

fn pairs() -> impl Iterator<Item = (usize, usize)> {
    (1..=CLUSTERS).flat_map(|i| (1..=CLUSTERS).filter(move |&j| j != i).map(move |j| (i, j)))
}

/// Sends `TRANSFER_BYTES` over TCP from pod `i` to pod `j` and checks that pod `j` received
/// exactly those bytes, from pod `i`'s own address.
fn tcp_transfer(lab: &Lab, i: usize, j: usize) {
    let port = (40000 + 10 * i + j).to_string();
    let mut recv_cmd = Command::new(PYTHON);
    recv_cmd.args(["-c", RECEIVER, &port]);
    let receiver = lab
        .spawn_named(&lab.pod_ns(j), &format!("recv-{i}-{j}"), &recv_cmd)
        .unwrap_or_else(|e| panic!("receiver in pod {j}: {e:#}"));
    assert!(
        wait_for(
            || receiver.stdout().contains("listening"),
            Duration::from_secs(10)
        ),
        "receiver in pod {j} did not start: {}",
        receiver.stderr()
    );

    let seed = (100 * i + j).to_string();
    let out = lab
        .exec(
            &lab.pod_ns(i),
            &[
                PYTHON,
                "-c",
                SENDER,
                &pod(j).to_string(),
                &port,
                &TRANSFER_BYTES.to_string(),
                &seed,
            ],
        )
        .unwrap_or_else(|e| panic!("sender in pod {i}: {e:#}"));
    assert!(
        out.status.success(),
        "TCP pod {i} -> pod {j}: sender failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let mut receiver = receiver;
    let status = receiver
        .wait_timeout(Duration::from_secs(30))
        .expect("waiting for the receiver");
    assert!(
        status.is_some_and(|s| s.success()),
        "TCP pod {i} -> pod {j}: receiver did not finish cleanly ({status:?}): {}",
        receiver.stderr()
    );
    let received = receiver.stdout();
    let result = received
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    let expected_sender = pod(i).to_string();
    let sent: Vec<&str> = sent.split_whitespace().collect();
    assert_eq!(
        result.len(),
        3,
        "TCP pod {i} -> pod {j}: receiver printed {received:?}"
    );
    assert_eq!(
        result[0],
        TRANSFER_BYTES.to_string(),
        "TCP pod {i} -> pod {j}: byte count on the receiver"
    );
    assert_eq!(
        sent,
        [TRANSFER_BYTES.to_string().as_str(), result[1]],
        "TCP pod {i} -> pod {j}: content differs (sender vs receiver sha256)"
    );
    assert_eq!(
        result[2], expected_sender,
        "TCP pod {i} -> pod {j}: connection came from {} instead of pod {i}",
        result[2]
    );
}

#[test]
fn every_pod_reaches_every_other_pod() {
    let lab = lab_with_gateways(CLUSTERS);
    for (i, j) in pairs() {
        common::wait_reachable(&lab, &lab.pod_ns(i), pod(j), common::HANDSHAKE_DEADLINE);
        common::assert_pings(&lab, &lab.pod_ns(i), pod(j), 3);
    }
    for (i, j) in pairs() {
        tcp_transfer(&lab, i, j);
    }
    // Every gateway saw a tunnel to each of its peers carry the transfers both ways.
    for i in 1..=CLUSTERS {
        for j in (1..=CLUSTERS).filter(|&j| j != i) {
            let p = peer(&lab, i, &format!("c{j}"));
            assert_eq!(p["status"], "connected", "gateway {i} peer c{j}: {p}");
            let min = TRANSFER_BYTES as u64;
            assert!(
                counter(&p, "rx_bytes") > min && counter(&p, "tx_bytes") > min,
                "gateway {i} peer c{j} counted less than one transfer each way: {}",
                counters(&p)
            );
        }
    }
}

#[test]
fn byte_counters_are_exact() {
    const COUNT: u32 = 10;
    const PAYLOAD: u32 = 1000;
    let lab = lab_with_gateways(CLUSTERS);
    // Bring up the 1-2 tunnel (and the others, so that no late handshake lands in the window).
    for (i, j) in pairs() {
        common::wait_reachable(&lab, &lab.pod_ns(i), pod(j), common::HANDSHAKE_DEADLINE);
    }
    common::wait_quiet(
        &lab,
        &[1, 2, 3],
        Duration::from_secs(1),
        Duration::from_secs(15),
    );

    let snap = |i: usize, name: &str| peer(&lab, i, name);
    let before = [
        snap(1, "c2"),
        snap(2, "c1"),
        snap(1, "c3"),
        snap(3, "c1"),
        snap(2, "c3"),
        snap(3, "c2"),
    ];
    let received = common::ping_sized(&lab.pod_ns(1), None, pod(2), COUNT, PAYLOAD);
    assert_eq!(
        received, COUNT,
        "pod 1 -> pod 2: {received}/{COUNT} replies"
    );
    let after = [
        snap(1, "c2"),
        snap(2, "c1"),
        snap(1, "c3"),
        snap(3, "c1"),
        snap(2, "c3"),
        snap(3, "c2"),
    ];

    let delta = |k: usize, field: &str| counter(&after[k], field) - counter(&before[k], field);
    let expected = u64::from(COUNT) * icmp_packet_len(PAYLOAD);
    for (k, who) in [(0, "gateway 1 peer c2"), (1, "gateway 2 peer c1")] {
        for field in ["tx_bytes", "rx_bytes"] {
            assert_eq!(
                delta(k, field),
                expected,
                "{who}: {field} grew by {} for {COUNT} echoes of {} bytes each way \
                 (expected {expected}); before: {}; after: {}",
                delta(k, field),
                icmp_packet_len(PAYLOAD),
                counters(&before[k]),
                counters(&after[k])
            );
        }
        // The wire carried at least the encrypted packets: 16 bytes of header and 16 of tag
        // around each (boringtun does not pad to 16, which the protocol allows).
        let wire = u64::from(COUNT) * (32 + icmp_packet_len(PAYLOAD));
        for field in ["tx_wire_bytes", "rx_wire_bytes"] {
            assert!(
                delta(k, field) >= wire,
                "{who}: {field} grew by {} < {wire}",
                delta(k, field)
            );
        }
        eprintln!(
            "{who}: +{} B inner each way, wire +{}/+{} B, packets +{}/+{}",
            delta(k, "tx_bytes"),
            delta(k, "tx_wire_bytes"),
            delta(k, "rx_wire_bytes"),
            delta(k, "tx_packets"),
            delta(k, "rx_packets"),
        );
    }
    // The pings went through the 1-2 tunnel only; the tunnels to and between others saw no
    // inner bytes at all.
    for (k, who) in [
        (2, "gateway 1 peer c3"),
        (3, "gateway 3 peer c1"),
        (4, "gateway 2 peer c3"),
        (5, "gateway 3 peer c2"),
    ] {
        for field in ["tx_bytes", "rx_bytes"] {
            assert_eq!(
                delta(k, field),
                0,
                "{who}: {field} changed though nothing was sent through it; before: {}; after: {}",
                counters(&before[k]),
                counters(&after[k])
            );
        }
    }
}
