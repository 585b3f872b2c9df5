//! Random export/unexport sequences at 3 origins, delivered to every gateway of a 5-gateway full
//! mesh through links that reorder, duplicate, lose and partition (and gateways that restart
//! without their state). While it runs, a replica only ever holds states its origin really had,
//! never going back; once the network heals, every replica holds exactly each origin's final
//! state, and the merged views agree.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use common::*;
use isthmus_catalog::{
    decode_frame, encode, Applied, ClusterName, Endpoint, MergedCatalog, OriginState, Refused,
    ServiceExport, ServiceName, SyncMessage, Watermark,
};
use proptest::prelude::*;

const ORIGINS: usize = 3;
const NODES: usize = 5;
const SERVICES: u8 = 5;

#[derive(Debug, Clone)]
enum Op {
    Export {
        origin: usize,
        set: BTreeMap<u8, u8>,
    },
    Deliver {
        from: usize,
        k: usize,
        pick: usize,
    },
    Duplicate {
        from: usize,
        k: usize,
        pick: usize,
    },
    Lose {
        from: usize,
        k: usize,
        pick: usize,
    },
    Partition {
        from: usize,
        k: usize,
    },
    Heal {
        from: usize,
        k: usize,
    },
    Heartbeat {
        node: usize,
    },
    Restart {
        node: usize,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    let link = (0..NODES, 0..NODES - 1);
    prop_oneof![
        3 => (0..ORIGINS, proptest::collection::btree_map(0..SERVICES, 0u8..4, 0..=SERVICES as usize))
            .prop_map(|(origin, set)| Op::Export { origin, set }),
        8 => (link.clone(), any::<usize>()).prop_map(|((from, k), pick)| Op::Deliver { from, k, pick }),
        1 => (link.clone(), any::<usize>()).prop_map(|((from, k), pick)| Op::Duplicate { from, k, pick }),
        1 => (link.clone(), any::<usize>()).prop_map(|((from, k), pick)| Op::Lose { from, k, pick }),
        1 => link.clone().prop_map(|(from, k)| Op::Partition { from, k }),
        1 => link.prop_map(|(from, k)| Op::Heal { from, k }),
        1 => (0..NODES).prop_map(|node| Op::Heartbeat { node }),
        1 => (0..NODES).prop_map(|node| Op::Restart { node }),
    ]
}

fn name(i: usize) -> ClusterName {
    if i < ORIGINS {
        cluster(&format!("origin-{i}"))
    } else {
        cluster(&format!("replica-{}", i - ORIGINS))
    }
}

fn service(s: u8) -> ServiceName {
    svc(&format!("app/s{s}"))
}

/// What origin `o` exports for `set`: each variant a different endpoint list.
fn exports(o: usize, set: &BTreeMap<u8, u8>) -> Vec<ServiceExport> {
    set.iter()
        .map(|(&s, &variant)| {
            let mut e = export(&format!("app/s{s}"), &[]);
            e.endpoints = (0..=variant)
                .map(|i| Endpoint {
                    address: IpAddr::from([10, o as u8, s, i + 1]),
                    port: 8080,
                    ready: variant % 2 == 0,
                    zone: None,
                })
                .collect();
            e.weight = u32::from(variant);
            e
        })
        .collect()
}

struct Mesh {
    nodes: Vec<MergedCatalog>,
    generation: Vec<u64>,
    desired: Vec<BTreeMap<u8, u8>>,
    /// Frames in flight from `from` to `to`; a down pair carries nothing.
    links: HashMap<(usize, usize), Vec<Vec<u8>>>,
    down: BTreeSet<(usize, usize)>,
    /// Every state each origin ever had.
    history: HashMap<(ClusterName, Watermark), OriginState>,
    now: std::time::Instant,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn to_of(from: usize, k: usize) -> usize {
    (from + 1 + k) % NODES
}

impl Mesh {
    fn new() -> Self {
        let mut mesh = Mesh {
            nodes: (0..NODES).map(|i| catalog(name(i).as_str())).collect(),
            generation: vec![1; NODES],
            desired: vec![BTreeMap::new(); NODES],
            links: HashMap::new(),
            down: BTreeSet::new(),
            history: HashMap::new(),
            now: t0(),
        };
        for i in 0..NODES {
            mesh.record(i);
        }
        for a in 0..NODES {
            for b in 0..NODES {
                if a != b {
                    mesh.links.insert((a, b), Vec::new());
                }
            }
        }
        for a in 0..NODES {
            for b in a + 1..NODES {
                mesh.connect(a, b);
            }
        }
        mesh
    }

