//! A bounded pool for the lab's own short-lived subprocesses (`ping`, `dig`, `tunctl`).
//!
//! A lab of many clusters shares its cores with the gateways it measures: one thread (and one
//! `ip netns exec …` process) per pod pair or per gateway would make it measure its own process
//! storm. Work goes through one shared queue served by at most [`Pool::workers`] threads, so at
//! most that many of the lab's subprocesses run at any moment.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::lab::lock;

/// The most workers [`Pool::default`] uses, whatever the core count.
pub const MAX_WORKERS: usize = 8;

/// Runs closures over a list of items with bounded concurrency. Cheap to copy: the threads
/// live only for one [`Pool::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    workers: usize,
}

impl Default for Pool {
    /// Two workers per core (a worker mostly waits for its subprocess), at most
    /// [`MAX_WORKERS`].
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Pool::new((2 * cores).min(MAX_WORKERS))
    }
}

impl Pool {
    /// A pool of `workers` threads (at least one).
    pub fn new(workers: usize) -> Pool {
        Pool {
            workers: workers.max(1),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs `f` on every item, at most [`Pool::workers`] at a time, taking items from one
    /// shared queue in order; returns the results in the items' order. A panic in `f` is
    /// re-raised once every worker has stopped.
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..self.workers.min(items.len()) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(k) else {
                        break;
                    };
                    let r = f(item);
                    lock(&results)[k] = Some(r);
                });
            }
        });
        results
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .into_iter()
            .map(|r| r.expect("every item was taken by a worker"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn map_keeps_order_and_bounds_concurrency() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u32> = (0..40).collect();
        let out = Pool::new(3).map(&items, |&x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            running.fetch_sub(1, Ordering::SeqCst);
            x * 2
        });
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "{peak} ran at once");
    }

    #[test]
    fn map_of_nothing_and_a_zero_pool() {
        assert!(Pool::default().map(&[] as &[u8], |_| 1).is_empty());
        assert_eq!(Pool::new(0).workers(), 1);
        assert_eq!(Pool::new(0).map(&[1, 2], |x| x + 1), vec![2, 3]);
        assert!((1..=MAX_WORKERS).contains(&Pool::default().workers()));
    }
}
