//! The route agent with a large catalog: for two shapes of N endpoints (1 service × N, and
//! about √N × √N), the time to program the catalog (the bench's own two services stay), to
//! apply a change of one endpoint, and to remove it again; and the agent's memory.
//!
//! Each step writes one watch line and times it three ways: `last_reconcile_us` from the
//! agent's status (its own time to diff and write the maps); until the agent logs "maps
//! programmed" for the line's revision (the log line's own timestamp: reading and parsing the
//! line plus the reconcile); and until a status answer shows the revision (that plus building
//! one status). The bench waits by reading the agent's log, not by polling its status: every
//! status answer is built by the task that owns the maps (about 45 ms with 10,000 backends),
//! so polling would delay the very work it times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use isthmus_catalog_view::{BackendInfo, PortInfo, ServiceInfo};
use isthmus_lab::agent::watch_line;
use isthmus_route_agent::status::Status;

use crate::feed;
use crate::setup::{base_services, Bench, AGENT, BASE_REVISION};
use crate::{check_interrupted, Cli};

/// Pause between two reads of the agent's log while waiting for a revision.
pub const POLL_EVERY: Duration = Duration::from_millis(1);
/// How long one step may take before the run fails.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// Wait before reading the agent's RSS after a load: the allocator settles.
const SETTLE: Duration = Duration::from_millis(500);
/// The large catalogs' service port.
const BULK_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub services: usize,
    pub per_service: usize,
}

impl Shape {
    pub fn endpoints(self) -> usize {
        self.services * self.per_service
    }

    pub fn label(self) -> String {
        format!("{} x {}", self.services, self.per_service)
    }
}

/// One timed step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// From the write of the line to the agent's "maps programmed" log line for it.
    pub programmed: Duration,
    /// From the write of the line to the status answer that showed its revision.
    pub status: Duration,
    /// The agent's `last_reconcile_us` in that answer.
    pub reconcile: Duration,
}

#[derive(Debug, Clone)]
pub struct ShapeRuns {
    pub shape: Shape,
    pub loads: Vec<Step>,
    pub changes: Vec<Step>,
    pub removals: Vec<Step>,
    /// How long one status answer took with this catalog loaded (connect to last byte).
    pub status_answer: Vec<Duration>,
}

/// VmRSS and VmHWM of the agent, KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
}

pub struct CatalogRuns {
    pub shapes: Vec<ShapeRuns>,
    pub memory: Vec<(String, Memory)>,
    /// Status answer time with only the bench's two services.
    pub base_status_answer: Vec<Duration>,
}

