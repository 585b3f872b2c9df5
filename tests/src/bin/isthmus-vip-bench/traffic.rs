//! The timed traffic: per round, every path in a rotated order (so none always runs first or
//! last), each with its connection-rate runs, its latency probes and an iperf3 run. Around
//! each path's runs, the agent's counters and conntrack's say the traffic took that path.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use isthmus_lab::app::RateReport;
use isthmus_lab::Probe;

use crate::setup::{
    delta, ensure_no_drops, Bench, CLUSTER_IP_IPERF, CLUSTER_IP_WEB, IPERF_PORT, VIP_IPERF,
    VIP_WEB, WEB_PORT,
};
use crate::{check_interrupted, Cli};

/// How the client reaches the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// (a) The backends' own addresses.
    Direct,
    /// (b) The clusterset VIP, through the agent's tc programs.
    Ebpf,
    /// (c) A ClusterIP, through kube-proxy's rules (loaded for this path only).
    Iptables,
    /// (a) with kube-proxy's rules loaded: conntrack on, as on a node running kube-proxy.
    DirectKp,
    /// (b) with kube-proxy's rules loaded.
    EbpfKp,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Ebpf => "ebpf",
            Path::Iptables => "iptables",
            Path::DirectKp => "direct+kp",
            Path::EbpfKp => "ebpf+kp",
        }
    }

    /// The row label of the tables.
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "(a) direct",
            Path::Ebpf => "(b) ebpf VIP",
            Path::Iptables => "(c) iptables VIP",
            Path::DirectKp => "(a) direct +kp",
            Path::EbpfKp => "(b) ebpf VIP +kp",
        }
    }

    /// Whether kube-proxy's rules are loaded while this path runs.
    pub fn rules(self) -> bool {
        matches!(self, Path::Iptables | Path::DirectKp | Path::EbpfKp)
    }

    /// Whether the agent's programs translate this path.
    pub fn ebpf(self) -> bool {
        matches!(self, Path::Ebpf | Path::EbpfKp)
    }

    /// Where the two client processes of a rate run (and the two halves of the latency
    /// probes) connect: one backend each when direct, else both to the service address.
    pub fn targets(self, bench: &Bench) -> [SocketAddr; 2] {
        match self {
            Path::Direct | Path::DirectKp => bench
                .backends
                .each_ref()
                .map(|b| SocketAddr::from((b.addr, WEB_PORT))),
            Path::Ebpf | Path::EbpfKp => [SocketAddr::from((VIP_WEB, WEB_PORT)); 2],
            Path::Iptables => [SocketAddr::from((CLUSTER_IP_WEB, WEB_PORT)); 2],
        }
    }

    /// Where iperf3 connects: the first backend, or the throughput service's address.
    pub fn iperf_target(self, bench: &Bench) -> Ipv4Addr {
        match self {
            Path::Direct | Path::DirectKp => bench.backends[0].addr,
            Path::Ebpf | Path::EbpfKp => VIP_IPERF,
            Path::Iptables => CLUSTER_IP_IPERF,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RateRun {
    pub per_sec: f64,
    pub connections: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct IperfRun {
    pub gbits: f64,
    pub retransmits: u64,
}

/// Everything measured for one path.
#[derive(Debug, Clone)]
pub struct PathRuns {
    pub path: Path,
    /// Per concurrency level, one run per round.
    pub rate: BTreeMap<u32, Vec<RateRun>>,
    /// Per round, the latency of every successful probe, µs.
    pub latency_us: Vec<Vec<u64>>,
    pub probes_failed: u64,
    pub iperf: Vec<IperfRun>,
    /// Packets the programs translated towards a backend during this path's runs.
    pub forward_packets: u64,
}

impl PathRuns {
    pub fn latencies(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.latency_us.iter().flatten().copied().collect();
        all.sort_unstable();
        all
    }
}

pub struct Traffic {
    pub paths: Vec<PathRuns>,
}

impl Traffic {
    pub fn get(&self, path: Path) -> Option<&PathRuns> {
        self.paths.iter().find(|p| p.path == path)
    }
}

pub fn run(bench: &Bench, cli: &Cli, paths: &[Path]) -> Result<Traffic> {
    let mut out: Vec<PathRuns> = paths
        .iter()
        .map(|&path| PathRuns {
            path,
            rate: cli.concurrency.iter().map(|c| (*c, Vec::new())).collect(),
            latency_us: Vec::new(),
            probes_failed: 0,
            iperf: Vec::new(),
            forward_packets: 0,
        })
        .collect();
    let rounds = cli.rounds as usize;
    for &c in &cli.concurrency {
        for round in 0..rounds {
            eprintln!(
                "connection rate, concurrency {c}, round {}/{rounds}…",
                round + 1
            );
            for runs in rotated(&mut out, round) {
                slice(bench, runs, |bench, runs| {
                    let r = rate(bench, runs.path.targets(bench), cli.rate_secs, c).with_context(
                        || format!("{}: rate at concurrency {c}", runs.path.name()),
                    )?;
                    runs.rate.get_mut(&c).expect("every level").push(r);
                    Ok(())
                })?;
            }
        }
    }
    for round in 0..rounds {
        eprintln!("latency, round {}/{rounds}…", round + 1);
        for runs in rotated(&mut out, round) {
            slice(bench, runs, |bench, runs| {
                let mut latencies = Vec::new();
                for (i, t) in runs.path.targets(bench).iter().enumerate() {
                    let n = u64::from(cli.probes / 2 + (cli.probes % 2) * u32::from(i == 0));
                    let report = bench
                        .probe(&Probe::tcp(*t).count(n))
                        .with_context(|| format!("{}: probes to {t}", runs.path.name()))?;
                    runs.probes_failed += report.summary.failed;
                    latencies.extend(report.attempts.iter().filter_map(|a| a.latency_us));
                }
                runs.latency_us.push(latencies);
                Ok(())
            })?;
        }
    }
    for round in 0..rounds {
        eprintln!("iperf3, round {}/{rounds}…", round + 1);
        for runs in rotated(&mut out, round) {
            slice(bench, runs, |bench, runs| {
                let i = iperf(bench, runs.path.iperf_target(bench), cli.iperf_secs)
                    .with_context(|| format!("{}: iperf3", runs.path.name()))?;
                runs.iperf.push(i);
                Ok(())
            })?;
        }
    }
    bench.set_rules(false)?;
    Ok(Traffic { paths: out })
}

/// The paths in round `round`'s order: rotated by one per round, so that no path always
/// runs right after the same other one or first.
fn rotated(out: &mut [PathRuns], round: usize) -> impl Iterator<Item = &mut PathRuns> {
    let n = out.len();
    let (head, tail) = out.split_at_mut(round % n.max(1));
    tail.iter_mut().chain(head.iter_mut())
}

/// One timed run of one path: kube-proxy's rules loaded or removed as the path needs, and
/// around it the agent's counters and the conntrack table checked to say the traffic took
/// that path.
fn slice(
    bench: &Bench,
    runs: &mut PathRuns,
    measure: impl FnOnce(&Bench, &mut PathRuns) -> Result<()>,
) -> Result<()> {
    let path = runs.path;
    check_interrupted()?;
    bench.set_rules(path.rules())?;
    let (totals0, ct0) = (bench.agent_totals()?, bench.conntrack_count()?);
    measure(bench, runs)?;
    let (totals1, ct1) = (bench.agent_totals()?, bench.conntrack_count()?);
    let forward = delta(&totals0, &totals1, "forward");
    ensure_no_drops(path, &totals0, &totals1)?;
    anyhow::ensure!(
        path.ebpf() == (forward > 0),
        "{}: the programs translated {forward} packets (counters {totals0:?} before, \
         {totals1:?} after)",
        path.name()
    );
    // Without kube-proxy's rules conntrack is off: its table can only shrink (entries of
    // earlier runs expire). With them, expiries can outnumber new entries, so no check there:
    // the checks before timing proved that path.
    anyhow::ensure!(
        path.rules() || ct1 <= ct0,
        "{}: the conntrack table grew from {ct0} to {ct1} entries without kube-proxy's rules",
        path.name()
    );
    runs.forward_packets += forward;
    Ok(())
}

/// Two `isthmus-lab-app rate` processes at once, `concurrency / 2` clients each, one per
/// target. Connections close with a RST: at these rates, closing with a FIN leaves tens of
/// thousands of TIME_WAIT sockets per run and exhausts the client's ports within a round.
fn rate(bench: &Bench, targets: [SocketAddr; 2], secs: f64, concurrency: u32) -> Result<RateRun> {
    let each = (concurrency / 2).to_string();
    let secs = secs.to_string();
    let reports = std::thread::scope(|s| {
        let handles = targets.map(|t| {
            let (each, secs) = (&each, &secs);
            s.spawn(move || -> Result<RateReport> {
                let args = bench.client_command([
                    bench.app.clone().into_os_string(),
                    "rate".into(),
                    "--connect".into(),
                    t.to_string().into(),
                    "--seconds".into(),
                    secs.into(),
                    "--concurrency".into(),
                    each.into(),
                    "--reset".into(),
                ]);
                let out = bench.lab.exec(&bench.client, &args)?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                anyhow::ensure!(
                    out.status.success(),
                    "rate to {t} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let line = stdout.lines().last().unwrap_or_default();
                serde_json::from_str(line)
                    .with_context(|| format!("rate to {t} printed no report: {stdout}"))
            })
        });
        handles.map(|h| h.join().unwrap_or_else(|_| bail!("a rate thread panicked")))
    });
    let mut run = RateRun {
        per_sec: 0.0,
        connections: 0,
        failed: 0,
    };
    for r in reports {
        let r = r?;
        run.per_sec += r.per_sec;
        run.connections += r.connections;
        run.failed += r.failed;
    }
    Ok(run)
}

/// `iperf3 -c TARGET -t SECS -O 1 -J` from the client: what the receiver got. A server still
/// busy with the previous run is retried once.
fn iperf(bench: &Bench, target: Ipv4Addr, secs: u32) -> Result<IperfRun> {
    let (target, port, secs) = (target.to_string(), IPERF_PORT.to_string(), secs.to_string());
    let args = bench.client_command([
        "iperf3", "-c", &target, "-p", &port, "-t", &secs, "-O", "1", "-J",
    ]);
    for attempt in 0..2 {
        let out = bench.lab.exec(&bench.client, &args)?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 printed no JSON ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            if attempt == 0 && e.contains("busy") {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            bail!("iperf3 to {target}: {e}");
        }
        let end = &v["end"];
        let bits = end["sum_received"]["bits_per_second"]
            .as_f64()
            .with_context(|| format!("no end.sum_received.bits_per_second in {end}"))?;
        return Ok(IperfRun {
            gbits: bits / 1e9,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        });
    }
    bail!("iperf3 to {target}: the server stayed busy")
}
