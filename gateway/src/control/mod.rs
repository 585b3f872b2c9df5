//! The control plane: catalog sync with every peer through the tunnel, health and failover,
//! the clusterset DNS server, the catalog store (state directory, watch socket, etcd) and the
//! export sources. Logic lives in `isthmus-catalog` and in [`session`]; this module is the
//! tokio shell around them.
//!
//! One [`MergedCatalog`] behind a mutex is the single source of truth: sessions apply what
//! peers send, export sources replace the local exports, a timer runs health, and DNS, the
//! admin socket, the watch stream and the store read it. The routes the watch stream and the
//! store announce are the daemon's (it owns the peer set) and handed over with
//! [`Shared::set_routes`]. Every change of either bumps a revision that the store and the
//! watchers follow.

pub mod exports;
pub mod session;
pub mod status;
mod store;
mod sync;
pub mod view;
mod watch_stream;

use crate::config::{ControlConfig, ExportSource};
use crate::mesh::{Inbound, Input, MeshPeer, Outgoing, PeerDirectory, Target};
use anyhow::Context as _;
use ipnet::IpNet;
use isthmus_catalog::{
    ClusterName, DigestEntry, Liveness, LocalCatalog, MembersDigest, MergedCatalog, OpaqueMember,
    OriginState, SyncMessage, VipAllocator,
};
use isthmus_catalog_view::ServiceInfo;
use parking_lot::{Mutex, RwLock};
use status::{ControlStatus, PeerSync, RemoteCluster};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How long shutdown waits for sessions to say Bye.
const BYE_GRACE: Duration = Duration::from_secs(1);

struct SessionEntry {
    peer: MeshPeer,
    outbound: bool,
    synced: bool,
    abort: Option<tokio::task::AbortHandle>,
}

#[derive(Debug, Clone)]
struct DialState {
    next: Instant,
    backoff: Duration,
    connecting: bool,
    last_error: Option<String>,
}

/// How recently the tunnel heard from the peer owning a mesh address (the daemon's engine).
///
/// Health counts it as a sign of life of the peer's cluster while a sync session with the peer
/// is open, so liveness costs one probe datagram per peer and period (see
/// `Engine::set_liveness_probe`) instead of a heartbeat through the TUN device, TCP and a
/// session task; a peer that is slow to read its sync socket but whose tunnel answers is not
/// marked down.
pub trait TunnelLiveness: Send + Sync + 'static {
    /// When an authenticated datagram last came from the peer routing `mesh_addr`.
    fn last_heard(&self, mesh_addr: IpAddr) -> Option<Instant>;
    /// How many handshakes the peer routing `mesh_addr` completed: a change may mean it
    /// restarted, and a restarted peer has no sync session any more.
    fn handshakes(&self, mesh_addr: IpAddr) -> u64;
}

/// State shared by the control plane's tasks and read by the admin interfaces.
pub struct Shared {
    pub(crate) catalog: Arc<Mutex<MergedCatalog>>,
    config: ControlConfig,
    mesh_addr: IpAddr,
    revision: watch::Sender<u64>,
    /// Catalog deltas for every session and membership messages for some.
    deltas: broadcast::Sender<Outbound>,
    sessions: Mutex<BTreeMap<u64, SessionEntry>>,
    dials: Mutex<BTreeMap<IpAddr, DialState>>,
    next_session: AtomicU64,
    /// Refusals the catalog does not count itself: undecodable bytes, unknown sources.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    members_received: AtomicU64,
    /// Where membership records and digests from sessions go (the mesh, in the daemon).
    mesh_inbox: Option<tokio::sync::mpsc::Sender<Inbound>>,
    dns_stats: OnceLock<Arc<isthmus_dns::QueryStats>>,
    directory: Box<dyn PeerDirectory>,
    /// The tunnel's view of each peer's liveness, if the daemon runs a data plane.
    liveness: Option<Box<dyn TunnelLiveness>>,
    /// Identity and generation of every member record the mesh holds (`[members]`): sent when
    /// a session opens, and now and then to one session (anti-entropy).
    digest: RwLock<Vec<DigestEntry>>,
    /// What the gateway carries into the tunnel, as the daemon last handed it over (the
    /// daemon owns the peer set; see [`Shared::set_routes`]).
    routes: RwLock<Vec<IpNet>>,
    shutdown: watch::Sender<bool>,
    /// The grid sessions align their heartbeats to: whole seconds of the wall clock, so that
    /// gateways whose clocks agree (NTP) beat at the same instants, a receiver handles the
    /// heartbeats of many peers in one batch and TCP acknowledgements ride on the heartbeats
    /// going the other way. Phase only: nothing is decided by it.
    beat_epoch: Instant,
}

