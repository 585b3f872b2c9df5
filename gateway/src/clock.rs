//! The phase of the gateway's periodic timers.
//!
//! Periodic work (the data plane's timer tick and liveness probes, the health check, the sync
//! sessions' heartbeats) falls on one grid: multiples of a step counted from the last whole
//! second of the wall clock. The tasks of one gateway then wake together, and gateways whose
//! clocks agree (NTP) send at the same instants, so a receiver handles many peers' probes
//! in one wake-up. Only the phase comes from the wall clock; every duration is monotonic, and
//! nothing is decided by the phase: a clock step moves the grid of a task started later, no more.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The monotonic instant of the last whole second of the wall clock.
pub fn wall_second_epoch() -> Instant {
    let now = Instant::now();
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(Duration::ZERO, |d| {
            Duration::from_nanos(u64::from(d.subsec_nanos()))
        });
    now.checked_sub(into_second).unwrap_or(now)
}

/// The first point `epoch + k·step` (k ≥ 0) at or after `at`; `at` itself when `step` is zero
/// or `at` is before `epoch`.
pub fn on_grid(epoch: Instant, step: Duration, at: Instant) -> Instant {
    if step.is_zero() || at <= epoch {
        return at;
    }
    let steps = at
        .duration_since(epoch)
        .as_nanos()
        .div_ceil(step.as_nanos());
    epoch + step * u32::try_from(steps).unwrap_or(u32::MAX)
}

/// The process's grid epoch: [`wall_second_epoch`] when first asked, the same for every task.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(wall_second_epoch)
}

/// The next point of the grid of `step` strictly after `now`.
pub fn next_after(step: Duration, now: Instant) -> Instant {
    on_grid(epoch(), step, now + Duration::from_nanos(1))
}

/// A tokio interval ticking on the grid of `step` (see the module notes); a tick missed
/// because the runtime was busy is skipped, not bunched, so the phase holds.
pub fn grid_interval(step: Duration) -> tokio::time::Interval {
    let first = on_grid(epoch(), step, Instant::now());
    let mut interval = tokio::time::interval_at(first.into(), step);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_points_round_up() {
        let epoch = Instant::now();
        let step = Duration::from_millis(250);
        assert_eq!(on_grid(epoch, step, epoch), epoch);
        assert_eq!(
            on_grid(epoch, step, epoch + Duration::from_millis(1)),
            epoch + step
        );
        assert_eq!(on_grid(epoch, step, epoch + step), epoch + step);
        assert_eq!(
            on_grid(epoch, step, epoch + Duration::from_millis(251)),
            epoch + step * 2
        );
        assert_eq!(on_grid(epoch, Duration::ZERO, epoch + step), epoch + step);
    }

    #[test]
    fn the_epoch_is_within_the_last_second() {
        let e = wall_second_epoch();
        assert!(Instant::now().duration_since(e) < Duration::from_secs(1));
    }
}
