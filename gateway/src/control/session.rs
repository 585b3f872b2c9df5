//! One sync session with one peer, without I/O: bytes and the time in, messages to send and
//! what changed out. The tokio shell (`super::sync`) owns the socket and the catalog lock.
//!
//! The peer's cluster is fixed when the session is made, from the SPIFFE ID that owns the
//! session's source mesh address (the tunnel authenticated it); every message is applied as
//! coming from that cluster, so a peer can only ever publish its own records.

use isthmus_catalog::ClusterName;
use isthmus_catalog::{
    Applied, DecodeError, FrameDecoder, HealthConfig, MembersDigest, MergedCatalog, OpaqueMember,
    Refused, SyncMessage, Unchanged,
};
use std::time::{Duration, Instant};

/// What the shell does after input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(SyncMessage),
    /// The catalog changed (records or health): refresh the store and watchers.
    Changed,
    Members(Vec<OpaqueMember>),
    MembersDigest(MembersDigest),
}

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Bytes that are not a valid sync message: the stream cannot be trusted any more.
    Decode(DecodeError),
    /// A message the catalog refused (other than a gap, which is repaired by a snapshot).
    Refused(Refused),
    /// Nothing heard for the idle timeout.
    Idle,
    /// The peer said Bye.
    Bye,
}

impl Close {
    /// Metric label of a close that counts as a refusal, `None` for ordinary ends.
    pub fn refusal_label(&self) -> Option<&'static str> {
        match self {
            Close::Decode(_) => Some("decode"),
            Close::Refused(r) => Some(r.label()),
            Close::Idle | Close::Bye => None,
        }
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Decode(e) => write!(f, "undecodable sync bytes: {e}"),
            Close::Refused(r) => write!(f, "refused: {r}"),
            Close::Idle => f.write_str("peer silent"),
            Close::Bye => f.write_str("peer said bye"),
        }
    }
}

/// How often a session speaks when it has nothing else to send.
///
/// When the tunnel tells whether a peer is alive ([`super::TunnelLiveness`]: both ends probe
/// it every `down_after / 3`), the heartbeat only finds a dead connection (a peer that
/// restarted answers it with a reset) and carries the watermark, so it comes every 30 s at
/// most (health also sends one at once when the tunnel suggests the peer restarted): a gateway with hundreds of peers then pays for liveness in 32-byte datagrams on one
/// timer, not in TCP segments through the TUN device. Without it, the heartbeat is the sign
/// of life health counts on: every `down_after / 3`.
pub fn heartbeat_every(health: &HealthConfig, tunnel_liveness: bool) -> Duration {
    let fast = (health.down_after / 3).max(Duration::from_millis(50));
    if tunnel_liveness {
        fast.max(QUIET_HEARTBEAT)
    } else {
        fast
    }
}

/// The heartbeat period of a session whose peer's liveness the tunnel tells.
const QUIET_HEARTBEAT: Duration = Duration::from_secs(30);

/// A peer this long silent is gone and its session ends: four times `down_after`, at least
/// 10 s. Silent means: its tunnel, where the tunnel tells liveness (see
/// [`SessionCore::with_tunnel`]); else the session.
pub fn silent_after(health: &HealthConfig) -> Duration {
    (health.down_after * 4).max(Duration::from_secs(10))
}

/// A session ends after this much silence of its own: [`silent_after`], and at least three
/// heartbeats (a peer whose tunnel answers but whose sync session says nothing is stuck).
pub fn idle_after(health: &HealthConfig, heartbeat_every: Duration) -> Duration {
    silent_after(health).max(heartbeat_every * 3)
}

#[derive(Debug)]
pub struct SessionCore {
    peer: ClusterName,
    decoder: FrameDecoder,
    last_sent: Instant,
    last_heard: Instant,
    heartbeat_every: Duration,
    /// Heartbeats fall on `epoch + k·step` (see [`SessionCore::aligned_to`]).
    grid: Option<(Instant, Duration)>,
    idle_after: Duration,
    /// With tunnel liveness: how long the tunnel may be silent, and when it was last heard
    /// (or the session opened).
    tunnel: Option<(Duration, Instant)>,
    synced: bool,
}

