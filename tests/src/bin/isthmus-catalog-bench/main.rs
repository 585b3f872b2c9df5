//! `isthmus-catalog-bench`: catalog convergence and memory with 3 gateways. Cluster c2 exports
//! from its static file; c1 and c3 import through the sync sessions and answer DNS.
//!
//! Two catalogs in one run: the reference (1 service × P endpoints) and the large one
//! (S services × P endpoints, default 100 × 100 = 10,000). For each it times E first exports
//! (empty file → every service), then N changes that replace one endpoint of `svc-000` (an
//! answer of the same size in both catalogs): each from the rename of the export file until
//! each gateway's DNS, asked from its own cluster's pod, answers the new set. VmRSS of the
//! three gateways is read with nothing exported, after each catalog's first convergence, and
//! after every export and change.
//!
//! The timing probes are DNS queries over TCP from a thread inside the pod's namespace, every
//! [`PROBE_EVERY`]: a `dig` process per probe takes 20–40 ms of the same 2 CPUs the gateways
//! run on, which blurs and slows what is measured. Real `dig` and `tunctl` check every result
//! afterwards, untimed.
//!
//! Prints figures, never judges them (see `bench/README.md`). Needs root; the lab is torn down
//! on every exit, Ctrl-C included.

#![forbid(unsafe_code)]

mod dns;
mod report;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use isthmus_lab::control::{control_lab, exports_toml, fqdn};
use isthmus_lab::{plan, Lab, GATEWAY_BIN};

use dns::{enter_netns, query_a};

/// How often a gateway re-reads its static export file (`FILE_POLL` in the gateway's
/// `control/store.rs`): the reference for the exporter's share of every figure.
const EXPORT_FILE_POLL: Duration = Duration::from_millis(500);
/// Pause between two DNS probes of one gateway.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long one export change may take to show everywhere before the run fails.
const CHANGE_DEADLINE: Duration = Duration::from_secs(20);
/// Wait before reading VmRSS: the state files are written 100 ms after a change, and the
/// allocator settles.
const SETTLE: Duration = Duration::from_secs(1);
/// The exporting cluster.
const EXPORTER: usize = 2;
/// The importing clusters.
const IMPORTERS: [usize; 2] = [1, 3];

#[derive(Parser)]
#[command(
    name = "isthmus-catalog-bench",
    about = "Catalog convergence and memory: 3 gateways, one exporting a large catalog"
)]
struct Cli {
    /// Services in the large catalog.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=240))]
    services: u16,
    /// Endpoints of every service (both catalogs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=250))]
    per_service: u16,
    /// First exports (empty file -> full catalog) timed per catalog.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    exports: u16,
    /// Changes of one service's endpoint set timed per catalog.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=250))]
    changes: u16,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    isthmus_lab::bench_main("isthmus-catalog-bench", || run(&Cli::parse()))
}

fn run(cli: &Cli) -> Result<()> {
    isthmus_lab::require_root()?;
    // Ctrl-C (and SIGTERM) end the run through the normal path, so `Lab`'s Drop tears down.
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to install the Ctrl-C handler")?;
    let per_service = usize::from(cli.per_service);
    let catalogs = [
        Catalog {
            services: 1,
            per_service,
        },
        Catalog {
            services: usize::from(cli.services),
            per_service,
        },
    ];
    let (exports, changes) = (usize::from(cli.exports), usize::from(cli.changes));
    let load_start = load_average();

    eprintln!("building a 3-cluster control lab…");
    let lab = control_lab(3);
    let pids = [1, 2, 3].map(|i| lab.gateway_pid(i).expect("every gateway was started"));
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        anyhow::ensure!(
            comm.trim() == GATEWAY_BIN,
            "pid {pid} is {:?}, not {GATEWAY_BIN}: its RSS would be someone else's",
            comm.trim()
        );
    }
    std::thread::sleep(SETTLE);
    let mut memory = vec![("nothing exported".to_owned(), rss_all(&pids)?)];

    let mut runs = Vec::new();
    for catalog in catalogs {
        let n = catalog.endpoints();
        eprintln!("catalog of {n} endpoints: {exports} first exports, then {changes} changes…");
        let mut peak = [0; 3];
        let mut initial = Vec::with_capacity(exports);
        for r in 0..exports {
            check_interrupted()?;
            if !runs.is_empty() || r > 0 {
                clear_exports(&lab)?;
            }
            pause(r);
            initial.push(first_export(&lab, &catalog)?);
            if r == 0 {
                std::thread::sleep(SETTLE);
                memory.push((format!("{n} endpoints, first export"), rss_all(&pids)?));
            }
            verify_catalog(&lab, &catalog)?;
            if r == 0 {
                memory.push((format!("{n} endpoints, after the checks"), rss_all(&pids)?));
            }
            peak = max_each(peak, rss_all(&pids)?);
        }
        let mut timings = Vec::with_capacity(changes);
        for k in 1..=changes {
            check_interrupted()?;
            pause(k);
            timings.push(change_one(&lab, &catalog, k)?);
            peak = max_each(peak, rss_all(&pids)?);
        }
        memory.push((format!("{n} endpoints, at the end"), rss_all(&pids)?));
        memory.push((format!("{n} endpoints, highest seen"), peak));
        runs.push(Run {
            catalog,
            initial,
            changes: timings,
        });
    }
    let load_end = load_average();
    drop(lab);
    eprintln!("lab torn down");

    report::print_report(&runs, &memory, [&load_start, &load_end]);
    Ok(())
}

