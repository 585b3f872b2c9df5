//! The mesh core against a reference model: random interleavings of member records (new,
//! updated, stale, leaving, relayed by anyone), reloads of the file's peers by key and time
//! passing (records lapsing, tombstones ending) on a virtual clock; after every step the peer
//! set the mesh wants must be the one the model says.
//!
//! The model: per identity, the newest generation accepted so far; a record is accepted when
//! it is newer than that and fresh (signed at most `member_ttl` ago and not beyond the clock
//! skew ahead); an identity is a peer while its newest record is not leaving and fresh. Plus
//! every peer by key in the file.

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
        Fixture {
            us: (id, pem, chain),
            bundle,
            records,
            keys,
            peers,
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
    /// A reload with (or without) a peer by key in the file.
    Reload(bool),
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
        1 => any::<bool>().prop_map(Step::Reload),
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

#[derive(Default)]
struct Model {
    /// Per member: newest generation accepted (seconds after t0) and whether it was leaving.
    newest: BTreeMap<usize, (u64, bool)>,
    by_key: bool,
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

    fn peers(&self, now: Duration) -> BTreeSet<PublicKey> {
        let f = fixture();
        self.newest
            .iter()
            .filter(|(_, (g, leaving))| !leaving && now.as_secs() <= g + 600)
            .map(|(m, _)| f.keys[*m])
            .chain(self.by_key.then(|| by_key_peer().public_key))
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
                }
                Step::Reload(with) => {
                    let by_key = if with { vec![by_key_peer()] } else { Vec::new() };
                    mesh.set_file_peers(by_key, Vec::new(), Duration::ZERO);
                    model.by_key = with;
                }
            }
            let now = t0() + elapsed;
            let merged = mesh.desired(now);
            let got: BTreeSet<PublicKey> = merged.peers.iter().map(|p| p.public_key).collect();
            prop_assert_eq!(&got, &model.peers(elapsed), "at {:?}", elapsed);
            // Every learned peer has its mesh address routed to it and is a sync peer.
            prop_assert_eq!(merged.mesh.len(), got.len() - usize::from(model.by_key));
            mesh.set_applied(merged);
        }
    }
}
