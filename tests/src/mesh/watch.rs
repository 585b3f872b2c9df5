//! A formed mesh watched while nothing happens: rounds of status, and the gateways' own log
//! lines for clusters down and sync sessions lost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::{CLUSTER_DOWN_LOG, SESSION_CLOSED_LOG, SESSION_ENDED_LOG, SESSION_OPEN_LOG};
use crate::lab::Lab;
use crate::pool::Pool;

/// What [`Lab::watch_mesh`] saw while nothing was happening.
#[derive(Debug, Clone, Default)]
pub struct MeshWatch {
    pub duration: Duration,
    /// Rounds of `tunctl status` taken.
    pub samples: usize,
    /// Rounds in which the mesh was not full: `(time into the watch, summary)`.
    pub incomplete: Vec<(Duration, String)>,
    /// Remote clusters seen not `up`: `(time into the watch, gateway, cluster, liveness)`.
    pub not_up: Vec<(Duration, usize, String, String)>,
    /// Log lines written during the watch: `(gateway, line)`.
    pub cluster_down: Vec<(usize, String)>,
    /// Sessions closed or ended ([`SESSION_CLOSED_LOG`], [`SESSION_ENDED_LOG`]).
    pub sessions_lost: Vec<(usize, String)>,
    pub sessions_opened: Vec<(usize, String)>,
}

impl MeshWatch {
    /// Nothing went down, closed, reopened or fell short during the watch.
    pub fn quiet(&self) -> bool {
        self.incomplete.is_empty()
            && self.not_up.is_empty()
            && self.cluster_down.is_empty()
            && self.sessions_lost.is_empty()
            && self.sessions_opened.is_empty()
    }

    /// Counts, then the first few of each kind of event.
    pub fn report(&self) -> String {
        let mut s = format!(
            "  {:.0} s, {} samples: {} \"{CLUSTER_DOWN_LOG}\", {} sync sessions closed or \
             ended, {} opened, {} remote-cluster samples not up, {} samples short of the full \
             mesh",
            self.duration.as_secs_f64(),
            self.samples,
            self.cluster_down.len(),
            self.sessions_lost.len(),
            self.sessions_opened.len(),
            self.not_up.len(),
            self.incomplete.len(),
        );
        let first = 5;
        for (i, line) in self
            .cluster_down
            .iter()
            .chain(&self.sessions_lost)
            .chain(&self.sessions_opened)
            .take(first)
        {
            let _ = write!(s, "\n    c{i}: {}", line.trim());
        }
        for (t, i, cluster, liveness) in self.not_up.iter().take(first) {
            let _ = write!(
                s,
                "\n    at {:.0} s gateway c{i} saw {cluster} {liveness}",
                t.as_secs_f64()
            );
        }
        for (t, summary) in self.incomplete.iter().take(first) {
            let _ = write!(s, "\n    at {:.0} s: {summary}", t.as_secs_f64());
        }
        s
    }
}

/// Where each gateway's log stood at one moment (bytes of stderr): counting from a mark sees
/// only what came after it.
#[derive(Debug, Clone, Default)]
pub struct LogMark(BTreeMap<usize, usize>);

impl Lab {
    /// The current length of every gateway's log.
    pub fn gateway_log_mark(&self) -> LogMark {
        LogMark(
            (1..=self.clusters())
                .map(|i| (i, self.gateway_stderr(i).len()))
                .collect(),
        )
    }

    /// Lines of the gateways' logs at INFO or above containing `needle`, written after `mark`
    /// (all of them without one): `(gateway, line)`. DEBUG and TRACE lines are left out: a
    /// gateway logging one event at two levels (details at DEBUG) is counted once.
    pub fn gateway_log_lines(&self, mark: Option<&LogMark>, needle: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for i in 1..=self.clusters() {
            let text = self.gateway_stderr(i);
            let from = mark.and_then(|m| m.0.get(&i).copied()).unwrap_or(0);
            let Some(new) = text.get(from..) else {
                continue;
            };
            out.extend(
                new.lines()
                    .filter(|l| l.contains(needle) && !is_debug(l))
                    .map(|l| (i, l.to_owned())),
            );
        }
        out
    }

    /// Watches a formed mesh for `duration`: a round of `tunctl status` every `every` (mesh
    /// still full? every remote cluster `up`?), then the gateways' log lines of the whole
    /// window for clusters down and sync sessions closed, ended or opened.
    pub fn watch_mesh(
        &self,
        pool: &Pool,
        control: bool,
        duration: Duration,
        every: Duration,
        stop: impl Fn() -> bool,
    ) -> MeshWatch {
        let mark = self.gateway_log_mark();
        let start = Instant::now();
        let mut w = MeshWatch::default();
        loop {
            let next = Instant::now() + every;
            let snap = self.mesh_snapshot(pool, control);
            let t = start.elapsed();
            w.samples += 1;
            if !snap.full() {
                w.incomplete.push((t, snap.summary()));
            }
            w.not_up.extend(
                snap.not_up()
                    .into_iter()
                    .map(|(i, cluster, liveness)| (t, i, cluster, liveness)),
            );
            if start.elapsed() >= duration || stop() {
                break;
            }
            let now = Instant::now();
            let wake = next.min(start + duration);
            if wake > now {
                std::thread::sleep(wake - now);
            }
        }
        w.duration = start.elapsed();
        w.cluster_down = self.gateway_log_lines(Some(&mark), CLUSTER_DOWN_LOG);
        w.sessions_lost = self.gateway_log_lines(Some(&mark), SESSION_CLOSED_LOG);
        w.sessions_lost
            .extend(self.gateway_log_lines(Some(&mark), SESSION_ENDED_LOG));
        w.sessions_opened = self.gateway_log_lines(Some(&mark), SESSION_OPEN_LOG);
        w
    }
}

/// Whether a line of the gateway's text log is at DEBUG or TRACE (`<timestamp> <LEVEL> …`).
fn is_debug(line: &str) -> bool {
    matches!(line.split_whitespace().nth(1), Some("DEBUG" | "TRACE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_trace_lines_are_told_apart() {
        let info = "2026-12-07T19:46:25.062249Z  INFO isthmus_gateway::control::sync: catalog \
                    sync session ended cluster=c90";
        let debug = "2026-12-07T19:46:25.062225Z DEBUG isthmus_gateway::control::sync: catalog \
                     sync session ended peer=spiffe://isthmus.local/cluster/c90/gateway/gw";
        assert!(!is_debug(info));
        assert!(is_debug(debug));
        assert!(is_debug("2026-12-07T19:46:25Z TRACE x: y"));
        assert!(!is_debug("2026-12-07T19:46:25Z  WARN x: DEBUG"));
        assert!(!is_debug(""));
    }
}
