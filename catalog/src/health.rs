//! Liveness of one remote cluster on a virtual clock, with flap damping.
//!
//! ```text
//!  first heard ─► Up ──(not heard for down_after)──► Down ──(down for record_ttl)──► expired
//!                  ▲                                  │ heard
//!                  └──(hold-down over, still heard)── HoldDown ◄┘   (or Up at once if no flaps)
//!                                                     │ not heard for down_after: Down again
//! ```
//!
//! Damping: every fall to Down from Up or HoldDown is a flap. Recent flaps are forgotten one per
//! `flap_decay` of quiet (counted from the latest flap). A cluster heard again after `n ≥ 1`
//! remembered flaps is held down for `hold_down_base · 2^(n-1)`, at most `hold_down_max`:
//! with the defaults 1 s, 2 s, 4 s, … 60 s. A cluster that said Bye is Down without a flap, so
//! a planned restart comes back at once.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Bad, Error, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// A cluster not heard from for this long is Down (default 3 s).
    pub down_after: Duration,
    /// A cluster Down for this long has its records dropped (default 5 min).
    pub record_ttl: Duration,
    /// Hold-down after the first remembered flap (default 1 s).
    pub hold_down_base: Duration,
    /// Longest hold-down (default 60 s).
    pub hold_down_max: Duration,
    /// One remembered flap is forgotten per this much time without a flap (default 60 s).
    pub flap_decay: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            down_after: Duration::from_secs(3),
            record_ttl: Duration::from_secs(300),
            hold_down_base: Duration::from_secs(1),
            hold_down_max: Duration::from_secs(60),
            flap_decay: Duration::from_secs(60),
        }
    }
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), Error> {
        let ms = |d: Duration| Value::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let bad = if self.down_after.is_zero() {
            Some(("down_after", self.down_after, "must be more than 0"))
        } else if self.flap_decay.is_zero() {
            Some(("flap_decay", self.flap_decay, "must be more than 0"))
        } else if self.hold_down_max < self.hold_down_base {
            Some((
                "hold_down_max",
                self.hold_down_max,
                "must be at least hold_down_base",
            ))
        } else {
            None
        };
        match bad {
            Some((field, d, reason)) => {
                Err(Bad::new(field, ms(d), reason).into_error("health (ms)"))
            }
            None => Ok(()),
        }
    }

    fn hold_down(&self, flaps: u32) -> Duration {
        if flaps == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(flaps - 1).unwrap_or(u32::MAX);
        self.hold_down_base
            .checked_mul(factor)
            .map_or(self.hold_down_max, |d| d.min(self.hold_down_max))
    }
}

/// Where a remote cluster stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard recently: its endpoints are offered.
    Up,
    /// Heard again after a fall; offered from `until` if still heard then.
    HoldDown { until: Instant },
    /// Not offered; records dropped at `since + record_ttl`.
    Down { since: Instant },
}

/// What the daemon can show about a remote cluster (`tunctl status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    pub liveness: Liveness,
    /// Whether its endpoints are offered at the instant asked about.
    pub offered: bool,
    pub last_heard: Instant,
    /// Flaps remembered at the instant asked about.
    pub flaps: u32,
}

/// A change the owner must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Up,
    Down,
    Expire,
}

#[derive(Debug, Clone)]
pub(crate) struct Health {
    last_heard: Instant,
    liveness: Liveness,
    flaps: u32,
    last_flap: Option<Instant>,
}

impl Health {
    pub fn heard_first(now: Instant) -> Self {
        Self {
            last_heard: now,
            liveness: Liveness::Up,
            flaps: 0,
            last_flap: None,
        }
    }

    /// Records restored from disk: not offered until the cluster is heard.
    pub fn restored(now: Instant) -> Self {
        Self {
            last_heard: now,
            liveness: Liveness::Down { since: now },
            flaps: 0,
            last_flap: None,
        }
    }

    fn down_at(&self, cfg: &HealthConfig) -> Instant {
        self.last_heard + cfg.down_after
    }

