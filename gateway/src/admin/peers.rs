//! `tunctl peers` rows from the data plane's [`PeerSnapshot`]s: the wording of a peer's state
//! and the conversion of its monotonic handshake time into the Unix time the row, the UAPI and
//! the metrics show.

use super::proto::{PeerInfo, PeerState};
use crate::dataplane::peer::REKEY_ATTEMPT_TIME;
use crate::dataplane::{ConnectionState, Peer, PeerSnapshot};
use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far the wall clock may move against the monotonic clock before shown times follow it.
const STEP: Duration = Duration::from_secs(1);

/// The wall clock for every row this process shows (see [`WallClock`]).
static WALL_CLOCK: Mutex<Option<WallClock>> = Mutex::new(None);

impl Peer {
    /// This peer's row at wall-clock time `now`. The identity columns (SPIFFE ID, SVID
    /// expiry, verified) are left empty for the mesh to fill in.
    ///
    /// Defined here rather than in the data plane, which knows nothing of rows.
    pub fn info(&self, now: SystemTime) -> PeerInfo {
        let mono = Instant::now();
        let clock = {
            let mut shared = WALL_CLOCK.lock();
            let clock = shared.get_or_insert_with(|| WallClock::new(mono, now));
            clock.follow(mono, now);
            *clock
        };
        peer_row(self.snapshot(mono), &clock)
    }
}

/// The row for `peer`, its last handshake shown through `clock`.
pub fn peer_row(peer: PeerSnapshot, clock: &WallClock) -> PeerInfo {
    let (status, status_reason) = status(&peer.state);
    let c = peer.counters;
    PeerInfo {
        public_key: peer.public_key.to_base64(),
        name: peer.name,
        endpoint: peer.endpoint.map(|e| e.to_string()),
        status,
        status_reason,
        last_handshake_unix_ms: peer.last_handshake.and_then(|t| clock.unix_ms(t)),
        rx_bytes: c.rx_bytes,
        tx_bytes: c.tx_bytes,
        rx_wire_bytes: c.rx_wire_bytes,
        tx_wire_bytes: c.tx_wire_bytes,
        rx_packets: c.rx_packets,
        tx_packets: c.tx_packets,
        handshakes: c.handshakes,
        allowed_ips: peer.allowed_ips.iter().map(|n| n.to_string()).collect(),
        persistent_keepalive: peer.persistent_keepalive,
        dropped: peer.drops,
        spiffe_id: None,
        svid_expires_unix_ms: None,
        verified: false,
    }
}

/// The row's state column and the reason shown with it.
fn status(state: &ConnectionState) -> (PeerState, Option<String>) {
    match state {
        ConnectionState::Connecting => (PeerState::Connecting, None),
        ConnectionState::AwaitingPeer => (
            PeerState::Connecting,
            Some("no endpoint: waiting for the peer to connect".into()),
        ),
        ConnectionState::Connected => (PeerState::Connected, None),
        ConnectionState::HandshakeTimedOut => (
            PeerState::Error,
            Some(format!(
                "no handshake answer for {} s",
                REKEY_ATTEMPT_TIME.as_secs()
            )),
        ),
        ConnectionState::SendFailed(error) => (
            PeerState::Error,
            Some(format!("send to endpoint failed: {error}")),
        ),
    }
}

/// Shows monotonic instants as wall-clock time.
///
/// An instant converts through an anchor, one `Instant` paired with the `SystemTime` read next
/// to it, so one handshake shows the same Unix time in every query (reading both clocks anew
/// for each query would move it by the time between the two reads, and a client comparing
/// two queries would see a new handshake). The anchor moves only when the wall clock steps
/// away from it by more than a second, as when NTP sets the clock of a board that booted
/// without one; the two clocks are slewed together, so they do not drift apart otherwise.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    mono: Instant,
    wall: SystemTime,
}

impl WallClock {
    /// Anchors at `wall`, read at `mono`.
    pub fn new(mono: Instant, wall: SystemTime) -> Self {
        Self { mono, wall }
    }

    /// Re-anchors at (`mono`, `wall`) if the wall clock has stepped away from the anchor.
    pub fn follow(&mut self, mono: Instant, wall: SystemTime) {
        let Some(expected) = self.wall_at(mono) else {
            *self = Self::new(mono, wall);
            return;
        };
        let off = match wall.duration_since(expected) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if off > STEP {
            *self = Self::new(mono, wall);
        }
    }

    /// `at` as wall-clock time.
    pub fn wall_at(&self, at: Instant) -> Option<SystemTime> {
        if at >= self.mono {
            self.wall.checked_add(at - self.mono)
        } else {
            self.wall.checked_sub(self.mono - at)
        }
    }

