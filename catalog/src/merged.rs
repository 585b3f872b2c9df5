//! The merged catalog: the local origin, every remote origin's records and health, and the
//! clusterset VIPs of every service any of them exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Violation};
use crate::health::{ClusterHealth, Health, HealthConfig, Transition};
use crate::message::{Delta, Hello, OpaqueMember, SyncMessage};
use crate::names::{ClusterName, ServiceName};
use crate::origin::{LocalCatalog, OriginState, Watermark};
use crate::vip::VipAllocator;
use crate::PROTOCOL_VERSION;

/// Why a received message was not applied. `Copy`: built from untrusted input. Every refusal is
/// counted by [`Refused::label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The message names a cluster other than the sender's own: a cluster is the only
    /// authority for its records.
    #[error("sender may publish only its own cluster's records")]
    WrongOrigin,
    /// The sender's identity is our own cluster; nobody else publishes our records.
    #[error("sender claims the local cluster")]
    OwnCluster,
    /// The message does not follow what is held (missing base, newer generation, version
    /// skipped): nothing was applied; the caller sends [`SyncMessage::SnapshotRequest`].
    #[error("out of sequence, snapshot needed")]
    Gap,
    #[error("invalid {0}")]
    Invalid(Violation),
}

impl Refused {
    /// Every label, in counting order (metric label `reason`).
    pub const LABELS: [&'static str; 4] = ["wrong_origin", "own_cluster", "gap", "invalid"];

    fn index(&self) -> usize {
        match self {
            Refused::WrongOrigin => 0,
            Refused::OwnCluster => 1,
            Refused::Gap => 2,
            Refused::Invalid(_) => 3,
        }
    }

    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// Why an accepted message changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// Already held at exactly this watermark.
    Duplicate,
    /// Older than what is held.
    Stale,
    /// Nothing to change (a heartbeat or hello that matches what is held).
    Current,
}

/// What the caller does after an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The origin's records changed: refresh DNS, the store and the route agents.
    Updated {
        origin: ClusterName,
        watermark: Watermark,
        /// Services whose export by this origin was added, changed or removed (sorted).
        changed: Vec<ServiceName>,
    },
    Unchanged(Unchanged),
    /// Send this back to the sender (our snapshot, for a Hello or a SnapshotRequest).
    Reply(Box<SyncMessage>),
    /// Membership records for the gateway to verify.
    Members(Vec<OpaqueMember>),
    /// A membership digest for the gateway to answer.
    MembersDigest(crate::message::MembersDigest),
    /// The sender said Bye; its endpoints are withdrawn now.
    Left,
}

/// Something the daemon reacts to, from [`MergedCatalog::handle_timeout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The cluster's endpoints are offered (again).
    ClusterUp(ClusterName),
    /// The cluster's endpoints are withdrawn.
    ClusterDown(ClusterName),
    /// The cluster was Down for `record_ttl`: its records are gone.
    Expired {
        cluster: ClusterName,
        services: Vec<ServiceName>,
    },
    /// The service has no VIP because the range is full; retried whenever a VIP is released.
    VipUnavailable(ServiceName),
}

#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub health: Health,
    pub state: Option<OriginState>,
}

/// See the crate docs for the contract.
#[derive(Debug)]
pub struct MergedCatalog {
    pub(crate) local: LocalCatalog,
    pub(crate) config: HealthConfig,
    pub(crate) remotes: BTreeMap<ClusterName, Remote>,
    /// Watermarks of expired origins, so a stale snapshot cannot bring back older records.
    tombstones: BTreeMap<ClusterName, Watermark>,
    /// Which origins (the local one included) export each service.
    pub(crate) index: BTreeMap<ServiceName, BTreeSet<ClusterName>>,
    pub(crate) vips: VipAllocator,
    no_vip: BTreeSet<ServiceName>,
    events: Vec<Event>,
    /// When the oldest waiting event was queued.
    events_since: Option<Instant>,
    /// The latest `now` the caller gave; stamps events raised by calls that take no time.
    clock: Option<Instant>,
    refusals: [u64; Refused::LABELS.len()],
}

impl MergedCatalog {
    pub fn new(
        local: LocalCatalog,
        config: HealthConfig,
        vips: VipAllocator,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mut catalog = Self {
            local,
            config,
            remotes: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            index: BTreeMap::new(),
            vips,
            no_vip: BTreeSet::new(),
            events: Vec::new(),
            events_since: None,
            clock: None,
            refusals: [0; Refused::LABELS.len()],
        };
        let names: Vec<ServiceName> = catalog.local.state().services.keys().cloned().collect();
        let cluster = catalog.local.cluster().clone();
        catalog.reindex(&cluster, &names);
        let index = &catalog.index;
        catalog.vips.release_unless(|name| index.contains_key(name));
        Ok(catalog)
    }

