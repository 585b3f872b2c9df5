//! One remote gateway: its boringtun `Tunn`, its current endpoint, its counters and health, and
//! the [`PeerSnapshot`] the operator interfaces read.

use super::drops::{DropCounters, DropReason};
use crate::config::PeerConfig;
use crate::keys::PublicKey;
use boringtun::noise::Tunn;
use ipnet::IpNet;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A session older than this is dead (WireGuard paper §6.1, Reject-After-Time).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Session age at which the initiator rekeys (§6.1, Rekey-After-Time).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Handshake retries stop after this long without an answer (§6.4, Rekey-Attempt-Time).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A failed send marks the peer as failing for this long (unless a handshake clears it).
const SEND_ERROR_SHOWN_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct PeerStats {
    /// Inner bytes handed to the tunnel (before padding), keepalives excluded.
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_wire_bytes: AtomicU64,
    pub tx_wire_bytes: AtomicU64,
    pub handshakes: AtomicU64,
}

impl PeerStats {
    pub fn snapshot(&self) -> PeerCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PeerCounters {
            rx_bytes: get(&self.rx_bytes),
            tx_bytes: get(&self.tx_bytes),
            rx_wire_bytes: get(&self.rx_wire_bytes),
            tx_wire_bytes: get(&self.tx_wire_bytes),
            rx_packets: get(&self.rx_packets),
            tx_packets: get(&self.tx_packets),
            handshakes: get(&self.handshakes),
        }
    }
}

/// [`PeerStats`] read at one moment. Byte counters count inner IP packet bytes, keepalives
/// excluded; `*_wire_bytes` count UDP payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_wire_bytes: u64,
    pub tx_wire_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub handshakes: u64,
}

/// Where a peer's session stands, judged at some `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// No valid session yet (or it lapsed); handshakes go to the peer's endpoint.
    Connecting,
    /// No endpoint to send to: waiting for the peer to handshake first.
    AwaitingPeer,
    /// A session from a handshake younger than Reject-After-Time (WireGuard paper §6.1).
    Connected,
    /// Handshakes were given up: Rekey-Attempt-Time passed with no answer (§6.4).
    HandshakeTimedOut,
    /// The kernel refused a datagram to the peer's endpoint lately; the error as it said it.
    SendFailed(String),
}

/// A peer as the operator interfaces show it, read at one `now`. Times are monotonic; the
/// interfaces convert them to wall-clock time where a protocol wants one.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSnapshot {
    pub public_key: PublicKey,
    /// The configured name, if any.
    pub name: Option<String>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub counters: PeerCounters,
    /// Packets dropped that are attributable to this peer, every reason with its count.
    pub drops: BTreeMap<String, u64>,
    pub last_handshake: Option<Instant>,
    pub state: ConnectionState,
}

/// What the operator sees about a peer besides counters; changed by reloads and timers.
#[derive(Debug, Default)]
struct Health {
    last_handshake: Option<Instant>,
    /// Set when handshakes were given up (Rekey-Attempt-Time passed with no answer).
    expired: bool,
    last_send_error: Option<(Instant, String)>,
}

/// What the timer ticks saw of what went to a peer, for the liveness probe (see
/// [`Engine::tick`]): the wire byte counter at the last tick and when it last moved. Sampled
/// at ticks, so the sending path pays nothing for it; the time is at most one tick late.
///
/// [`Engine::tick`]: super::Engine::tick
#[derive(Debug, Default)]
struct Traffic {
    tx_seen: u64,
    sent_at: Option<Instant>,
    /// The tick round from which boringtun's timers run again (see [`Peer::timers_due`]).
    timers_from: u64,
}

/// What a tick saw of a peer's traffic.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sampled {
    /// How long nothing was sent to the peer (`None`: never).
    pub quiet: Option<Duration>,
    /// Something was sent to the peer since the last tick.
    pub sent_since: bool,
}

#[derive(Debug, Clone)]
struct Meta {
    name: Option<String>,
    allowed_ips: Vec<IpNet>,
    configured_endpoint: Option<SocketAddr>,
}

