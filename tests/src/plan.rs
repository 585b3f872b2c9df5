//! Names and addresses of a lab. Pure functions, so the plan is testable without root.
//!
//! Cluster `i` (1-based) gets:
//!
//! | place | name / address |
//! |---|---|
//! | WAN namespace, bridge `br0`, ports `c{i}` | `ID-wan`, 10.255.0.0/24 |
//! | gateway namespace | `ID-c{i}-gw`: `wan0` 10.255.0.{10+i}/24, `lan0` 10.{i}.0.1/24 |
//! | node namespace | `ID-c{i}-node`: `eth0` 10.{i}.0.2/24, `pod0` 10.{i}.1.1/24; default via 10.{i}.0.1 (unless built without it) |
//! | pod namespace | `ID-c{i}-pod`: `eth0` 10.{i}.1.2/24 |
//! | further pods (`Lab::add_pod`) | `ID-c{i}-{suffix}`: `eth0` 10.{i}.1.{2+n}/32, node side `pod{n}` 10.{i}.1.1/32, n = 1, 2, … |
//! | pod on the gateway node (`Lab::add_gateway_pod`) | `ID-c{i}-gwpod`: `eth0` 10.{i}.2.2/24, gateway side `gpod0` 10.{i}.2.1/24 |
//! | gateway TUN / mesh address | `ID-{i}` / 100.96.0.{i} |
//!
//! Further pods are wired the way Calico wires them: the pod has a /32 and a default route
//! `via 10.{i}.1.1 dev eth0 onlink`; the node has a /32 route to each pod address through the
//! pod's veth and owns 10.{i}.1.1 on every pod veth, so it answers the pod's ARP. The node
//! answers ARP on `pod0` for the other pods' addresses (proxy ARP), since the first pod still
//! sees 10.{i}.1.0/24 as on-link. Every node-side pod veth matches [`NODE_POD_IF_PATTERN`].
//! Extra addresses a test gives a pod (`Lab::add_pod_addr`, e.g. [`pod_extra_addr`]) get a /32
//! route on the node (or gateway) too.
//!
//! Built with `LabBuilder::node_default_route(false)`, a node has no default route: it reaches
//! its gateway's LAN and its own pods, and nothing else until something (the route agent)
//! installs routes to the remote clusters' prefixes via [`gw_lan_addr`]. Packets from another
//! cluster still arrive at its pods, but their replies have no route back.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of lab ids when the builder is not given another.
pub const DEFAULT_PREFIX: &str = "i";
/// Largest cluster count: 10 + i must stay a valid host octet on the WAN.
pub const MAX_CLUSTERS: usize = 200;
/// Length of the random part of a lab id.
const ID_SUFFIX_LEN: usize = 5;
/// Longest id prefix; keeps the TUN name `ID-{i}` within IFNAMSIZ - 1 = 15 bytes.
const MAX_PREFIX_LEN: usize = 4;
/// Prefix length of every lab subnet.
pub const PREFIX_LEN: u8 = 24;
/// UDP port every gateway listens on.
pub const LISTEN_PORT: u16 = 51820;
/// Most pods per node, the first one included: pod `n` is 10.i.1.{2+n}, below the range of
/// [`pod_extra_addr`].
pub const MAX_PODS_PER_NODE: usize = 126;
/// Most addresses [`pod_extra_addr`] hands out per cluster: 10.i.1.128 ..= 10.i.1.254.
pub const MAX_POD_EXTRA_ADDRS: usize = 127;
/// A glob matching the node side of every pod veth (`pod0`, `pod1`, …).
pub const NODE_POD_IF_PATTERN: &str = "pod*";
/// Gateway side of the veth to the gateway node's pod.
pub const GW_POD_IF: &str = "gpod0";
/// Namespace suffix of the pod on cluster `i`'s gateway node: `ID-c{i}-gwpod`.
pub const GW_POD_SUFFIX: &str = "gwpod";
/// Longest pod namespace suffix.
const MAX_POD_SUFFIX_LEN: usize = 16;
/// Suffixes the lab itself uses for a cluster's namespaces.
const RESERVED_POD_SUFFIXES: [&str; 4] = ["gw", "node", "pod", GW_POD_SUFFIX];

