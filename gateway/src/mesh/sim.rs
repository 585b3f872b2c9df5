//! A mesh of gateways in memory, on a virtual clock: every gateway a real [`Mesh`] with real
//! signed records, sessions opened between two gateways once each has installed the other (as
//! WireGuard would allow), messages routed by their [`Target`] to the sender's open sessions
//! and delivered in rounds, each gateway handling its inbox as one batch in a seeded random
//! order and applying once per batch (as the daemon's inbox does). No anti-entropy: the
//! one-hop rules alone must converge.
//!
//! It proves the mesh forms from one seed per gateway, and counts what a membership change
//! costs: messages, records carried and signature verifications — O(N), not O(N²).

use super::members::Members;
use super::testing::Rng;
use super::*;
use crate::config::MembersConfig;
use crate::keys::PrivateKey;
use isthmus_pki::{Authority, Bundle, SvidSigner, TrustDomain};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, UNIX_EPOCH};

const DAY: Duration = Duration::from_secs(86_400);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

struct Node {
    mesh: Mesh,
    peer: MeshPeer,
    key: PrivateKey,
    seed: Option<usize>,
    inbox: Vec<(usize, SyncMessage)>,
    dirty: bool,
}

/// What a stretch of the simulation cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Cost {
    messages: u64,
    records: u64,
    digests: u64,
    verifications: u64,
}