pub struct Peer {
    /// Our local index for this peer; the upper 24 bits of every receiver index we hand out.
    pub index: u32,
    pub public_key: PublicKey,
    pub preshared_key: Option<[u8; 32]>,
    pub persistent_keepalive: Option<u16>,
    pub(super) tunn: Mutex<Tunn>,
    endpoint: RwLock<Option<SocketAddr>>,
    meta: RwLock<Meta>,
    pub stats: PeerStats,
    pub drops: DropCounters,
    health: Mutex<Health>,
    traffic: Mutex<Traffic>,
    /// When the latest authenticated datagram came, as nanoseconds after `created` (0: never).
    heard: AtomicU64,
    created: Instant,
    /// Start a handshake at the next timer tick instead of waiting for traffic, so a restarted
    /// gateway is reachable again at once (its peers' old sessions died with its state).
    pub(super) initiate: AtomicBool,
    /// A key being retired after a rotation: it may still handshake and send to us until its
    /// grace period ends, but nothing is routed to it.
    retiring: AtomicBool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("index", &self.index)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub(super) fn new(index: u32, config: &PeerConfig, tunn: Tunn) -> Self {
        Self {
            index,
            public_key: config.public_key,
            preshared_key: config.preshared_key,
            persistent_keepalive: config.persistent_keepalive,
            tunn: Mutex::new(tunn),
            endpoint: RwLock::new(config.endpoint),
            meta: RwLock::new(Meta {
                name: config.name.clone(),
                allowed_ips: config.allowed_ips.clone(),
                configured_endpoint: config.endpoint,
            }),
            stats: PeerStats::default(),
            drops: DropCounters::default(),
            health: Mutex::new(Health::default()),
            traffic: Mutex::new(Traffic::default()),
            heard: AtomicU64::new(0),
            created: Instant::now(),
            initiate: AtomicBool::new(config.endpoint.is_some()),
            retiring: AtomicBool::new(false),
        }
    }

    /// Whether a reload may keep this peer's sessions: the parts baked into its `Tunn` match.
    pub(super) fn session_compatible(&self, config: &PeerConfig) -> bool {
        self.public_key == config.public_key
            && self.preshared_key == config.preshared_key
            && self.persistent_keepalive == config.persistent_keepalive
    }

    /// Applies the reloadable parts of `config`. A changed configured endpoint replaces the
    /// current (possibly roamed) one; an unchanged one leaves roaming alone.
    pub(super) fn update_meta(&self, config: &PeerConfig) {
        let mut meta = self.meta.write();
        if meta.configured_endpoint != config.endpoint {
            if let Some(ep) = config.endpoint {
                *self.endpoint.write() = Some(ep);
            }
            meta.configured_endpoint = config.endpoint;
        }
        meta.name = config.name.clone();
        meta.allowed_ips = config.allowed_ips.clone();
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.read()
    }

    /// Endpoint roaming (WireGuard paper §2.1): the source of the latest authenticated packet.
    pub(super) fn set_endpoint(&self, addr: SocketAddr) {
        if self.endpoint() != Some(addr) {
            *self.endpoint.write() = Some(addr);
            tracing::debug!(peer = %self.public_key.short(), endpoint = %addr, "peer endpoint changed");
        }
    }

    pub fn name(&self) -> String {
        self.meta
            .read()
            .name
            .clone()
            .unwrap_or_else(|| self.public_key.short())
    }

    pub fn allowed_ips(&self) -> Vec<IpNet> {
        self.meta.read().allowed_ips.clone()
    }

