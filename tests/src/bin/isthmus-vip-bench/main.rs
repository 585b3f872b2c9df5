//! `isthmus-vip-bench`: what a clusterset VIP costs on the data path, and what a large catalog
//! costs the route agent.
//!
//! One node, one client pod and two backend pods on it (no tunnel, so the translation is what
//! shows), the route agent attached to every pod veth. In one run, interleaved, the client
//! reaches the backends through:
//!
//! - (a) `direct`: the backends' own addresses;
//! - (b) `ebpf`: a clusterset VIP, translated by the agent's tc programs;
//! - (c) `iptables`: a ClusterIP translated by the rule set kube-proxy writes (nat PREROUTING →
//!   KUBE-SERVICES → KUBE-SVC with `-m statistic --mode random` → KUBE-SEP with DNAT; conntrack
//!   translates the replies), loaded into the node namespace for these runs only.
//!
//! For each: TCP connections per second (`isthmus-lab-app rate`), connect+greeting latency
//! (`isthmus-lab-app probe`), iperf3 throughput. Then the agent: the time to program a catalog
//! of 10,000 endpoints and to apply a change of one endpoint in it, and its RSS.
//!
//! Prints figures, never judges them beyond stating whether the bar holds (see
//! `bench/README.md`). Needs root; the lab is torn down on every exit, Ctrl-C included.

#![forbid(unsafe_code)]

mod agent_bench;
mod feed;
mod report;
mod setup;
mod traffic;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::Parser;

use setup::Bench;
use traffic::Path;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "isthmus-vip-bench",
    about = "Clusterset VIP data path (direct vs eBPF vs kube-proxy iptables) and route agent \
             catalog cost"
)]
pub struct Cli {
    /// Rounds: for each kind of measurement, each round runs every path once, in a rotated
    /// order. Figures are min/median/max over them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Seconds of each connection-rate run.
    #[arg(long, default_value_t = 2.0)]
    rate_secs: f64,
    /// Concurrent connecting clients of the rate runs, comma-separated; each level is split
    /// over two client processes, so it must be even.
    #[arg(long, value_delimiter = ',', default_values_t = [2u32, 16])]
    concurrency: Vec<u32>,
    /// Seconds of each iperf3 run (after one omitted second of slow start).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=600))]
    iperf_secs: u32,
    /// Connections timed per path and round for the latency figures (back to back).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    probes: u32,
    /// Also measure (a) and (b) with kube-proxy's rules loaded (conntrack on in the node
    /// namespace, as on a node where kube-proxy also runs): rows `direct+kp` and `ebpf+kp`.
    #[arg(long)]
    kube_proxy_rows: bool,
    /// Paths to run, comma-separated (direct, ebpf, iptables; direct+kp, ebpf+kp with
    /// --kube-proxy-rows). Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the agent's catalog timings and RSS.
    #[arg(long)]
    no_catalog: bool,
    /// Skip the traffic measurements (catalog timings only).
    #[arg(long)]
    no_traffic: bool,
    /// Catalog programmings timed per catalog shape (each followed by its removal).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    loads: u32,
    /// Changes of one endpoint timed per catalog shape.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    changes: u32,
    /// Endpoints of the large catalogs (shapes 1 × N and sqrt(N) × sqrt(N)).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(4..=60_000))]
    endpoints: u32,
    /// Niceness of the bench's clients and servers (e.g. -10): on a machine busy with other
    /// work, a negative value shortens the scheduling waits it adds to the figures (softirq
    /// work deferred to ksoftirqd still waits). The agent keeps its own.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
    /// Keep the lab after the run until Enter is pressed (to look at it, or run `perf`).
    #[arg(long)]
    hold: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    isthmus_lab::bench_main("isthmus-vip-bench", || run(&Cli::parse()))
}

fn run(cli: &Cli) -> Result<()> {
    isthmus_lab::require_root()?;
    let paths = selected_paths(cli)?;
    if let Some(c) = cli.concurrency.iter().find(|c| **c < 2 || **c % 2 == 1) {
        bail!("--concurrency {c}: every level is split over two clients, so it must be even");
    }
    anyhow::ensure!(
        cli.rate_secs.is_finite() && cli.rate_secs > 0.0,
        "--rate-secs must be positive"
    );
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("failed to install the Ctrl-C handler")?;
    let load_start = load_average();

    eprintln!("building the lab: one node, a client pod, two backend pods, the route agent…");
    let bench = Bench::build(cli.nice)?;
    let checks = bench.check_paths(&paths)?;

    let catalog = if cli.no_catalog {
        None
    } else {
        eprintln!("agent: catalogs of {} endpoints…", cli.endpoints);
        Some(agent_bench::run(&bench, cli)?)
    };
    let traffic = if cli.no_traffic {
        None
    } else {
        Some(traffic::run(&bench, cli, &paths)?)
    };
    let load_end = load_average();
    if cli.hold {
        eprintln!(
            "holding the lab (client {}, node {}); press Enter to tear it down",
            bench.client,
            bench.node()
        );
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    drop(bench);
    eprintln!("lab torn down");

    let env = report::Environment {
        load: [load_start, load_end],
        cli: cli.clone(),
    };
    report::print(&env, &checks, traffic.as_ref(), catalog.as_ref());
    Ok(())
}

fn selected_paths(cli: &Cli) -> Result<Vec<Path>> {
    let mut all = vec![Path::Direct, Path::Ebpf, Path::Iptables];
    if cli.kube_proxy_rows {
        all.extend([Path::DirectKp, Path::EbpfKp]);
    }
    if cli.only.is_empty() {
        return Ok(all);
    }
    let mut out = Vec::new();
    for name in &cli.only {
        let path = all
            .iter()
            .copied()
            .find(|p| p.name() == name.trim())
            .with_context(|| {
                format!(
                    "--only {name}: not one of {}",
                    all.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                )
            })?;
        if !out.contains(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
