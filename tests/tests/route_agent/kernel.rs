//! What the kernel says, not the agent: its BPF objects and map contents, its routes, pinned
//! files, SNMP counters (checksum errors, forwarded packets); and the kernel setup some tests
//! need (IPv6 pods, software checksums, a datagram with a bad checksum).

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use isthmus_lab::agent::BpfObjects;
use isthmus_lab::{netns, wait_for, Lab};
use isthmus_route_agent::status::Status;

use crate::rig::AGENT;

/// The agent's routes as the kernel has them (`ip route show proto 73`), one per line.
pub fn agent_routes(lab: &Lab) -> Vec<String> {
    netns::ip(&lab.node_ns(1), &["route", "show", "proto", "73"])
        .expect("ip route")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Files under the bpf filesystem whose name mentions Isthmus or its maps and programs.
pub fn pinned() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_lowercase();
            if name.contains("isthmus") || name.starts_with("ist_") {
                out.push(path.display().to_string());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(std::path::Path::new("/sys/fs/bpf"), &mut out);
    out
}

/// Everything an agent that held `objects` may leave behind, one finding per line: BPF
/// objects the kernel still has, routes with its protocol, its admin socket, pinned files.
pub fn leftovers(lab: &Lab, objects: &BpfObjects) -> Vec<String> {
    let mut found = Vec::new();
    let alive = objects.still_in_kernel();
    found.extend(alive.progs.iter().map(|id| format!("bpf prog {id}")));
    found.extend(alive.maps.iter().map(|id| format!("bpf map {id}")));
    found.extend(alive.links.iter().map(|id| format!("bpf link {id}")));
    found.extend(agent_routes(lab).into_iter().map(|r| format!("route {r}")));
    let admin = lab.agent_socket(AGENT);
    if admin.exists() {
        found.push(format!("file {}", admin.display()));
    }
    found.extend(pinned().into_iter().map(|p| format!("pinned {p}")));
    found
}

/// Waits until nothing of `objects` is left (the kernel frees programs and maps a little after
/// the last descriptor closes) and returns what is.
pub fn wait_clean(lab: &Lab, objects: &BpfObjects) -> Vec<String> {
    wait_for(
        || leftovers(lab, objects).is_empty(),
        Duration::from_secs(5),
    );
    leftovers(lab, objects)
}

/// The BPF objects the running agent holds, checked to be all it loads and attaches and all
/// known to the kernel: the positive control for [`leftovers`].
pub fn running_objects(lab: &Lab) -> BpfObjects {
    let objects = BpfObjects::of_pid(lab.agent_pid(AGENT)).expect("the agent's BPF objects");
    // 2 tc + 6 socket programs; 10 maps; per veth 2 TCX links, and 6 cgroup links.
    assert!(
        objects.progs.len() >= 8 && objects.maps.len() >= 10 && objects.links.len() >= 10,
        "the running agent holds fewer BPF objects than it loads and attaches: {objects:?}"
    );
    assert_eq!(
        objects.still_in_kernel(),
        objects,
        "ids read from the agent's fds are not all known to bpftool"
    );
    objects
}

/// The kernel's service, VIP, slot and backend maps hold exactly what `s` says is programmed:
/// `services` services with one VIP, one TCP and one UDP port and one backend each.
pub fn assert_maps(lab: &Lab, s: &Status, services: usize) {
    let kernel = BpfObjects::of_pid(lab.agent_pid(AGENT))
        .and_then(|o| o.map_entries())
        .expect("the agent's maps");
    let want: BTreeMap<&str, usize> = [
        ("ist_services", 2 * services),
        ("ist_vips", services),
        ("ist_slots", services),
        ("ist_backends", services),
    ]
    .into();
    for (map, n) in &want {
        assert_eq!(kernel.get(*map), Some(n), "{map} in the kernel: {kernel:?}");
    }
    let fill: BTreeMap<&str, u64> = s
        .maps
        .iter()
        .map(|(k, v)| (k.as_str(), v.entries))
        .collect();
    assert_eq!(
        (
            fill["services"],
            fill["vips"],
            fill["slots"],
            fill["backends"]
        ),
        (
            2 * services as u64,
            services as u64,
            services as u64,
            services as u64
        ),
        "status map fill {:?}",
        s.maps
    );
    for x in &s.services {
        assert_eq!(x.backends.len(), 1, "{x:#?}");
        assert_eq!(x.backends[0].slots, 1, "{x:#?}");
        assert_eq!(x.ports, ["80/TCP", "80/UDP"], "{x:#?}");
    }
}

/// Software checksums on `ifname` in `ns` (tx checksum offload off, through the ethtool
/// ioctl): every packet sent there carries a complete checksum that the receiver verifies,
/// where an offloaded one on a veth would be trusted unchecked.
pub fn software_checksums(ns: &str, ifname: &str) {
    const SCRIPT: &str = r#"
import ctypes, fcntl, socket, struct, sys
def ethtool(cmd, data=0):
    ev = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifr = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(ev)) + bytes(16)
    fcntl.ioctl(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 0x8946, ifr)
    return struct.unpack("II", ev.raw)[1]
ethtool(0x17, 0)  # ETHTOOL_STXCSUM off
print(ethtool(0x16))  # ETHTOOL_GTXCSUM
"#;
    let out = netns::run(ns, &["python3", "-c", SCRIPT, ifname])
        .unwrap_or_else(|e| panic!("tx checksum offload off on {ifname} in {ns}: {e:#}"));
    assert_eq!(
        out.trim(),
        "0",
        "tx checksumming still on for {ifname} in {ns}"
    );
}