impl SessionCore {
    /// A session with `peer` (its cluster, from its verified identity) opening at `now`,
    /// speaking at least every `heartbeat_every` (see [`heartbeat_every`]).
    pub fn new(
        peer: ClusterName,
        health: &HealthConfig,
        heartbeat_every: Duration,
        now: Instant,
    ) -> Self {
        Self {
            peer,
            decoder: FrameDecoder::new(),
            last_sent: now,
            last_heard: now,
            heartbeat_every,
            grid: None,
            // Health marks a silent peer down after down_after; the session itself is kept
            // much longer, so a peer that is slow (a busy machine) but alive keeps its
            // session and needs no resync when it answers.
            idle_after: idle_after(health, heartbeat_every),
            tunnel: None,
            synced: false,
        }
    }

    /// The session also ends when the peer's tunnel was silent for [`silent_after`] (fed by
    /// [`SessionCore::on_tunnel_heard`]): though heartbeats are rare, a partitioned or dead
    /// peer loses its session as soon as it did when heartbeats were its only sign of life.
    pub fn with_tunnel(mut self, health: &HealthConfig) -> Self {
        self.tunnel = Some((silent_after(health), self.last_heard));
        self
    }

    /// The peer's tunnel delivered a datagram at `at`.
    pub fn on_tunnel_heard(&mut self, at: Instant) {
        if let Some((_, heard)) = &mut self.tunnel {
            *heard = (*heard).max(at);
        }
    }

    /// When the tunnel's silence ends the session, on the heartbeat grid (one wake-up for all).
    fn tunnel_deadline(&self) -> Option<Instant> {
        let (limit, heard) = self.tunnel?;
        Some(self.on_grid(heard + limit))
    }

    /// `due` moved to the session's grid, if it has one.
    fn on_grid(&self, due: Instant) -> Instant {
        match self.grid {
            Some((epoch, step)) => crate::clock::on_grid(epoch, step, due),
            None => due,
        }
    }

    /// Heartbeats of every session made with the same `epoch` fall on one grid (a quarter of
    /// the heartbeat period, at most 250 ms): a gateway with hundreds of sessions wakes, reads
    /// its TUN and sends in one batch a few times a second, not once per session at scattered
    /// times (idle CPU). A heartbeat is at most one grid step late.
    pub fn aligned_to(mut self, epoch: Instant) -> Self {
        let step = (self.heartbeat_every / 4).min(Duration::from_millis(250));
        if !step.is_zero() {
            self.grid = Some((epoch, step));
        }
        self
    }

    /// When the next heartbeat is due if nothing else is sent.
    fn heartbeat_due(&self) -> Instant {
        self.on_grid(self.last_sent + self.heartbeat_every)
    }

    /// How long the session's own side may stay silent before it is closed.
    pub fn idle_after(&self) -> Duration {
        self.idle_after
    }

    /// How long a write may block before the session is closed: as long as a peer may be
    /// silent (a slow peer keeps its session; one that takes nothing is gone).
    pub fn write_timeout(&self) -> Duration {
        self.tunnel.map_or(self.idle_after, |(limit, _)| limit)
    }

    pub fn peer(&self) -> &ClusterName {
        &self.peer
    }

    /// Whether the peer's records are current here (a snapshot or a matching heartbeat came).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The first message of the session.
    pub fn open(&mut self, catalog: &MergedCatalog) -> SyncMessage {
        catalog.hello(&self.peer)
    }