pub fn run(bench: &Bench, cli: &Cli) -> Result<CatalogRuns> {
    let n = cli.endpoints as usize;
    let side = ((n as f64).sqrt().round() as usize).max(1);
    let mut shapes = vec![Shape {
        services: 1,
        per_service: n,
    }];
    if side > 1 {
        shapes.push(Shape {
            services: side,
            per_service: n.div_ceil(side),
        });
    }
    let mut base_status_answer = Vec::new();
    for _ in 0..20 {
        base_status_answer.push(feed::query(&bench.admin)?.took);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut memory = vec![("bench's 2 services only".to_owned(), memory_of(bench)?)];
    let mut revision = BASE_REVISION;
    let mut out = Vec::new();
    for shape in shapes {
        let mut runs = ShapeRuns {
            shape,
            loads: Vec::new(),
            changes: Vec::new(),
            removals: Vec::new(),
            status_answer: Vec::new(),
        };
        let label = shape.label();
        for l in 0..cli.loads {
            check_interrupted()?;
            revision += 1;
            let (step, status) =
                apply(bench, revision, catalog(bench, Some((shape, 0))), &mut runs)
                    .with_context(|| format!("{label}: programming the catalog"))?;
            check_loaded(&status, shape, 0)?;
            runs.loads.push(step);
            if l == 0 {
                std::thread::sleep(SETTLE);
                memory.push((format!("{label}: programmed"), memory_of(bench)?));
            }
            if l + 1 == cli.loads {
                for k in 1..=cli.changes as usize {
                    check_interrupted()?;
                    revision += 1;
                    let (step, status) =
                        apply(bench, revision, catalog(bench, Some((shape, k))), &mut runs)
                            .with_context(|| format!("{label}: change {k}"))?;
                    check_loaded(&status, shape, k)?;
                    runs.changes.push(step);
                }
                std::thread::sleep(SETTLE);
                memory.push((
                    format!("{label}: after {} changes", cli.changes),
                    memory_of(bench)?,
                ));
            }
            revision += 1;
            let (step, status) = apply(bench, revision, catalog(bench, None), &mut runs)
                .with_context(|| format!("{label}: removing the catalog"))?;
            anyhow::ensure!(
                status.services.len() == 2 && status.unprogrammed.is_empty(),
                "{label}: after the removal the agent has {} services",
                status.services.len()
            );
            runs.removals.push(step);
        }
        std::thread::sleep(SETTLE);
        memory.push((format!("{label}: removed"), memory_of(bench)?));
        out.push(runs);
    }
    Ok(CatalogRuns {
        shapes: out,
        memory,
        base_status_answer,
    })
}

/// VmRSS and VmHWM of the agent from `/proc/<pid>/status`.
fn memory_of(bench: &Bench) -> Result<Memory> {
    let path = format!("/proc/{}/status", bench.agent_pid);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// Writes `services` at `revision`, waits for the agent's log to say it is programmed, then
/// reads its status once.
fn apply(
    bench: &Bench,
    revision: u64,
    services: Vec<ServiceInfo>,
    runs: &mut ShapeRuns,
) -> Result<(Step, Status)> {
    let line =
        serde_json::to_string(&watch_line(revision, services, &[])).expect("a watch line encodes");
    let wall = SystemTime::now();
    let (t0, clients) = bench.feed.send(line);
    anyhow::ensure!(
        clients == 1,
        "{clients} agents follow the watch socket, expected 1"
    );
    let logged = loop {
        if let Some(at) = programmed_at(&bench.lab.agent_stderr(AGENT), revision) {
            break at;
        }
        if t0.elapsed() > STEP_DEADLINE {
            bail!("revision {revision} not programmed within {STEP_DEADLINE:?}");
        }
        std::thread::sleep(POLL_EVERY);
    };
    let answer = feed::query(&bench.admin)?;
    anyhow::ensure!(
        answer.status.revision == Some(revision),
        "the agent logged revision {revision} as programmed but its status shows {:?}",
        answer.status.revision
    );
    anyhow::ensure!(
        answer.status.reconcile_error.is_none(),
        "the agent failed to program revision {revision}: {:?}",
        answer.status.reconcile_error
    );
    let reconcile = answer
        .status
        .last_reconcile_us
        .context("the status has no last_reconcile_us")?;
    runs.status_answer.push(answer.took);
    let programmed = logged
        .duration_since(wall)
        .context("the agent logged the revision before the bench wrote it")?;
    Ok((
        Step {
            programmed,
            status: answer.at - t0,
            reconcile: Duration::from_micros(reconcile),
        },
        answer.status,
    ))
}

/// When the agent's JSON log (`--log-format json`) says the maps were programmed for
/// `revision`.
fn programmed_at(log: &str, revision: u64) -> Option<SystemTime> {
    log.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &v["fields"];
        if fields["message"] != "maps programmed" || fields["revision"].as_u64() != Some(revision) {
            return None;
        }
        parse_utc(v["timestamp"].as_str()?)
    })
}

/// An RFC 3339 UTC timestamp as tracing writes it (`2026-12-07T15:43:30.123456Z`).
fn parse_utc(ts: &str) -> Option<SystemTime> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, sec) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
        t.next()?,
    );
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, "0"));
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs =
        u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60 + whole.parse::<u64>().ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Checks, from the status that showed it, that the whole large catalog is programmed and
