//! Which peers the control plane talks to: every peer with a known mesh address and a verified
//! SPIFFE ID: peers by identity that joined (their join named the mesh address) and members
//! learned from signed records (see `crate::daemon::mesh::merge`).
//!
//! A mesh address is accepted only if it lies inside the peer's allowed prefixes: the engine
//! drops any inner packet whose source is outside the sending peer's prefixes, and a prefix
//! belongs to one peer only, so a TCP connection from that address can only have come through
//! that peer's WireGuard session. That is what authenticates the sender's cluster.

use crate::config::cluster_of;
use crate::daemon::DaemonState;
use isthmus_catalog::ClusterName;
use std::net::IpAddr;
use std::sync::Weak;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub addr: IpAddr,
    pub spiffe_id: String,
    pub cluster: ClusterName,
}

impl MeshPeer {
    /// A peer from its SPIFFE ID; `None` unless the ID is a gateway's
    /// (`spiffe://<td>/cluster/<c>/gateway/<n>`) with a valid cluster name.
    pub fn new(addr: IpAddr, spiffe_id: &str) -> Option<Self> {
        let cluster = ClusterName::new(cluster_of(spiffe_id)?).ok()?;
        Some(Self {
            addr,
            spiffe_id: spiffe_id.to_string(),
            cluster,
        })
    }
}

/// The peers the control plane may sync with right now.
pub trait PeerDirectory: Send + Sync + 'static {
    fn peers(&self) -> Vec<MeshPeer>;

    /// The peer owning `addr`, if exactly one does.
    fn by_addr(&self, addr: IpAddr) -> Option<MeshPeer> {
        let mut found = self.peers().into_iter().filter(|p| p.addr == addr);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

/// The daemon's applied peers (joined by identity and, with `[members]`, learned from
/// records) that have a gateway identity and a mesh address routed to them. Holds the daemon
/// weakly: the daemon owns the control plane, not the other way round.
pub struct MembershipDirectory {
    pub state: Weak<DaemonState>,
}

impl PeerDirectory for MembershipDirectory {
    fn peers(&self) -> Vec<MeshPeer> {
        self.state
            .upgrade()
            .map(|s| s.merged.lock().mesh.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<MeshPeer>);
    impl PeerDirectory for Fixed {
        fn peers(&self) -> Vec<MeshPeer> {
            self.0.clone()
        }
    }

    #[test]
    fn cluster_comes_from_the_gateway_id() {
        let a: IpAddr = "100.96.0.2".parse().unwrap();
        let p = MeshPeer::new(a, "spiffe://isthmus.local/cluster/c2/gateway/gw").unwrap();
        assert_eq!(p.cluster.as_str(), "c2");
        assert!(MeshPeer::new(a, "spiffe://isthmus.local/edge/e1").is_none());
        assert!(MeshPeer::new(a, "spiffe://td/cluster/C2/gateway/gw").is_none());
        let b: IpAddr = "100.96.0.3".parse().unwrap();
        let q = MeshPeer::new(b, "spiffe://td/cluster/c3/gateway/gw").unwrap();
        let dir = Fixed(vec![p.clone(), q]);
        assert_eq!(dir.by_addr(a), Some(p.clone()));
        assert_eq!(dir.by_addr("100.96.0.9".parse().unwrap()), None);
        // Two claimants of one address: trust neither.
        let dir = Fixed(vec![
            p.clone(),
            MeshPeer {
                cluster: ClusterName::new("c4").unwrap(),
                ..p
            },
        ]);
        assert_eq!(dir.by_addr(a), None);
    }
}
