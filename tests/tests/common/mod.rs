//! Helpers shared by the gateway end-to-end tests: building a lab with its gateways up, reading
//! `tunctl` counters, pinging with exact sizes, and looking at a namespace's kernel state.
//!
//! Each test binary uses only some of these.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_lab::{netns, plan, wait_for, ChildGuard, Lab, GATEWAY_BIN};
use serde_json::Value;

/// How long a pod pair gets to start answering once its gateways are up: the first packet
/// waits for a WireGuard handshake.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Bytes of an IPv4 ICMP echo (request or reply) carrying `payload` bytes: 20 IP + 8 ICMP.
pub fn icmp_packet_len(payload: u32) -> u64 {
    20 + 8 + u64::from(payload)
}

pub fn lab(clusters: usize) -> Lab {
    Lab::builder()
        .clusters(clusters)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"))
}

/// A lab of `clusters` clusters with every gateway running.
pub fn lab_with_gateways(clusters: usize) -> Lab {
    let lab = lab(clusters);
    for i in 1..=clusters {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("failed to start gateway {i}: {e:#}"));
    }
    lab
}

/// Waits until one echo from `ns` to `addr` comes back; panics naming the pair otherwise.
pub fn wait_reachable(lab: &Lab, ns: &str, addr: Ipv4Addr, timeout: Duration) {
    let start = Instant::now();
    let ok = wait_for(|| lab.ping(ns, addr, 1).unwrap_or(0) == 1, timeout);
    assert!(
        ok,
        "{ns} -> {addr}: no echo reply within {timeout:?} (waited {:?})",
        start.elapsed()
    );
}

/// Sends `count` echoes from `ns` to `addr` and asserts every one is answered.
pub fn assert_pings(lab: &Lab, ns: &str, addr: Ipv4Addr, count: u32) {
    let received = lab
        .ping(ns, addr, count)
        .unwrap_or_else(|e| panic!("ping {addr} from {ns}: {e:#}"));
    assert_eq!(
        received, count,
        "{ns} -> {addr}: {received}/{count} replies"
    );
}