    pub fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Relaxed)
    }

    pub(super) fn set_retiring(&self, retiring: bool) {
        self.retiring.store(retiring, Ordering::Relaxed);
    }

    /// Whether `addr` is inside this peer's prefixes (the routing table is the fast path; this
    /// is for retiring peers, which are not in it).
    pub(super) fn allows(&self, addr: std::net::IpAddr) -> bool {
        self.meta
            .read()
            .allowed_ips
            .iter()
            .any(|n| n.contains(&addr))
    }

    pub(super) fn count_drop(&self, reason: DropReason, iface: &DropCounters) {
        self.drops.inc(reason);
        iface.inc(reason);
    }

    pub(super) fn note_send_error(&self, now: Instant, error: &std::io::Error) {
        self.health.lock().last_send_error = Some((now, error.to_string()));
    }

    pub(super) fn note_expired(&self) {
        self.health.lock().expired = true;
    }

    /// Records a handshake completion seen through `Tunn`'s session age; counts new ones.
    pub(super) fn observe_handshake(&self, now: Instant, since: Option<Duration>) {
        let Some(since) = since else { return };
        let at = now.checked_sub(since).unwrap_or(now);
        let mut h = self.health.lock();
        let newer = match h.last_handshake {
            None => true,
            // Session ages are kept at second granularity by boringtun's timers.
            Some(prev) => at > prev + Duration::from_millis(1500),
        };
        if newer {
            h.last_handshake = Some(at);
            h.expired = false;
            h.last_send_error = None;
            self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes, at tick time `now`, whether datagrams went to this peer since the last tick.
    pub(super) fn sample_traffic(&self, now: Instant) -> Sampled {
        let tx = self.stats.tx_wire_bytes.load(Ordering::Relaxed);
        let mut t = self.traffic.lock();
        let sent_since = tx != t.tx_seen;
        if sent_since {
            t.tx_seen = tx;
            t.sent_at = Some(now);
        }
        Sampled {
            quiet: t.sent_at.map(|at| now.saturating_duration_since(at)),
            sent_since,
        }
    }

    /// Whether boringtun's timers run in tick round `round`: every round while the peer is
    /// busy, every few rounds while it rests (see `tick_peer`).
    pub(super) fn timers_due(&self, round: u64) -> bool {
        round >= self.traffic.lock().timers_from || self.initiate.load(Ordering::Relaxed)
    }

    /// The timers next run in round `round`.
    pub(super) fn timers_from(&self, round: u64) {
        self.traffic.lock().timers_from = round;
    }

    /// An authenticated datagram from this peer arrived at `now`.
    pub(super) fn heard(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.created).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX).max(1);
        self.heard.fetch_max(nanos, Ordering::Relaxed);
    }

    /// When the last authenticated datagram from this peer arrived: a data packet, a
    /// keepalive or a handshake message.
    pub fn last_heard(&self) -> Option<Instant> {
        match self.heard.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.created + Duration::from_nanos(n)),
        }
    }

    /// Where this peer's session stands at `now`.
    pub fn state(&self, now: Instant) -> ConnectionState {
        let h = self.health.lock();
        if let Some((at, err)) = &h.last_send_error {
            if now.saturating_duration_since(*at) < SEND_ERROR_SHOWN_FOR {
                return ConnectionState::SendFailed(err.clone());
            }
        }
        let fresh = h
            .last_handshake
            .is_some_and(|t| now.saturating_duration_since(t) < REJECT_AFTER_TIME);
        if fresh {
            ConnectionState::Connected
        } else if h.expired {
            ConnectionState::HandshakeTimedOut
        } else if self.endpoint().is_none() {
            ConnectionState::AwaitingPeer
        } else {
            ConnectionState::Connecting
        }
    }

    /// Everything the operator interfaces show about this peer, read at `now`.
    pub fn snapshot(&self, now: Instant) -> PeerSnapshot {
        let (persistent_keepalive, since) = {
            let t = self.tunn.lock();
            (t.persistent_keepalive(), t.stats().0)
        };
        // Between timer ticks a handshake may have completed; show it now.
        self.observe_handshake(now, since);
        let meta = self.meta.read().clone();
        // Read before the literal: a guard taken inside it would live to its end, and
        // `state` takes the same lock.
        let last_handshake = self.health.lock().last_handshake;
        let state = self.state(now);
        PeerSnapshot {
            public_key: self.public_key,
            name: meta.name,
            endpoint: self.endpoint(),
            allowed_ips: meta.allowed_ips,
            persistent_keepalive,
            counters: self.stats.snapshot(),
            drops: self.drops.snapshot(),
            last_handshake,
            state,
        }
    }
}