impl Shared {
    /// Something in the catalog changed: the store and the watchers re-read it.
    fn changed(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    fn count_refusal(&self, label: &'static str) {
        *self.refusals.lock().entry(label).or_default() += 1;
    }

    /// Sends membership messages on the sessions they name.
    pub fn send_members(&self, out: Vec<Outgoing>) {
        for o in out {
            // No receiver (no session) is fine: sessions exchange digests when they open.
            let _ = self.deltas.send(Outbound {
                to: o.to,
                msg: o.msg,
            });
        }
    }

    /// Replaces the digest of the member records the mesh holds.
    pub fn set_members_digest(&self, entries: Vec<DigestEntry>) {
        *self.digest.write() = entries;
    }

    /// Replaces the prefixes the watch stream and the etcd store announce as carried into the
    /// tunnel (every applied peer's, and our mesh addresses); the daemon calls it after every
    /// change of its peer set. Watchers get a new line only when the set changed.
    pub fn set_routes(&self, mut routes: Vec<IpNet>) {
        routes.sort();
        routes.dedup();
        {
            let mut current = self.routes.write();
            if *current == routes {
                return;
            }
            tracing::debug!(
                routes = routes.len(),
                "routes carried into the tunnel changed"
            );
            *current = routes;
        }
        self.changed();
    }

    /// [`Shared::set_routes`]' prefixes as CIDR strings, in address order.
    pub fn routes(&self) -> Vec<String> {
        self.routes.read().iter().map(IpNet::to_string).collect()
    }

    /// Our digest, for a session that opens (`reply` unset: both sides send one) or for
    /// anti-entropy (`reply` set). `None` without `[members]`.
    fn digest_message(&self, reply: bool) -> Option<SyncMessage> {
        let entries = self.digest.read().clone();
        (self.mesh_inbox.is_some() && !entries.is_empty())
            .then_some(SyncMessage::MembersDigest(MembersDigest { reply, entries }))
    }

    fn members(&self, peer: &MeshPeer, members: Vec<OpaqueMember>) {
        self.members_received
            .fetch_add(members.len() as u64, Ordering::Relaxed);
        tracing::trace!(peer = %peer.spiffe_id, records = members.len(), "membership records received");
        self.to_mesh(peer, Input::Records(members));
    }

    fn members_digest(&self, peer: &MeshPeer, digest: MembersDigest) {
        self.to_mesh(peer, Input::Digest(digest));
    }

    fn to_mesh(&self, peer: &MeshPeer, input: Input) {
        let Some(inbox) = &self.mesh_inbox else {
            return;
        };
        let msg = Inbound {
            from: peer.clone(),
            input,
        };
        if inbox.try_send(msg).is_err() {
            // The mesh is behind: anti-entropy repairs what this drops.
            self.count_refusal("members_backlog");
        }
    }

    /// Replaces the local exports and sends the delta to every session.
    fn set_exports(
        &self,
        exports: Vec<isthmus_catalog::ServiceExport>,
    ) -> Result<(), isthmus_catalog::Error> {
        let delta = self.catalog.lock().set_exports(exports)?;
        if let Some(delta) = delta {
            tracing::info!(watermark = %self.catalog.lock().local().watermark(), "local exports changed");
            // No receiver (no session) is fine: sessions start with a snapshot.
            let _ = self.deltas.send(Outbound {
                to: Target::All,
                msg: delta,
            });
            self.changed();
        }
        Ok(())
    }

    pub fn services(&self) -> Vec<ServiceInfo> {
        view::services(&self.catalog.lock(), Instant::now())
    }

    pub fn status(&self) -> ControlStatus {
        let now = Instant::now();
        let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
        let (cluster, watermark, services, remote_clusters) = {
            let c = self.catalog.lock();
            for (label, n) in c.refusals() {
                refusals.insert(label.to_string(), n);
            }
            let remotes = c
                .remotes()
                .map(|s| (s.cluster.clone(), s.watermark()))
                .collect::<Vec<_>>();
            let remote_clusters = remotes
                .into_iter()
                .map(|(cluster, mark)| {
                    let h = c.health(&cluster, now);
                    RemoteCluster {
                        cluster: cluster.to_string(),
                        liveness: match h.map(|h| h.liveness) {
                            Some(Liveness::Up) => "up",
                            Some(Liveness::HoldDown { .. }) => "hold_down",
                            Some(Liveness::Down { .. }) | None => "down",
                        }
                        .to_string(),
                        offered: h.is_some_and(|h| h.offered),
                        watermark: Some(mark.to_string()),
                    }
                })
                .collect();
            (
                c.local_cluster().to_string(),
                c.local().watermark().to_string(),
                c.view(now).len(),
                remote_clusters,
            )
        };
        for (label, n) in self.refusals.lock().iter() {
            refusals.insert((*label).to_string(), *n);
        }
        let (sessions, synced) = {
            let s = self.sessions.lock();
            (s.len(), s.values().filter(|e| e.synced).count())
        };
        let dns_queries = self
            .dns_stats
            .get()
            .map(|s| {
                s.snapshot()
                    .by_rcode()
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), *v))
                    .collect()
            })
            .unwrap_or_default();
        ControlStatus {
            cluster,
            watermark,
            services,
            sessions,
            synced_sessions: synced,
            refusals,
            members_received: self.members_received.load(Ordering::Relaxed),
            dns_queries,
            remote_clusters,
            peers: self.peer_sync(),
            members: Vec::new(),
        }
    }

    fn peer_sync(&self) -> Vec<PeerSync> {
        let sessions = self.sessions.lock();
        let dials = self.dials.lock();
        self.directory
            .peers()
            .iter()
            .map(|p| {
                let mine: Vec<&SessionEntry> = sessions
                    .values()
                    .filter(|e| e.peer.addr == p.addr)
                    .collect();
                let sync = if mine.iter().any(|e| e.synced) {
                    "synced".to_string()
                } else if !mine.is_empty() {
                    "syncing".to_string()
                } else if let Some(d) = dials.get(&p.addr) {
                    match (&d.last_error, d.connecting) {
                        (_, true) => "connecting".to_string(),
                        (Some(e), false) => format!("retrying: {e}"),
                        (None, false) => "connecting".to_string(),
                    }
                } else if p.addr < self.mesh_addr {
                    "waiting for the peer to connect".to_string()
                } else {
                    "connecting".to_string()
                };
                PeerSync {
                    spiffe_id: p.spiffe_id.to_string(),
                    mesh_addr: p.addr.to_string(),
                    sync,
                }
            })
            .collect()
    }
}