    pub fn local(&self) -> &LocalCatalog {
        &self.local
    }

    pub fn local_cluster(&self) -> &ClusterName {
        self.local.cluster()
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Replaces the local export set ([`LocalCatalog::set_exports`]); returns the delta to send
    /// to every peer, or `None` if nothing changed.
    pub fn set_exports(
        &mut self,
        exports: Vec<crate::ServiceExport>,
    ) -> Result<Option<SyncMessage>, Error> {
        let Some(delta) = self.local.set_exports(exports)? else {
            return Ok(None);
        };
        let names: Vec<ServiceName> = delta.changes.iter().map(|c| c.name().clone()).collect();
        let cluster = self.local.cluster().clone();
        self.reindex(&cluster, &names);
        Ok(Some(SyncMessage::Delta(delta)))
    }

    /// The Hello to open a session with `peer`.
    pub fn hello(&self, peer: &ClusterName) -> SyncMessage {
        let own = self.local.watermark();
        SyncMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster: self.local.cluster().clone(),
            generation: own.generation,
            version: own.version,
            have: self.remote(peer).map(OriginState::watermark),
        })
    }

    pub fn heartbeat(&self) -> SyncMessage {
        SyncMessage::Heartbeat(self.local.watermark())
    }

    pub fn snapshot(&self) -> SyncMessage {
        SyncMessage::Snapshot(self.local.state().clone())
    }

    /// Applies one message from `sender`, whose cluster the caller took from the session's
    /// verified SVID. Any message, even a refused one, counts as a sign of life at `now`.
    pub fn apply(
        &mut self,
        sender: &ClusterName,
        msg: SyncMessage,
        now: Instant,
    ) -> Result<Applied, Refused> {
        self.tick(now);
        let result = self.apply_inner(sender, msg, now);
        if let Err(refused) = &result {
            self.refusals[refused.index()] += 1;
        }
        result
    }

    fn apply_inner(
        &mut self,
        sender: &ClusterName,
        msg: SyncMessage,
        now: Instant,
    ) -> Result<Applied, Refused> {
        if sender == self.local.cluster() {
            return match msg {
                SyncMessage::Members(members) => Ok(Applied::Members(members)),
                SyncMessage::MembersDigest(d) => Ok(Applied::MembersDigest(d)),
                _ => Err(Refused::OwnCluster),
            };
        }
        self.observe_alive(sender, now);
        if msg.origin().is_some_and(|origin| origin != sender) {
            return Err(Refused::WrongOrigin);
        }
        msg.check()
            .map_err(|bad| Refused::Invalid(bad.violation()))?;
        match msg {
            // A peer that is current gets a heartbeat, which tells it so at once (heartbeats
            // may be far apart); any other a snapshot.
            SyncMessage::Hello(hello) => Ok(Applied::Reply(Box::new(
                if hello.have == Some(self.local.watermark()) {
                    self.heartbeat()
                } else {
                    self.snapshot()
                },
            ))),
            SyncMessage::SnapshotRequest => Ok(Applied::Reply(Box::new(self.snapshot()))),
            SyncMessage::Snapshot(state) => Ok(self.apply_snapshot(state)),
            SyncMessage::Delta(delta) => self.apply_delta(delta),
            SyncMessage::Heartbeat(mark) => match self.remote(sender).map(OriginState::watermark) {
                Some(held) if held == mark => Ok(Applied::Unchanged(Unchanged::Current)),
                Some(held) if held > mark => Ok(Applied::Unchanged(Unchanged::Stale)),
                _ => Err(Refused::Gap),
            },
            SyncMessage::Members(members) => Ok(Applied::Members(members)),
            SyncMessage::MembersDigest(d) => Ok(Applied::MembersDigest(d)),
            SyncMessage::Bye => {
                let mut transitions = Vec::new();
                if let Some(remote) = self.remotes.get_mut(sender) {
                    remote.health.left(now, &mut transitions);
                }
                self.transitions(sender, transitions);
                Ok(Applied::Left)
            }
        }
    }

    fn apply_snapshot(&mut self, state: OriginState) -> Applied {
        let mark = state.watermark();
        let cluster = state.cluster.clone();
        let held = self.remote(&cluster).map(OriginState::watermark);
        match held {
            Some(h) if h == mark => return Applied::Unchanged(Unchanged::Duplicate),
            Some(h) if h > mark => return Applied::Unchanged(Unchanged::Stale),
            None if self.tombstones.get(&cluster).is_some_and(|t| *t > mark) => {
                return Applied::Unchanged(Unchanged::Stale)
            }
            _ => {}
        }
        self.tombstones.remove(&cluster);
        let remote = self
            .remotes
            .get_mut(&cluster)
            .expect("the sender was observed alive first");
        let old = remote.state.replace(state);
        let new = remote.state.as_ref().expect("just set");
        let mut changed: BTreeSet<ServiceName> = BTreeSet::new();
        if let Some(old) = &old {
            for (name, export) in &old.services {
                if new.services.get(name) != Some(export) {
                    changed.insert(name.clone());
                }
            }
        }
        for (name, export) in &new.services {
            if old.as_ref().and_then(|o| o.services.get(name)) != Some(export) {
                changed.insert(name.clone());
            }
        }
        let changed: Vec<ServiceName> = changed.into_iter().collect();
        self.reindex(&cluster, &changed);
        Applied::Updated {
            origin: cluster,
            watermark: mark,
            changed,
        }
    }

    fn apply_delta(&mut self, delta: Delta) -> Result<Applied, Refused> {
        let Some(state) = self
            .remotes
            .get_mut(&delta.cluster)
            .and_then(|r| r.state.as_mut())
        else {
            return Err(Refused::Gap);
        };
        let held = state.watermark();
        if delta.generation < held.generation {
            return Ok(Applied::Unchanged(Unchanged::Stale));
        }
        if delta.generation > held.generation {
            return Err(Refused::Gap);
        }
        if delta.to_version == held.version {
            return Ok(Applied::Unchanged(Unchanged::Duplicate));
        }
        if delta.to_version < held.version {
            return Ok(Applied::Unchanged(Unchanged::Stale));
        }
        if delta.from_version != held.version {
            return Err(Refused::Gap);
        }
        state.apply_changes(&delta);
        let mark = state.watermark();
        let mut changed: Vec<ServiceName> =
            delta.changes.iter().map(|c| c.name().clone()).collect();
        changed.sort();
        self.reindex(&delta.cluster, &changed);
        Ok(Applied::Updated {
            origin: delta.cluster,
            watermark: mark,
            changed,
        })
    }

    /// A sign of life from `cluster` other than a sync message (e.g. a WireGuard handshake).
    pub fn observe_alive(&mut self, cluster: &ClusterName, now: Instant) {
        self.tick(now);
        if cluster == self.local.cluster() {
            return;
        }
        let mut transitions = Vec::new();
        if let Some(remote) = self.remotes.get_mut(cluster) {
            remote.health.settle(now, &self.config, &mut transitions);
            // An expired cluster starts over below, as one heard for the first time.
            if !transitions.contains(&Transition::Expire) {
                remote.health.heard(now, &self.config, &mut transitions);
            }
            self.transitions(cluster, transitions);
        }
        if !self.remotes.contains_key(cluster) {
            let remote = Remote {
                health: Health::heard_first(now),
                state: None,
            };
            self.remotes.insert(cluster.clone(), remote);
            self.push_event(Event::ClusterUp(cluster.clone()));
        }
    }

    /// Brings back a remote origin's records persisted by an earlier run. They are not offered
    /// until the cluster is heard, and expire `record_ttl` after `now` if it is not. Ignored for
    /// a cluster already heard from in this run (what it sent is newer).
    pub fn restore(&mut self, state: OriginState, now: Instant) -> Result<(), Error> {
        self.tick(now);
        state.validate()?;
        if state.cluster == *self.local.cluster() {
            return Err(Error::Invalid {
                field: "restored origin".into(),
                value: state.cluster.to_string(),
                reason: "is the local cluster",
            });
        }
        if self.remotes.contains_key(&state.cluster) {
            return Ok(());
        }
        let cluster = state.cluster.clone();
        let names: Vec<ServiceName> = state.services.keys().cloned().collect();
        let remote = Remote {
            health: Health::restored(now),
            state: Some(state),
        };
        self.remotes.insert(cluster.clone(), remote);
        self.reindex(&cluster, &names);
        Ok(())
    }

    /// Every remote origin's records (for persistence and the store).
    pub fn remotes(&self) -> impl Iterator<Item = &OriginState> {
        self.remotes.values().filter_map(|r| r.state.as_ref())
    }

    pub fn remote(&self, cluster: &ClusterName) -> Option<&OriginState> {
        self.remotes.get(cluster).and_then(|r| r.state.as_ref())
    }

    /// Health of a remote cluster we have heard of.
    pub fn health(&self, cluster: &ClusterName, now: Instant) -> Option<ClusterHealth> {
        let remote = self.remotes.get(cluster)?;
        Some(remote.health.status(now, &self.config))
    }

    /// Whether `cluster`'s endpoints are offered at `now` (the local cluster always is).
    pub fn offered(&self, cluster: &ClusterName, now: Instant) -> bool {
        cluster == self.local.cluster()
            || self
                .remotes
                .get(cluster)
                .is_some_and(|r| r.health.offered(now, &self.config))
    }

    /// Refusals so far, by [`Refused::label`].
    pub fn refusals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Refused::LABELS
            .iter()
            .copied()
            .zip(self.refusals.iter().copied())
    }

    pub fn vips(&self) -> &VipAllocator {
        &self.vips
    }

    /// Saves the VIP map if it changed since the last save; `Ok(true)` if it wrote.
    pub fn save_vips(&mut self, path: &Path) -> Result<bool, Error> {
        if !self.vips.is_dirty() {
            return Ok(false);
        }
        self.vips.save(path)?;
        Ok(true)
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do. An instant in
    /// the past means events are already waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self
            .remotes
            .values()
            .map(|r| r.health.deadline(&self.config));
        timers.chain(self.events_since).min()
    }

    /// Runs every timer due by `now` and returns the events since the last call, in order.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Event> {
        self.tick(now);
        let mut due = Vec::new();
        for (cluster, remote) in &mut self.remotes {
            let mut transitions = Vec::new();
            remote.health.settle(now, &self.config, &mut transitions);
            if !transitions.is_empty() {
                due.push((cluster.clone(), transitions));
            }
        }
        for (cluster, transitions) in due {
            self.transitions(&cluster, transitions);
        }
        self.events_since = None;
        std::mem::take(&mut self.events)
    }

    /// This process did not run for `stalled` before `now` (its timers fired that late: the
    /// machine was busy). What peers sent meanwhile may still sit unread in socket buffers, so
    /// that time is not counted as their silence: a busy gateway does not mark every cluster
    /// down at once and resync with all of them. Call before [`Self::handle_timeout`]. A peer
    /// that really died during a stall is marked down that much later.
    pub fn credit_stall(&mut self, stalled: std::time::Duration, now: Instant) {
        for remote in self.remotes.values_mut() {
            remote.health.credit(stalled, now);
        }
    }

    fn tick(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    fn push_event(&mut self, event: Event) {
        self.events.push(event);
        if let Some(now) = self.clock {
            self.events_since.get_or_insert(now);
        }
    }

    fn transitions(&mut self, cluster: &ClusterName, transitions: Vec<Transition>) {
        for t in transitions {
            match t {
                Transition::Up => self.push_event(Event::ClusterUp(cluster.clone())),
                Transition::Down => self.push_event(Event::ClusterDown(cluster.clone())),
                Transition::Expire => self.expire(cluster),
            }
        }
    }

    fn expire(&mut self, cluster: &ClusterName) {
        let Some(remote) = self.remotes.remove(cluster) else {
            return;
        };
        let mut services = Vec::new();
        if let Some(state) = remote.state {
            self.tombstones.insert(cluster.clone(), state.watermark());
            services = state.services.into_keys().collect();
        }
        self.reindex(cluster, &services);
        let event = Event::Expired {
            cluster: cluster.clone(),
            services,
        };
        self.push_event(event);
    }

    fn exports(&self, cluster: &ClusterName, name: &ServiceName) -> bool {
        if cluster == self.local.cluster() {
            return self.local.state().services.contains_key(name);
        }
        self.remote(cluster)
            .is_some_and(|s| s.services.contains_key(name))
    }

    /// Brings the index and the VIPs up to date for `names` as exported by `cluster`.
    fn reindex(&mut self, cluster: &ClusterName, names: &[ServiceName]) {
        let mut released = false;
        for name in names {
            let exported = self.exports(cluster, name);
            let entry = self.index.entry(name.clone()).or_default();
            let was_known = !entry.is_empty();
            if exported {
                entry.insert(cluster.clone());
            } else {
                entry.remove(cluster);
            }
            match (was_known, entry.is_empty()) {
                (false, false) => self.allocate(name),
                (true, true) => {
                    self.index.remove(name);
                    self.no_vip.remove(name);
                    self.vips.release(name);
                    released = true;
                }
                (false, true) => {
                    self.index.remove(name);
                }
                (true, false) => {}
            }
        }
        if released {
            let waiting: Vec<ServiceName> = self.no_vip.iter().cloned().collect();
            for name in waiting {
                self.allocate(&name);
            }
        }
    }

    fn allocate(&mut self, name: &ServiceName) {
        match self.vips.allocate(name) {
            Ok(_) => {
                self.no_vip.remove(name);
            }
            Err(_) => {
                if self.no_vip.insert(name.clone()) {
                    self.push_event(Event::VipUnavailable(name.clone()));
                }
            }
        }
    }
}