struct Sim {
    td: TrustDomain,
    root: Authority,
    bundle: Bundle,
    nodes: Vec<Node>,
    by_addr: HashMap<IpAddr, usize>,
    sessions: BTreeSet<(usize, usize)>,
    now: SystemTime,
    rng: Rng,
    sent: Cost,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let td = TrustDomain::new("isthmus.local").unwrap();
        let root = Authority::root(&td, t0() - DAY, 365 * DAY).unwrap();
        let bundle = Bundle::new(td.clone(), vec![root.cert_der().to_vec()]).unwrap();
        Self {
            td,
            root,
            bundle,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            sessions: BTreeSet::new(),
            now: t0(),
            rng: Rng(seed),
            sent: Cost::default(),
        }
    }

    /// A gateway of cluster `c<n>` seeded with `seed`, started: it signs its record and (as
    /// its Noise join with the seed would) opens a session with it.
    fn add(&mut self, seed: Option<usize>) -> usize {
        let i = self.nodes.len();
        let n = u32::try_from(i + 1).unwrap();
        let id = SpiffeId::gateway(&self.td, &format!("c{n}"), "gw").unwrap();
        let key = PrivateKey::generate();
        let svid = self
            .root
            .issue(&id, key.public_key().as_bytes(), t0(), DAY)
            .unwrap();
        let addr = IpAddr::V4(Ipv4Addr::from(0x6440_0000 + n));
        let config = MembersConfig {
            prefixes: vec![
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (n << 16))), 16).unwrap(),
            ],
            endpoint: Some(std::net::SocketAddr::new(addr, 51820)),
            join_endpoint: None,
            persistent_keepalive: Some(25),
            table: records::TableConfig::default(),
        };
        let members = Members::from_signer(
            config,
            id.clone(),
            SvidSigner::from_pem(&svid.key_pem()).unwrap(),
            svid.chain_der().to_vec(),
            self.bundle.clone(),
        );
        let mut mesh = Mesh::with_members(members, addr);
        let now = self.now;
        let out = mesh.publish_own(&key.public_key(), false, now).unwrap();
        let peer = MeshPeer::new(addr, &id).unwrap();
        self.nodes.push(Node {
            mesh,
            peer,
            key,
            seed,
            inbox: Vec::new(),
            dirty: true,
        });
        self.by_addr.insert(addr, i);
        self.route(i, out);
        if let Some(s) = seed {
            self.open(i, s);
        }
        i
    }

    fn open(&mut self, a: usize, b: usize) {
        if !self.sessions.insert((a.min(b), a.max(b))) {
            return;
        }
        for (from, to) in [(a, b), (b, a)] {
            let entries = self.nodes[from].mesh.digest();
            if !entries.is_empty() {
                self.deliver(
                    from,
                    to,
                    SyncMessage::MembersDigest(MembersDigest {
                        reply: false,
                        entries,
                    }),
                );
            }
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.sessions.contains(&(a.min(b), a.max(b)))
    }

    fn deliver(&mut self, from: usize, to: usize, msg: SyncMessage) {
        self.sent.messages += 1;
        match &msg {
            SyncMessage::Members(r) => self.sent.records += r.len() as u64,
            SyncMessage::MembersDigest(_) => self.sent.digests += 1,
            _ => {}
        }
        self.nodes[to].inbox.push((from, msg));
    }

    /// Sends `out` from `from` on its open sessions, as the control plane would.
    fn route(&mut self, from: usize, out: Vec<Outgoing>) {
        for o in out {
            let targets: Vec<usize> = (0..self.nodes.len())
                .filter(|&to| to != from && self.connected(from, to))
                .filter(|&to| o.to.includes(self.nodes[to].peer.addr))
                .collect();
            for to in targets {
                self.deliver(from, to, o.msg.clone());
            }
        }
    }

    /// Delivers every inbox as one batch per gateway, applies changed gateways, and opens the
    /// sessions newly allowed. Returns whether anything happened.
    fn round(&mut self) -> bool {
        let mut busy = false;
        for i in 0..self.nodes.len() {
            let mut batch = std::mem::take(&mut self.nodes[i].inbox);
            busy |= !batch.is_empty();
            // A seeded shuffle: interleavings differ between seeds.
            for k in (1..batch.len()).rev() {
                let j = self.rng.below(k + 1);
                batch.swap(k, j);
            }
            let now = self.now;
            let mut out = Vec::new();
            for (from, msg) in batch {
                let peer = self.nodes[from].peer.clone();
                let node = &mut self.nodes[i];
                match msg {
                    SyncMessage::Members(records) => {
                        let (changed, o) = node.mesh.receive(&peer, &records, now);
                        node.dirty |= changed;
                        out.extend(o);
                    }
                    SyncMessage::MembersDigest(d) => {
                        out.extend(node.mesh.digest_received(&peer, &d))
                    }
                    other => panic!("unexpected {}", other.kind()),
                }
            }
            self.route(i, out);
        }
        for node in &mut self.nodes {
            if std::mem::take(&mut node.dirty) {
                let merged = node.mesh.desired(self.now);
                node.mesh.set_applied(merged);
            }
        }
        // A session opens once both sides installed each other (WireGuard needs both keys).
        let mut open = Vec::new();
        for (a, node) in self.nodes.iter().enumerate() {
            for p in &node.mesh.applied().mesh {
                let Some(&b) = self.by_addr.get(&p.addr) else {
                    continue;
                };
                let mutual = self.nodes[b]
                    .mesh
                    .applied()
                    .mesh
                    .iter()
                    .any(|q| q.addr == node.peer.addr);
                if a < b && mutual && !self.connected(a, b) {
                    open.push((a, b));
                }
            }
        }
        busy |= !open.is_empty();
        for (a, b) in open {
            self.open(a, b);
        }
        busy
    }

    /// Runs rounds until nothing moves; returns how many it took.
    fn settle(&mut self) -> usize {
        let mut rounds = 0;
        while self.round() {
            rounds += 1;
            assert!(rounds < 100, "the mesh does not settle");
        }
        rounds
    }

    fn cost(&self) -> Cost {
        Cost {
            verifications: self.nodes.iter().map(|n| n.mesh.verifications()).sum(),
            ..self.sent
        }
    }

    fn full_mesh(&self) -> bool {
        let n = self.nodes.len();
        self.nodes.iter().all(|node| {
            node.mesh.applied().mesh.len() == n - 1 && node.mesh.applied().peers.len() == n - 1
        }) && self.sessions.len() == n * (n - 1) / 2
    }
}

