//! `isthmus-lab run`: builds a namespace lab of N clusters, starts a real `isthmus-gateway` in
//! each, proves every pod reaches every other cluster's pod through the tunnels, prints the
//! result and `tunctl peers`, and tears everything down. Exits non-zero if anything failed.
//!
//! By default (`--keys identity`) the gateways are the whole product: SVIDs from `tunctl pki`,
//! each gateway given only one seed (c1's is c2, every other's is c1) and learning the rest
//! from signed member records, with the control plane on; cluster 2 exports a headless demo
//! service that cluster 1's DNS must answer and `demo/api`, whose clusterset VIP must carry a
//! connection from cluster 1's pod to c2's server through the route agents that run on every
//! node and gateway node (of the first 8 clusters). `--keys static` runs the plain WireGuard
//! full mesh.
//!
//! The time to full mesh is measured from the instant the last gateway was started (with
//! `--together`, all are spawned at one instant before any is waited for) until every gateway
//! has every other as a member, a completed handshake and a sync session in step. The lab's own
//! subprocesses (`tunctl`, `ping`, `dig`) run through a bounded pool, so a lab of 64 clusters
//! measures the mesh rather than a storm of its own processes.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use isthmus_lab::control::{exports_toml, fqdn};
use isthmus_lab::mesh::{all_pairs, PingResult};
use isthmus_lab::{plan, vip, wait_for, Lab, Pool, Probe, Serve, GATEWAY_BIN, TUNCTL_BIN};

/// How long the pod pairs get to start answering once the mesh is formed (the first packet of
/// a pair may wait for a WireGuard handshake), plus [`PING_COST`] per pair per worker.
const PING_DEADLINE: Duration = Duration::from_secs(10);
/// What one ping (`ip netns exec` + `ping`) costs a worker when it is answered at once.
const PING_COST: Duration = Duration::from_millis(25);
/// How long DNS and the route agents get to answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Above this many clusters the ping matrix is summarised rather than printed.
const MATRIX_MAX_CLUSTERS: usize = 12;
/// Route agents run on at most this many clusters (from c1). Every agent attaches its socket
/// programs to the same cgroup (namespaces do not separate cgroups), and the kernel allows 64
/// programs per cgroup and hook (`BPF_CGROUP_MAX_PROGS`); two agents per cluster must leave
/// room for other labs on the machine. The VIP check needs only c1's and c2's.
const VIP_AGENT_CLUSTERS: usize = 8;
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
        /// Spawn every gateway at one instant, then wait for all (default: one after another,
        /// each waited for).
        #[arg(long)]
        together: bool,
        /// Seconds the mesh gets to form, from the instant the last gateway was started.
        #[arg(long, default_value_t = 60)]
        mesh_timeout: u64,
        /// Concurrent subprocesses (tunctl, ping, dig) the lab runs at most; default two per
        /// core, at most 8.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
        workers: Option<u8>,
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
            together,
            mesh_timeout,
            workers,
        } => run(&RunOpts {
            clusters: usize::from(clusters),
            keep,
            keys,
            together,
            mesh_timeout: Duration::from_secs(mesh_timeout),
            pool: workers.map_or_else(Pool::default, |w| Pool::new(usize::from(w))),
        }),
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