    /// Something was written to the peer at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// Feeds received bytes; appends what to do to `out`. An error means: close the session
    /// (after acting on `out`). The catalog is never left half-updated: a refused message
    /// changes nothing.
    pub fn on_bytes(
        &mut self,
        bytes: &[u8],
        catalog: &mut MergedCatalog,
        now: Instant,
        out: &mut Vec<Output>,
    ) -> Result<(), Close> {
        self.last_heard = now;
        self.decoder.push(bytes).map_err(Close::Decode)?;
        while let Some(msg) = self.decoder.pop().map_err(Close::Decode)? {
            match catalog.apply(&self.peer, msg, now) {
                Ok(Applied::Reply(reply)) => out.push(Output::Send(*reply)),
                Ok(Applied::Updated { .. }) => {
                    self.synced = true;
                    out.push(Output::Changed);
                }
                Ok(Applied::Unchanged(Unchanged::Current | Unchanged::Duplicate)) => {
                    self.synced = true
                }
                Ok(Applied::Unchanged(Unchanged::Stale)) => {}
                Ok(Applied::Members(members)) => out.push(Output::Members(members)),
                Ok(Applied::MembersDigest(d)) => out.push(Output::MembersDigest(d)),
                Ok(Applied::Left) => {
                    out.push(Output::Changed);
                    return Err(Close::Bye);
                }
                Err(Refused::Gap) => {
                    self.synced = false;
                    out.push(Output::Send(SyncMessage::SnapshotRequest));
                }
                Err(refused) => return Err(Close::Refused(refused)),
            }
        }
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn poll_timeout(&self) -> Instant {
        let own = self.heartbeat_due().min(self.last_heard + self.idle_after);
        self.tunnel_deadline().map_or(own, |t| own.min(t))
    }

    /// A heartbeat to send if nothing was sent for a while; [`Close::Idle`] if the peer is
    /// silent.
    pub fn handle_timeout(
        &mut self,
        catalog: &MergedCatalog,
        now: Instant,
    ) -> Result<Option<SyncMessage>, Close> {
        if now >= self.last_heard + self.idle_after
            || self.tunnel_deadline().is_some_and(|t| now >= t)
        {
            return Err(Close::Idle);
        }
        if now >= self.heartbeat_due() {
            return Ok(Some(catalog.heartbeat()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_catalog::{
        encode, Endpoint, LocalCatalog, OriginState, ServiceExport, ServiceName, VipAllocator,
    };

    /// A session whose heartbeat is the only sign of life (no tunnel liveness).
    fn core(peer: &str, health: &HealthConfig, now: Instant) -> SessionCore {
        SessionCore::new(
            ClusterName::new(peer).unwrap(),
            health,
            heartbeat_every(health, false),
            now,
        )
    }

    fn catalog(cluster: &str) -> MergedCatalog {
        MergedCatalog::new(
            LocalCatalog::new(ClusterName::new(cluster).unwrap(), 1),
            HealthConfig::default(),
            VipAllocator::new("241.0.0.0/16".parse().unwrap(), None),
        )
        .unwrap()
    }

    fn export(name: &str, addr: &str) -> ServiceExport {
        let mut e = ServiceExport::new(ServiceName::new("demo", name).unwrap());
        e.endpoints.push(Endpoint {
            address: addr.parse().unwrap(),
            port: 80,
            ready: true,
            zone: None,
        });
        e
    }

    /// Runs both ends against each other in memory until nothing is left to send.
    fn pump(
        a: (&mut SessionCore, &mut MergedCatalog),
        b: (&mut SessionCore, &mut MergedCatalog),
        first: Vec<(bool, SyncMessage)>,
        now: Instant,
    ) -> Result<(), (bool, Close)> {
        let (sa, ca) = a;
        let (sb, cb) = b;
        let mut queue = first;
        while let Some((to_b, msg)) = queue.pop() {
            let bytes = encode(&msg).unwrap();
            let mut out = Vec::new();
            let result = if to_b {
                sb.on_bytes(&bytes, cb, now, &mut out)
            } else {
                sa.on_bytes(&bytes, ca, now, &mut out)
            };
            for o in out {
                if let Output::Send(m) = o {
                    queue.insert(0, (!to_b, m));
                }
            }
            result.map_err(|c| (to_b, c))?;
        }
        Ok(())
    }

    #[test]
    fn hello_snapshot_then_delta_sync_both_ways() {
        let now = Instant::now();
        let (mut c1, mut c2) = (catalog("c1"), catalog("c2"));
        c1.set_exports(vec![export("a", "10.1.1.2")]).unwrap();
        c2.set_exports(vec![export("b", "10.2.1.2")]).unwrap();
        let health = HealthConfig::default();
        let mut s1 = core("c2", &health, now);
        let mut s2 = core("c1", &health, now);
        let h1 = s1.open(&c1);
        let h2 = s2.open(&c2);
        pump(
            (&mut s1, &mut c1),
            (&mut s2, &mut c2),
            vec![(true, h1), (false, h2)],
            now,
        )
        .unwrap();
        assert!(s1.synced() && s2.synced());
        assert_eq!(c1.view(now).len(), 2);
        assert_eq!(c2.view(now).len(), 2);

        let delta = c2
            .set_exports(vec![export("b", "10.2.1.3")])
            .unwrap()
            .unwrap();
        pump(
            (&mut s1, &mut c1),
            (&mut s2, &mut c2),
            vec![(false, delta)],
            now,
        )
        .unwrap();
        let b = ServiceName::new("demo", "b").unwrap();
        let l = c1.lookup(&b, now).unwrap();
        assert_eq!(l.clusters, vec![ClusterName::new("c2").unwrap()]);
    }

    #[test]
    fn gap_asks_for_a_snapshot_and_heals() {
        let now = Instant::now();
        let (mut c1, mut c2) = (catalog("c1"), catalog("c2"));
        let health = HealthConfig::default();
        let mut s1 = core("c2", &health, now);
        let mut s2 = core("c1", &health, now);
        // c1 never got c2's snapshot; a delta arrives first.
        let delta = c2
            .set_exports(vec![export("b", "10.2.1.2")])
            .unwrap()
            .unwrap();
        pump(
            (&mut s1, &mut c1),
            (&mut s2, &mut c2),
            vec![(false, delta)],
            now,
        )
        .unwrap();
        assert!(s1.synced());
        assert_eq!(
            c1.remote(&ClusterName::new("c2").unwrap()).unwrap().version,
            1
        );
    }

    #[test]
    fn wrong_origin_is_refused_and_changes_nothing() {
        let now = Instant::now();
        let mut c1 = catalog("c1");
        let health = HealthConfig::default();
        let mut from_c3 = core("c3", &health, now);
        let mut forged = OriginState::new(ClusterName::new("c2").unwrap(), 7);
        forged.version = 1;
        let e = export("b", "10.3.1.2");
        forged.services.insert(e.name.clone(), e);
        let bytes = encode(&SyncMessage::Snapshot(forged)).unwrap();
        let mut out = Vec::new();
        let r = from_c3.on_bytes(&bytes, &mut c1, now, &mut out);
        assert_eq!(r, Err(Close::Refused(Refused::WrongOrigin)));
        assert_eq!(r.unwrap_err().refusal_label(), Some("wrong_origin"));
        assert!(c1.view(now).is_empty());
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_closes_with_a_decode_error() {
        let now = Instant::now();
        let mut c1 = catalog("c1");
        let mut s = core("c2", &HealthConfig::default(), now);
        let mut out = Vec::new();
        let r = s.on_bytes(&[0, 0, 0, 3, 0, 9, 9], &mut c1, now, &mut out);
        assert!(matches!(r, Err(Close::Decode(_))), "{r:?}");
        assert!(c1.view(now).is_empty());
    }

    #[test]
    fn heartbeats_when_quiet_and_idles_out() {
        let now = Instant::now();
        let c1 = catalog("c1");
        let health = HealthConfig::default();
        let mut s = core("c2", &health, now);
        assert_eq!(s.poll_timeout(), now + Duration::from_secs(1));
        assert_eq!(s.handle_timeout(&c1, now), Ok(None));
        let hb = s.handle_timeout(&c1, now + Duration::from_secs(1)).unwrap();
        assert!(matches!(hb, Some(SyncMessage::Heartbeat(_))));
        s.on_sent(now + Duration::from_secs(1));
        // A peer silent for longer than down_after is marked down by health, but its session
        // is kept (a busy peer is slow, not gone) until four times down_after, at least 10 s.
        assert_eq!(s.idle_after(), Duration::from_secs(12));
        assert!(matches!(
            s.handle_timeout(&c1, now + Duration::from_secs(6)),
            Ok(Some(SyncMessage::Heartbeat(_)))
        ));
        assert_eq!(
            s.handle_timeout(&c1, now + Duration::from_secs(12)),
            Err(Close::Idle)
        );
    }

    #[test]
    fn with_tunnel_liveness_heartbeats_are_rare_and_the_session_patient() {
        let now = Instant::now();
        let c1 = catalog("c1");
        let health = HealthConfig::default();
        let every = heartbeat_every(&health, true);
        assert_eq!(every, Duration::from_secs(30));
        let mut s = SessionCore::new(ClusterName::new("c2").unwrap(), &health, every, now)
            .with_tunnel(&health);
        assert_eq!(s.idle_after(), Duration::from_secs(90));
        assert_eq!(s.write_timeout(), Duration::from_secs(12));
        // The tunnel keeps hearing the peer: the quiet session lives on.
        let secs = |n: u64| now + Duration::from_secs(n);
        for t in 1..=29 {
            s.on_tunnel_heard(secs(t));
        }
        assert_eq!(
            s.handle_timeout(&c1, now + Duration::from_millis(29_999)),
            Ok(None)
        );
        assert!(matches!(
            s.handle_timeout(&c1, now + Duration::from_secs(30)),
            Ok(Some(SyncMessage::Heartbeat(_)))
        ));
        for t in 30..=89 {
            s.on_tunnel_heard(secs(t));
        }
        assert_eq!(
            s.handle_timeout(&c1, now + Duration::from_secs(90)),
            Err(Close::Idle),
            "a session silent itself for 3 heartbeats is stuck, whatever the tunnel says"
        );
        // A tunnel silent for 4 × down_after (12 s) ends the session, heartbeats or not.
        let mut p = SessionCore::new(ClusterName::new("c2").unwrap(), &health, every, now)
            .with_tunnel(&health);
        p.on_tunnel_heard(secs(5));
        assert_eq!(p.poll_timeout(), secs(17));
        assert_eq!(p.handle_timeout(&c1, secs(16)), Ok(None));
        assert_eq!(p.handle_timeout(&c1, secs(17)), Err(Close::Idle));
        // A long down_after keeps its own, slower pace.
        let slow = HealthConfig {
            down_after: Duration::from_secs(120),
            ..HealthConfig::default()
        };
        assert_eq!(heartbeat_every(&slow, true), Duration::from_secs(40));
    }

    #[test]
    fn aligned_heartbeats_fall_on_one_grid_at_most_a_step_late() {
        let epoch = Instant::now();
        let c1 = catalog("c1");
        let health = HealthConfig::default();
        // Two sessions opened at scattered times beat together, on the 250 ms grid.
        let a = core("c2", &health, epoch + Duration::from_millis(10)).aligned_to(epoch);
        let b = core("c3", &health, epoch + Duration::from_millis(190)).aligned_to(epoch);
        assert_eq!(a.poll_timeout(), epoch + Duration::from_millis(1250));
        assert_eq!(b.poll_timeout(), epoch + Duration::from_millis(1250));
        let mut a = a;
        assert_eq!(
            a.handle_timeout(&c1, epoch + Duration::from_millis(1249)),
            Ok(None)
        );
        assert!(matches!(
            a.handle_timeout(&c1, epoch + Duration::from_millis(1250)),
            Ok(Some(SyncMessage::Heartbeat(_)))
        ));
        // A short down_after gets a finer grid: never more than a quarter period late.
        let fast = HealthConfig {
            down_after: Duration::from_millis(600),
            ..HealthConfig::default()
        };
        let f = core("c2", &fast, epoch + Duration::from_millis(1)).aligned_to(epoch);
        assert_eq!(f.poll_timeout(), epoch + Duration::from_millis(250));
    }
}
