//! Watching a mesh of many gateways form and stay formed, at a cost small beside the
//! gateways' own.
//!
//! One `tunctl status -o json` per gateway per round says everything asked here: the members
//! learned from records (`control.members`), the peers with a handshake younger than 180 s
//! (`connected_peers`), the sync sessions in step (`control.synced_sessions`) and each remote
//! cluster's liveness (`control.remote_clusters[].liveness`). A round asks every gateway
//! through a [`Pool`], so a 64-cluster lab runs at most a handful of `tunctl`s at once. Lost
//! clusters and sessions are also counted from the gateways' own log lines (their stderr
//! files: no subprocess), by the exact messages of `gateway/src/control`.
//!
//! Pod-to-pod pings go through the same pool ([`Lab::ping_pairs`]).
//!
//! Parts: [`GatewayView`] and [`MeshSnapshot`] read the status (`view`); [`Lab::watch_mesh`]
//! and the log marks look at a formed mesh (`watch`); [`Lab::ping_pairs`] pings (`ping`).

mod ping;
mod view;
mod watch;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lab::Lab;
use crate::pool::Pool;

pub use ping::{all_pairs, PingResult};
pub use view::{ControlView, GatewayView, MeshSnapshot};
pub use watch::{LogMark, MeshWatch};

/// Logged (WARN) by a gateway whose catalog marks a remote cluster down
/// (`gateway/src/control/mod.rs`, `health_loop`).
pub const CLUSTER_DOWN_LOG: &str = "cluster down: its endpoints are withdrawn";
/// Logged (INFO) for every sync session opened, inbound or outbound
/// (`gateway/src/control/sync.rs`).
pub const SESSION_OPEN_LOG: &str = "catalog sync session open";
/// Logged (INFO, or WARN when the peer sent something refused) when a sync session is closed,
/// also for a peer that is no longer one (`gateway/src/control/sync.rs`).
pub const SESSION_CLOSED_LOG: &str = "catalog sync session closed";
/// Logged (INFO) when a sync session ends on an I/O error (`gateway/src/control/sync.rs`).
pub const SESSION_ENDED_LOG: &str = "catalog sync session ended";

/// Pause between two rounds of [`Lab::wait_full_mesh`]: the rounds themselves take a while
/// with many gateways, and the gateways need the cores more than the lab does.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// How a mesh formed: for each count, when it first was complete on every gateway (from the
/// instant given to [`Lab::wait_full_mesh`], measured at the end of the round that saw it).
#[derive(Debug, Clone)]
pub struct Formation {
    pub members: Option<Duration>,
    pub handshakes: Option<Duration>,
    pub synced: Option<Duration>,
    /// All of them in one round: the time to full mesh.
    pub full: Option<Duration>,
    /// Rounds of `tunctl status` asked, and the longest one (the figures' resolution).
    pub rounds: usize,
    pub longest_round: Duration,
    /// The last round's views.
    pub last: MeshSnapshot,
}

impl Formation {
    /// Lines for a report: when each count completed, or the last round's summary.
    pub fn report(&self) -> String {
        let at = |d: Option<Duration>| {
            d.map_or("not reached".to_owned(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            })
        };
        let mut s = String::new();
        if self.last.control {
            let _ = writeln!(
                s,
                "  every gateway has all members:      {}",
                at(self.members)
            );
        }
        let _ = writeln!(
            s,
            "  every handshake done:               {}",
            at(self.handshakes)
        );
        if self.last.control {
            let _ = writeln!(
                s,
                "  every sync session in step:         {}",
                at(self.synced)
            );
        }
        let _ = writeln!(s, "  full mesh (all at once):            {}", at(self.full));
        let _ = write!(
            s,
            "  ({} rounds of tunctl status, the longest {:.2} s)",
            self.rounds,
            self.longest_round.as_secs_f64()
        );
        if self.full.is_none() {
            let _ = write!(s, "\n  last round: {}", self.last.summary());
        }
        s
    }
}

impl Lab {
    /// Gateway `i`'s view of the mesh.
    pub fn gateway_view(&self, i: usize) -> Result<GatewayView> {
        GatewayView::from_status(&self.tunctl(i, &["-o", "json", "status"])?)
    }

    /// A round of [`Lab::gateway_view`] over every gateway, through `pool`. `control`: whether
    /// members and sync sessions count (the control plane is on).
    pub fn mesh_snapshot(&self, pool: &Pool, control: bool) -> MeshSnapshot {
        let clusters: Vec<usize> = (1..=self.clusters()).collect();
        MeshSnapshot {
            clusters: self.clusters(),
            control,
            views: pool.map(&clusters, |&i| {
                self.gateway_view(i)
                    .map_err(|e| format!("tunctl status failed: {e:#}"))
            }),
        }
    }

    /// Asks every gateway round after round until the mesh is full, `timeout` has passed
    /// since `since` (the instant the last gateway was started), or `stop()` says so.
    pub fn wait_full_mesh(
        &self,
        pool: &Pool,
        control: bool,
        since: Instant,
        timeout: Duration,
        stop: impl Fn() -> bool,
    ) -> Formation {
        let mut f = Formation {
            members: None,
            handshakes: None,
            synced: None,
            full: None,
            rounds: 0,
            longest_round: Duration::ZERO,
            last: MeshSnapshot {
                clusters: self.clusters(),
                control,
                views: Vec::new(),
            },
        };
        loop {
            let round = Instant::now();
            let snap = self.mesh_snapshot(pool, control);
            let t = since.elapsed();
            f.rounds += 1;
            f.longest_round = f.longest_round.max(round.elapsed());
            for (first, done) in [
                (&mut f.members, snap.members_done()),
                (&mut f.handshakes, snap.handshakes_done()),
                (&mut f.synced, snap.synced_done()),
                (&mut f.full, snap.full()),
            ] {
                if done && first.is_none() {
                    *first = Some(t);
                }
            }
            f.last = snap;
            if f.full.is_some() || t >= timeout || stop() {
                return f;
            }
            std::thread::sleep(ROUND_PAUSE);
        }
    }
}
