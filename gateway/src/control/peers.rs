//! Which peers the control plane talks to: every peer with a known mesh address and a verified
//! SPIFFE ID. Today those are the peers by identity that joined (their join named the mesh
//! address); peers learned later (signed member records) are added through [`LearnedPeers`].
//!
//! A mesh address is accepted only if it lies inside the peer's allowed prefixes: the engine
//! drops any inner packet whose source is outside the sending peer's prefixes, and a prefix
//! belongs to one peer only, so a TCP connection from that address can only have come through
//! that peer's WireGuard session. That is what authenticates the sender's cluster.

use crate::config::cluster_of;
use crate::daemon::DaemonState;
use crate::membership::SlotState;
use isthmus_catalog::ClusterName;
use parking_lot::RwLock;
use std::collections::BTreeMap;
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

/// Peers learned outside the join (e.g. from member records), by mesh address.
#[derive(Debug, Default)]
pub struct LearnedPeers(RwLock<BTreeMap<IpAddr, MeshPeer>>);

impl LearnedPeers {
    pub fn learn(&self, peer: MeshPeer) {
        self.0.write().insert(peer.addr, peer);
    }

    pub fn forget(&self, addr: IpAddr) {
        self.0.write().remove(&addr);
    }

    fn list(&self) -> Vec<MeshPeer> {
        self.0.read().values().cloned().collect()
    }
}

/// Joined peers by identity, plus learned ones. Holds the daemon weakly: the daemon owns the
/// control plane, not the other way round.
pub struct MembershipDirectory {
    pub state: Weak<DaemonState>,
    pub learned: std::sync::Arc<LearnedPeers>,
}

impl PeerDirectory for MembershipDirectory {
    fn peers(&self) -> Vec<MeshPeer> {
        let mut out = self.learned.list();
        let Some(state) = self.state.upgrade() else {
            return out;
        };
        let membership = state.membership.lock();
        for slot in &membership.slots {
            let SlotState::Joined {
                id,
                mesh_addr: Some(addr),
                ..
            } = &slot.state
            else {
                continue;
            };
            if !slot.config.allowed_ips.iter().any(|n| n.contains(addr)) {
                tracing::debug!(peer = %id, mesh_addr = %addr, "mesh address outside the peer's allowed_ips; no catalog sync with it");
                continue;
            }
            if let Some(p) = MeshPeer::new(*addr, id) {
                out.retain(|q| q.addr != p.addr);
                out.push(p);
            }
        }
        out
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
