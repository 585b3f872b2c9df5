//! The packet logic with no I/O: which peer a packet goes to, what comes out of boringtun,
//! what is dropped and why. The I/O shell (`io.rs`) feeds it batches and drains its queues.

use super::drops::{DropCounters, DropReason};
use super::peer::{Peer, REJECT_AFTER_TIME, REKEY_AFTER_TIME};
use super::queue::{RxQueue, TxQueue};
use super::router::AllowedIps;
use crate::config::PeerConfig;
use crate::keys::{PrivateKey, PublicKey};
use arc_swap::ArcSwap;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Handshakes per second before the responder demands cookies (WireGuard paper §5.3).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// WireGuard message type 4 (transport data) and its fixed overhead (header 16 + tag 16).
const MSG_DATA: u8 = 4;
const DATA_OVERHEAD: usize = 32;

/// The peers in force; replaced whole on reload so the packet path never sees a half-applied set.
#[derive(Default)]
pub struct PeerSet {
    pub list: Vec<Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<PublicKey, Arc<Peer>>,
    router: AllowedIps<Arc<Peer>>,
}

impl PeerSet {
    pub fn by_key(&self, key: &PublicKey) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    pub fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        self.router.lookup(dst)
    }
}

/// What a reload changed, for the route programming around it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    pub added: Vec<PublicKey>,
    pub removed: Vec<PublicKey>,
    /// Peers whose sessions had to restart (key material or keepalive changed).
    pub restarted: Vec<PublicKey>,
    pub kept: Vec<PublicKey>,
}

pub struct Engine {
    /// Replaced whole on key rotation.
    keys: ArcSwap<Keys>,
    peers: ArcSwap<PeerSet>,
    next_index: AtomicU32,
    /// Padding never takes a packet past the tunnel MTU.
    mtu: usize,
    /// Liveness probe period in nanoseconds, 0 for none (see [`Engine::set_liveness_probe`]).
    probe_every: AtomicU64,
    /// Tick rounds started, for peers whose timers run every few rounds.
    rounds: AtomicU64,
    pub drops: DropCounters,
}

/// The interface's static key and what derives from it (mac1 and cookies are keyed by it).
struct Keys {
    private: PrivateKey,
    static_public: x25519_dalek::PublicKey,
    rate_limiter: Arc<RateLimiter>,
}

impl Keys {
    fn new(private: PrivateKey) -> Self {
        let static_public = x25519_dalek::PublicKey::from(private.secret());
        let rate_limiter = Arc::new(RateLimiter::new(&static_public, HANDSHAKE_RATE_LIMIT));
        Self {
            private,
            static_public,
            rate_limiter,
        }
    }
}

fn drop_reason(e: &WireGuardError) -> DropReason {
    match e {
        WireGuardError::InvalidMac | WireGuardError::InvalidAeadTag | WireGuardError::WrongKey => {
            DropReason::AuthFailed
        }
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => DropReason::Replay,
        WireGuardError::UnderLoad => DropReason::UnderLoad,
        WireGuardError::WrongIndex
        | WireGuardError::WrongTai64nTimestamp
        | WireGuardError::InvalidTai64nTimestamp
        | WireGuardError::UnexpectedPacket
        | WireGuardError::NoCurrentSession
        | WireGuardError::ConnectionExpired => DropReason::HandshakeRejected,
        WireGuardError::InvalidPacket => DropReason::BadInnerPacket,
        _ => DropReason::Malformed,
    }
}

impl Engine {
    pub fn new(private: PrivateKey, mtu: usize, peers: &[PeerConfig]) -> Self {
        let engine = Self {
            keys: ArcSwap::from_pointee(Keys::new(private)),
            peers: ArcSwap::from_pointee(PeerSet::default()),
            // Index 0 is never handed out, so a zeroed receiver index never matches.
            next_index: AtomicU32::new(1),
            mtu,
            probe_every: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            drops: DropCounters::default(),
        };
        engine.apply_peers(peers);
        engine
    }

    pub fn public_key(&self) -> PublicKey {
        self.keys.load().private.public_key()
    }

    pub fn private_key(&self) -> PrivateKey {
        self.keys.load().private.clone()
    }

    /// Rotates the interface's static key: every peer's sessions restart under the new key
    /// (handshakes go out at the next tick). Peers that still expect the old key will refuse
    /// the new handshakes until they learn the new binding (a re-join, or a config change).
    pub fn set_private_key(&self, private: PrivateKey) {
        let keys = Keys::new(private);
        let peers = self.peers.load();
        for peer in &peers.list {
            peer.tunn.lock().set_static_private(
                keys.private.secret().clone(),
                keys.static_public,
                None,
            );
            peer.initiate.store(true, Ordering::Relaxed);
        }
        self.keys.store(Arc::new(keys));
    }

