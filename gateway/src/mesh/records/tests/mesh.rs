//! Gossip convergence: ten gateways, each configured with one seed, exchange `Members`
//! messages in a seeded random order until every table holds every other gateway; then one
//! leaves and disappears from every table.

use super::*;

use crate::mesh::testing::Rng;

struct Node {
    gw: Gw,
    table: MemberTable,
    seed: Option<usize>,
    gone: bool,
}

struct Mesh {
    pki: Pki,
    nodes: Vec<Node>,
    index: BTreeMap<SpiffeId, usize>,
    now: SystemTime,
    rng: Rng,
    messages: usize,
}

impl Mesh {
    fn new(size: u8, seed: u64) -> Self {
        let pki = Pki::new();
        let mut rng = Rng(seed);
        let clusters = ["east", "west", "north"];
        let mut nodes = Vec::new();
        for i in 0..size {
            let cluster = clusters[usize::from(i) % clusters.len()];
            let gw = pki.gateway(cluster, &format!("gw-{i}"), i + 1);
            let mut table = MemberTable::new(gw.id.clone(), TableConfig::default());
            let own = gw.verified(&pki, &gw.record(table.next_generation(t0())));
            table.set_own(own).unwrap();
            // Each gateway is configured with one seed among those started before it.
            let seed = (i > 0).then(|| rng.below(usize::from(i)));
            nodes.push(Node {
                gw,
                table,
                seed,
                gone: false,
            });
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.gw.id.clone(), i))
            .collect();
        Self {
            pki,
            nodes,
            index,
            now: t0(),
            rng,
            messages: 0,
        }
    }

    /// Who `i` can talk to: its seed and every member it knows.
    fn contacts(&self, i: usize) -> Vec<usize> {
        let node = &self.nodes[i];
        let known = node
            .table
            .peers(self.now)
            .into_iter()
            .map(|p| self.index[&p.spiffe_id]);
        let mut all: BTreeSet<usize> = known.chain(node.seed).collect();
        all.retain(|&j| !self.nodes[j].gone);
        all.into_iter().collect()
    }

    /// One `Members` message, its records in random order, verified and merged by the receiver.
    fn deliver(&mut self, from: usize, to: usize) {
        let mut records = self.nodes[from].table.gossip();
        for k in (1..records.len()).rev() {
            records.swap(k, self.rng.below(k + 1));
        }
        self.messages += 1;
        let table = &mut self.nodes[to].table;
        for opaque in records {
            if table.holds(&opaque) {
                continue;
            }
            let member = verify_member(&opaque, &self.pki.bundle, self.now)
                .unwrap_or_else(|e| panic!("{e} [{}]", e.rule()));
            table.insert(member, self.now);
        }
    }

    /// A random live gateway opens a session to a random contact; both send their gossip.
    fn step(&mut self) {
        self.now += Duration::from_millis(10);
        let i = self.rng.below(self.nodes.len());
        if self.nodes[i].gone {
            return;
        }
        let contacts = self.contacts(i);
        if contacts.is_empty() {
            return;
        }
        let j = contacts[self.rng.below(contacts.len())];
        self.deliver(i, j);
        self.deliver(j, i);
    }

    /// Every live gateway has every other live one as a peer, at its current generation.
    fn converged(&self) -> bool {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| !n.gone).collect();
        live.iter().all(|n| {
            let have: BTreeSet<(SpiffeId, u64)> = n
                .table
                .peers(self.now)
                .into_iter()
                .map(|p| (p.spiffe_id, p.generation))
                .collect();
            let want: BTreeSet<(SpiffeId, u64)> = live
                .iter()
                .filter(|m| m.gw.id != n.gw.id)
                .map(|m| {
                    let own = m.table.own().unwrap().record();
                    (own.spiffe_id.clone(), own.generation)
                })
                .collect();
            have == want
        })
    }

    fn run_until_converged(&mut self, max_steps: usize) -> usize {
        for steps in 0..max_steps {
            if self.converged() {
                return steps;
            }
            self.step();
        }
        panic!("not converged after {max_steps} steps")
    }
}

#[test]
fn ten_gateways_with_one_seed_each_converge_and_a_leaver_disappears_everywhere() {
    for seed in [1, 2, 3] {
        let mut mesh = Mesh::new(10, seed);
        assert!(!mesh.converged());
        let steps = mesh.run_until_converged(2_000);
        assert!(steps > 0);
        for node in &mesh.nodes {
            let peers = node.table.peers(mesh.now);
            assert_eq!(peers.len(), 9, "seed {seed}");
            let clusters: BTreeSet<&str> = peers.iter().map(|p| p.cluster.as_str()).collect();
            assert_eq!(clusters.len(), 3);
            assert_eq!(node.table.conflicts(), 0);
        }

        // Gateway 3 leaves: it tells one peer only, and gossip does the rest.
        let leaver = 3;
        let old = mesh.nodes[leaver].table.own().unwrap().opaque().clone();
        let node = &mut mesh.nodes[leaver];
        let generation = node.table.next_generation(mesh.now);
        let leaving = MemberRecord {
            leaving: true,
            ..node.gw.record(generation)
        };
        let member = node.gw.verified(&mesh.pki, &leaving);
        assert_eq!(node.table.set_own(member).unwrap(), Change::Left);
        let told = mesh.contacts(leaver)[0];
        mesh.deliver(leaver, told);
        mesh.nodes[leaver].gone = true;
        mesh.run_until_converged(2_000);
        let leaver_id = mesh.nodes[leaver].gw.id.clone();
        for node in mesh.nodes.iter_mut().filter(|n| !n.gone) {
            assert_eq!(node.table.peers(mesh.now).len(), 8);
            assert!(node.table.get(&leaver_id).unwrap().record().leaving);
            // Its older record, gossiped late, does not bring it back.
            let late = verify_member(&old, &mesh.pki.bundle, mesh.now).unwrap();
            assert_eq!(node.table.insert(late, mesh.now), Change::Stale);
            assert!(node
                .table
                .peers(mesh.now)
                .iter()
                .all(|p| p.spiffe_id != leaver_id));
        }
        assert!(mesh.messages > 0);
    }
}
