//! Joins, rotation grace periods and SVID expiry on a virtual clock.

use super::*;
use crate::identity::Joined;
use crate::keys::PrivateKey;

const ID: &str = "spiffe://isthmus.local/cluster/c2/gateway/gw";
const GRACE: Duration = Duration::from_secs(60);

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn slot_config() -> IdentityPeerConfig {
    IdentityPeerConfig {
        name: Some("c2".into()),
        expected: Expected::Id(SpiffeId::new(ID).unwrap()),
        endpoint: None,
        join_endpoint: Some("192.0.2.2:51821".parse().unwrap()),
        allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
        persistent_keepalive: None,
        preshared_key: None,
    }
}

fn joined(key: &PrivateKey, not_after: SystemTime, hint: Option<&str>) -> JoinedPeer {
    JoinedPeer {
        joined: Joined {
            peer_id: SpiffeId::new(ID).unwrap(),
            not_after,
            remote_static: *key.public_key().as_bytes(),
            remote_chain: vec![],
            endpoint_hint: hint.map(|h| h.parse().unwrap()),
            mesh_addr: Some("100.96.0.2".parse().unwrap()),
            handshake_hash: vec![],
        },
        remote_addr: "192.0.2.2:40000".parse().unwrap(),
    }
}

fn keys(peers: &[PeerConfig]) -> Vec<PublicKey> {
    peers.iter().map(|p| p.public_key).collect()
}

#[test]
fn a_rotated_peer_keeps_its_old_key_for_the_grace_period_only() {
    let mut m = Membership::new(&[slot_config()], GRACE);
    let old = PrivateKey::generate();
    let new = PrivateKey::generate();
    let far = t0() + Duration::from_secs(86_400);
    assert_eq!(
        m.joined(&joined(&old, far, Some("192.0.2.2:51820")), t0()),
        Some(m.slots[0].id)
    );
    assert_eq!(
        m.joined_slots(t0())[0].mesh_addr,
        Some("100.96.0.2".parse().unwrap())
    );
    assert_eq!(keys(&m.keyed_peers(t0())), vec![old.public_key()]);
    assert!(m.retiring_peers(t0()).is_empty());

    // The peer re-joins (through the tunnel: no endpoint hint) with a new key.
    let t1 = t0() + Duration::from_secs(10);
    m.mark_rejoin_all();
    assert!(!m.rejoins_done());
    m.joined(&joined(&new, far, None), t1);
    assert!(m.rejoins_done());
    let routed = m.keyed_peers(t1);
    assert_eq!(keys(&routed), vec![new.public_key()]);
    assert_eq!(
        routed[0].endpoint,
        Some("192.0.2.2:51820".parse().unwrap()),
        "a join through the tunnel keeps the WireGuard endpoint"
    );
    let retiring = m.retiring_peers(t1);
    assert_eq!(keys(&retiring), vec![old.public_key()]);
    assert_eq!(retiring[0].allowed_ips, routed[0].allowed_ips);

    assert_eq!(
        m.poll_timeout(),
        Some(t1 + GRACE),
        "the grace period ends first"
    );
    // Not a second before the grace period ends...
    assert!(!m.expire(t1 + GRACE - Duration::from_secs(1)));
    assert_eq!(
        m.retiring_peers(t1 + GRACE - Duration::from_secs(1)).len(),
        1
    );
    // ...and gone at its end.
    assert!(m.expire(t1 + GRACE));
    assert_eq!(m.poll_timeout(), Some(far), "then the SVID");
    assert!(m.retiring_peers(t1 + GRACE).is_empty());
    assert_eq!(keys(&m.keyed_peers(t1 + GRACE)), vec![new.public_key()]);
}

#[test]
fn rotating_back_to_a_retiring_key_takes_it_out_of_retirement() {
    let mut m = Membership::new(&[slot_config()], GRACE);
    let (a, b) = (PrivateKey::generate(), PrivateKey::generate());
    let far = t0() + Duration::from_secs(86_400);
    m.joined(&joined(&a, far, None), t0());
    m.joined(&joined(&b, far, None), t0());
    m.joined(&joined(&a, far, None), t0());
    assert_eq!(keys(&m.keyed_peers(t0())), vec![a.public_key()]);
    assert_eq!(keys(&m.retiring_peers(t0())), vec![b.public_key()]);
}

#[test]
fn zero_grace_retires_nothing() {
    let mut m = Membership::new(&[slot_config()], Duration::ZERO);
    let far = t0() + Duration::from_secs(86_400);
    m.joined(&joined(&PrivateKey::generate(), far, None), t0());
    m.joined(&joined(&PrivateKey::generate(), far, None), t0());
    assert!(m.retiring_peers(t0()).is_empty());
}

#[test]
fn an_expired_svid_removes_the_key_and_the_peer_joins_again() {
    let mut m = Membership::new(&[slot_config()], GRACE);
    let key = PrivateKey::generate();
    let not_after = t0() + Duration::from_secs(30);
    assert_eq!(m.poll_timeout(), None, "nothing joined, nothing to expire");
    m.joined(&joined(&key, not_after, None), t0());
    assert_eq!(m.poll_timeout(), Some(not_after));
    assert!(m.any_joined());
    assert!(!m.expire(not_after - Duration::from_secs(1)));
    assert!(m.expire(not_after));
    assert!(m.keyed_peers(not_after).is_empty());
    assert!(!m.any_joined(), "a peer whose SVID expired is joined again");
    let rows = m.identities();
    assert_eq!(rows.len(), 1);
    assert!(
        matches!(&rows[0], IdentityRow::Pending { reason: PendingReason::Refused(r), .. } if r.contains("SVID expired")),
        "{rows:?}"
    );
    // A renewed SVID with the same key: joined again, nothing retired.
    m.joined(
        &joined(&key, not_after + Duration::from_secs(3600), None),
        not_after,
    );
    assert_eq!(keys(&m.keyed_peers(not_after)), vec![key.public_key()]);
    assert!(m.retiring_peers(not_after).is_empty());
}

#[test]
fn a_join_for_no_configured_identity_is_ignored() {
    let mut m = Membership::new(&[slot_config()], GRACE);
    let mut peer = joined(&PrivateKey::generate(), t0() + GRACE, None);
    peer.joined.peer_id = SpiffeId::new("spiffe://isthmus.local/cluster/c9/gateway/gw").unwrap();
    assert_eq!(m.joined(&peer, t0()), None);
    assert!(m.keyed_peers(t0()).is_empty());
}