    /// Makes every peer with a session hear from us at least every `every`: a tick sends a
    /// keepalive (an empty data packet, WireGuard paper §6.5) to a peer nothing was sent to
    /// for that long. With both ends probing, [`Engine::last_heard`] tells whether a peer is
    /// alive at the cost of one 32-byte datagram per period each way, and no more when
    /// traffic flows. Keepalives go out on the tick, so one `sendmmsg` carries all that are due.
    /// `None` sends only what boringtun's own timers send.
    pub fn set_liveness_probe(&self, every: Option<Duration>) {
        let nanos = every.map_or(0, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.probe_every.store(nanos, Ordering::Relaxed);
    }

    /// When the peer routing `addr` (e.g. a peer's mesh address) was last heard from: the
    /// receive time of its latest authenticated datagram.
    pub fn last_heard(&self, addr: IpAddr) -> Option<Instant> {
        self.peers.load().route(addr)?.last_heard()
    }

    pub fn peers(&self) -> arc_swap::Guard<Arc<PeerSet>> {
        self.peers.load()
    }

    fn new_tunn(&self, config: &PeerConfig, index: u32) -> Tunn {
        let keys = self.keys.load();
        Tunn::new(
            keys.private.secret().clone(),
            config.public_key.to_dalek(),
            config.preshared_key,
            config.persistent_keepalive,
            index,
            // Each session its own limiter (boringtun's per-peer 10 handshake messages per
            // tick). The interface's limiter screens handshake initiations once, before the
            // DH that finds their peer (`decapsulate`); shared with every `Tunn`, it would
            // count each initiation twice and every response too, and a mesh forming (every
            // gateway handshaking with every other at once) would be answered with cookies
            // and wait a REKEY_TIMEOUT (5 s) per retry.
            None,
        )
    }

    fn fresh_index(&self) -> u32 {
        // 24 bits: boringtun keeps the low 8 bits of a receiver index for the session.
        self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
    }

    /// Replaces the peer set. Peers whose key, preshared key and keepalive are unchanged keep
    /// their `Tunn` and so their sessions; their endpoint, name and prefixes are updated.
    pub fn apply_peers(&self, configs: &[PeerConfig]) -> PeerDiff {
        self.apply_peer_set(configs, &[])
    }

    /// Like [`apply_peers`](Self::apply_peers), plus `retiring` peers: old keys of peers that
    /// rotated, kept for a grace period. A retiring peer keeps its sessions, may handshake and
    /// send packets from its prefixes, but nothing is routed to it (the peer's new key owns the
    /// prefixes in the routing table).
    pub fn apply_peer_set(&self, configs: &[PeerConfig], retiring: &[PeerConfig]) -> PeerDiff {
        let old = self.peers.load_full();
        let mut diff = PeerDiff::default();
        let mut next = PeerSet::default();
        let routed = configs.iter().map(|c| (c, false));
        let retired = retiring
            .iter()
            .filter(|r| !configs.iter().any(|c| c.public_key == r.public_key))
            .map(|c| (c, true));
        for (c, is_retiring) in routed.chain(retired) {
            let peer = match old.by_key.get(&c.public_key) {
                Some(p) if p.session_compatible(c) => {
                    p.update_meta(c);
                    diff.kept.push(c.public_key);
                    p.clone()
                }
                existing => {
                    if existing.is_some() {
                        diff.restarted.push(c.public_key);
                    } else {
                        diff.added.push(c.public_key);
                    }
                    let index = self.fresh_index();
                    Arc::new(Peer::new(index, c, self.new_tunn(c, index)))
                }
            };
            peer.set_retiring(is_retiring);
            if !is_retiring {
                for net in &c.allowed_ips {
                    next.router.insert(*net, peer.clone());
                }
            }
            next.by_index.insert(peer.index, peer.clone());
            next.by_key.insert(peer.public_key, peer.clone());
            next.list.push(peer);
        }
        for key in old.by_key.keys() {
            if !next.by_key.contains_key(key) {
                diff.removed.push(*key);
            }
        }
        self.peers.store(Arc::new(next));
        diff
    }

    /// Encrypts the packet `buf[..len]` read from the TUN device into `tx`. The plaintext is
    /// zero-padded in place to a multiple of 16 bytes, capped at the MTU (WireGuard paper
    /// §5.4.6), so the underlay shows less of the inner length; the receiver trims by the IP
    /// header's length. `buf` may be longer than `len` to make room for the padding.
    pub fn encapsulate(&self, buf: &mut [u8], len: usize, tx: &mut TxQueue) {
        let padded = len
            .next_multiple_of(16)
            .min(self.mtu.max(len))
            .min(buf.len());
        buf[len..padded].fill(0);
        super::mss::clamp(&mut buf[..len], self.mtu);
        let inner_len = len;
        let packet = &buf[..padded];
        let Some(dst) = Tunn::dst_address(packet) else {
            self.drops.inc(DropReason::BadInnerPacket);
            return;
        };
        let peers = self.peers.load();
        let Some(peer) = peers.route(dst) else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        let Some(endpoint) = peer.endpoint() else {
            peer.count_drop(DropReason::NoEndpoint, &self.drops);
            return;
        };
        let result = {
            let slot = tx.slot();
            // boringtun panics on a short buffer; the shell flushes before this can happen.
            if slot.len() < (packet.len() + DATA_OVERHEAD + 16).max(148) {
                peer.count_drop(DropReason::BadInnerPacket, &self.drops);
                return;
            }
            let mut tunn = peer.tunn.lock();
            match tunn.encapsulate(packet, slot) {
                TunnResult::WriteToNetwork(out) => Ok(out.len()),
                TunnResult::Err(e) => Err(drop_reason(&e)),
                // Queued inside Tunn until a handshake completes.
                _ => Ok(0),
            }
        };
        match result {
            Ok(len) => {
                peer.stats
                    .tx_bytes
                    .fetch_add(inner_len as u64, Ordering::Relaxed);
                if len > 0 {
                    count_tx(peer, tx.slot(), len);
                    tx.commit(endpoint, len, Some(peer));
                }
            }
            Err(reason) => peer.count_drop(reason, &self.drops),
        }
    }

    /// Handles one datagram from `src` received at `now`: decrypted packets go to `rx`,
    /// replies to `tx`. `now` only dates the peer's liveness ([`Engine::last_heard`]).
    pub fn decapsulate(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        rx: &mut RxQueue,
        tx: &mut TxQueue,
    ) {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.drops.inc(DropReason::Malformed);
                return;
            }
        };
        let peers = self.peers.load();
        let peer = match packet {
            Packet::HandshakeInit(_) => {
                let keys = self.keys.load();
                // MACs (and, under load, the cookie) are checked before the costly DH below.
                let verified = {
                    let slot = tx.slot();
                    match keys
                        .rate_limiter
                        .verify_packet(Some(src.ip()), datagram, slot)
                    {
                        Ok(p) => Ok(p),
                        Err(TunnResult::WriteToNetwork(cookie)) => Err(Some(cookie.len())),
                        Err(TunnResult::Err(e)) => {
                            self.drops.inc(drop_reason(&e));
                            return;
                        }
                        Err(_) => Err(None),
                    }
                };
                let init = match verified {
                    Ok(Packet::HandshakeInit(init)) => init,
                    Ok(_) | Err(None) => return,
                    Err(Some(cookie_len)) => {
                        self.drops.inc(DropReason::UnderLoad);
                        tx.commit(src, cookie_len, None);
                        return;
                    }
                };
                let half =
                    match parse_handshake_anon(keys.private.secret(), &keys.static_public, &init) {
                        Ok(h) => h,
                        Err(e) => {
                            self.drops.inc(drop_reason(&e));
                            return;
                        }
                    };
                match peers.by_key(&PublicKey::from_bytes(half.peer_static_public)) {
                    Some(p) => p,
                    None => {
                        self.drops.inc(DropReason::UnknownPeer);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(p) => match peers.by_index.get(&(p.receiver_idx >> 8)) {
                Some(peer) => peer,
                None => {
                    self.drops.inc(DropReason::UnknownPeer);
                    return;
                }
            },
            Packet::PacketCookieReply(p) => match peers.by_index.get(&(p.receiver_idx >> 8)) {
                Some(peer) => peer,
                None => {
                    self.drops.inc(DropReason::UnknownPeer);
                    return;
                }
            },
            Packet::PacketData(p) => match peers.by_index.get(&(p.receiver_idx >> 8)) {
                Some(peer) => peer,
                None => {
                    self.drops.inc(DropReason::UnknownPeer);
                    return;
                }
            },
        };
        self.decapsulate_for(peer, &peers, src, datagram, now, rx, tx);
    }

    #[allow(clippy::too_many_arguments)]
    fn decapsulate_for(
        &self,
        peer: &Arc<Peer>,
        peers: &PeerSet,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        rx: &mut RxQueue,
        tx: &mut TxQueue,
    ) {
        enum Out {
            Net(usize),
            Tun(usize, IpAddr),
            Nothing,
        }
        let mut tunn = peer.tunn.lock();
        let out = if rx.is_full() {
            // The shell drains before this happens; stay safe if it ever does not.
            return;
        } else {
            let slot = rx.slot(datagram.len());
            match tunn.decapsulate(Some(src.ip()), datagram, slot) {
                TunnResult::Done => Out::Nothing,
                TunnResult::Err(e) => {
                    drop(tunn);
                    peer.count_drop(drop_reason(&e), &self.drops);
                    return;
                }
                TunnResult::WriteToNetwork(out) => {
                    let n = out.len();
                    tx.slot()[..n].copy_from_slice(out);
                    Out::Net(n)
                }
                TunnResult::WriteToTunnelV4(out, ip) => Out::Tun(out.len(), IpAddr::V4(ip)),
                TunnResult::WriteToTunnelV6(out, ip) => Out::Tun(out.len(), IpAddr::V6(ip)),
            }
        };
        // Authenticated: the datagram's source is where this peer now is, and it is alive.
        peer.set_endpoint(src);
        peer.heard(now);
        peer.stats
            .rx_wire_bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        match out {
            Out::Nothing => {}
            Out::Net(n) => {
                tx.commit(src, n, Some(peer));
                // A completed handshake may release packets queued while it ran.
                loop {
                    if tx.is_full() {
                        break;
                    }
                    let slot = tx.slot();
                    match tunn.decapsulate(None, &[], slot) {
                        TunnResult::WriteToNetwork(out) => {
                            let n = out.len();
                            count_tx(peer, tx.slot(), n);
                            tx.commit(src, n, Some(peer));
                        }
                        _ => break,
                    }
                }
            }
            Out::Tun(n, inner_src) => {
                drop(tunn);
                let allowed = peers
                    .route(inner_src)
                    .is_some_and(|owner| Arc::ptr_eq(owner, peer))
                    || (peer.is_retiring() && peer.allows(inner_src));
                if !allowed {
                    tracing::trace!(peer = %peer.public_key.short(), src = %inner_src, "inner source not allowed for peer");
                    peer.count_drop(DropReason::SourceNotAllowed, &self.drops);
                    return;
                }
                peer.stats.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                peer.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                rx.commit(n, peer);
            }
        }
    }

    /// Starts a round of every peer's timers (handshake retries, rekeys, keepalives); call
    /// about every 250 ms and run the round to its end (see [`TickRound`]). Also lets the
    /// handshake rate limiter start a new second (it keeps its own one-second period).
    pub fn tick(&self, now: Instant) -> TickRound {
        self.keys.load().rate_limiter.reset_count();
        let probe = match self.probe_every.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        };
        // Every peer rests between runs of its timers for as long as a probe period allows,
        // at most REST_ROUNDS.
        let rest = probe.map_or(REST_ROUNDS, |p| {
            u64::try_from(p.as_nanos() / TICK.as_nanos())
                .unwrap_or(u64::MAX)
                .clamp(1, REST_ROUNDS)
        });
        TickRound {
            peers: self.peers.load_full(),
            next: 0,
            now,
            probe,
            round: self.rounds.fetch_add(1, Ordering::Relaxed),
            rest,
        }
    }

    /// Prefixes every peer routes, for the kernel routing table.
    pub fn routed_prefixes(&self) -> Vec<IpNet> {
        self.peers
            .load()
            .list
            .iter()
            .filter(|p| !p.is_retiring())
            .flat_map(|p| p.allowed_ips())
            .collect()
    }
}

/// Counts a datagram just written to the network for `peer`.
fn count_tx(peer: &Peer, datagram: &[u8], len: usize) {
    peer.stats
        .tx_wire_bytes
        .fetch_add(len as u64, Ordering::Relaxed);
    if datagram[0] == MSG_DATA && len > DATA_OVERHEAD {
        peer.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
    }
}

/// One pass over the timers of the peer set in force when it started. A round stops when
/// the transmit queue is full; the shell sends the queue, clears it and resumes, until
/// [`run`](Self::run) says every peer had its turn, so no peer waits on how many come
/// before it. A reload during the round does not disturb it: peers it removed have one
/// last tick, peers it added wait for the next round.
pub struct TickRound {
    peers: Arc<PeerSet>,
    next: usize,
    now: Instant,
    probe: Option<Duration>,
    round: u64,
    rest: u64,
}

impl TickRound {
    /// Runs the timers of the peers not yet ticked into `tx` until it is full. Returns `true`
    /// when the round is complete; `false` means: send and clear `tx`, then call again.
    pub fn run(&mut self, tx: &mut TxQueue) -> bool {
        while let Some(peer) = self.peers.list.get(self.next) {
            if tx.is_full() {
                return false;
            }
            self.next += 1;
            tick_peer(peer, tx, self);
        }
        true
    }
}

/// The period [`Engine::tick`] expects to be called at; a probe due within half of it goes
/// out now.
pub const TICK: Duration = Duration::from_millis(250);
const TICK_SLACK: Duration = Duration::from_millis(125);
/// Rounds a resting peer's timers skip: a peer with a fresh session and nothing sent lately
/// has nothing due that a second's delay would harm (keepalive after 10 s, rekey after 120 s),
/// and touching every `Tunn` four times a second is most of an idle gateway's timer cost.
const REST_ROUNDS: u64 = 4;
/// A session this close to its rekey runs its timers every round.
const REKEY_MARGIN: Duration = Duration::from_secs(10);

/// One peer's turn in a round: its traffic is sampled (liveness, the probe's clock), then,
/// if its timers are due, a handshake initiation when one was asked for, else boringtun's
/// timers, else a liveness probe when due; what they produce goes into `tx`, which has room
/// for one datagram.
///
/// A peer rests (its timers run every `round.rest` rounds, on the probe's period) while its
/// session is fresh, nothing was sent to it since the last round and its timers had nothing
/// to send. Anything else — traffic going out, a handshake pending, no session, a rekey near,
/// a kick — runs them every round.
fn tick_peer(peer: &Arc<Peer>, tx: &mut TxQueue, round: &TickRound) {
    let now = round.now;
    let sampled = peer.sample_traffic(now);
    if !peer.timers_due(round.round) {
        return;
    }
    let mut tunn = peer.tunn.lock();
    let kick = peer.initiate.swap(false, Ordering::Relaxed) && peer.endpoint().is_some();
    let mut rest = false;
    let mut probed = false;
    let outcome = if kick {
        tunn.format_handshake_initiation(tx.slot(), false)
    } else {
        match tunn.update_timers(tx.slot()) {
            TunnResult::Done => {
                let age = tunn.stats().0;
                let session = age.is_some_and(|s| s < REJECT_AFTER_TIME);
                rest =
                    age.is_some_and(|s| s + REKEY_MARGIN < REKEY_AFTER_TIME) && !sampled.sent_since;
                let due = round.probe.is_some_and(|every| {
                    sampled.quiet.is_none_or(|q| q + TICK_SLACK >= every) && session
                });
                if due && peer.endpoint().is_some() {
                    probed = true;
                    // An established session: this is a keepalive, never a handshake.
                    tunn.encapsulate(&[], tx.slot())
                } else {
                    TunnResult::Done
                }
            }
            other => other,
        }
    };
    let skip = if !rest {
        1
    } else {
        // Wake for the next probe on time: a period after the last send.
        let quiet = if probed {
            Some(Duration::ZERO)
        } else {
            sampled.quiet
        };
        match (round.probe, quiet) {
            (Some(every), Some(q)) => {
                let left = every.saturating_sub(q + TICK_SLACK);
                let rounds = left.as_nanos().div_ceil(TICK.as_nanos());
                u64::try_from(rounds)
                    .unwrap_or(u64::MAX)
                    .clamp(1, round.rest)
            }
            _ => round.rest,
        }
    };
    peer.timers_from(round.round + skip);
    let result = match outcome {
        TunnResult::WriteToNetwork(out) => Ok(out.len()),
        TunnResult::Err(WireGuardError::ConnectionExpired) => Err(true),
        _ => Err(false),
    };
    let since = tunn.stats().0;
    drop(tunn);
    peer.observe_handshake(now, since);
    match result {
        Ok(len) => {
            if let Some(ep) = peer.endpoint() {
                count_tx(peer, tx.slot(), len);
                tx.commit(ep, len, Some(peer));
                // Sent now, not at the next tick.
                peer.sample_traffic(now);
            }
        }
        Err(true) => peer.note_expired(),
        Err(false) => {}
    }
}

#[cfg(test)]
mod tests;
