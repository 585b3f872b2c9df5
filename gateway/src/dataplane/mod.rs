//! The packet path. [`engine`] is the logic (no I/O, testable in memory); [`io`] is the shell
//! of TUN, UDP and timers around it; [`router`] is crypto-key routing; [`queue`] the batch
//! buffers both sides share.

pub mod drops;
pub mod engine;
pub mod io;
pub mod mss;
pub mod peer;
pub mod queue;
pub mod router;

pub use drops::{DropCounters, DropReason};
pub use engine::{Engine, PeerDiff};
pub use peer::Peer;