    fn record(&mut self, i: usize) {
        let state = self.nodes[i].local().state().clone();
        self.history
            .insert((state.cluster.clone(), state.watermark()), state);
    }

    fn send(&mut self, from: usize, to: usize, msg: &SyncMessage) {
        if self.down.contains(&pair(from, to)) {
            return;
        }
        let frame = encode(msg).unwrap();
        self.links.get_mut(&(from, to)).unwrap().push(frame);
    }

    fn broadcast(&mut self, from: usize, msg: &SyncMessage) {
        for to in 0..NODES {
            if to != from {
                self.send(from, to, msg);
            }
        }
    }

    /// A new session between `a` and `b`: each says hello.
    fn connect(&mut self, a: usize, b: usize) {
        let hello_a = self.nodes[a].hello(&name(b));
        let hello_b = self.nodes[b].hello(&name(a));
        self.send(a, b, &hello_a);
        self.send(b, a, &hello_b);
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        self.down.insert(pair(a, b));
        self.links.get_mut(&(a, b)).unwrap().clear();
        self.links.get_mut(&(b, a)).unwrap().clear();
    }

    fn deliver(&mut self, from: usize, to: usize, pick: usize) {
        let queue = self.links.get_mut(&(from, to)).unwrap();
        if queue.is_empty() {
            return;
        }
        let frame = queue.remove(pick % queue.len());
        let msg = decode_frame(&frame).unwrap();
        let sender = name(from);
        let before: Option<Watermark> = self.nodes[to].remote(&sender).map(OriginState::watermark);
        match self.nodes[to].apply(&sender, msg, self.now) {
            Ok(Applied::Reply(reply)) => self.send(to, from, &reply),
            Ok(Applied::Updated {
                origin, watermark, ..
            }) => {
                assert_eq!(origin, sender);
                let held = self.nodes[to].remote(&sender).unwrap();
                assert_eq!(held.watermark(), watermark);
                assert!(
                    before < Some(watermark),
                    "{before:?} -> {watermark}: went back"
                );
                // Never a mix of states: exactly what the origin had at that watermark.
                assert_eq!(Some(held), self.history.get(&(sender, watermark)));
            }
            Ok(_) => assert_eq!(
                before,
                self.nodes[to].remote(&sender).map(OriginState::watermark)
            ),
            Err(Refused::Gap) => {
                assert_eq!(
                    before,
                    self.nodes[to].remote(&sender).map(OriginState::watermark)
                );
                self.send(to, from, &SyncMessage::SnapshotRequest);
            }
            Err(other) => panic!("refused {other:?}"),
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Export { origin, set } => {
                self.desired[origin] = set.clone();
                if let Some(delta) = self.nodes[origin]
                    .set_exports(exports(origin, &set))
                    .unwrap()
                {
                    self.record(origin);
                    self.broadcast(origin, &delta);
                }
            }
            Op::Deliver { from, k, pick } => self.deliver(from, to_of(from, k), pick),
            Op::Duplicate { from, k, pick } => {
                let queue = self.links.get_mut(&(from, to_of(from, k))).unwrap();
                if !queue.is_empty() {
                    let frame = queue[pick % queue.len()].clone();
                    queue.push(frame);
                }
            }
            Op::Lose { from, k, pick } => {
                let queue = self.links.get_mut(&(from, to_of(from, k))).unwrap();
                if !queue.is_empty() {
                    queue.remove(pick % queue.len());
                }
            }
            Op::Partition { from, k } => self.disconnect(from, to_of(from, k)),
            Op::Heal { from, k } => {
                let to = to_of(from, k);
                if self.down.remove(&pair(from, to)) {
                    self.connect(from, to);
                }
            }
            Op::Heartbeat { node } => {
                let hb = self.nodes[node].heartbeat();
                self.broadcast(node, &hb);
            }
            Op::Restart { node } => {
                // Lost its state: a new generation; the source gives the same exports again.
                for other in 0..NODES {
                    if other != node {
                        self.disconnect(node, other);
                    }
                }
                self.generation[node] += 1;
                let local = isthmus_catalog::LocalCatalog::new(name(node), self.generation[node]);
                let vips =
                    isthmus_catalog::VipAllocator::new("10.96.0.0/16".parse().unwrap(), None);
                self.nodes[node] = MergedCatalog::new(local, Default::default(), vips).unwrap();
                let set = self.desired[node].clone();
                if node < ORIGINS {
                    self.nodes[node].set_exports(exports(node, &set)).unwrap();
                }
                self.record(node);
                for other in 0..NODES {
                    if other != node {
                        self.down.remove(&pair(node, other));
                        self.connect(node, other);
                    }
                }
            }
        }
    }