fn delta(after: Cost, before: Cost) -> Cost {
    Cost {
        messages: after.messages - before.messages,
        records: after.records - before.records,
        digests: after.digests - before.digests,
        verifications: after.verifications - before.verifications,
    }
}

/// Mesh size: 255 gateways (Cilium ClusterMesh's limit) in release builds, fewer in debug
/// builds where signature checks are slow.
fn size() -> usize {
    if cfg!(debug_assertions) {
        40
    } else {
        255
    }
}

#[test]
fn a_mesh_seeded_with_one_gateway_converges_and_each_change_costs_o_n() {
    for seed in [1, 2] {
        let n = size();
        let mut sim = Sim::new(seed);
        // Every gateway is given the first as its seed; the first is given the second.
        sim.add(None);
        for _ in 1..n {
            sim.add(Some(0));
        }
        sim.nodes[0].seed = Some(1);
        sim.open(0, 1);
        let rounds = sim.settle();
        assert!(sim.full_mesh(), "seed {seed}: the mesh of {n} did not form");
        let formed = sim.cost();
        println!(
            "{n} gateways formed in {rounds} rounds: {} messages, {} records, {} digests, {} verifications",
            formed.messages, formed.records, formed.digests, formed.verifications
        );
        // Each gateway verifies each other's record once.
        assert_eq!(formed.verifications, (n * (n - 1)) as u64);

        // A gateway joins.
        let before = sim.cost();
        sim.add(Some(0));
        sim.settle();
        assert!(sim.full_mesh());
        let join = delta(sim.cost(), before);
        // One verification per gateway of the newcomer's record, and one by the newcomer of
        // each other record.
        let m = sim.nodes.len() as u64;
        assert_eq!(join.verifications, 2 * (m - 1), "{join:?}");
        assert!(join.messages <= 4 * m, "{join:?}");
        assert!(join.records <= 3 * m, "{join:?}");

        // A gateway re-signs its record (a refresh or a rotation): it tells every session.
        let before = sim.cost();
        sim.now += Duration::from_secs(200);
        let k = 7;
        let key = sim.nodes[k].key.public_key();
        let out = sim.nodes[k].mesh.publish_own(&key, false, sim.now).unwrap();
        sim.route(k, out);
        sim.settle();
        let refresh = delta(sim.cost(), before);
        assert_eq!(refresh.messages, m - 1, "{refresh:?}");
        assert_eq!(refresh.verifications, m - 1, "{refresh:?}");

        // A gateway leaves: every other drops it, at O(N) cost.
        let before = sim.cost();
        let key = sim.nodes[k].key.public_key();
        let out = sim.nodes[k].mesh.publish_own(&key, true, sim.now).unwrap();
        sim.route(k, out);
        sim.settle();
        let leave = delta(sim.cost(), before);
        assert_eq!(leave.messages, m - 1, "{leave:?}");
        let gone = sim.nodes[k].peer.addr;
        for (i, node) in sim.nodes.iter().enumerate().filter(|(i, _)| *i != k) {
            assert!(
                !node.mesh.applied().mesh.iter().any(|p| p.addr == gone),
                "gateway {i} still has the one that left"
            );
        }
        println!("per change at {m}: join {join:?}, refresh {refresh:?}, leave {leave:?}");
    }
}

#[test]
fn a_newcomer_introduced_by_a_relay_reaches_gateways_it_never_met() {
    // A chain of seeds (each gateway seeded with the one before): no single gateway meets
    // everyone first-hand at the start, yet the mesh forms.
    let mut sim = Sim::new(9);
    sim.add(None);
    for i in 1..12 {
        sim.add(Some(i - 1));
    }
    sim.settle();
    assert!(sim.full_mesh());
}