    /// `at` as Unix milliseconds; `None` before 1970.
    pub fn unix_ms(&self, at: Instant) -> Option<u64> {
        let since_epoch = self.wall_at(at)?.duration_since(UNIX_EPOCH).ok()?;
        u64::try_from(since_epoch.as_millis()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;
    use crate::dataplane::{DropReason, Engine, PeerCounters};
    use crate::keys::PrivateKey;

    const T0_MS: u64 = 1_700_000_000_000;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(T0_MS)
    }

    #[test]
    fn instants_convert_through_the_anchor() {
        let mono = Instant::now();
        let clock = WallClock::new(mono, t0());
        assert_eq!(clock.unix_ms(mono), Some(T0_MS));
        assert_eq!(
            clock.unix_ms(mono + Duration::from_millis(1500)),
            Some(T0_MS + 1500)
        );
        let earlier = mono.checked_sub(Duration::from_millis(250));
        if let Some(earlier) = earlier {
            assert_eq!(clock.unix_ms(earlier), Some(T0_MS - 250));
        }
    }

    #[test]
    fn a_handshake_shows_the_same_time_in_every_query() {
        let mono = Instant::now();
        let handshake = mono;
        let mut clock = WallClock::new(mono, t0());
        let first = clock.unix_ms(handshake);
        // Ten seconds later, read with the microseconds between the two clock reads.
        let later = mono + Duration::from_secs(10);
        clock.follow(
            later,
            t0() + Duration::from_secs(10) + Duration::from_micros(700),
        );
        assert_eq!(clock.unix_ms(handshake), first);
    }

    #[test]
    fn a_wall_clock_step_is_followed() {
        let mono = Instant::now();
        // Booted without a clock: the wall clock says 1970 until NTP sets it.
        let mut clock = WallClock::new(mono, UNIX_EPOCH + Duration::from_secs(60));
        let later = mono + Duration::from_secs(30);
        clock.follow(later, t0());
        assert_eq!(clock.unix_ms(later), Some(T0_MS));
        assert_eq!(
            clock.unix_ms(later - Duration::from_secs(5)),
            Some(T0_MS - 5000)
        );
    }

    #[test]
    fn states_are_worded_for_the_operator() {
        assert_eq!(
            status(&ConnectionState::Connected),
            (PeerState::Connected, None)
        );
        assert_eq!(
            status(&ConnectionState::Connecting),
            (PeerState::Connecting, None)
        );
        let (state, reason) = status(&ConnectionState::AwaitingPeer);
        assert_eq!(state, PeerState::Connecting);
        assert!(reason.unwrap().contains("no endpoint"));
        assert_eq!(
            status(&ConnectionState::HandshakeTimedOut),
            (
                PeerState::Error,
                Some("no handshake answer for 90 s".into())
            )
        );
        assert_eq!(
            status(&ConnectionState::SendFailed(
                "Network is unreachable".into()
            )),
            (
                PeerState::Error,
                Some("send to endpoint failed: Network is unreachable".into())
            )
        );
    }

    #[test]
    fn a_row_carries_the_snapshot() {
        let key = PrivateKey::generate().public_key();
        let config = PeerConfig {
            name: Some("cluster-b".into()),
            public_key: key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: vec![
                "10.2.0.0/16".parse().unwrap(),
                "fd00:2::/64".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
        };
        let engine = Engine::new(PrivateKey::generate(), 1420, &[config]);
        let peer = engine.peers().list[0].clone();
        peer.drops.inc(DropReason::Replay);
        let row = peer.info(SystemTime::now());
        assert_eq!(row.public_key, key.to_base64());
        assert_eq!(row.name.as_deref(), Some("cluster-b"));
        assert_eq!(row.endpoint, None);
        assert_eq!(row.status, PeerState::Connecting);
        assert!(row.status_reason.unwrap().contains("no endpoint"));
        assert_eq!(row.allowed_ips, vec!["10.2.0.0/16", "fd00:2::/64"]);
        assert_eq!(row.persistent_keepalive, Some(25));
        assert_eq!(row.dropped["replay"], 1);
        assert_eq!(row.dropped.len(), DropReason::ALL.len());
        assert_eq!(row.last_handshake_unix_ms, None);

        let mono = Instant::now();
        let mut snapshot = peer.snapshot(mono);
        snapshot.last_handshake = Some(mono);
        snapshot.counters = PeerCounters {
            rx_bytes: 1,
            tx_bytes: 2,
            rx_wire_bytes: 3,
            tx_wire_bytes: 4,
            rx_packets: 5,
            tx_packets: 6,
            handshakes: 7,
        };
        let row = peer_row(snapshot, &WallClock::new(mono, t0()));
        assert_eq!(row.last_handshake_unix_ms, Some(T0_MS));
        assert_eq!(
            (
                row.rx_bytes,
                row.tx_bytes,
                row.rx_wire_bytes,
                row.tx_wire_bytes,
                row.rx_packets,
                row.tx_packets,
                row.handshakes
            ),
            (1, 2, 3, 4, 5, 6, 7)
        );
    }
}