struct RunOpts {
    clusters: usize,
    keep: bool,
    keys: Keys,
    together: bool,
    mesh_timeout: Duration,
    pool: Pool,
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Returns whether every check passed.
fn run(opts: &RunOpts) -> Result<bool> {
    let RunOpts {
        clusters,
        keep,
        keys,
        ..
    } = *opts;
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
    let last_started = start_gateways(&lab, opts.together)?;

    let control = keys == Keys::Identity;
    let formation = lab.wait_full_mesh(
        &opts.pool,
        control,
        last_started,
        opts.mesh_timeout,
        interrupted,
    );
    check_interrupted()?;
    let meshed = formation.full.is_some();
    println!(
        "\nmesh of {clusters} ({}; {} lab workers): {}",
        if control {
            "members, handshakes and sync sessions"
        } else {
            "handshakes"
        },
        opts.pool.workers(),
        match formation.full {
            Some(t) => format!(
                "full {:.1} s after the last gateway started",
                t.as_secs_f64()
            ),
            None => format!("NOT FULL within {:?}", opts.mesh_timeout),
        }
    );
    println!("{}", formation.report());

    let results = ping_matrix(&lab, &opts.pool)?;
    print_matrix(clusters, &results);
    let mut pings_ok = meshed && results.iter().all(|r| r.answered.is_some());
    if control {
        pings_ok &= check_control(&lab)?;
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

/// Cluster 1's DNS answers the service cluster 2 exports (membership and sync sessions were
/// checked with the mesh). Prints `tunctl services` of cluster 1.
fn check_control(lab: &Lab) -> Result<bool> {
    let name = fqdn("demo/echo");
    let want = vec![plan::pod_addr(2).to_string()];
    let answered = wait_for(
        || lab.dig(&lab.pod_ns(1), 1, &name, "A").ok() == Some(want.clone()),
        ANSWER_DEADLINE,
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
    Ok(answered)
}

/// Route agents on every node and gateway node (of the first [`VIP_AGENT_CLUSTERS`]); a
/// connection from c1's pod to demo/api, which c2 exports, through its clusterset VIP. Prints
/// the backends that answered and the agent's status on c1's node.
fn check_vip(lab: &Lab, clusters: usize) -> Result<bool> {
    let with_agents = clusters.min(VIP_AGENT_CLUSTERS);
    for i in 1..=with_agents {
        check_interrupted()?;
        vip::start_agents(lab, i, true)
            .with_context(|| format!("failed to start the route agents of cluster {i}"))?;
    }
    let node1 = vip::node_agent(1);
    let (programmed, _) = lab.wait_agent(&node1, ANSWER_DEADLINE, |s| {
        s.services
            .iter()
            .any(|x| x.name == "api" && !x.backends.is_empty())
    });
    println!(
        "\nroute agents: running on {with_agents} nodes and {with_agents} gateway nodes{}; demo/api {}",
        if with_agents < clusters {
            format!(" (c1..c{with_agents} of {clusters}: the kernel allows 64 programs per cgroup)")
        } else {
            String::new()
        },
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

/// Starts every gateway, one after another (each waited for) or all at one instant; returns
/// the instant the last one was started.
fn start_gateways(lab: &Lab, together: bool) -> Result<Instant> {
    let clusters: Vec<usize> = (1..=lab.clusters()).collect();
    if together {
        let last = lab
            .start_gateways_together(&clusters)
            .context("failed to start the gateways")?;
        println!(
            "{} gateways spawned at one instant; every admin socket up {:.1} s later",
            clusters.len(),
            last.elapsed().as_secs_f64(),
        );
        return Ok(last);
    }
    let mut last = Instant::now();
    for &i in &clusters {
        check_interrupted()?;
        last = Instant::now();
        lab.start_gateway(i)
            .with_context(|| format!("failed to start the gateway of cluster {i}"))?;
        println!(
            "gateway c{i} up in {} (wan {}, mesh {})",
            lab.gw_ns(i),
            plan::wan_addr(i),
            plan::mesh_addr(i)
        );
    }
    Ok(last)
}

/// Pings from every pod to every other cluster's pod through the lab's pool, each pair retried
/// until it answers or the deadline ([`PING_DEADLINE`] plus [`PING_COST`] per pair and worker)
/// passes.
fn ping_matrix(lab: &Lab, pool: &Pool) -> Result<Vec<PingResult>> {
    let pairs = all_pairs(lab.clusters());
    let per_worker = u32::try_from(pairs.len().div_ceil(pool.workers())).unwrap_or(u32::MAX);
    let results = lab.ping_pairs(
        pool,
        &pairs,
        PING_DEADLINE + PING_COST * per_worker,
        interrupted,
    );
    check_interrupted()?;
    Ok(results)
}

fn print_matrix(n: usize, results: &[PingResult]) {
    let cell = |r: &PingResult| {
        r.answered
            .map_or("FAIL".to_owned(), |t| format!("{:.1}s", t.as_secs_f64()))
    };
    if n <= MATRIX_MAX_CLUSTERS {
        println!("\npod -> pod ping (row: from, column: to; seconds to first reply)");
        print!("{:>6}", "");
        for to in 1..=n {
            print!("{:>8}", format!("c{to}"));
        }
        println!();
        for from in 1..=n {
            print!("{:>6}", format!("c{from}"));
            for to in 1..=n {
                let text = results
                    .iter()
                    .find(|r| r.from == from && r.to == to)
                    .map_or("-".to_owned(), cell);
                print!("{text:>8}");
            }
            println!();
        }
    } else {
        let mut times: Vec<Duration> = results.iter().filter_map(|r| r.answered).collect();
        times.sort();
        let secs =
            |t: Option<&Duration>| t.map_or("-".to_owned(), |t| format!("{:.1}", t.as_secs_f64()));
        println!(
            "\npod -> pod ping: {}/{} pairs answered; seconds to first reply: median {}, max {}",
            times.len(),
            results.len(),
            secs(times.get(times.len() / 2)),
            secs(times.last()),
        );
    }
    let failed: Vec<&PingResult> = results.iter().filter(|r| r.answered.is_none()).collect();
    for r in failed.iter().take(20) {
        println!(
            "  c{} ({}) -> c{} ({}): {}",
            r.from,
            plan::pod_addr(r.from),
            r.to,
            plan::pod_addr(r.to),
            r.error.as_deref().unwrap_or("interrupted")
        );
    }
    if failed.len() > 20 {
        println!("  … and {} more pairs failed", failed.len() - 20);
    }
}