/// Sleeps before export change `k`: 300 ms plus a share of the gateway's file poll period
/// from the golden-ratio sequence, so the renames fall evenly over the poll's phase and
/// neither catalog is timed at a lucky or unlucky one.
fn pause(k: usize) {
    let phase = (k as f64 * 0.618_034).fract();
    std::thread::sleep(Duration::from_millis(300) + EXPORT_FILE_POLL.mul_f64(phase));
}

fn max_each(a: [u64; 3], b: [u64; 3]) -> [u64; 3] {
    [0, 1, 2].map(|i| a[i].max(b[i]))
}

/// A catalog exported by c2: `services` headless services `bench/svc-NNN` of `per_service`
/// endpoints each, at 10.2.(10+s).(1+e) port 7000 (inside c2's 10.2.0.0/16).
#[derive(Clone, Debug)]
struct Catalog {
    services: usize,
    per_service: usize,
}

impl Catalog {
    fn endpoints(&self) -> usize {
        self.services * self.per_service
    }

    fn name(s: usize) -> String {
        format!("bench/svc-{s:03}")
    }

    /// Endpoint `e` of service `s` after change `change` (0: none). Change `k` replaces
    /// `svc-000`'s endpoint 0 with 10.2.9.k, outside every original address, so each change
    /// is a new answer.
    fn endpoint(s: usize, e: usize, change: usize) -> Ipv4Addr {
        if s == 0 && e == 0 && change > 0 {
            return Ipv4Addr::new(10, 2, 9, octet(change));
        }
        Ipv4Addr::new(10, 2, octet(10 + s), octet(1 + e))
    }

    fn service_endpoints(&self, s: usize, change: usize) -> Vec<Ipv4Addr> {
        (0..self.per_service)
            .map(|e| Catalog::endpoint(s, e, change))
            .collect()
    }

    /// The export file after change `change`.
    fn toml(&self, change: usize) -> String {
        let names: Vec<String> = (0..self.services).map(Catalog::name).collect();
        let endpoints: Vec<Vec<Ipv4Addr>> = (0..self.services)
            .map(|s| self.service_endpoints(s, change))
            .collect();
        let services: Vec<(&str, bool, &[Ipv4Addr])> = names
            .iter()
            .zip(&endpoints)
            .map(|(n, eps)| (n.as_str(), true, eps.as_slice()))
            .collect();
        exports_toml(&services)
    }

    /// The A records of service `s` after change `change`, sorted.
    fn answer(&self, s: usize, change: usize) -> Vec<Ipv4Addr> {
        let mut out = self.service_endpoints(s, change);
        out.sort();
        out
    }
}

fn octet(n: usize) -> u8 {
    u8::try_from(n).expect("the CLI bounds keep addresses inside 10.2.0.0/16")
}

/// When one gateway first answered a change, and what probing it cost.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// From the rename of the export file to the end of the first probe that saw the change.
    after: Duration,
    probes: u32,
    probing: Duration,
}

/// One timed change as the DNS of c1, c2 and c3 saw it.
#[derive(Clone, Copy, Debug)]
struct Timing {
    dns: [Seen; 3],
}