/// A datagram with a wrong UDP checksum from a raw IPv6 socket in `ns` (the kernel computes
/// none for raw UDP), sent to `target`.
pub fn send_bad_checksum_v6(ns: &str, target: SocketAddr) {
    const SCRIPT: &str = r#"
import socket, struct, sys
payload = b"bad checksum"
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.sendto(struct.pack("!HHHH", 40999, int(sys.argv[2]), 8 + len(payload), 0x1234) + payload, (sys.argv[1], 0))
"#;
    netns::run(
        ns,
        &[
            "python3",
            "-c",
            SCRIPT,
            &target.ip().to_string(),
            &target.port().to_string(),
        ],
    )
    .unwrap_or_else(|e| panic!("raw datagram from {ns}: {e:#}"));
}

/// The kernel's SNMP counters of namespace `ns` (`/proc/net/snmp` as `Proto.Name`,
/// `/proc/net/snmp6` as its names).
pub fn snmp(ns: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let snmp = netns::run(ns, &["cat", "/proc/net/snmp"]).expect("/proc/net/snmp");
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.chunks(2) {
        let [head, values] = pair else { continue };
        let proto = head.split(':').next().unwrap_or_default();
        for (k, v) in head
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            out.insert(format!("{proto}.{k}"), v.parse().unwrap_or(u64::MAX));
        }
    }
    let snmp6 = netns::run(ns, &["cat", "/proc/net/snmp6"]).expect("/proc/net/snmp6");
    for line in snmp6.lines() {
        if let Some((k, v)) = line.split_once(char::is_whitespace) {
            out.insert(k.to_owned(), v.trim().parse().unwrap_or(u64::MAX));
        }
    }
    out
}

/// Checksum error counters of `ns`: TCP (both families), UDP over IPv4 and over IPv6.
pub fn checksum_errors(ns: &str) -> BTreeMap<String, u64> {
    let all = snmp(ns);
    let out: BTreeMap<String, u64> = ["Tcp.InCsumErrors", "Udp.InCsumErrors", "Udp6InCsumErrors"]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), *all.get(*k)?)))
        .collect();
    assert_eq!(out.len(), 3, "checksum counters of {ns}: {all:?}");
    out
}

/// IPv4 packets namespace `ns` has forwarded.
pub fn forwarded(ns: &str) -> u64 {
    *snmp(ns).get("Ip.ForwDatagrams").expect("Ip ForwDatagrams")
}

/// Gives pod `k` of cluster 1's node (0: the first) `fd00:1:1k::2/64` on `eth0`, the node
/// side of its veth `fd00:1:1k::1/64`, and an IPv6 default route via the node. No duplicate
/// address detection, so the addresses work at once.
pub fn add_v6(lab: &Lab, k: usize) -> Ipv6Addr {
    let (node, pod, node_if) = (
        lab.node_ns(1),
        lab.node_pods(1)[k].clone(),
        lab.node_pod_ifs(1)[k].clone(),
    );
    let net = 0x10 + k as u16;
    let node_addr = Ipv6Addr::new(0xfd00, 1, net, 0, 0, 0, 0, 1);
    let pod_addr = Ipv6Addr::new(0xfd00, 1, net, 0, 0, 0, 0, 2);
    netns::sysctl(&node, "net.ipv6.conf.all.forwarding", "1").expect("forwarding");
    netns::ip(
        &node,
        &[
            "addr",
            "add",
            &format!("{node_addr}/64"),
            "dev",
            &node_if,
            "nodad",
        ],
    )
    .expect("node address");
    netns::ip(
        &pod,
        &[
            "addr",
            "add",
            &format!("{pod_addr}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .expect("pod address");
    netns::ip(
        &pod,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &node_addr.to_string(),
        ],
    )
    .expect("pod route");
    // Neighbour discovery between router and host waits for their link-local addresses,
    // which are tentative for a second or two after a veth comes up.
    for ns in [&node, &pod] {
        assert!(
            wait_for(
                || netns::ip(ns, &["-6", "addr", "show", "tentative"])
                    .is_ok_and(|o| o.trim().is_empty()),
                Duration::from_secs(5)
            ),
            "{ns} keeps tentative IPv6 addresses"
        );
    }
    pod_addr
}