    fn flaps_at(&self, now: Instant, cfg: &HealthConfig) -> u32 {
        let Some(t) = self.last_flap else { return 0 };
        let quiet = now.saturating_duration_since(t);
        let forgotten = quiet.as_nanos() / cfg.flap_decay.as_nanos().max(1);
        self.flaps
            .saturating_sub(u32::try_from(forgotten).unwrap_or(u32::MAX))
    }

    fn flap(&mut self, at: Instant, cfg: &HealthConfig) {
        self.flaps = self.flaps_at(at, cfg).saturating_add(1);
        self.last_flap = Some(at);
    }

    /// Applies every timer-driven transition due by `now`, in order; visible ones go to `out`.
    pub fn settle(&mut self, now: Instant, cfg: &HealthConfig, out: &mut Vec<Transition>) {
        loop {
            let down_at = self.down_at(cfg);
            match self.liveness {
                Liveness::Up if now >= down_at => {
                    self.flap(down_at, cfg);
                    self.liveness = Liveness::Down { since: down_at };
                    out.push(Transition::Down);
                }
                Liveness::HoldDown { until } if until < down_at && now >= until => {
                    self.liveness = Liveness::Up;
                    out.push(Transition::Up);
                }
                Liveness::HoldDown { .. } if now >= down_at => {
                    // Never offered since the last fall: a flap, but nothing to withdraw.
                    self.flap(down_at, cfg);
                    self.liveness = Liveness::Down { since: down_at };
                }
                Liveness::Down { since } if now >= since + cfg.record_ttl => {
                    out.push(Transition::Expire);
                    return;
                }
                _ => return,
            }
        }
    }

    /// This gateway did not run for `stalled` (its own process was starved, see
    /// [`crate::MergedCatalog::credit_stall`]): that time does not count as the cluster's
    /// silence. Never past `now`, and a cluster already down stays down.
    pub fn credit(&mut self, stalled: std::time::Duration, now: Instant) {
        if !matches!(self.liveness, Liveness::Down { .. }) {
            self.last_heard = (self.last_heard + stalled).min(now);
        }
    }

    /// A message or other sign of life at `now` (after [`settle`](Self::settle)).
    pub fn heard(&mut self, now: Instant, cfg: &HealthConfig, out: &mut Vec<Transition>) {
        self.last_heard = self.last_heard.max(now);
        if let Liveness::Down { .. } = self.liveness {
            let hold = cfg.hold_down(self.flaps_at(now, cfg));
            if hold.is_zero() {
                self.liveness = Liveness::Up;
                out.push(Transition::Up);
            } else {
                self.liveness = Liveness::HoldDown { until: now + hold };
            }
        }
    }

    /// The cluster said Bye: Down now, without a flap.
    pub fn left(&mut self, now: Instant, out: &mut Vec<Transition>) {
        let was_offered = matches!(self.liveness, Liveness::Up);
        if !matches!(self.liveness, Liveness::Down { .. }) {
            self.liveness = Liveness::Down { since: now };
            // Heard until now; the next message brings it back.
            self.last_heard = now;
            if was_offered {
                out.push(Transition::Down);
            }
        }
    }

    /// The next instant [`settle`](Self::settle) has something to do.
    pub fn deadline(&self, cfg: &HealthConfig) -> Instant {
        let down_at = self.down_at(cfg);
        match self.liveness {
            Liveness::Up => down_at,
            Liveness::HoldDown { until } => until.min(down_at),
            Liveness::Down { since } => since + cfg.record_ttl,
        }
    }

    /// Whether endpoints are offered at `now`, from the stored state and the clock alone, so
    /// the answer is right even if `settle` has not run yet.
    pub fn offered(&self, now: Instant, cfg: &HealthConfig) -> bool {
        let down_at = self.down_at(cfg);
        match self.liveness {
            Liveness::Up => now < down_at,
            Liveness::HoldDown { until } => until < down_at && until <= now && now < down_at,
            Liveness::Down { .. } => false,
        }
    }

    pub fn status(&self, now: Instant, cfg: &HealthConfig) -> ClusterHealth {
        ClusterHealth {
            liveness: self.liveness,
            offered: self.offered(now, cfg),
            last_heard: self.last_heard,
            flaps: self.flaps_at(now, cfg),
        }
    }
}