/// A lab's unique id: a short prefix of lowercase letters and 5 lowercase hex digits.
///
/// Every namespace of the lab is named `ID-…`, which is how [`crate::Lab::sweep_stale`] finds
/// the namespaces of a crashed run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabId(String);

impl LabId {
    /// A fresh id for this process. Unique within the process (counter) and very likely
    /// across processes (pid and clock); the owner registry turns "likely" into "certain".
    pub fn generate(prefix: &str) -> anyhow::Result<LabId> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        LabId::from_parts(prefix, std::process::id(), counter, nanos)
    }

    /// The id derived from these inputs; [`LabId::generate`] feeds it pid, counter and clock.
    pub fn from_parts(prefix: &str, pid: u32, counter: u64, nanos: u128) -> anyhow::Result<LabId> {
        check_prefix(prefix)?;
        let mut h = splitmix64(u64::from(pid));
        h = splitmix64(h ^ counter);
        // Truncation keeps the fast-moving low bits of the clock, which is all the mix needs.
        h = splitmix64(h ^ (nanos as u64));
        let suffix = format!("{:05x}", h & 0xf_ffff);
        Ok(LabId(format!("{prefix}{suffix}")))
    }

    /// Accepts `s` only if it has the exact shape of an id with this prefix.
    pub fn parse(prefix: &str, s: &str) -> Option<LabId> {
        let rest = s.strip_prefix(prefix)?;
        let ok = !prefix.is_empty()
            && rest.len() == ID_SUFFIX_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| LabId(s.to_owned()))
    }

    /// The id of the lab that owns namespace `ns`, if `ns` is named like one of ours.
    pub fn of_namespace(prefix: &str, ns: &str) -> Option<LabId> {
        let (id, rest) = ns.split_once('-')?;
        if rest.is_empty() {
            return None;
        }
        LabId::parse(prefix, id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Namespace holding the WAN bridge.
    pub fn wan_ns(&self) -> String {
        format!("{self}-wan")
    }

    pub fn gw_ns(&self, i: usize) -> String {
        format!("{self}-c{}-gw", check_cluster(i))
    }

    pub fn node_ns(&self, i: usize) -> String {
        format!("{self}-c{}-node", check_cluster(i))
    }

    pub fn pod_ns(&self, i: usize) -> String {
        format!("{self}-c{}-pod", check_cluster(i))
    }

    /// Namespace `ID-c{i}-{suffix}` of a further pod of cluster `i` (see [`check_pod_suffix`]).
    pub fn cluster_ns(&self, i: usize, suffix: &str) -> String {
        format!("{self}-c{}-{suffix}", check_cluster(i))
    }

    /// Namespace of the pod on cluster `i`'s gateway node.
    pub fn gw_pod_ns(&self, i: usize) -> String {
        self.cluster_ns(i, GW_POD_SUFFIX)
    }

    /// Namespace for something a test adds, e.g. a reference WireGuard peer.
    pub fn extra_ns(&self, suffix: &str) -> String {
        format!("{self}-{suffix}")
    }

    /// TUN device of cluster `i`'s gateway; also names `/var/run/wireguard/<name>.sock`, which is
    /// global, hence the lab id in it.
    pub fn tun_name(&self, i: usize) -> String {
        let name = format!("{self}-{}", check_cluster(i));
        debug_assert!(
            name.len() <= 15,
            "interface name {name} longer than 15 bytes"
        );
        name
    }
}

impl fmt::Display for LabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    let ok = (1..=MAX_PREFIX_LEN).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase());
    anyhow::ensure!(
        ok,
        "lab id prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} lowercase ASCII letters"
    );
    Ok(())
}

/// Cluster indices are 1-based; anything else is a bug in the calling test.
fn check_cluster(i: usize) -> usize {
    assert!(
        (1..=MAX_CLUSTERS).contains(&i),
        "cluster index {i} outside 1..={MAX_CLUSTERS}"
    );
    i
}

fn octet(i: usize) -> u8 {
    u8::try_from(check_cluster(i)).expect("MAX_CLUSTERS fits in an octet")
}

/// splitmix64 finaliser: spreads every input bit over the output.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Gateway `wan0` address of cluster `i`.
pub fn wan_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 0, 10 + octet(i))
}