/// `ping -c count -s payload [-I source] addr` from `ns`, 0.2 s apart, 1 s wait each; returns
/// the number of replies (0 when ping reports an error instead of a summary).
pub fn ping_sized(
    ns: &str,
    source: Option<Ipv4Addr>,
    addr: Ipv4Addr,
    count: u32,
    payload: u32,
) -> u32 {
    let (count, payload, addr) = (count.to_string(), payload.to_string(), addr.to_string());
    let mut args = vec![
        "ping", "-n", "-q", "-c", &count, "-s", &payload, "-i", "0.2", "-W", "1",
    ];
    let source = source.map(|s| s.to_string());
    if let Some(s) = &source {
        args.extend(["-I", s]);
    }
    args.push(&addr);
    let out = netns::exec(ns, &args).unwrap_or_else(|e| panic!("ping in {ns}: {e:#}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').find(|f| f.trim().ends_with("received")))
        .and_then(|f| f.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `tunctl peers -o json` of cluster `i`'s gateway.
pub fn peers(lab: &Lab, i: usize) -> Vec<Value> {
    lab.peers_json(i)
}

/// Gateway `i`'s view of its peer named `name`.
pub fn peer(lab: &Lab, i: usize, name: &str) -> Value {
    lab.peer_json(i, name)
}

/// `tunctl status -o json` of cluster `i`'s gateway.
pub fn status(lab: &Lab, i: usize) -> Value {
    lab.status_json(i)
}

/// A non-negative integer field of a tunctl JSON object.
pub fn counter(v: &Value, field: &str) -> u64 {
    isthmus_lab::json_u64(v, field)
}

/// `dropped.<reason>` of a peer or of the interface status; a missing reason is a failure, so
/// a renamed counter cannot make a test pass vacuously.
pub fn dropped(v: &Value, reason: &str) -> u64 {
    v["dropped"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("dropped.{reason} missing in {v}"))
}

/// The byte and packet counters of a peer, for printing in failure messages.
pub fn counters(v: &Value) -> String {
    [
        "rx_bytes",
        "tx_bytes",
        "rx_wire_bytes",
        "tx_wire_bytes",
        "rx_packets",
        "tx_packets",
        "handshakes",
    ]
    .iter()
    .map(|f| format!("{f}={}", v[f]))
    .collect::<Vec<_>>()
    .join(" ")
}

/// Waits until the byte counters of every peer of every listed gateway stay unchanged for
/// `quiet`: handshakes and first packets have settled. Panics after `timeout`.
pub fn wait_quiet(lab: &Lab, gateways: &[usize], quiet: Duration, timeout: Duration) {
    let snapshot = || -> Vec<(u64, u64, u64)> {
        gateways
            .iter()
            .flat_map(|&i| peers(lab, i))
            .map(|p| {
                (
                    counter(&p, "rx_bytes"),
                    counter(&p, "tx_bytes"),
                    counter(&p, "handshakes"),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + timeout;
    let mut last = snapshot();
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        assert!(
            Instant::now() < deadline,
            "gateways {gateways:?} did not go quiet within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// `ip -n NS -4 route` as text.
pub fn routes(ns: &str) -> String {
    netns::ip(ns, &["-4", "route", "show"]).unwrap_or_else(|e| panic!("ip route in {ns}: {e:#}"))
}

/// The lines of `ip route` in `ns` that go through device `dev`, sorted.
pub fn routes_via(ns: &str, dev: &str) -> Vec<String> {
    let needle = format!(" dev {dev} ");
    let mut lines: Vec<String> = routes(ns)
        .lines()
        .filter(|l| format!("{l} ").contains(&needle))
        .map(|l| l.trim().to_owned())
        .collect();
    lines.sort();
    lines
}

/// Starts cluster `i`'s gateway from its current config file directly, bypassing
/// [`Lab::start_gateway`] (which removes a stale admin socket before it starts one), and waits
/// until `tunctl status` answers. The guard must drop before the lab.
pub fn spawn_gateway_raw(lab: &Lab, i: usize, timeout: Duration) -> ChildGuard {
    let bin = lab.binary(GATEWAY_BIN).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(lab.config_path(i));
    let mut child = lab
        .spawn_named(&lab.gw_ns(i), &format!("c{i}-gateway-raw"), &cmd)
        .unwrap_or_else(|e| panic!("failed to spawn gateway {i}: {e:#}"));
    let up = wait_for(
        || {
            if !child.is_running() {
                return true;
            }
            lab.tunctl_text(i, &["status", "-o", "json"]).is_ok()
        },
        timeout,
    );
    assert!(
        up && child.is_running(),
        "gateway {i} started by hand is not answering tunctl within {timeout:?} (running: {}); \
         stderr:\n{}",
        child.is_running(),
        child.stderr()
    );
    child
}

/// The ICMP `InEchos` counter of namespace `ns` (echo requests that reached its stack).
pub fn icmp_in_echos(ns: &str) -> u64 {
    let snmp = netns::run(ns, &["cat", "/proc/net/snmp"])
        .unwrap_or_else(|e| panic!("reading /proc/net/snmp in {ns}: {e:#}"));
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (header, values) = (icmp.next(), icmp.next());
    let (Some(header), Some(values)) = (header, values) else {
        panic!("no Icmp lines in /proc/net/snmp of {ns}:\n{snmp}");
    };
    let pos = header
        .split_whitespace()
        .position(|f| f == "InEchos")
        .unwrap_or_else(|| panic!("no InEchos in {header}"));
    values
        .split_whitespace()
        .nth(pos)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad Icmp values line {values}"))
}

/// Whether `path` exists as anything (a socket file included), without following symlinks.
pub fn path_exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// `/var/run/wireguard/<tun>.sock` of cluster `i`'s gateway.
pub fn uapi_socket(lab: &Lab, i: usize) -> std::path::PathBuf {
    Path::new(isthmus_lab::WG_SOCKET_DIR).join(format!("{}.sock", lab.id().tun_name(i)))
}

/// Cluster `j`'s pod address.
pub fn pod(j: usize) -> Ipv4Addr {
    plan::pod_addr(j)
}

/// Unix timestamps of the echo replies in the output of `ping -D`
/// (`[1732480000.123456] 64 bytes from …`).
pub fn reply_times(ping_stdout: &str) -> Vec<f64> {
    ping_stdout
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?;
            ts.parse().ok()
        })
        .collect()
}
