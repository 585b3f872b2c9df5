//! The mesh core against a reference model: random interleavings of member records (new,
//! updated, stale, leaving, relayed by anyone), joins of a peer by identity (new keys,
//! rotations and rotations back, SVIDs of any lifetime), reloads of the file's peers (by key,
//! by identity) and time passing (records lapsing, tombstones ending, grace periods and SVIDs
//! ending) on a virtual clock; after every step the peer set and the retiring keys the mesh
//! wants must be the ones the model says.
//!
//! The model: per member identity, the newest generation accepted so far; a record is
//! accepted when it is newer than that and fresh (signed at most `member_ttl` ago and not
//! beyond the clock skew ahead); an identity is a peer while its newest record is not leaving
//! and fresh. The peer by identity: a slot, configured by the file or made by its join (any
//! gateway may join with `[members]`), holding the key of its last join until its SVID ends;
//! a join with another key retires the old one for the grace period, a join with a retiring
//! key takes it back; a slot the file drops is gone, a slot made by a join goes with its SVID,
//! and one the file names again starts over. Plus every peer by key in the file.

use super::members::Members;
use super::*;
use crate::config::MembersConfig;
use crate::keys::PrivateKey;
use isthmus_pki::{Authority, Bundle, SvidSigner, TrustDomain};
use proptest::prelude::*;
use records::{sign_record, unix_ms, MemberRecord, TableConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

const DAY: Duration = Duration::from_secs(86_400);
/// The rotation grace period of the mesh under test.
const GRACE: u64 = 60;
/// Keys the peer by identity joins with.
const JOIN_KEYS: usize = 3;
const OTHERS: usize = 4;
/// Generations offered per member, as seconds after t0.
const GENERATIONS: [u64; 5] = [0, 150, 400, 700, 1500];

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

struct Fixture {
    us: (SpiffeId, String, Vec<Vec<u8>>),
    bundle: Bundle,
    /// `[member][generation][leaving]`
    records: Vec<Vec<[OpaqueMember; 2]>>,
    keys: Vec<PublicKey>,
    peers: Vec<MeshPeer>,
    /// The peer by identity: its ID and the keys it joins with.
    ident: (SpiffeId, Vec<PublicKey>),
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let td = TrustDomain::new("isthmus.local").unwrap();
        let root = Authority::root(&td, t0() - DAY, 365 * DAY).unwrap();
        let bundle = Bundle::new(td.clone(), vec![root.cert_der().to_vec()]).unwrap();
        let issue = |c: &str| {
            let id = SpiffeId::gateway(&td, c, "gw").unwrap();
            let key = PrivateKey::generate().public_key();
            let svid = root.issue(&id, key.as_bytes(), t0(), 10 * DAY).unwrap();
            (id, key, svid.key_pem(), svid.chain_der().to_vec())
        };
        let (id, _, pem, chain) = issue("c0");
        let mut records = Vec::new();
        let mut keys = Vec::new();
        let mut peers = Vec::new();
        for m in 1..=OTHERS {
            let (id, key, pem, chain) = issue(&format!("c{m}"));
            let signer = SvidSigner::from_pem(&pem).unwrap();
            let n = u8::try_from(m).unwrap();
            let mesh_addr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, n));
            let per_gen = GENERATIONS
                .iter()
                .map(|s| {
                    [false, true].map(|leaving| {
                        let record = MemberRecord {
                            spiffe_id: id.clone(),
                            wg_public_key: *key.as_bytes(),
                            endpoint: None,
                            join_endpoint: None,
                            mesh_addr,
                            prefixes: vec![format!("10.{n}.0.0/16").parse().unwrap()],
                            generation: unix_ms(t0() + Duration::from_secs(*s)),
                            leaving,
                        };
                        sign_record(&record, &signer, &chain).unwrap()
                    })
                })
                .collect();
            records.push(per_gen);
            keys.push(key);
            peers.push(MeshPeer::new(mesh_addr, &id).unwrap());
        }
        let ident = (
            SpiffeId::gateway(&td, "c9", "gw").unwrap(),
            (0..JOIN_KEYS)
                .map(|_| PrivateKey::generate().public_key())
                .collect(),
        );
        Fixture {
            us: (id, pem, chain),
            bundle,
            records,
            keys,
            peers,
            ident,
        }
    })
}