/// Gateway `lan0` address of cluster `i`: the node's default gateway.
pub fn gw_lan_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(i), 0, 1)
}

/// Node `eth0` address of cluster `i`.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(i), 0, 2)
}

/// Node `pod0` address of cluster `i`: the pod's default gateway.
pub fn node_pod_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(i), 1, 1)
}

/// Pod `eth0` address of cluster `i`.
pub fn pod_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(i), 1, 2)
}

/// Pod subnet of cluster `i`, routed by the gateway to the node.
pub fn pod_subnet(i: usize) -> String {
    format!("10.{}.1.0/{PREFIX_LEN}", octet(i))
}

/// Node side of the veth to pod `n` of a node: `pod{n}` (`pod0` is [`crate::NODE_POD_IF`]).
pub fn node_pod_if(n: usize) -> String {
    format!("pod{n}")
}

/// Address of pod `n` on cluster `i`'s node: 10.i.1.{2+n}; pod 0 is [`pod_addr`].
pub fn nth_pod_addr(i: usize, n: usize) -> Ipv4Addr {
    assert!(
        n < MAX_PODS_PER_NODE,
        "pod {n} outside 0..{MAX_PODS_PER_NODE}"
    );
    let host = u8::try_from(2 + n).expect("MAX_PODS_PER_NODE keeps the octet small");
    Ipv4Addr::new(10, octet(i), 1, host)
}

/// The `k`th address for a test to add to some pod of cluster `i` (a second backend):
/// 10.i.1.{128+k}, above every [`nth_pod_addr`].
pub fn pod_extra_addr(i: usize, k: usize) -> Ipv4Addr {
    assert!(
        k < MAX_POD_EXTRA_ADDRS,
        "extra pod address {k} outside 0..{MAX_POD_EXTRA_ADDRS}"
    );
    let host = u8::try_from(128 + k).expect("MAX_POD_EXTRA_ADDRS keeps the octet small");
    Ipv4Addr::new(10, octet(i), 1, host)
}

/// Gateway `gpod0` address of cluster `i`: the gateway pod's default gateway.
pub fn gw_pod_gateway_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(i), 2, 1)
}

/// Address of the pod on cluster `i`'s gateway node.
pub fn gw_pod_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, octet(i), 2, 2)
}

/// Subnet between cluster `i`'s gateway and the pod on its node.
pub fn gw_pod_subnet(i: usize) -> String {
    format!("10.{}.2.0/{PREFIX_LEN}", octet(i))
}

/// Whether `addr` may be given to a pod in the /24 of `subnet` (any address of it, e.g. the
/// pod's gateway 10.i.1.1): inside it, and neither the network, the broadcast nor the `.1`
/// the node or gateway owns.
pub fn is_pod_host_in(subnet: Ipv4Addr, addr: Ipv4Addr) -> bool {
    let (s, a) = (subnet.octets(), addr.octets());
    s[..3] == a[..3] && (2..=254).contains(&a[3])
}

/// Checks a namespace suffix for a further pod: 1–16 of `a-z`, `0-9`, `-`, starting with a
/// letter, and not one the lab uses itself (`gw`, `node`, `pod`, `gwpod`).
pub fn check_pod_suffix(suffix: &str) -> anyhow::Result<()> {
    let ok = (1..=MAX_POD_SUFFIX_LEN).contains(&suffix.len())
        && suffix.starts_with(|c: char| c.is_ascii_lowercase())
        && suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    anyhow::ensure!(
        ok,
        "pod name {suffix:?} must be 1 to {MAX_POD_SUFFIX_LEN} of a-z, 0-9 and '-', starting \
         with a letter"
    );
    anyhow::ensure!(
        !RESERVED_POD_SUFFIXES.contains(&suffix),
        "pod name {suffix:?} is one the lab uses itself ({RESERVED_POD_SUFFIXES:?})"
    );
    Ok(())
}

/// Everything cluster `i` owns; what the other gateways route into the tunnel to it.
pub fn cluster_cidr(i: usize) -> String {
    format!("10.{}.0.0/16", octet(i))
}

/// Mesh address of cluster `i`'s gateway, on its TUN.
pub fn mesh_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 96, 0, octet(i))
}

