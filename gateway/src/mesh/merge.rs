//! One peer set from every source: peers by key from the file, peers by identity that
//! joined, and members learned from signed records, with every learned prefix given to one
//! owner only. Pure: the [`super::Mesh`] calls [`merge`] and the daemon applies the result.

use super::directory::MeshPeer;
use super::joined::JoinedSlot;
use super::records::MemberPeer;
use crate::config::{overlaps, IdentityPeerConfig, PeerConfig};
use crate::keys::PublicKey;
use ipnet::IpNet;
use isthmus_pki::SpiffeId;
use std::net::IpAddr;
use std::time::SystemTime;

/// The engine's peer set and what goes with it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Merged {
    pub peers: Vec<PeerConfig>,
    /// Peers the control plane syncs with: a gateway identity and a mesh address routed to it.
    pub mesh: Vec<MeshPeer>,
    /// Members that were installed, by key, with their identity and SVID expiry (for
    /// `tunctl peers`).
    pub members: Vec<(PublicKey, SpiffeId, SystemTime)>,
    /// Prefixes not given to a peer because another holds them: `(peer, prefix, holder)`.
    pub refused: Vec<(String, IpNet, String)>,
}

impl Merged {
    /// The prefixes this gateway carries into the tunnel, which the cluster's other nodes route
    /// via the gateway node: every applied peer's allowed IPs and our own mesh addresses as host
    /// prefixes (nodes reach the clusterset DNS there). Sorted, without duplicates, and without
    /// default routes, which the gateway does not route through the tunnel either.
    pub fn carried_routes(&self, mesh_addrs: &[IpAddr]) -> Vec<IpNet> {
        let all: Vec<IpNet> = self
            .peers
            .iter()
            .flat_map(|p| p.allowed_ips.iter().map(IpNet::trunc))
            .chain(mesh_addrs.iter().copied().map(host))
            .collect();
        let (mut routes, _) = crate::netlink::routable(&all);
        routes.sort();
        routes.dedup();
        routes
    }
}

/// Who holds a prefix.
struct Claims(Vec<(IpNet, String)>);

impl Claims {
    /// Gives `net` to `owner` unless another owner holds an overlapping prefix (returned).
    fn claim(&mut self, net: IpNet, owner: &str) -> Result<(), String> {
        if let Some((_, holder)) = self
            .0
            .iter()
            .find(|(held, holder)| holder != owner && overlaps(held, &net))
        {
            return Err(holder.clone());
        }
        self.0.push((net, owner.to_string()));
        Ok(())
    }
}

/// How `tunctl peers` names a gateway learned without a name in the file: `<cluster>/<node>`
/// of `spiffe://<td>/cluster/<cluster>/gateway/<node>` (the SPIFFE ID column has the rest).
pub fn short_name(id: &SpiffeId) -> String {
    let segs: Vec<&str> = id.segments().collect();
    match segs.as_slice() {
        ["cluster", c, "gateway", n] => format!("{c}/{n}"),
        _ => id.as_str().to_string(),
    }
}

fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// Members learned from records, and the keepalive to give them.
pub struct Learned {
    pub members: Vec<MemberPeer>,
    pub keepalive: Option<u16>,
}