/// A message for the sessions `to` names.
#[derive(Debug, Clone)]
struct Outbound {
    to: Target,
    msg: SyncMessage,
}

/// The running control plane; [`Control::stop`] closes every socket it opened.
pub struct Control {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Tasks that finish by themselves on shutdown (they say goodbye first).
    graceful: Vec<JoinHandle<()>>,
    dns: Option<isthmus_dns::DnsServer>,
    watch: Option<watch_stream::WatchListeners>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Control {
    /// Restores the state directory, reads the first export set, binds DNS and the sync
    /// listener on the mesh address, and starts every task.
    pub async fn start(
        config: ControlConfig,
        mesh_addr: Option<IpAddr>,
        directory: Box<dyn PeerDirectory>,
        mesh_inbox: Option<tokio::sync::mpsc::Sender<Inbound>>,
        liveness: Option<Box<dyn TunnelLiveness>>,
    ) -> anyhow::Result<Control> {
        let mesh_addr =
            mesh_addr.context("the control plane needs a mesh address ([interface] address)")?;
        let files = store::StateFiles::new(&config.state_dir)?;
        let persisted = files.load();
        // A fresh generation every start: versions start over, and peers replace what they
        // hold of us with our first snapshot (a persisted version may be behind what they saw).
        let generation = unix_ms().max(
            persisted
                .local
                .as_ref()
                .map_or(0, |l| l.generation.saturating_add(1)),
        );
        let vips = VipAllocator::load(&files.vips(), config.vip_v4, config.vip_v6)
            .with_context(|| format!("failed to load {}", files.vips().display()))?;
        let mut catalog = MergedCatalog::new(
            LocalCatalog::new(config.cluster.clone(), generation),
            config.health,
            vips,
        )
        .context("invalid control configuration")?;
        let now = Instant::now();
        for remote in persisted.remotes {
            let cluster = remote.cluster.clone();
            if let Err(e) = catalog.restore(remote, now) {
                tracing::warn!(%cluster, error = %e, "persisted records of a cluster not restored");
            }
        }
        let (first, etcd_watch) = store::first_exports(&config.exports, persisted.local).await?;
        catalog
            .set_exports(first)
            .map_err(|e| anyhow::anyhow!("invalid exports: {e}"))?;
        let catalog = Arc::new(Mutex::new(catalog));
        let (revision, _) = watch::channel(0u64);
        let (deltas, _) = broadcast::channel(256);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            catalog: catalog.clone(),
            config: config.clone(),
            mesh_addr,
            revision,
            deltas,
            sessions: Mutex::new(BTreeMap::new()),
            dials: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
            refusals: Mutex::new(BTreeMap::new()),
            members_received: AtomicU64::new(0),
            mesh_inbox,
            dns_stats: OnceLock::new(),
            directory,
            liveness,
            digest: RwLock::new(Vec::new()),
            routes: RwLock::new(Vec::new()),
            shutdown,
            beat_epoch: crate::clock::epoch(),
        });
        files.save(&shared)?;

