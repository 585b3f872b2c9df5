//! Pod-to-pod pings through the lab's bounded pool.

use std::time::{Duration, Instant};

use crate::lab::{lock, Lab};
use crate::plan;
use crate::pool::Pool;

/// One pod-to-pod ping of [`Lab::ping_pairs`].
#[derive(Debug, Clone)]
pub struct PingResult {
    pub from: usize,
    pub to: usize,
    /// Time from the start of [`Lab::ping_pairs`] to the first reply.
    pub answered: Option<Duration>,
    /// Why the last attempt failed, or that there was no time left for one.
    pub error: Option<String>,
}

impl Lab {
    /// Pings each `(from, to)` pod pair (cluster `from`'s first pod to cluster `to`'s) through
    /// `pool` until it answers or `timeout` has passed since the call. Rounds: every pair not
    /// yet answered gets one echo (1 s to reply) per round, so a dead pair holds a worker for a
    /// second at a time, never the whole timeout; pairs not reached before the deadline are
    /// failures saying so.
    pub fn ping_pairs(
        &self,
        pool: &Pool,
        pairs: &[(usize, usize)],
        timeout: Duration,
        stop: impl Fn() -> bool + Sync,
    ) -> Vec<PingResult> {
        let start = Instant::now();
        let deadline = start + timeout;
        let results: std::sync::Mutex<Vec<PingResult>> = std::sync::Mutex::new(
            pairs
                .iter()
                .map(|&(from, to)| PingResult {
                    from,
                    to,
                    answered: None,
                    error: Some("no time left to try".to_owned()),
                })
                .collect(),
        );
        let mut pending: Vec<usize> = (0..pairs.len()).collect();
        while !pending.is_empty() && Instant::now() < deadline && !stop() {
            let round_start = Instant::now();
            let answered = pool.map(&pending, |&k| {
                if Instant::now() >= deadline || stop() {
                    return false;
                }
                let (from, to) = pairs[k];
                let outcome = self.ping(&self.pod_ns(from), plan::pod_addr(to), 1);
                let mut r = lock(&results);
                match outcome {
                    Ok(1..) => {
                        r[k].answered = Some(start.elapsed());
                        r[k].error = None;
                        true
                    }
                    Ok(0) => {
                        r[k].error = Some("no reply".to_owned());
                        false
                    }
                    Err(e) => {
                        r[k].error = Some(format!("{e:#}"));
                        false
                    }
                }
            });
            pending = pending
                .into_iter()
                .zip(answered)
                .filter(|&(_, ok)| !ok)
                .map(|(k, _)| k)
                .collect();
            // A round of errors that return at once (no route yet) must not spin.
            let min_round = Duration::from_millis(200);
            if !pending.is_empty() && round_start.elapsed() < min_round {
                std::thread::sleep(min_round - round_start.elapsed());
            }
        }
        results
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every ordered pair of distinct clusters of `1..=n`, by distance: each cluster to the next
/// one first, then each to the one after, … A bounded pool working down this list keeps every
/// gateway about as busy as the others (never one pod pinging everyone at once), and a
/// deadline that cuts it short leaves a sample spread over every gateway.
pub fn all_pairs(n: usize) -> Vec<(usize, usize)> {
    (1..n)
        .flat_map(|d| (1..=n).map(move |from| (from, (from - 1 + d) % n + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pairs_are_every_ordered_pair_once_nearest_first() {
        assert_eq!(
            all_pairs(3),
            vec![(1, 2), (2, 3), (3, 1), (1, 3), (2, 1), (3, 2)]
        );
        let mut big = all_pairs(32);
        assert_eq!(big.len(), 992);
        assert!(big.iter().all(|(a, b)| a != b));
        big.sort_unstable();
        big.dedup();
        assert_eq!(big.len(), 992);
        assert!(all_pairs(1).is_empty());
    }
}
