//! `isthmus-lab run`: builds a namespace lab of N clusters, starts a real `isthmus-gateway` in
//! each, proves every pod reaches every other cluster's pod through the tunnels, prints the
//! result and `tunctl peers`, and tears everything down. Exits non-zero if anything failed.
//!
//! By default (`--keys identity`) the gateways are the whole product: SVIDs from `tunctl pki`,
//! each gateway given only one seed (c1's is c2, every other's is c1) and learning the rest
//! from signed member records, with the control plane on; cluster 2 exports a headless demo
//! service that cluster 1's DNS must answer and `demo/api`, whose clusterset VIP must carry a
//! connection from cluster 1's pod to c2's server through the route agents that run on every
//! node and gateway node. `--keys static` runs the plain WireGuard full mesh.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use isthmus_lab::control::{exports_toml, fqdn};
use isthmus_lab::{plan, vip, wait_for, Lab, Probe, Serve, GATEWAY_BIN, TUNCTL_BIN};

/// How long every pod pair gets to start answering once all gateways are up: the first
/// packet of a pair waits for a WireGuard handshake.
const PING_DEADLINE: Duration = Duration::from_secs(10);
/// The port of demo/api, the service c2 exports with a clusterset VIP.
const API_PORT: u16 = 7000;

#[derive(Parser)]
#[command(name = "isthmus-lab", about = "Namespace lab for Isthmus gateways")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab, start a gateway per cluster, check pod-to-pod reachability, tear down.
    Run {
        /// Number of clusters.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=200))]
        clusters: u8,
        /// Keep the lab up after the checks until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// `identity`: SVIDs, one seed per gateway, membership and control plane; `static`:
        /// WireGuard keys in every file (full mesh by configuration).
        #[arg(long, value_enum, default_value_t = Keys::Identity)]
        keys: Keys,
    },
    /// Remove labs left behind by runs that were killed.
    Sweep,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Keys {
    Identity,
    Static,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    isthmus_lab::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run {
            clusters,
            keep,
            keys,
        } => run(usize::from(clusters), keep, keys),
        Cmd::Sweep => sweep(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("isthmus-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sweep() -> Result<bool> {
    let removed = Lab::sweep_stale(plan::DEFAULT_PREFIX)?;
    println!("removed {} stale namespaces", removed.len());
    for ns in removed {
        println!("  {ns}");
    }
    Ok(true)
}

/// Returns whether every check passed.
fn run(clusters: usize, keep: bool, keys: Keys) -> Result<bool> {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // Ctrl-C (and SIGTERM) end the run through the normal path, so `Lab`'s Drop tears down.
    ctrlc::set_handler(move || {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(());
    })
    .context("failed to install the Ctrl-C handler")?;

    // The gateway and tunctl: $ISTHMUS_BIN_DIR, else next to this binary (`default_bin_dir`).
    let lab = Lab::builder()
        .clusters(clusters)
        .build()
        .context("failed to build the lab")?;
    lab.binary(GATEWAY_BIN)?;
    lab.binary(TUNCTL_BIN)?;
    println!(
        "lab {} up: {clusters} clusters, files in {}",
        lab.id(),
        lab.dir().display()
    );

    if keys == Keys::Identity {
        let svids = lab.issue_gateway_svids().context("failed to issue SVIDs")?;
        lab.write_exports(
            2,
            &exports_toml(&[
                ("demo/echo", true, &[plan::pod_addr(2)]),
                ("demo/api", false, &[plan::pod_addr(2)]),
            ]),
        )?;
        // c2's pod serves demo/api: it answers every connection with its cluster's name.
        lab.start_server(
            &lab.pod_ns(2),
            "c2-api",
            &Serve::new("c2").both(SocketAddr::from((plan::pod_addr(2), API_PORT))),
        )?;
        lab.write_seeded_configs_with(
            &svids,
            |i| if i == 1 { 2 } else { 1 },
            None,
            vip::add_watch_listener,
        )?;
        println!("SVIDs issued; each gateway is given one seed (c1: c2, others: c1)");
    }
    for i in 1..=clusters {
        check_interrupted()?;
        lab.start_gateway(i)
            .with_context(|| format!("failed to start the gateway of cluster {i}"))?;
        println!(
            "gateway c{i} up in {} (wan {}, mesh {})",
            lab.gw_ns(i),
            plan::wan_addr(i),
            plan::mesh_addr(i)
        );
    }

    let results = ping_matrix(&lab)?;
    print_matrix(clusters, &results);
    let mut pings_ok = results.iter().all(|r| r.ok);
    if keys == Keys::Identity {
        pings_ok &= check_control(&lab, clusters)?;
        pings_ok &= check_vip(&lab, clusters)?;
    }

    println!("\ntunctl peers (cluster 1):");
    let tunctl_ok = match lab.tunctl_text(1, &["peers"]) {
        Ok(table) => {
            print!("{table}");
            true
        }
        Err(e) => {
            println!("tunctl failed: {e:#}");
            false
        }
    };

    let ok = pings_ok && tunctl_ok;
    if !ok {
        eprintln!("\nsome checks failed; gateway logs follow");
        lab.dump_gateway_logs();
        lab.dump_agent_logs();
    }
    if keep {
        println!("\nlab kept up; namespaces:");
        for ns in lab.namespaces() {
            println!("  {ns}");
        }
        println!(
            "e.g. `ip netns exec {} ping {}`",
            lab.pod_ns(1),
            plan::pod_addr(2)
        );
        println!("press Ctrl-C to tear down");
        if !INTERRUPTED.load(Ordering::SeqCst) {
            let _ = stop_rx.recv();
        }
    }
    drop(lab);
    println!(
        "\n{}",
        if ok {
            "lab: all checks passed"
        } else {
            "lab: FAILED"
        }
    );
    Ok(ok)
}

/// Every gateway learned every other as a member and syncs with it; cluster 1's DNS answers
/// the service cluster 2 exports. Prints `tunctl services` of cluster 1.
fn check_control(lab: &Lab, clusters: usize) -> Result<bool> {
    let start = Instant::now();
    let meshed = wait_for(
        || (1..=clusters).all(|i| lab.members_of(i).len() == clusters - 1 && lab.control_synced(i)),
        PING_DEADLINE,
    );
    println!(
        "membership: {} ({} members and sync sessions per gateway, {:?})",
        if meshed { "full mesh" } else { "INCOMPLETE" },
        clusters - 1,
        start.elapsed()
    );
    let name = fqdn("demo/echo");
    let want = vec![plan::pod_addr(2).to_string()];
    let answered = wait_for(
        || lab.dig(&lab.pod_ns(1), 1, &name, "A").ok() == Some(want.clone()),
        PING_DEADLINE,
    );
    println!(
        "dns: {name} from c1's pod -> {}",
        if answered {
            want.join(", ")
        } else {
            "NO ANSWER".to_string()
        }
    );
    println!("\ntunctl services (cluster 1):");
    match lab.tunctl_text(1, &["services"]) {
        Ok(table) => print!("{table}"),
        Err(e) => println!("tunctl failed: {e:#}"),
    }
    Ok(meshed && answered)
}

/// Route agents on every node and gateway node; a connection from c1's pod to demo/api, which
/// c2 exports, through its clusterset VIP. Prints the backends that answered and the agent's
/// status on c1's node.
fn check_vip(lab: &Lab, clusters: usize) -> Result<bool> {
    for i in 1..=clusters {
        check_interrupted()?;
        vip::start_agents(lab, i, true)
            .with_context(|| format!("failed to start the route agents of cluster {i}"))?;
    }
    let node1 = vip::node_agent(1);
    let (programmed, _) = lab.wait_agent(&node1, PING_DEADLINE, |s| {
        s.services
            .iter()
            .any(|x| x.name == "api" && !x.backends.is_empty())
    });
    println!(
        "\nroute agents: running on {clusters} nodes and {clusters} gateway nodes; demo/api {}",
        if programmed {
            "programmed"
        } else {
            "NOT PROGRAMMED"
        }
    );
    let vip = match lab.dig(&lab.pod_ns(1), 1, &fqdn("demo/api"), "A") {
        Ok(a) => a.first().and_then(|v| v.parse::<std::net::Ipv4Addr>().ok()),
        Err(e) => {
            println!("dns: {e:#}");
            None
        }
    };
    let Some(vip) = vip else {
        println!("dns: {} from c1's pod -> NO ANSWER", fqdn("demo/api"));
        return Ok(false);
    };
    println!(
        "dns: {} from c1's pod -> {vip} (clusterset VIP)",
        fqdn("demo/api")
    );
    let target = SocketAddr::from((vip, API_PORT));
    let report = lab.probe(&lab.pod_ns(1), &Probe::tcp(target).count(5))?;
    for a in &report.attempts {
        match (&a.answer, &a.error) {
            (Some(answer), _) => println!(
                "vip: c1's pod -> {target}: answered by {answer} in {:.1} ms",
                a.latency_us.unwrap_or(0) as f64 / 1000.0
            ),
            (None, e) => println!(
                "vip: c1's pod -> {target}: FAILED {}",
                e.as_deref().unwrap_or("")
            ),
        }
    }
    println!("\nisthmus-route-agent status (c1's node):");
    match lab.agent_status_text(&node1) {
        Ok(t) => print!("{t}"),
        Err(e) => println!("status failed: {e:#}"),
    }
    Ok(programmed && report.summary.ok == 5 && report.count("c2") == 5)
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

struct PairResult {
    from: usize,
    to: usize,
    ok: bool,
    elapsed: Duration,
    error: Option<String>,
}

/// Pings from every pod to every other cluster's pod, all pairs at once, each retrying until it
/// gets a reply or [`PING_DEADLINE`] passes.
fn ping_matrix(lab: &Lab) -> Result<Vec<PairResult>> {
    let n = lab.clusters();
    let pairs: Vec<(usize, usize)> = (1..=n)
        .flat_map(|from| {
            (1..=n)
                .filter(move |&to| to != from)
                .map(move |to| (from, to))
        })
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|&(from, to)| s.spawn(move || ping_pair(lab, from, to)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ping thread panicked"))
            .collect()
    });
    check_interrupted()?;
    Ok(results)
}

fn ping_pair(lab: &Lab, from: usize, to: usize) -> PairResult {
    let start = Instant::now();
    let ns = lab.pod_ns(from);
    let mut error = None;
    while start.elapsed() < PING_DEADLINE && !INTERRUPTED.load(Ordering::SeqCst) {
        match lab.ping(&ns, plan::pod_addr(to), 1) {
            Ok(1..) => {
                return PairResult {
                    from,
                    to,
                    ok: true,
                    elapsed: start.elapsed(),
                    error: None,
                }
            }
            Ok(0) => error = Some("no reply".to_owned()),
            Err(e) => {
                error = Some(format!("{e:#}"));
                // An error (not a lost reply) returns at once; do not spin on it.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    PairResult {
        from,
        to,
        ok: false,
        elapsed: start.elapsed(),
        error,
    }
}

fn print_matrix(n: usize, results: &[PairResult]) {
    println!("\npod -> pod ping (row: from, column: to; seconds to first reply)");
    print!("{:>6}", "");
    for to in 1..=n {
        print!("{:>8}", format!("c{to}"));
    }
    println!();
    for from in 1..=n {
        print!("{:>6}", format!("c{from}"));
        for to in 1..=n {
            let cell = match results.iter().find(|r| r.from == from && r.to == to) {
                None => "-".to_owned(),
                Some(r) if r.ok => format!("{:.1}s", r.elapsed.as_secs_f64()),
                Some(_) => "FAIL".to_owned(),
            };
            print!("{cell:>8}");
        }
        println!();
    }
    for r in results.iter().filter(|r| !r.ok) {
        println!(
            "  c{} ({}) -> c{} ({}): {}",
            r.from,
            plan::pod_addr(r.from),
            r.to,
            plan::pod_addr(r.to),
            r.error.as_deref().unwrap_or("interrupted")
        );
    }
}