#[derive(Debug, Clone)]
enum Step {
    /// Member `member`'s record of generation index `generation`, sent by session `from`.
    Record {
        member: usize,
        generation: usize,
        leaving: bool,
        from: usize,
    },
    /// Time passes, then the expiry timer runs.
    Wait(u64),
    /// A reload with (or without) a peer by key, and with (or without) the peer by identity.
    Reload { by_key: bool, ident: bool },
    /// The peer by identity joins with key `key` and an SVID valid for `svid` more seconds.
    Join { key: usize, svid: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..OTHERS, 0..GENERATIONS.len(), prop::bool::weighted(0.2), 0..OTHERS).prop_map(
            |(member, generation, leaving, from)| Step::Record {
                member,
                generation,
                leaving,
                from
            }
        ),
        2 => (0u64..500).prop_map(Step::Wait),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(by_key, ident)| Step::Reload { by_key, ident }),
        2 => (0..JOIN_KEYS, 1u64..1200).prop_map(|(key, svid)| Step::Join { key, svid }),
    ]
}

fn by_key_peer() -> PeerConfig {
    PeerConfig {
        name: Some("by-key".into()),
        public_key: PublicKey::from_bytes([9; 32]),
        preshared_key: None,
        endpoint: None,
        allowed_ips: vec!["10.99.0.0/16".parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn ident_peer() -> crate::config::IdentityPeerConfig {
    crate::config::IdentityPeerConfig {
        name: Some("c9".into()),
        expected: crate::config::Expected::Id(fixture().ident.0.clone()),
        endpoint: None,
        join_endpoint: Some("192.0.2.9:51821".parse().unwrap()),
        allowed_ips: vec!["10.9.0.0/16".parse().unwrap()],
        persistent_keepalive: None,
        preshared_key: None,
    }
}

fn join(key: usize, not_after: SystemTime) -> crate::identity::JoinedPeer {
    let f = fixture();
    crate::identity::JoinedPeer {
        joined: crate::identity::Joined {
            peer_id: f.ident.0.clone(),
            not_after,
            remote_static: *f.ident.1[key].as_bytes(),
            remote_chain: vec![],
            endpoint_hint: None,
            mesh_addr: Some(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 9))),
            handshake_hash: vec![],
        },
        remote_addr: "192.0.2.9:40000".parse().unwrap(),
    }
}

/// The model's slot of the peer by identity. Times are seconds after t0.
#[derive(Debug, Clone, Default)]
struct IdentSlot {
    /// Made by a join, not by the file.
    dynamic: bool,
    /// The key of the last join and the end of its SVID.
    joined: Option<(usize, u64)>,
    /// Old keys and the end of their grace period.
    retiring: Vec<(usize, u64)>,
}

#[derive(Default)]
struct Model {
    /// Per member: newest generation accepted (seconds after t0) and whether it was leaving.
    newest: BTreeMap<usize, (u64, bool)>,
    by_key: bool,
    ident: Option<IdentSlot>,
}

impl Model {
    fn receive(&mut self, member: usize, generation: u64, leaving: bool, now: Duration) {
        let ttl = if leaving { 1800 } else { 600 };
        let fresh = now.as_secs() <= generation + ttl && generation <= now.as_secs() + 120;
        let newer = self
            .newest
            .get(&member)
            .is_none_or(|(g, _)| *g < generation);
        if fresh && newer {
            self.newest.insert(member, (generation, leaving));
        }
    }

    fn reload(&mut self, by_key: bool, ident: bool) {
        self.by_key = by_key;
        self.ident = match (self.ident.take(), ident) {
            (Some(s), true) if !s.dynamic => Some(s),
            // Named by the file now: a configured slot starts over, waiting for a join.
            (_, true) => Some(IdentSlot::default()),
            (Some(s), false) if s.dynamic => Some(s),
            (_, false) => None,
        };
    }

    fn join(&mut self, key: usize, not_after: u64, now: u64) {
        let slot = self.ident.get_or_insert_with(|| IdentSlot {
            dynamic: true,
            ..IdentSlot::default()
        });
        if let Some((old, _)) = slot.joined {
            if old != key {
                slot.retiring.push((old, now + GRACE));
            }
        }
        slot.retiring.retain(|(k, _)| *k != key);
        slot.joined = Some((key, not_after));
    }

    fn expire(&mut self, now: u64) {
        if self
            .ident
            .as_ref()
            .is_some_and(|s| s.dynamic && s.joined.is_some_and(|(_, end)| end <= now))
        {
            self.ident = None;
        }
        if let Some(slot) = &mut self.ident {
            slot.retiring.retain(|(_, until)| *until > now);
            if slot.joined.is_some_and(|(_, end)| end <= now) {
                slot.joined = None;
            }
        }
    }

    fn members(&self, now: Duration) -> BTreeSet<PublicKey> {
        let f = fixture();
        self.newest
            .iter()
            .filter(|(_, (g, leaving))| !leaving && now.as_secs() <= g + 600)
            .map(|(m, _)| f.keys[*m])
            .collect()
    }

    fn peers(&self, now: Duration) -> BTreeSet<PublicKey> {
        let f = fixture();
        let joined = self
            .ident
            .as_ref()
            .and_then(|s| s.joined)
            .filter(|(_, end)| *end > now.as_secs())
            .map(|(k, _)| f.ident.1[k]);
        self.members(now)
            .into_iter()
            .chain(self.by_key.then(|| by_key_peer().public_key))
            .chain(joined)
            .collect()
    }

    fn retiring(&self, now: Duration) -> BTreeSet<PublicKey> {
        let f = fixture();
        self.ident
            .iter()
            .flat_map(|s| &s.retiring)
            .filter(|(_, until)| *until > now.as_secs())
            .map(|(k, _)| f.ident.1[*k])
            .collect()
    }
}

fn mesh() -> Mesh {
    let f = fixture();
    let config = MembersConfig {
        prefixes: vec!["10.0.0.0/16".parse().unwrap()],
        endpoint: None,
        join_endpoint: None,
        persistent_keepalive: None,
        table: TableConfig::default(),
    };
    let (id, pem, chain) = &f.us;
    let signer = SvidSigner::from_pem(pem).unwrap();
    let members = Members::from_signer(config, id.clone(), signer, chain.clone(), f.bundle.clone());
    Mesh::with_members(members, IpAddr::V4(Ipv4Addr::new(100, 64, 0, 100)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_peer_set_is_the_reference_models(steps in prop::collection::vec(step(), 1..40)) {
        let f = fixture();
        let mut mesh = mesh();
        mesh.set_file_peers(Vec::new(), Vec::new(), Duration::from_secs(GRACE));
        let mut model = Model::default();
        let mut elapsed = Duration::ZERO;
        for step in steps {
            let now = t0() + elapsed;
            match step {
                Step::Record { member, generation, leaving, from } => {
                    let record = f.records[member][generation][usize::from(leaving)].clone();
                    mesh.receive(&f.peers[from], &[record], now);
                    model.receive(member, GENERATIONS[generation], leaving, elapsed);
                }
                Step::Wait(secs) => {
                    elapsed += Duration::from_secs(secs);
                    mesh.expire(t0() + elapsed);
                    model.expire(elapsed.as_secs());
                }
                Step::Reload { by_key, ident } => {
                    let keyed = if by_key { vec![by_key_peer()] } else { Vec::new() };
                    let idents = if ident { vec![ident_peer()] } else { Vec::new() };
                    mesh.set_file_peers(keyed, idents, Duration::from_secs(GRACE));
                    model.reload(by_key, ident);
                }
                Step::Join { key, svid } => {
                    let not_after = elapsed.as_secs() + svid;
                    mesh.joined(&join(key, t0() + Duration::from_secs(not_after)), now);
                    model.join(key, not_after, elapsed.as_secs());
                }
            }
            let now = t0() + elapsed;
            let merged = mesh.desired(now);
            let got: BTreeSet<PublicKey> = merged.peers.iter().map(|p| p.public_key).collect();
            prop_assert_eq!(&got, &model.peers(elapsed), "at {:?}", elapsed);
            let retiring: BTreeSet<PublicKey> =
                mesh.retiring(now).iter().map(|p| p.public_key).collect();
            prop_assert_eq!(&retiring, &model.retiring(elapsed), "retiring at {:?}", elapsed);
            // Every learned member has its mesh address routed to it and is a sync peer.
            let member_sync = merged.mesh.iter().filter(|m| m.cluster.as_str() != "c9").count();
            prop_assert_eq!(member_sync, model.members(elapsed).len());
            mesh.set_applied(merged);
        }
    }
}