/// that change `k` is in it.
fn check_loaded(status: &Status, shape: Shape, k: usize) -> Result<()> {
    anyhow::ensure!(
        status.unprogrammed.is_empty(),
        "services left out: {:?}",
        status.unprogrammed
    );
    let bulk: Vec<_> = status
        .services
        .iter()
        .filter(|s| s.namespace == "bulk")
        .collect();
    let backends: usize = bulk.iter().map(|s| s.backends.len()).sum();
    anyhow::ensure!(
        bulk.len() == shape.services && backends == shape.endpoints(),
        "the agent programmed {} services with {backends} backends, expected {} with {}",
        bulk.len(),
        shape.services,
        shape.endpoints()
    );
    let first = address(shape, 0, 0, k);
    anyhow::ensure!(
        bulk.iter()
            .any(|s| s.name == service_name(0) && s.backends.iter().any(|b| b.address == first)),
        "{first} (change {k}) is not among {}'s backends",
        service_name(0)
    );
    Ok(())
}

fn service_name(s: usize) -> String {
    format!("svc-{s:04}")
}

/// Endpoint `e` of service `s` after change `k`: 10.128.0.0/12 counted up, except that change
/// `k` > 0 replaces endpoint 0 of service 0 with 10.160.0.0 + k. Nothing answers on any of
/// them; nothing connects to them either.
fn address(shape: Shape, s: usize, e: usize, k: usize) -> String {
    let (base, n) = if s == 0 && e == 0 && k > 0 {
        (u32::from_be_bytes([10, 160, 0, 0]), k)
    } else {
        (
            u32::from_be_bytes([10, 128, 0, 0]),
            s * shape.per_service + e + 1,
        )
    };
    std::net::Ipv4Addr::from(base + u32::try_from(n).expect("small")).to_string()
}

/// The bench's services, plus `shape`'s after change `k` when given.
fn catalog(bench: &Bench, large: Option<(Shape, usize)>) -> Vec<ServiceInfo> {
    let mut services = base_services(&bench.backends);
    let Some((shape, k)) = large else {
        return services;
    };
    for s in 0..shape.services {
        let backends: Vec<BackendInfo> = (0..shape.per_service)
            .map(|e| BackendInfo {
                cluster: "c1".to_owned(),
                address: address(shape, s, e, k),
                port: BULK_PORT,
                weight: 1,
            })
            .collect();
        let vip = std::net::Ipv4Addr::new(241, 1, (s / 250) as u8, (1 + s % 250) as u8);
        services.push(ServiceInfo {
            namespace: "bulk".to_owned(),
            name: service_name(s),
            vips: vec![vip.to_string()],
            headless: false,
            policy: "round_robin".to_owned(),
            ports: vec![PortInfo {
                name: None,
                port: BULK_PORT,
                protocol: "TCP".to_owned(),
            }],
            clusters: vec!["c1".to_owned()],
            unavailable: Vec::new(),
            endpoints_healthy: backends.len(),
            endpoints_total: backends.len(),
            per_cluster: Vec::new(),
            backends,
        });
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_timestamps_parse() {
        assert_eq!(
            parse_utc("1970-01-01T00:00:01.5Z"),
            Some(UNIX_EPOCH + Duration::from_millis(1500))
        );
        assert_eq!(
            parse_utc("2026-12-07T15:43:30.123456Z"),
            Some(UNIX_EPOCH + Duration::new(1_796_658_210, 123_456_000))
        );
        assert_eq!(
            parse_utc("2024-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        assert_eq!(parse_utc("2024-02-29T00:00:00+01:00"), None);
        let log = "{\"timestamp\":\"2026-12-07T15:43:30.123456Z\",\"level\":\"INFO\",\
                   \"fields\":{\"message\":\"maps programmed\",\"revision\":7}}\n";
        assert!(programmed_at(log, 7).is_some());
        assert!(programmed_at(log, 8).is_none());
    }
}
