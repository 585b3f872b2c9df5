//! The packet path. [`engine`] is the logic (no I/O, testable in memory); [`io`] is the shell
//! of TUN, UDP and timers around it; [`router`] is crypto-key routing; [`queue`] the batch
//! buffers both sides share.
//!
//! The data plane knows nothing of its readers: the operator interfaces read a
//! [`PeerSnapshot`] per peer and the [`DropCounters`], and render them themselves.
//!
//! # Time
//!
//! The engine runs on monotonic time. The shell passes `now: Instant` in where a decision
//! depends on it ([`Engine::tick`], [`Peer::snapshot`]), and what the engine remembers about a
//! peer's health (its last handshake, its last failed send) is an `Instant`. No wall clock is
//! read on the packet path, so a clock step (NTP, or an edge board without a battery-backed
//! clock setting its time after boot) can neither expire a session nor make a dead one look
//! fresh.
//!
//! boringtun 0.7's `Tunn` takes no clock: it reads `Instant::now()` itself for its session
//! timers and its rate limiter. [`Engine::encapsulate`] and [`Engine::decapsulate`] decide
//! nothing by time beyond what `Tunn` decides on that clock; `decapsulate` takes the batch's
//! receive time only to date the sender's liveness ([`Engine::last_heard`]). The `now`
//! given to [`Engine::tick`] is read right before the tick (not the timer's deadline), so the
//! handshake times the engine derives from `Tunn`'s session ages line up with `Tunn`'s clock.
//! Tests cannot run the engine on a virtual clock for the same reason.
//!
//! Wall-clock time appears only at the edge, where a protocol asks for it: the last handshake
//! is a Unix time in `tunctl`, in the UAPI (`last_handshake_time_sec`) and in the metrics, so
//! the admin module converts the snapshot's `Instant` when it builds its row.
//!
//! # Timers
//!
//! Every peer gets its turn every tick however many peers there are: [`Engine::tick`] starts a
//! [`TickRound`] that stops when the transmit queue is full and resumes after the shell has
//! sent it. A turn samples what was sent to the peer (the liveness probe's clock); its
//! boringtun timers run every tick while it is busy and once per probe period (at most a
//! second) while it rests: a fresh session, nothing sent. Ticks fall on the gateway's timer
//! grid (`crate::clock`).
//!
//! # Liveness
//!
//! With [`Engine::set_liveness_probe`], a tick sends a keepalive to every peer with a session
//! that nothing was sent to for a probe period. Both ends doing so, the receive time of a
//! peer's latest authenticated datagram tells whether it is alive; the control plane's health
//! reads it. At idle that is one
//! 32-byte datagram per peer and period each way, sent by one `tick` for all peers.

pub mod drops;
pub mod engine;
pub mod io;
pub mod mss;
pub mod peer;
pub mod queue;
pub mod router;

pub use drops::{DropCounters, DropReason};
pub use engine::{Engine, PeerDiff, TickRound};
pub use peer::{ConnectionState, Peer, PeerCounters, PeerSnapshot};
