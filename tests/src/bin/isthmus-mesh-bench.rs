//! `isthmus-mesh-bench`: how a large mesh forms and what it costs once formed.
//!
//! Builds a seeded lab of N clusters (SVIDs; c1's only peer is c2, every other gateway's is
//! c1; `[members]` on, as `isthmus-lab run` writes it), spawns every gateway at one instant,
//! then reports:
//!
//! 1. the time to full mesh from the instant the last gateway was spawned: when every gateway
//!    first had all N-1 members, all N-1 handshakes, all N-1 sync sessions in step, and all of
//!    them in one round of `tunctl status`;
//! 2. a sample of pod-to-pod pings (each pod to the next cluster's);
//! 3. a watch of `--watch-secs`: "cluster down" and sync-session-closed log lines, remote
//!    clusters seen not `up`, rounds short of the full mesh;
//! 4. the gateways' idle cost over `--idle-secs` with nothing asked of them: CPU (utime +
//!    stime from `/proc/<pid>/stat`, as % of one core) and VmRSS, median and max over the
//!    gateways.
//!
//! The lab's own `tunctl`s and pings go through a bounded pool (see `isthmus_lab::pool`).
//! Prints figures, never judges them (see `bench/README.md`): it exits non-zero only when the
//! mesh could not be measured at all. Needs root; the lab is torn down on every exit, Ctrl-C
//! included.

#![forbid(unsafe_code)]

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use isthmus_lab::mesh::{Formation, MeshWatch, SESSION_OPEN_LOG};
use isthmus_lab::{Lab, Pool, GATEWAY_BIN};

/// Sweeping stale bench labs never touches the tests' labs.
const LAB_PREFIX: &str = "mb";
/// A round of `tunctl status` every this often during the watch.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// Time for every pod pair of the sample to answer.
const PING_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(
    name = "isthmus-mesh-bench",
    about = "Time to full mesh, stability and idle cost of N gateways started at one instant"
)]
struct Cli {
    /// Clusters, one gateway each.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(2..=200))]
    clusters: u8,
    /// Seconds the formed mesh is watched for clusters marked down and sessions closed.
    #[arg(long, default_value_t = 300)]
    watch_secs: u64,
    /// Seconds of the idle window in which the gateways' CPU time is read.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    idle_secs: u64,
    /// Seconds the mesh gets to form; the watch and idle figures are taken either way.
    #[arg(long, default_value_t = 300)]
    mesh_timeout: u64,
    /// `[control] down_after` in seconds (default 3): the tunnel's liveness probes go to each
    /// peer every third of it, so it sets most of the idle cost.
    #[arg(long)]
    down_after: Option<f64>,
    /// Concurrent subprocesses (tunctl, ping) the bench runs at most; default two per core,
    /// at most 8.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
    workers: Option<u8>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    isthmus_lab::bench_main("isthmus-mesh-bench", || run(&Cli::parse()))
}

fn run(cli: &Cli) -> Result<()> {
    isthmus_lab::require_root()?;
    // Ctrl-C (and SIGTERM) end the run through the normal path, so `Lab`'s Drop tears down.
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to install the Ctrl-C handler")?;
    let n = usize::from(cli.clusters);
    let pool = cli
        .workers
        .map_or_else(Pool::default, |w| Pool::new(usize::from(w)));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    println!(
        "# isthmus-mesh-bench: {n} clusters, seeded (c1: c2, others: c1), [members] on; \
         down_after {} s; {cores} CPUs, load {} at the start, {} lab workers",
        cli.down_after.unwrap_or(3.0),
        load_average(),
        pool.workers()
    );

    let t = Instant::now();
    let lab = Lab::builder()
        .prefix(LAB_PREFIX)
        .clusters(n)
        .build()
        .context("failed to build the lab")?;
    lab.binary(GATEWAY_BIN)?;
    let svids = lab.issue_gateway_svids().context("failed to issue SVIDs")?;
    lab.write_seeded_configs_with(
        &svids,
        |i| if i == 1 { 2 } else { 1 },
        None,
        |_, extra| {
            if let (Some(d), Some(toml::Value::Table(control))) =
                (cli.down_after, extra.get_mut("control"))
            {
                control.insert("down_after".into(), d.into());
            }
        },
    )?;
    eprintln!(
        "lab {} built and SVIDs issued in {:.1} s",
        lab.id(),
        t.elapsed().as_secs_f64()
    );
    check_interrupted()?;

    let all: Vec<usize> = (1..=n).collect();
    let started = lab
        .start_gateways_together(&all)
        .context("failed to start the gateways")?;
    let sockets_up = started.elapsed();
    let pids: Vec<u32> = all
        .iter()
        .map(|&i| lab.gateway_pid(i).context("a gateway was never started"))
        .collect::<Result<_>>()?;
    for &pid in &pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        anyhow::ensure!(
            comm.trim() == GATEWAY_BIN,
            "pid {pid} is {:?}, not {GATEWAY_BIN}: its CPU and RSS would be someone else's",
            comm.trim()
        );
    }

    let formation = lab.wait_full_mesh(
        &pool,
        true,
        started,
        Duration::from_secs(cli.mesh_timeout),
        interrupted,
    );
    check_interrupted()?;
    if formation.last.views.iter().all(Result::is_err) {
        bail!(
            "no gateway answered tunctl status: {}",
            formation.last.summary()
        );
    }
    print_formation(n, sockets_up, &formation);

    let ring: Vec<(usize, usize)> = (1..=n).map(|i| (i, i % n + 1)).collect();
    let pings = lab.ping_pairs(&pool, &ring, PING_DEADLINE, interrupted);
    check_interrupted()?;
    let answered = pings.iter().filter(|p| p.answered.is_some()).count();
    println!(
        "\n## pod -> pod pings, each pod to the next cluster's: {answered}/{} answered",
        pings.len()
    );
    for p in pings.iter().filter(|p| p.answered.is_none()).take(10) {
        println!(
            "  c{} -> c{}: {}",
            p.from,
            p.to,
            p.error.as_deref().unwrap_or("?")
        );
    }

    // The watch counts the gateways' INFO lines; gateways that inherited a quieter
    // ISTHMUS_LOG would make those counts blind.
    let info_logged = (1..=n)
        .filter(|&i| {
            lab.gateway_stderr(i)
                .lines()
                .any(|l| l.contains(SESSION_OPEN_LOG))
        })
        .count();
    if info_logged < n {
        println!(
            "\nnote: only {info_logged} of {n} gateways logged \"{SESSION_OPEN_LOG}\": with \
             ISTHMUS_LOG quieter than info the session counts below see nothing"
        );
    }

    let watch = lab.watch_mesh(
        &pool,
        true,
        Duration::from_secs(cli.watch_secs),
        WATCH_EVERY,
        interrupted,
    );
    check_interrupted()?;
    print_watch(&watch);

    let idle = Duration::from_secs(cli.idle_secs);
    let cpu = idle_cpu(&pids, idle)?;
    check_interrupted()?;
    let rss = pids
        .iter()
        .map(|&p| rss_kib(p))
        .collect::<Result<Vec<_>>>()?;
    print_idle(idle, &cpu, &rss);
    println!("\nload at the end: {}", load_average());
    Ok(())
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not reached".to_owned(), |d| {
        format!("{:.1}", d.as_secs_f64())
    })
}

