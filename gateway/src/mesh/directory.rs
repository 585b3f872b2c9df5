//! Which peers the control plane talks to: every peer with a known mesh address and a verified
//! SPIFFE ID: peers by identity that joined (their join named the mesh address) and members
//! learned from signed records (see [`super::merge::merge`]). The mesh publishes the list on
//! a watch channel after every apply; the control plane reads it through [`PeerDirectory`].
//!
//! A mesh address is accepted only if it lies inside the peer's allowed prefixes: the engine
//! drops any inner packet whose source is outside the sending peer's prefixes, and a prefix
//! belongs to one peer only, so a TCP connection from that address can only have come through
//! that peer's WireGuard session. That is what authenticates the sender's cluster.

use crate::config::cluster_of;
use isthmus_catalog::ClusterName;
use isthmus_pki::SpiffeId;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub addr: IpAddr,
    pub spiffe_id: SpiffeId,
    pub cluster: ClusterName,
}

impl MeshPeer {
    /// A peer from its SPIFFE ID; `None` unless the ID is a gateway's
    /// (`spiffe://<td>/cluster/<c>/gateway/<n>`) with a valid cluster name.
    pub fn new(addr: IpAddr, spiffe_id: &SpiffeId) -> Option<Self> {
        let cluster = ClusterName::new(cluster_of(spiffe_id.as_str())?).ok()?;
        Some(Self {
            addr,
            spiffe_id: spiffe_id.clone(),
            cluster,
        })
    }
}

/// The peers the control plane may sync with right now.
pub trait PeerDirectory: Send + Sync + 'static {
    fn peers(&self) -> Arc<[MeshPeer]>;

    /// The peer owning `addr`, if exactly one does.
    fn by_addr(&self, addr: IpAddr) -> Option<MeshPeer> {
        let peers = self.peers();
        let mut found = peers.iter().filter(|p| p.addr == addr);
        let first = found.next()?;
        found.next().is_none().then(|| first.clone())
    }
}

/// The mesh's side of the directory: [`Directory::publish`] after every apply.
pub struct Directory {
    tx: watch::Sender<Arc<[MeshPeer]>>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(Arc::from(Vec::new())),
        }
    }
}

impl Directory {
    /// Replaces the list; readers see it at their next read.
    pub fn publish(&self, peers: &[MeshPeer]) {
        self.tx.send_if_modified(|held| {
            if **held == *peers {
                return false;
            }
            *held = Arc::from(peers.to_vec());
            true
        });
    }

    /// A reader for the control plane.
    pub fn reader(&self) -> DirectoryReader {
        DirectoryReader(self.tx.subscribe())
    }
}

/// The control plane's view of the directory.
pub struct DirectoryReader(watch::Receiver<Arc<[MeshPeer]>>);

impl PeerDirectory for DirectoryReader {
    fn peers(&self) -> Arc<[MeshPeer]> {
        self.0.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<MeshPeer>);
    impl PeerDirectory for Fixed {
        fn peers(&self) -> Arc<[MeshPeer]> {
            Arc::from(self.0.clone())
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn cluster_comes_from_the_gateway_id() {
        let a: IpAddr = "100.96.0.2".parse().unwrap();
        let p = MeshPeer::new(a, &id("spiffe://isthmus.local/cluster/c2/gateway/gw")).unwrap();
        assert_eq!(p.cluster.as_str(), "c2");
        assert!(MeshPeer::new(a, &id("spiffe://isthmus.local/edge/e1")).is_none());
        assert!(MeshPeer::new(a, &id("spiffe://td/cluster/C2/gateway/gw")).is_none());
        let b: IpAddr = "100.96.0.3".parse().unwrap();
        let q = MeshPeer::new(b, &id("spiffe://td/cluster/c3/gateway/gw")).unwrap();
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