/// Merges the peers from the file (`configured` by key, `slots` by identity), the joined
/// slots and, with `[members]`, the member records into one set in which every learned prefix
/// has one owner.
///
/// What the file says is kept as it is (it was validated at load). What is learned — the mesh
/// address a peer joined with, the prefixes of a record — is checked against every prefix
/// already held, in this order: ours, peers by key, joined peers by identity, members learned
/// only from records (by identity). A member is also refused the prefixes of a configured
/// peer by identity it is not. A refused prefix is reported, never taken from its holder.
/// Without `[members]` (`learned` is `None`) nothing is learned: a joined peer is synced with
/// only when its mesh address lies inside its configured prefixes.
pub fn merge(
    own: &[IpNet],
    configured: &[PeerConfig],
    slots: &[IdentityPeerConfig],
    joined: Vec<JoinedSlot>,
    learned: Option<Learned>,
) -> Merged {
    let mut claims = Claims(Vec::new());
    let mut out = Merged::default();
    for net in own {
        let _ = claims.claim(*net, "this gateway");
    }
    for p in configured {
        let owner = p.public_key.to_base64();
        for net in &p.allowed_ips {
            let _ = claims.claim(*net, &owner);
        }
        out.peers.push(p.clone());
    }
    let learning = learned.is_some();
    let (members, keepalive) = learned.map_or((Vec::new(), None), |l| (l.members, l.keepalive));
    for j in &joined {
        let owner = j.id.as_str().to_string();
        let mut peer = j.peer.clone();
        for net in &peer.allowed_ips {
            let _ = claims.claim(*net, &owner);
        }
        let record = members
            .iter()
            .find(|m| m.spiffe_id == j.id && m.wg_public_key == *j.peer.public_key.as_bytes());
        let mesh_addr = j.mesh_addr.or(record.map(|m| m.mesh_addr));
        if learning {
            let mut wanted: Vec<IpNet> = record.map(|m| m.prefixes.clone()).unwrap_or_default();
            wanted.extend(mesh_addr.map(host));
            for net in wanted {
                if peer
                    .allowed_ips
                    .iter()
                    .any(|n| n.contains(&net.network()) && n.prefix_len() <= net.prefix_len())
                {
                    continue;
                }
                match claims.claim(net, &owner) {
                    Ok(()) => peer.allowed_ips.push(net),
                    Err(holder) => out.refused.push((owner.clone(), net, holder)),
                }
            }
            if peer.endpoint.is_none() {
                peer.endpoint = record.and_then(|m| m.endpoint);
            }
        }
        if let Some(a) = mesh_addr {
            if peer.allowed_ips.iter().any(|n| n.contains(&a)) {
                out.mesh.extend(MeshPeer::new(a, &j.id));
            } else {
                tracing::debug!(peer = %owner, mesh_addr = %a, "mesh address outside the peer's allowed_ips; no catalog sync with it");
            }
        }
        if let Some(m) = record {
            out.members
                .push((j.peer.public_key, m.spiffe_id.clone(), m.not_after));
        }
        out.peers.push(peer);
    }
    for m in members {
        let key = PublicKey::from_bytes(m.wg_public_key);
        if joined.iter().any(|j| j.id == m.spiffe_id)
            || out.peers.iter().any(|p| p.public_key == key)
        {
            continue;
        }
        let owner = m.spiffe_id.as_str().to_string();
        let mut allowed = Vec::new();
        for net in m.prefixes.iter().copied().chain([host(m.mesh_addr)]) {
            if let Some(other) = slots.iter().find(|s| {
                !s.expected.matches(&m.spiffe_id) && s.allowed_ips.iter().any(|n| overlaps(n, &net))
            }) {
                out.refused.push((owner.clone(), net, other.display_name()));
                continue;
            }
            match claims.claim(net, &owner) {
                Ok(()) => allowed.push(net),
                Err(holder) => out.refused.push((owner.clone(), net, holder)),
            }
        }
        if allowed.contains(&host(m.mesh_addr)) {
            out.mesh.extend(MeshPeer::new(m.mesh_addr, &m.spiffe_id));
        }
        out.members.push((key, m.spiffe_id.clone(), m.not_after));
        out.peers.push(PeerConfig {
            name: Some(short_name(&m.spiffe_id)),
            public_key: key,
            preshared_key: None,
            endpoint: m.endpoint,
            allowed_ips: allowed,
            persistent_keepalive: keepalive,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Expected;
    use std::time::Duration;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    fn id(c: &str) -> SpiffeId {
        SpiffeId::new(&format!("spiffe://td/cluster/{c}/gateway/gw")).unwrap()
    }

    fn member(c: &str, k: u8, mesh: &str, prefixes: &[&str]) -> MemberPeer {
        MemberPeer {
            spiffe_id: id(c),
            cluster: c.into(),
            wg_public_key: [k; 32],
            endpoint: Some(format!("192.0.2.{k}:51820").parse().unwrap()),
            join_endpoint: None,
            mesh_addr: mesh.parse().unwrap(),
            prefixes: prefixes.iter().map(|p| net(p)).collect(),
            generation: 1,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000),
        }
    }

    fn joined(c: &str, k: u8, mesh: Option<&str>, allowed: &[&str]) -> JoinedSlot {
        JoinedSlot {
            peer: PeerConfig {
                name: Some(c.into()),
                public_key: key(k),
                preshared_key: None,
                endpoint: None,
                allowed_ips: allowed.iter().map(|p| net(p)).collect(),
                persistent_keepalive: Some(25),
            },
            id: id(c),
            mesh_addr: mesh.map(|m| m.parse().unwrap()),
        }
    }

    fn learned(members: Vec<MemberPeer>) -> Option<Learned> {
        Some(Learned {
            members,
            keepalive: Some(25),
        })
    }

    fn find(m: &Merged, k: u8) -> &PeerConfig {
        m.peers.iter().find(|p| p.public_key == key(k)).unwrap()
    }

    #[test]
    fn a_seed_joined_without_prefixes_gets_them_from_its_record() {
        let m = merge(
            &[net("10.1.0.0/16"), net("100.96.0.1/32")],
            &[],
            &[],
            vec![joined("c2", 2, Some("100.96.0.2"), &[])],
            learned(vec![
                member("c2", 2, "100.96.0.2", &["10.2.0.0/16"]),
                member("c3", 3, "100.96.0.3", &["10.3.0.0/16"]),
            ]),
        );
        assert_eq!(m.peers.len(), 2);
        assert_eq!(
            find(&m, 2).allowed_ips,
            vec![net("10.2.0.0/16"), net("100.96.0.2/32")]
        );
        // The joined slot keeps its own keepalive (a change would restart its session).
        assert_eq!(find(&m, 2).persistent_keepalive, Some(25));
        assert_eq!(
            find(&m, 3).endpoint,
            Some("192.0.2.3:51820".parse().unwrap())
        );
        assert_eq!(
            m.mesh
                .iter()
                .map(|p| p.addr.to_string())
                .collect::<Vec<_>>(),
            vec!["100.96.0.2", "100.96.0.3"]
        );
        assert!(m.refused.is_empty());
        assert_eq!(m.members.len(), 2);
    }

    #[test]
    fn overlapping_claims_are_refused_and_reported_never_taken() {
        let configured = PeerConfig {
            name: None,
            public_key: key(9),
            preshared_key: None,
            endpoint: None,
            allowed_ips: vec![net("10.9.0.0/16")],
            persistent_keepalive: None,
        };
        let m = merge(
            &[net("10.1.0.0/16"), net("100.96.0.1/32")],
            &[configured],
            &[],
            vec![],
            learned(vec![
                // Claims our prefix, a configured peer's and our mesh address.
                member(
                    "c4",
                    4,
                    "100.96.0.1",
                    &["10.1.2.0/24", "10.9.0.0/8", "10.4.0.0/16"],
                ),
                // Two members claiming one prefix: the first by identity keeps it.
                member("c5", 5, "100.96.0.5", &["10.5.0.0/16"]),
                member("c6", 6, "100.96.0.6", &["10.5.1.0/24"]),
            ]),
        );
        assert_eq!(find(&m, 4).allowed_ips, vec![net("10.4.0.0/16")]);
        assert_eq!(find(&m, 9).allowed_ips, vec![net("10.9.0.0/16")]);
        assert_eq!(
            find(&m, 5).allowed_ips,
            vec![net("10.5.0.0/16"), net("100.96.0.5/32")]
        );
        assert_eq!(find(&m, 6).allowed_ips, vec![net("100.96.0.6/32")]);
        let refused: Vec<String> = m
            .refused
            .iter()
            .map(|(who, n, holder)| format!("{who} {n} {holder}"))
            .collect();
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused[0].ends_with("10.1.2.0/24 this gateway"));
        // c4 has no mesh address of its own: no sync with it.
        assert!(!m.mesh.iter().any(|p| p.cluster.as_str() == "c4"));
        assert_eq!(m.mesh.len(), 2);
    }

    #[test]
    fn a_member_is_refused_the_prefixes_of_a_configured_peer_it_is_not() {
        let slot = IdentityPeerConfig {
            name: Some("c2".into()),
            expected: Expected::Cluster("c2".into()),
            endpoint: None,
            join_endpoint: None,
            allowed_ips: vec![net("10.2.0.0/16")],
            persistent_keepalive: None,
            preshared_key: None,
        };
        let m = merge(
            &[],
            &[],
            std::slice::from_ref(&slot),
            vec![],
            learned(vec![
                member("c2", 2, "100.96.0.2", &["10.2.0.0/16"]),
                member("c3", 3, "100.96.0.3", &["10.2.5.0/24"]),
            ]),
        );
        assert_eq!(
            find(&m, 2).allowed_ips,
            vec![net("10.2.0.0/16"), net("100.96.0.2/32")]
        );
        assert_eq!(find(&m, 3).allowed_ips, vec![net("100.96.0.3/32")]);
    }

    #[test]
    fn a_record_with_another_key_than_the_join_does_not_replace_the_joined_peer() {
        let m = merge(
            &[],
            &[],
            &[],
            vec![joined("c2", 2, Some("100.96.0.2"), &[])],
            learned(vec![member("c2", 7, "100.96.0.2", &["10.2.0.0/16"])]),
        );
        assert_eq!(m.peers.len(), 1);
        assert_eq!(find(&m, 2).allowed_ips, vec![net("100.96.0.2/32")]);
    }

    #[test]
    fn carried_routes_are_every_applied_prefix_and_our_mesh_hosts() {
        let m = merge(
            &[net("10.1.0.0/16"), net("100.96.0.1/32")],
            &[PeerConfig {
                name: None,
                public_key: key(9),
                preshared_key: None,
                endpoint: None,
                allowed_ips: vec![net("10.9.0.0/16"), net("0.0.0.0/0")],
                persistent_keepalive: None,
            }],
            &[],
            vec![joined("c2", 2, Some("100.96.0.2"), &[])],
            learned(vec![
                member("c2", 2, "100.96.0.2", &["10.2.0.0/16"]),
                member("c3", 3, "100.96.0.3", &["10.3.0.0/16", "fd00:3::/64"]),
            ]),
        );
        let mesh: Vec<IpAddr> = vec!["100.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        let routes: Vec<String> = m
            .carried_routes(&mesh)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            routes,
            [
                "10.2.0.0/16",
                "10.3.0.0/16",
                "10.9.0.0/16",
                "100.96.0.1/32",
                "100.96.0.2/32",
                "100.96.0.3/32",
                "fd00::1/128",
                "fd00:3::/64",
            ]
        );
        // Our own prefixes are not carried into the tunnel.
        assert!(!routes.contains(&"10.1.0.0/16".to_string()));
    }

    #[test]
    fn without_members_the_file_decides_alone() {
        let m = merge(
            &[net("100.96.0.1/32")],
            &[],
            &[],
            vec![
                joined(
                    "c2",
                    2,
                    Some("100.96.0.2"),
                    &["10.2.0.0/16", "100.96.0.2/32"],
                ),
                // Mesh address outside its prefixes: installed, not synced with.
                joined("c3", 3, Some("100.96.0.3"), &["10.3.0.0/16"]),
            ],
            None,
        );
        assert_eq!(find(&m, 3).allowed_ips, vec![net("10.3.0.0/16")]);
        assert_eq!(m.mesh.len(), 1);
        assert_eq!(m.mesh[0].cluster.as_str(), "c2");
    }
}