/// `addr/24`, the form `ip addr add` takes.
pub fn with_prefix(addr: Ipv4Addr) -> String {
    format!("{addr}/{PREFIX_LEN}")
}

/// `addr/32`, a host address or route.
pub fn host(addr: Ipv4Addr) -> String {
    format!("{addr}/32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_documented_shape_and_differ() {
        let a = LabId::generate("i").unwrap();
        let b = LabId::generate("i").unwrap();
        assert_ne!(a, b, "two labs of one process share an id");
        for id in [&a, &b] {
            assert_eq!(LabId::parse("i", id.as_str()).as_ref(), Some(id));
            assert_eq!(id.as_str().len(), 6);
        }
    }

    #[test]
    fn ids_spread_over_counter_and_pid() {
        let ids: std::collections::HashSet<_> = (0..1000)
            .map(|c| LabId::from_parts("i", 4242, c, 7).unwrap())
            .collect();
        // 1000 draws from 2^20 values: a handful of collisions at most.
        assert!(ids.len() > 990, "only {} distinct ids", ids.len());
        assert_ne!(
            LabId::from_parts("i", 1, 0, 0).unwrap(),
            LabId::from_parts("i", 2, 0, 0).unwrap()
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["", "I", "i1", "abcde", "a-b"] {
            assert!(LabId::generate(p).is_err(), "prefix {p:?} accepted");
        }
    }

    #[test]
    fn parse_rejects_near_misses() {
        for s in ["i1234", "i123456", "i1234g", "x12345", "i1234F", "12345"] {
            assert_eq!(LabId::parse("i", s), None, "{s} parsed");
        }
        assert!(LabId::parse("bx", "bx0a1b2").is_some());
    }

    #[test]
    fn namespaces_map_back_to_their_lab() {
        let id = LabId::parse("i", "i0a1b2").unwrap();
        for ns in [
            id.wan_ns(),
            id.gw_ns(1),
            id.node_ns(12),
            id.pod_ns(3),
            id.extra_ns("ref"),
        ] {
            assert_eq!(LabId::of_namespace("i", &ns), Some(id.clone()), "{ns}");
        }
        assert_eq!(id.gw_ns(2), "i0a1b2-c2-gw");
        assert_eq!(id.node_ns(2), "i0a1b2-c2-node");
        assert_eq!(id.pod_ns(2), "i0a1b2-c2-pod");
        assert_eq!(id.wan_ns(), "i0a1b2-wan");
        assert_eq!(LabId::of_namespace("i", "i0a1b2-"), None);
        assert_eq!(LabId::of_namespace("i", "i0a1b2"), None);
        assert_eq!(LabId::of_namespace("i", "docker-1"), None);
        assert_eq!(LabId::of_namespace("i", "ia1b2c3-wan"), None);
    }

    #[test]
    fn tun_names_fit_ifnamsiz_for_every_cluster() {
        let id = LabId::from_parts("abcd", 1, 2, 3).unwrap();
        assert!(id.tun_name(MAX_CLUSTERS).len() <= 15);
        assert_eq!(LabId::parse("i", "i0a1b2").unwrap().tun_name(3), "i0a1b2-3");
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(wan_addr(1), Ipv4Addr::new(10, 255, 0, 11));
        assert_eq!(wan_addr(MAX_CLUSTERS), Ipv4Addr::new(10, 255, 0, 210));
        assert_eq!(gw_lan_addr(2), Ipv4Addr::new(10, 2, 0, 1));
        assert_eq!(node_addr(2), Ipv4Addr::new(10, 2, 0, 2));
        assert_eq!(node_pod_addr(2), Ipv4Addr::new(10, 2, 1, 1));
        assert_eq!(pod_addr(2), Ipv4Addr::new(10, 2, 1, 2));
        assert_eq!(pod_subnet(3), "10.3.1.0/24");
        assert_eq!(cluster_cidr(3), "10.3.0.0/16");
        assert_eq!(mesh_addr(3), Ipv4Addr::new(100, 96, 0, 3));
        assert_eq!(with_prefix(pod_addr(1)), "10.1.1.2/24");
    }

    #[test]
    fn further_pods_follow_the_plan() {
        let id = LabId::parse("i", "i0a1b2").unwrap();
        assert_eq!(id.cluster_ns(2, "b"), "i0a1b2-c2-b");
        assert_eq!(id.gw_pod_ns(3), "i0a1b2-c3-gwpod");
        for ns in [id.cluster_ns(2, "b"), id.gw_pod_ns(1)] {
            assert_eq!(LabId::of_namespace("i", &ns), Some(id.clone()), "{ns}");
        }
        assert_eq!(nth_pod_addr(2, 0), pod_addr(2));
        assert_eq!(nth_pod_addr(2, 1), Ipv4Addr::new(10, 2, 1, 3));
        assert_eq!(
            nth_pod_addr(2, MAX_PODS_PER_NODE - 1),
            Ipv4Addr::new(10, 2, 1, 127)
        );
        assert_eq!(pod_extra_addr(2, 0), Ipv4Addr::new(10, 2, 1, 128));
        assert_eq!(
            pod_extra_addr(2, MAX_POD_EXTRA_ADDRS - 1),
            Ipv4Addr::new(10, 2, 1, 254)
        );
        assert_eq!(node_pod_if(0), crate::NODE_POD_IF);
        assert_eq!(node_pod_if(12), "pod12");
        assert_eq!(gw_pod_gateway_addr(4), Ipv4Addr::new(10, 4, 2, 1));
        assert_eq!(gw_pod_addr(4), Ipv4Addr::new(10, 4, 2, 2));
        assert_eq!(gw_pod_subnet(4), "10.4.2.0/24");
        assert_eq!(host(gw_pod_addr(4)), "10.4.2.2/32");
        assert!(GW_POD_IF.len() <= 15);
    }

    #[test]
    fn every_pod_veth_matches_the_pattern_and_nothing_else_does() {
        let prefix = NODE_POD_IF_PATTERN.strip_suffix('*').unwrap();
        for n in [0, 1, 9, MAX_PODS_PER_NODE - 1] {
            let name = node_pod_if(n);
            assert!(name.starts_with(prefix) && name.len() <= 15, "{name}");
        }
        for other in [crate::ETH_IF, crate::GW_LAN_IF, crate::GW_WAN_IF, GW_POD_IF] {
            assert!(
                !other.starts_with(prefix),
                "{other} matches {NODE_POD_IF_PATTERN}"
            );
        }
    }

    #[test]
    fn pod_address_ranges_do_not_overlap_and_stay_in_the_subnet() {
        let pods: std::collections::HashSet<_> =
            (0..MAX_PODS_PER_NODE).map(|n| nth_pod_addr(7, n)).collect();
        let extra: std::collections::HashSet<_> = (0..MAX_POD_EXTRA_ADDRS)
            .map(|k| pod_extra_addr(7, k))
            .collect();
        assert_eq!(pods.len() + extra.len(), 253);
        assert!(pods.is_disjoint(&extra));
        let subnet = Ipv4Addr::new(10, 7, 1, 0);
        assert!(pods
            .iter()
            .chain(&extra)
            .all(|&a| is_pod_host_in(subnet, a)));
        for bad in [
            Ipv4Addr::new(10, 7, 1, 0),
            node_pod_addr(7),
            Ipv4Addr::new(10, 7, 1, 255),
            Ipv4Addr::new(10, 7, 2, 5),
            Ipv4Addr::new(10, 8, 1, 5),
        ] {
            assert!(!is_pod_host_in(subnet, bad), "{bad} accepted");
        }
        assert!(is_pod_host_in(Ipv4Addr::new(10, 7, 2, 0), gw_pod_addr(7)));
    }

    #[test]
    fn pod_suffixes_are_checked() {
        for ok in ["b", "pod2", "backend-2", "a234567890123456"] {
            check_pod_suffix(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        for bad in [
            "",
            "2b",
            "-b",
            "B",
            "a_b",
            "a.b",
            "a2345678901234567",
            "gw",
            "node",
            "pod",
            "gwpod",
        ] {
            assert!(check_pod_suffix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    #[should_panic(expected = "pod 126 outside")]
    fn too_many_pods_is_a_bug() {
        let _ = nth_pod_addr(1, MAX_PODS_PER_NODE);
    }

    #[test]
    #[should_panic(expected = "cluster index 0")]
    fn cluster_zero_is_a_bug() {
        let _ = wan_addr(0);
    }
}