impl Timing {
    /// Until the exporter's own DNS answers: file poll wait, parse, catalog update.
    fn exporter(&self) -> Duration {
        self.dns[EXPORTER - 1].after
    }

    fn importer(&self, i: usize) -> Duration {
        self.dns[i - 1].after
    }

    /// Until both importers answer.
    fn all(&self) -> Duration {
        IMPORTERS
            .map(|i| self.importer(i))
            .into_iter()
            .max()
            .unwrap_or_default()
    }

    /// What the change took beyond the exporter: sync to the importers.
    fn propagation(&self) -> Duration {
        self.all().saturating_sub(self.exporter())
    }
}

struct Run {
    catalog: Catalog,
    initial: Vec<Timing>,
    changes: Vec<Timing>,
}

/// Polls `probe` every [`PROBE_EVERY`] until it returns true, failing [`CHANGE_DEADLINE`] after
/// `t0`. A probe error counts as "not yet" (a gateway busy past the query timeout); the last
/// one is quoted if the deadline passes.
fn wait_seen(t0: Instant, what: &str, mut probe: impl FnMut() -> Result<bool>) -> Result<Seen> {
    let (mut probes, mut probing) = (0, Duration::ZERO);
    let mut last_error = None;
    loop {
        check_interrupted()?;
        let start = Instant::now();
        let seen = probe();
        probes += 1;
        probing += start.elapsed();
        match seen {
            Ok(true) => {
                return Ok(Seen {
                    after: t0.elapsed(),
                    probes,
                    probing,
                })
            }
            Ok(false) => {}
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if t0.elapsed() > CHANGE_DEADLINE {
            bail!(
                "{what} not seen within {CHANGE_DEADLINE:?}{}",
                last_error
                    .map(|e| format!(" (last probe error: {e})"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(PROBE_EVERY);
    }
}

/// Times, from `t0`, until every gateway's DNS, asked from its own cluster's pod, gives each
/// `(service, answer)` of `want`. Prints the gateways' logs if one never does.
fn time_dns(lab: &Lab, t0: Instant, what: &str, want: &[(usize, Vec<Ipv4Addr>)]) -> Result<Timing> {
    let seen = std::thread::scope(|s| {
        let probes = [1, 2, 3].map(|i| {
            let pod = lab.pod_ns(i);
            s.spawn(move || {
                enter_netns(&pod)?;
                wait_seen(t0, &format!("{what} in c{i}'s DNS"), || {
                    answers(plan::mesh_addr(i), want)
                })
            })
        });
        let [c1, c2, c3] = probes.map(|p| {
            p.join()
                .unwrap_or_else(|_| bail!("a probe thread panicked"))
        });
        Ok::<_, anyhow::Error>([c1?, c2?, c3?])
    });
    if seen.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        lab.dump_gateway_logs();
    }
    Ok(Timing { dns: seen? })
}

/// Whether `server` answers every `(service, answer)` of `want`.
fn answers(server: Ipv4Addr, want: &[(usize, Vec<Ipv4Addr>)]) -> Result<bool> {
    for (s, answer) in want {
        if query_a(server, &fqdn(&Catalog::name(*s)))? != *answer {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Times the export of `catalog` into an empty file: until each gateway answers the first and
/// the last service (a sync message carries the whole change, so the rest came with them;
/// [`verify_catalog`] checks every service afterwards).
fn first_export(lab: &Lab, catalog: &Catalog) -> Result<Timing> {
    let mut want = vec![(0, catalog.answer(0, 0))];
    let last = catalog.services - 1;
    if last > 0 {
        want.push((last, catalog.answer(last, 0)));
    }
    lab.write_exports(EXPORTER, &catalog.toml(0))?;
    time_dns(lab, Instant::now(), "the first export", &want)
}

/// Times change `k` (`svc-000`'s endpoint 0 replaced) until every gateway's DNS answers the
/// new set; then checks it with `dig` from c1's and c3's pods and checks that both importers
/// hold c2's new watermark.
fn change_one(lab: &Lab, catalog: &Catalog, k: usize) -> Result<Timing> {
    let want = catalog.answer(0, k);
    lab.write_exports(EXPORTER, &catalog.toml(k))?;
    let timing = time_dns(
        lab,
        Instant::now(),
        &format!("change {k}"),
        &[(0, want.clone())],
    )?;
    let name = fqdn(&Catalog::name(0));
    let want: Vec<String> = want.iter().map(Ipv4Addr::to_string).collect();
    for i in IMPORTERS {
        let mut dug = lab.dig(&lab.pod_ns(i), i, &name, "A")?;
        dug.sort_by_key(|a| a.parse::<Ipv4Addr>().ok());
        anyhow::ensure!(dug == want, "after change {k}, dig in c{i} answers {dug:?}");
    }
    check_watermarks(lab, &format!("after change {k}"))?;
    Ok(timing)
}

/// Checks, untimed, what the timing sampled: `tunctl services -o json` of c1 and c3 counts
/// every service and endpoint from c2, both hold c2's current watermark, their DNS answers
/// every service, and `dig` agrees for the last one.
fn verify_catalog(lab: &Lab, catalog: &Catalog) -> Result<()> {
    for i in IMPORTERS {
        let services = lab.tunctl(i, &["-o", "json", "services"])?;
        let services = services
            .as_array()
            .with_context(|| format!("tunctl services on c{i} printed no list"))?;
        let from_c2: u64 = services
            .iter()
            .flat_map(|s| s["per_cluster"].as_array().into_iter().flatten())
            .filter(|p| p["cluster"] == "c2")
            .filter_map(|p| p["total"].as_u64())
            .sum();
        anyhow::ensure!(
            services.len() == catalog.services && from_c2 == catalog.endpoints() as u64,
            "c{i} lists {} services with {from_c2} endpoints from c2, expected {} with {}",
            services.len(),
            catalog.services,
            catalog.endpoints()
        );
        let all: Vec<(usize, Vec<Ipv4Addr>)> = (0..catalog.services)
            .map(|s| (s, catalog.answer(s, 0)))
            .collect();
        let pod = lab.pod_ns(i);
        let answered = std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&pod)?;
                answers(plan::mesh_addr(i), &all)
            })
            .join()
            .unwrap_or_else(|_| bail!("the DNS check thread panicked"))
        })?;
        anyhow::ensure!(answered, "c{i}'s DNS does not answer every service");
        let last = catalog.services - 1;
        let mut dug = lab.dig(&pod, i, &fqdn(&Catalog::name(last)), "A")?;
        dug.sort_by_key(|a| a.parse::<Ipv4Addr>().ok());
        let want: Vec<String> = catalog
            .answer(last, 0)
            .iter()
            .map(Ipv4Addr::to_string)
            .collect();
        anyhow::ensure!(dug == want, "dig in c{i} answers {dug:?} for svc-{last:03}");
    }
    check_watermarks(lab, "after the first export")
}

/// The `control` object of gateway `i`'s `tunctl status -o json`.
fn control(lab: &Lab, i: usize) -> Result<serde_json::Value> {
    let status = lab.tunctl(i, &["-o", "json", "status"])?;
    status
        .get("control")
        .cloned()
        .with_context(|| format!("gateway {i} status has no control section: {status}"))
}

/// Checks that c1 and c3 hold c2's records at c2's own watermark.
fn check_watermarks(lab: &Lab, when: &str) -> Result<()> {
    let own = control(lab, EXPORTER)?["watermark"]
        .as_str()
        .map(str::to_owned)
        .context("c2's status has no watermark")?;
    for i in IMPORTERS {
        let c = control(lab, i)?;
        let held = c["remote_clusters"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["cluster"] == "c2"))
            .and_then(|r| r["watermark"].as_str());
        anyhow::ensure!(
            held == Some(own.as_str()),
            "{when}: c{i} holds c2's records at {held:?}, c2 is at {own}"
        );
    }
    Ok(())
}

/// Empties c2's export file and waits until no gateway lists a service.
fn clear_exports(lab: &Lab) -> Result<()> {
    lab.write_exports(EXPORTER, "")?;
    let t0 = Instant::now();
    for i in 1..=3 {
        wait_seen(t0, &format!("an empty catalog in c{i}"), || {
            Ok(control(lab, i)?["services"].as_u64() == Some(0))
        })?;
    }
    Ok(())
}

/// VmRSS of each process, in KiB.
fn rss_all(pids: &[u32; 3]) -> Result<[u64; 3]> {
    let mut out = [0; 3];
    for (slot, pid) in out.iter_mut().zip(pids) {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        *slot = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))?;
    }
    Ok(out)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
