//! Names and addresses of a lab. Pure functions, so the plan is testable without root.
//!
//! Cluster `i` (1-based) gets:
//!
//! | place | name / address |
//! |---|---|
//! | WAN namespace, bridge `br0`, ports `c{i}` | `ID-wan`, 10.255.0.0/24 |
//! | gateway namespace | `ID-c{i}-gw`: `wan0` 10.255.0.{10+i}/24, `lan0` 10.{i}.0.1/24 |
//! | node namespace | `ID-c{i}-node`: `eth0` 10.{i}.0.2/24, `pod0` 10.{i}.1.1/24 |
//! | pod namespace | `ID-c{i}-pod`: `eth0` 10.{i}.1.2/24 |
//! | gateway TUN / mesh address | `ID-{i}` / 100.96.0.{i} |

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
    #[should_panic(expected = "cluster index 0")]
    fn cluster_zero_is_a_bug() {
        let _ = wan_addr(0);
    }
}