    /// Heal everything and deliver in order, without faults, until nothing is in flight.
    fn settle(&mut self) {
        let down: Vec<(usize, usize)> = self.down.iter().copied().collect();
        for (a, b) in down {
            self.down.remove(&(a, b));
            self.connect(a, b);
        }
        for round in 0..2 {
            if round == 1 {
                for node in 0..NODES {
                    let hb = self.nodes[node].heartbeat();
                    self.broadcast(node, &hb);
                }
            }
            for _ in 0..10_000 {
                let busy: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                if busy.is_empty() {
                    break;
                }
                for (from, to) in busy {
                    self.deliver(from, to, 0);
                }
            }
        }
    }

    fn check_converged(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            for o in 0..NODES {
                if o == i {
                    continue;
                }
                let origin = self.nodes[o].local().state();
                assert_eq!(
                    node.remote(&name(o)),
                    Some(origin),
                    "node {i} on origin {o}"
                );
            }
        }
        // Every view is the same, and lists each service once with each exporter once.
        let view = self.nodes[0].view(self.now);
        for node in &self.nodes[1..] {
            let other = node.view(self.now);
            assert_eq!(other.len(), view.len());
            for (a, b) in view.iter().zip(&other) {
                assert_eq!(
                    (&a.name, &a.clusters, a.endpoints_total),
                    (&b.name, &b.clusters, b.endpoints_total)
                );
            }
        }
        for s in &view {
            let expected: Vec<ClusterName> = (0..ORIGINS)
                .filter(|&o| self.nodes[o].local().state().services.contains_key(&s.name))
                .map(name)
                .collect();
            assert_eq!(s.clusters, expected, "{}", s.name);
        }
        let all: BTreeSet<ServiceName> = (0..ORIGINS)
            .flat_map(|o| self.desired[o].keys().map(|&s| service(s)))
            .collect();
        assert_eq!(
            view.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>(),
            all
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replicas_converge_to_the_origins_final_states(ops in proptest::collection::vec(arb_op(), 1..200)) {
        let mut mesh = Mesh::new();
        for op in ops {
            mesh.run(op);
        }
        mesh.settle();
        mesh.check_converged();
    }
}

#[test]
fn a_lost_last_delta_is_recovered_by_the_next_heartbeat() {
    let mut mesh = Mesh::new();
    mesh.settle();
    let set: BTreeMap<u8, u8> = [(1, 2)].into();
    mesh.run(Op::Export { origin: 0, set });
    // Lose the delta to node 3, nothing else ever goes wrong.
    mesh.run(Op::Lose {
        from: 0,
        k: 2,
        pick: 0,
    });
    mesh.settle();
    mesh.check_converged();
}