fn print_formation(n: usize, sockets_up: Duration, f: &Formation) {
    println!(
        "\n## time to full mesh, s from the instant the last of {n} gateways was spawned \
         (every admin socket was up after {:.1} s)",
        sockets_up.as_secs_f64()
    );
    let others = n - 1;
    let rows = [
        (format!("every gateway has all {others} members"), f.members),
        (
            format!("all {others} handshakes done everywhere"),
            f.handshakes,
        ),
        (
            format!("all {others} sync sessions in step everywhere"),
            f.synced,
        ),
        ("full mesh (all three in one round)".to_owned(), f.full),
    ];
    for (what, at) in rows {
        println!("{what:<46} {:>12}", secs(at));
    }
    println!(
        "({} rounds of tunctl status, the longest {:.2} s: the resolution of these figures)",
        f.rounds,
        f.longest_round.as_secs_f64()
    );
    if f.full.is_none() {
        println!("last round: {}", f.last.summary());
    }
}

fn print_watch(w: &MeshWatch) {
    println!(
        "\n## watch of the mesh: {:.0} s, a round of tunctl status every {} s ({} rounds)",
        w.duration.as_secs_f64(),
        WATCH_EVERY.as_secs(),
        w.samples
    );
    let rows = [
        ("\"cluster down\" log lines", w.cluster_down.len()),
        ("sync sessions closed or ended", w.sessions_lost.len()),
        ("sync sessions opened", w.sessions_opened.len()),
        ("remote clusters seen not up (per round)", w.not_up.len()),
        ("rounds short of the full mesh", w.incomplete.len()),
    ];
    for (what, count) in rows {
        println!("{what:<46} {count:>12}");
    }
    if !w.quiet() {
        println!("{}", w.report());
    }
}

/// Each gateway's CPU time over `window` as % of one core.
fn idle_cpu(pids: &[u32], window: Duration) -> Result<Vec<f64>> {
    let hz = clock_ticks();
    let before = pids
        .iter()
        .map(|&p| cpu_ticks(p))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let deadline = start + window;
    while Instant::now() < deadline && !interrupted() {
        std::thread::sleep(Duration::from_millis(200).min(deadline - Instant::now()));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = pids
        .iter()
        .map(|&p| cpu_ticks(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / hz / elapsed * 100.0)
        .collect())
}

fn print_idle(window: Duration, cpu: &[f64], rss_kib: &[u64]) {
    println!(
        "\n## idle gateways: {} s with nothing asked of them",
        window.as_secs()
    );
    let rss_mib: Vec<f64> = rss_kib.iter().map(|&k| k as f64 / 1024.0).collect();
    println!("{:<46} {:>8} {:>8} {:>8}", "", "median", "max", "sum");
    for (what, values) in [
        ("CPU, % of one core", cpu),
        ("VmRSS, MiB", rss_mib.as_slice()),
    ] {
        let (median, max) = median_max(values);
        let sum: f64 = values.iter().sum();
        println!("{what:<46} {median:>8.2} {max:>8.2} {sum:>8.1}");
    }
}

fn median_max(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    };
    (median, v.last().copied().unwrap_or(f64::NAN))
}

/// utime + stime of `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("no utime/stime in {path}: {stat}"))
}

/// Fields 14 and 15 of proc(5) `stat`, counted after the parenthesised command name (which may
/// hold spaces).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)` through getconf(1); 100 (Linux's USER_HZ) if that fails.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|&hz| hz > 0.0)
        .unwrap_or(100.0)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (isthmus gw) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    170 30 0 0 20 0 9 0 1234 56789 321 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(200));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
    }
}