        let dns = match &config.dns {
            Some(d) => {
                let mut dns_config = isthmus_dns::DnsConfig::new(d.listen);
                dns_config.zone = d.zone.parse().context("invalid dns.zone")?;
                dns_config.ttl_secs = d.ttl;
                let resolver = Arc::new(view::CatalogResolver {
                    catalog: catalog.clone(),
                });
                let server = isthmus_dns::DnsServer::bind(dns_config, resolver)
                    .await
                    .with_context(|| format!("failed to serve DNS on {}", d.listen))?;
                let _ = shared.dns_stats.set(server.stats());
                Some(server)
            }
            None => None,
        };
        let listener = sync::bind(mesh_addr, config.port).await.with_context(|| {
            format!(
                "failed to listen for catalog sync on {mesh_addr} port {}",
                config.port
            )
        })?;
        let watch = watch_stream::serve_watch(&config, shared.clone()).await?;

        let mut tasks = vec![
            tokio::spawn(sync::accept_loop(shared.clone(), listener)),
            tokio::spawn(sync::dial_loop(shared.clone())),
            tokio::spawn(sync::anti_entropy_loop(shared.clone())),
            tokio::spawn(health_loop(shared.clone())),
            tokio::spawn(store::persist_loop(shared.clone(), files)),
        ];
        match (&config.exports, etcd_watch) {
            (ExportSource::Static(path), _) => tasks.push(tokio::spawn(store::static_loop(
                shared.clone(),
                path.clone(),
            ))),
            (ExportSource::Etcd(_), Some(w)) => {
                tasks.push(tokio::spawn(store::etcd_exports_loop(shared.clone(), w)))
            }
            _ => {}
        }
        let mut graceful = Vec::new();
        if let Some(target) = &config.store {
            graceful.push(tokio::spawn(store::publish_loop(
                shared.clone(),
                target.clone(),
            )));
        }
        tracing::info!(
            cluster = %config.cluster, %mesh_addr, port = config.port,
            dns = ?config.dns.as_ref().map(|d| d.listen), state_dir = %config.state_dir.display(),
            "control plane running"
        );
        Ok(Control {
            shared,
            tasks,
            graceful,
            dns,
            watch: Some(watch),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Says Bye to every peer, closes the sync listener and sessions, DNS and the watch
    /// listeners, releases the etcd prefix and writes the state a last time.
    pub async fn stop(mut self) {
        let _ = self.shared.shutdown.send(true);
        let deadline = Instant::now() + BYE_GRACE;
        while !self.shared.sessions.lock().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<tokio::task::AbortHandle> = self
            .shared
            .sessions
            .lock()
            .values()
            .filter_map(|e| e.abort.clone())
            .collect();
        for a in left {
            a.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        for t in self.graceful.drain(..) {
            if tokio::time::timeout(Duration::from_secs(3), t)
                .await
                .is_err()
            {
                tracing::warn!("etcd store did not release its prefix in time");
            }
        }
        if let Some(dns) = self.dns.take() {
            if let Err(e) = dns.shutdown().await {
                tracing::warn!(error = %e, "DNS server shutdown");
            }
        }
        if let Some(w) = self.watch.take() {
            w.shutdown().await;
        }
        // Sessions aborted above drop their sockets when their tasks end.
        let deadline = Instant::now() + Duration::from_millis(500);
        while !self.shared.sessions.lock().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match store::StateFiles::new(&self.shared.config.state_dir) {
            Ok(files) => {
                if let Err(e) = files.save(&self.shared) {
                    tracing::warn!(error = format!("{e:#}"), "final catalog save failed");
                }
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "final catalog save failed"),
        }
        tracing::info!("control plane stopped");
    }
}

/// A health timer firing this late means this process was not running.
const STALL: Duration = Duration::from_millis(300);

/// The period of the liveness probes the tunnel sends each peer (when nothing else went to it):
/// three per `down_after`, so one lost or late probe does not mark a cluster down.
pub fn liveness_probe(health: &isthmus_catalog::HealthConfig) -> Duration {
    (health.down_after / 3).max(MIN_PROBE)
}

/// The shortest probe period: the data plane's timer tick (its `TICK`).
const MIN_PROBE: Duration = Duration::from_millis(250);
/// The health check runs at least this often (and at least every `down_after / 2`).
const HEALTH_IDLE: Duration = Duration::from_secs(1);

/// Runs the catalog's health timers: feeds it what the tunnel heard from each peer, then
/// handles what is due, logs the events and tells the store and watchers. DNS needs no push:
/// it reads the catalog per query with the current time.
async fn health_loop(shared: Arc<Shared>) {
    let mut tunnel = TunnelSeen::default();
    let (idle_step, probe) = {
        let catalog = shared.catalog.lock();
        let health = catalog.config();
        (
            HEALTH_IDLE.min(health.down_after / 2),
            liveness_probe(health),
        )
    };
    loop {
        let wake = shared.catalog.lock().poll_timeout();
        let now = Instant::now();
        // A deadline (a cluster going down, a hold-down ending) is met on time; with none
        // near, the check runs every `idle_step` on a grid of the wall clock, where the data
        // plane's tick and the other timers wake too. What the tunnel heard is fed in before
        // every decision, at most `idle_step` (≤ down_after/2) after the previous feed: with
        // probes every down_after/3, a live peer's fed times are never down_after apart.
        let idle = crate::clock::next_after(idle_step, now);
        let until = wake.map_or(idle, |due| due.min(idle));
        tokio::time::sleep_until(until.into()).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(until);
        if let Some(liveness) = &shared.liveness {
            tunnel.observe(&shared, liveness.as_ref(), probe);
        }
        let events = {
            let mut catalog = shared.catalog.lock();
            // Woken this late: the machine starved this process, not the peers of ours.
            if late >= STALL {
                catalog.credit_stall(late, now);
            }
            catalog.handle_timeout(now)
        };
        for e in &events {
            match e {
                isthmus_catalog::Event::ClusterUp(c) => {
                    tracing::info!(cluster = %c, "cluster up: its endpoints are offered")
                }
                isthmus_catalog::Event::ClusterDown(c) => {
                    tracing::warn!(cluster = %c, "cluster down: its endpoints are withdrawn")
                }
                isthmus_catalog::Event::Expired { cluster, services } => {
                    tracing::warn!(%cluster, services = services.len(), "cluster gone past record_ttl: its records are dropped")
                }
                isthmus_catalog::Event::VipUnavailable(s) => {
                    tracing::warn!(service = %s, "VIP range full: service has no clusterset VIP")
                }
            }
        }
        if !events.is_empty() {
            shared.changed();
        }
    }
}

/// What the health loop last took from the tunnel, per peer with an open sync session.
#[derive(Default)]
struct TunnelSeen {
    peers: BTreeMap<IpAddr, Seen>,
}

struct Seen {
    heard: Option<Instant>,
    handshakes: u64,
}

impl TunnelSeen {
    /// Counts what the tunnel heard since the last call as signs of life of the peers' clusters
    /// (only peers with an open sync session: a cluster whose records are not being synced is
    /// not offered on the strength of its tunnel alone). A peer heard again after missing
    /// probes, or with a new handshake, may have restarted: its sessions get a heartbeat now,
    /// which a restarted peer answers with a reset, so the session is re-dialled at once
    /// rather than at its next heartbeat.
    fn observe(&mut self, shared: &Shared, liveness: &dyn TunnelLiveness, probe: Duration) {
        let open: BTreeMap<IpAddr, ClusterName> = shared
            .sessions
            .lock()
            .values()
            .map(|e| (e.peer.addr, e.peer.cluster.clone()))
            .collect();
        self.peers.retain(|addr, _| open.contains_key(addr));
        let mut alive = Vec::new();
        let mut nudge = Vec::new();
        for (addr, cluster) in open {
            let heard = liveness.last_heard(addr);
            let handshakes = liveness.handshakes(addr);
            let seen = self.peers.entry(addr).or_insert(Seen {
                heard: None,
                handshakes,
            });
            if let Some(at) = heard.filter(|at| seen.heard.is_none_or(|prev| *at > prev)) {
                alive.push((cluster, at));
                let gap = seen.heard.map(|prev| at.saturating_duration_since(prev));
                if gap.is_some_and(|g| g > probe + probe / 2) || handshakes != seen.handshakes {
                    nudge.push(addr);
                }
                seen.heard = Some(at);
            }
            seen.handshakes = handshakes;
        }
        if !alive.is_empty() {
            let mut catalog = shared.catalog.lock();
            for (cluster, at) in &alive {
                catalog.observe_alive(cluster, *at);
            }
        }
        if !nudge.is_empty() {
            let beat = shared.catalog.lock().heartbeat();
            for addr in nudge {
                let _ = shared.deltas.send(Outbound {
                    to: Target::One(addr),
                    msg: beat.clone(),
                });
            }
        }
    }
}

/// Persisted remote origins and the local one, as written in the state directory.
#[derive(Default)]
struct Persisted {
    local: Option<OriginState>,
    remotes: Vec<OriginState>,
}
