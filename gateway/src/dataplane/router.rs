//! Crypto-key routing (WireGuard paper §2): a longest-prefix table from allowed prefixes to
//! peers, used both to pick the peer for an outgoing packet and to check that an incoming
//! packet's inner source belongs to the peer it came from.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use std::net::IpAddr;

#[derive(Clone)]
pub struct AllowedIps<T> {
    v4: PrefixMap<Ipv4Net, T>,
    v6: PrefixMap<Ipv6Net, T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            v4: PrefixMap::new(),
            v6: PrefixMap::new(),
        }
    }
}

impl<T> AllowedIps<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `net`, returning what it was mapped to before.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net.trunc() {
            IpNet::V4(n) => self.v4.insert(n, value),
            IpNet::V6(n) => self.v6.insert(n, value),
        }
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        match net.trunc() {
            IpNet::V4(n) => self.v4.remove(&n),
            IpNet::V6(n) => self.v6.remove(&n),
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, v)| v),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, v)| v),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), "a");
        t.insert(net("10.2.0.0/16"), "b");
        t.insert(net("10.2.3.4/32"), "c");
        t.insert(net("fd00::/8"), "v6");
        assert_eq!(t.lookup("10.9.9.9".parse().unwrap()), Some(&"a"));
        assert_eq!(t.lookup("10.2.9.9".parse().unwrap()), Some(&"b"));
        assert_eq!(t.lookup("10.2.3.4".parse().unwrap()), Some(&"c"));
        assert_eq!(t.lookup("11.0.0.1".parse().unwrap()), None);
        assert_eq!(t.lookup("fd12::1".parse().unwrap()), Some(&"v6"));
        assert_eq!(t.lookup("fe80::1".parse().unwrap()), None);
        t.remove(&net("10.2.0.0/16"));
        assert_eq!(t.lookup("10.2.9.9".parse().unwrap()), Some(&"a"));
    }

    #[test]
    fn default_route_matches_everything_of_its_family() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 1);
        assert_eq!(t.lookup("203.0.113.9".parse().unwrap()), Some(&1));
        assert_eq!(t.lookup("::1".parse().unwrap()), None);
    }

    proptest! {
        /// Against a reference model: the longest matching prefix by linear scan.
        #[test]
        fn matches_linear_scan(prefixes in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40), probes in proptest::collection::vec(any::<u32>(), 1..50)) {
            let mut t = AllowedIps::new();
            let mut model: Vec<(Ipv4Net, usize)> = Vec::new();
            for (i, (addr, len)) in prefixes.iter().enumerate() {
                let n = Ipv4Net::new((*addr).into(), *len).unwrap().trunc();
                t.insert(IpNet::V4(n), i);
                model.retain(|(m, _)| *m != n);
                model.push((n, i));
            }
            for p in probes {
                let a = std::net::Ipv4Addr::from(p);
                let want = model.iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|(_, v)| v);
                prop_assert_eq!(t.lookup(IpAddr::V4(a)), want);
            }
        }
    }
}
