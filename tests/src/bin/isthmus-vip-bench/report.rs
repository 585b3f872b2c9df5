//! The bench's tables, the bar, and one JSON line with every figure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent_bench::{CatalogRuns, Step, POLL_EVERY};
use crate::setup::{PathCheck, CLUSTER_IP_WEB, VIP_WEB};
use crate::traffic::{Path, PathRuns, Traffic};
use crate::Cli;

/// The throughput bar: (b) within this fraction of (a).
const THROUGHPUT_BAR: f64 = 0.95;

pub struct Environment {
    pub load: [String; 2],
    pub cli: Cli,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Nearest-rank percentile of sorted `xs`.
fn pct(xs: &[u64], q: f64) -> u64 {
    if xs.is_empty() {
        return 0;
    }
    xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.3}", a / b)
    } else {
        "-".to_owned()
    }
}

/// The pairs whose ratio is reported, when both were measured.
const RATIOS: [(Path, Path, &str); 6] = [
    (Path::Ebpf, Path::Direct, "(b)/(a)"),
    (Path::Iptables, Path::Direct, "(c)/(a)"),
    (Path::Ebpf, Path::Iptables, "(b)/(c)"),
    (Path::EbpfKp, Path::DirectKp, "(b+kp)/(a+kp)"),
    (Path::Iptables, Path::DirectKp, "(c)/(a+kp)"),
    (Path::EbpfKp, Path::Iptables, "(b+kp)/(c)"),
];

fn gbits(p: &PathRuns) -> Vec<f64> {
    p.iperf.iter().map(|i| i.gbits).collect()
}

fn round_p50s(p: &PathRuns) -> Vec<f64> {
    p.latency_us
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.sort_unstable();
            pct(&l, 0.5) as f64
        })
        .collect()
}

pub fn print(
    env: &Environment,
    checks: &BTreeMap<Path, PathCheck>,
    traffic: Option<&Traffic>,
    catalog: Option<&CatalogRuns>,
) {
    let cli = &env.cli;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "# isthmus-vip-bench {date}: client pod -> 2 backend pods on the same node (no tunnel), \
         route agent attached to every pod veth"
    );
    println!(
        "# {cpus} CPUs, kernel {kernel}, load {} at start, {} at end",
        env.load[0], env.load[1]
    );
    println!(
        "# (a) direct: the backends' addresses; (b) ebpf: VIP {VIP_WEB} through the agent's tc \
         programs; (c) iptables: ClusterIP {CLUSTER_IP_WEB} through kube-proxy's iptables rules \
         (nf_tables backend), loaded into the node namespace for (c) only{}",
        if checks.contains_key(&Path::DirectKp) || checks.contains_key(&Path::EbpfKp) {
            "; +kp: with those rules loaded too (conntrack on, as on a node running kube-proxy)"
        } else {
            ""
        }
    );
    println!(
        "# {} rounds per measurement, each running every path once in a rotated order; rate {} \
         s per run (2 client processes, RST close); latency over {} back-to-back connections \
         per path and round; iperf3 {} s (+1 s omitted), one stream, to a one-backend service",
        cli.rounds, cli.rate_secs, cli.probes, cli.iperf_secs
    );

    if cli.nice != 0 {
        println!("# clients and servers (not the agent) at nice {}", cli.nice);
    }
    println!(
        "\n## checks before timing: answers by backend, the programs' new flows, \
         kube-proxy's DNAT packets, growth of the node's conntrack table"
    );
    println!(
        "{:<18} {:>14} {:>10} {:>14} {:>10}",
        "path", "answers b1/b2", "new flows", "DNAT b1/b2", "conntrack"
    );
    for (path, c) in checks {
        let split = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{}/{}",
                    m.get("b1").copied().unwrap_or(0),
                    m.get("b2").copied().unwrap_or(0)
                )
            }
        };
        println!(
            "{:<18} {:>14} {:>10} {:>14} {:>10}",
            path.label(),
            split(&c.split),
            c.new_flows,
            split(&c.dnat),
            c.conntrack_added
        );
    }

    let mut summary = json!({
        "bench": "isthmus-vip-bench",
        "date": date,
        "cpus": cpus,
        "kernel": kernel,
        "load": [env.load[0], env.load[1]],
        "params": {
            "rounds": cli.rounds,
            "rate_secs": cli.rate_secs,
            "concurrency": cli.concurrency,
            "probes": cli.probes,
            "iperf_secs": cli.iperf_secs,
            "endpoints": cli.endpoints,
            "loads": cli.loads,
            "changes": cli.changes,
        },
    });
    if let Some(t) = traffic {
        summary["paths"] = print_traffic(cli, t);
        summary["ratios"] = print_ratios(cli, t);
        summary["bar"] = print_bar(cli, t);
    }
    if let Some(c) = catalog {
        summary["agent"] = print_catalog(cli, c);
    }
    println!("\n{summary}");
}

fn print_traffic(cli: &Cli, t: &Traffic) -> Value {
    let mut out = serde_json::Map::new();
    println!(
        "\n## TCP connections per second (connect, read the greeting, close): min / median / \
         max over {} rounds",
        cli.rounds
    );
    print!("{:<18}", "path");
    for c in &cli.concurrency {
        print!(" {:>26}", format!("concurrency {c}"));
    }
    println!(" {:>8}", "failed");
    for p in &t.paths {
        print!("{:<18}", p.path.label());
        for runs in p.rate.values() {
            let xs: Vec<f64> = runs.iter().map(|r| r.per_sec).collect();
            print!(
                " {:>26}",
                format!("{:.0} / {:.0} / {:.0}", min(&xs), median(&xs), max(&xs))
            );
        }
        let failed: u64 = p.rate.values().flatten().map(|r| r.failed).sum();
        println!(" {failed:>8}");
    }

    let direct = t.get(Path::Direct).map(PathRuns::latencies);
    println!(
        "\n## connect + greeting latency, µs, over {} x {} connections per path (p50 per round: \
         min..max)",
        cli.rounds, cli.probes
    );
    println!(
        "{:<18} {:>6} {:>6} {:>6} {:>6} {:>13} {:>8} {:>8} {:>8} {:>7}",
        "path", "p10", "p50", "p90", "p99", "p50 per round", "+p10", "+p50", "+p99", "failed"
    );
    for p in &t.paths {
        let l = p.latencies();
        let rounds = round_p50s(p);
        let added = |q: f64| match &direct {
            Some(d) if !d.is_empty() => format!("{:+}", pct(&l, q) as i64 - pct(d, q) as i64),
            _ => "-".to_owned(),
        };
        println!(
            "{:<18} {:>6} {:>6} {:>6} {:>6} {:>13} {:>8} {:>8} {:>8} {:>7}",
            p.path.label(),
            pct(&l, 0.1),
            pct(&l, 0.5),
            pct(&l, 0.9),
            pct(&l, 0.99),
            format!("{:.0}..{:.0}", min(&rounds), max(&rounds)),
            added(0.1),
            added(0.5),
            added(0.99),
            p.probes_failed
        );
    }
    println!("+pNN: added over (a) direct at that percentile, µs");

    let direct_gbits = t.get(Path::Direct).map(|p| median(&gbits(p)));
    println!(
        "\n## iperf3 throughput, Gbit/s received: min / median / max over {} rounds",
        cli.rounds
    );
    println!(
        "{:<18} {:>7} {:>7} {:>7} {:>9} {:>12}",
        "path", "min", "median", "max", "x (a)", "retransmits"
    );
    for p in &t.paths {
        let g = gbits(p);
        let retrans: Vec<f64> = p.iperf.iter().map(|i| i.retransmits as f64).collect();
        println!(
            "{:<18} {:>7.2} {:>7.2} {:>7.2} {:>9} {:>12.0}",
            p.path.label(),
            min(&g),
            median(&g),
            max(&g),
            direct_gbits.map_or("-".to_owned(), |d| ratio(median(&g), d)),
            median(&retrans)
        );
    }
    println!(
        "packets the programs translated to a backend, all runs: {}; the conntrack table \
         never grew without kube-proxy's rules",
        t.paths
            .iter()
            .map(|p| format!("{} {}", p.path.name(), p.forward_packets))
            .collect::<Vec<_>>()
            .join(", ")
    );

    for p in &t.paths {
        let l = p.latencies();
        let rate: serde_json::Map<String, Value> = p
            .rate
            .iter()
            .map(|(c, runs)| {
                let xs: Vec<f64> = runs.iter().map(|r| r.per_sec).collect();
                (
                    c.to_string(),
                    json!({
                        "min": min(&xs).round(), "median": median(&xs).round(),
                        "max": max(&xs).round(),
                        "runs": xs.iter().map(|x| x.round()).collect::<Vec<_>>(),
                        "failed": runs.iter().map(|r| r.failed).sum::<u64>(),
                    }),
                )
            })
            .collect();
        let g = gbits(p);
        out.insert(
            p.path.name().to_owned(),
            json!({
                "conn_per_sec": rate,
                "latency_us": {
                    "p10": pct(&l, 0.1), "p50": pct(&l, 0.5), "p90": pct(&l, 0.9),
                    "p99": pct(&l, 0.99),
                    "samples": l.len(), "failed": p.probes_failed,
                },
                "iperf3_gbits": {
                    "min": min(&g), "median": median(&g), "max": max(&g), "runs": g,
                },
                "translated_packets": p.forward_packets,
            }),
        );
    }
    Value::Object(out)
}

/// Per-round ratios `x[i] / y[i]`: run `i` of every path was measured in round `i`, seconds
/// apart, so each ratio compares runs that met the same load on the machine.
fn paired(xs: &[f64], ys: &[f64]) -> Vec<f64> {
    xs.iter()
        .zip(ys)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect()
}

fn rates(p: &PathRuns, level: u32) -> Vec<f64> {
    p.rate
        .get(&level)
        .map(|runs| runs.iter().map(|r| r.per_sec).collect())
        .unwrap_or_default()
}

/// `median [min-max]` of per-round ratios, and the JSON of the same.
fn paired_cell(xs: &[f64], ys: &[f64]) -> (String, Value) {
    let r = paired(xs, ys);
    if r.is_empty() {
        return ("-".to_owned(), Value::Null);
    }
    (
        format!("{:.3} [{:.2}-{:.2}]", median(&r), min(&r), max(&r)),
        json!({"median": median(&r), "min": min(&r), "max": max(&r), "rounds": r}),
    )
}

fn print_ratios(cli: &Cli, t: &Traffic) -> Value {
    let mut out = serde_json::Map::new();
    println!(
        "\n## ratios: median [min-max] of the per-round ratios (the paths of one round run \
         seconds apart); latency: ratio of the pooled percentiles"
    );
    print!("{:<14}", "");
    for c in &cli.concurrency {
        print!(" {:>19}", format!("conn/s c={c}"));
    }
    println!(" {:>19} {:>8} {:>8}", "iperf3", "lat p10", "lat p50");
    for (x, y, label) in RATIOS {
        let (Some(px), Some(py)) = (t.get(x), t.get(y)) else {
            continue;
        };
        print!("{label:<14}");
        let mut entry = serde_json::Map::new();
        for c in &cli.concurrency {
            let (cell, v) = paired_cell(&rates(px, *c), &rates(py, *c));
            print!(" {cell:>19}");
            entry.insert(format!("conn_per_sec_{c}"), v);
        }
        let (cell, v) = paired_cell(&gbits(px), &gbits(py));
        entry.insert("iperf3".to_owned(), v);
        let (lx, ly) = (px.latencies(), py.latencies());
        let lat = |q: f64| pct(&lx, q) as f64 / pct(&ly, q) as f64;
        println!(
            " {cell:>19} {:>8} {:>8}",
            ratio(pct(&lx, 0.1) as f64, pct(&ly, 0.1) as f64),
            ratio(pct(&lx, 0.5) as f64, pct(&ly, 0.5) as f64)
        );
        entry.insert("latency_p10".to_owned(), json!(lat(0.1)));
        entry.insert("latency_p50".to_owned(), json!(lat(0.5)));
        out.insert(label.to_owned(), Value::Object(entry));
    }
    Value::Object(out)
}

fn print_bar(cli: &Cli, t: &Traffic) -> Value {
    let verdict = |r: &[f64], bar: f64| {
        let m = median(r);
        let how = if min(r) >= bar {
            "holds in every round"
        } else if m >= bar {
            "holds (median; not in every round)"
        } else if max(r) >= bar {
            "MISSED (median; held in some rounds)"
        } else {
            "MISSED in every round"
        };
        (m, how)
    };
    let mut out = serde_json::Map::new();
    println!("\n## the issue's bar, on the median of the per-round ratios");
    if let (Some(a), Some(b)) = (t.get(Path::Direct), t.get(Path::Ebpf)) {
        let r = paired(&gbits(b), &gbits(a));
        let (m, how) = verdict(&r, THROUGHPUT_BAR);
        let of_medians = median(&gbits(b)) / median(&gbits(a));
        println!(
            "(b) throughput within 5 % of (a):   (b)/(a) = {m:.3} [{:.2}-{:.2}] -> {how}; \
             ratio of the medians {of_medians:.3}",
            min(&r),
            max(&r)
        );
        out.insert(
            "throughput_within_5pct".to_owned(),
            json!({"holds": m >= THROUGHPUT_BAR, "ratio": m, "ratio_of_medians": of_medians}),
        );
    }
    if let (Some(b), Some(c)) = (t.get(Path::Ebpf), t.get(Path::Iptables)) {
        for lvl in &cli.concurrency {
            let r = paired(&rates(b, *lvl), &rates(c, *lvl));
            let (m, how) = verdict(&r, 1.0);
            let of_medians = median(&rates(b, *lvl)) / median(&rates(c, *lvl));
            println!(
                "(b) conn/s at least (c)'s, c={lvl:<4} (b)/(c) = {m:.3} [{:.2}-{:.2}] -> {how}; \
                 ratio of the medians {of_medians:.3}",
                min(&r),
                max(&r)
            );
            out.insert(
                format!("rate_at_least_iptables_c{lvl}"),
                json!({"holds": m >= 1.0, "ratio": m, "ratio_of_medians": of_medians}),
            );
        }
    }
    Value::Object(out)
}

fn print_catalog(cli: &Cli, c: &CatalogRuns) -> Value {
    let stats = |steps: &[Step], f: fn(&Step) -> Duration| -> [f64; 3] {
        let xs: Vec<f64> = steps.iter().map(|s| ms(f(s))).collect();
        [min(&xs), median(&xs), max(&xs)]
    };
    println!(
        "\n## route agent: catalogs of {} endpoints next to the bench's 2 services, ms from \
         writing the watch line: min / median / max",
        cli.endpoints
    );
    println!(
        "{:<10} {:<20} {:>3} {:>22} {:>22} {:>22}",
        "catalog", "step", "n", "programmed (log)", "status shows it", "reconcile (agent)"
    );
    let mut shapes = serde_json::Map::new();
    for s in &c.shapes {
        let mut steps = serde_json::Map::new();
        for (name, key, runs) in [
            ("program (from none)", "program", &s.loads),
            ("change one endpoint", "change", &s.changes),
            ("remove", "remove", &s.removals),
        ] {
            let p = stats(runs, |s| s.programmed);
            let st = stats(runs, |s| s.status);
            let r = stats(runs, |s| s.reconcile);
            let cell = |x: [f64; 3]| format!("{:.1} / {:.1} / {:.1}", x[0], x[1], x[2]);
            println!(
                "{:<10} {:<20} {:>3} {:>22} {:>22} {:>22}",
                s.shape.label(),
                name,
                runs.len(),
                cell(p),
                cell(st),
                cell(r),
            );
            let obj = |x: [f64; 3]| json!({"min": x[0], "median": x[1], "max": x[2]});
            steps.insert(
                key.to_owned(),
                json!({
                    "programmed_ms": obj(p), "status_ms": obj(st), "reconcile_ms": obj(r),
                    "n": runs.len(),
                }),
            );
        }
        let answer = median(&s.status_answer.iter().map(|d| ms(*d)).collect::<Vec<_>>());
        steps.insert("status_answer_ms".to_owned(), json!(answer));
        shapes.insert(s.shape.label().replace(' ', ""), Value::Object(steps));
    }
    let base = median(
        &c.base_status_answer
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>(),
    );
    println!(
        "reconcile: the agent's last_reconcile_us (diff and map writes); programmed: the \
         timestamp of the agent's \"maps programmed\" log line (adds reading and parsing the \
         line), found by reading the log every {} ms; status shows it: one status answer \
         asked after that line, which takes (median) {base:.2} ms with the 2 services, {}",
        POLL_EVERY.as_millis(),
        c.shapes
            .iter()
            .map(|s| format!(
                "{:.1} ms at {}",
                median(&s.status_answer.iter().map(|d| ms(*d)).collect::<Vec<_>>()),
                s.shape.label()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    println!("\n## route agent memory, MiB (/proc/<pid>/status)");
    println!("{:<36} {:>7} {:>7}", "", "VmRSS", "VmHWM");
    let mut memory = serde_json::Map::new();
    for (label, m) in &c.memory {
        println!(
            "{label:<36} {:>7.1} {:>7.1}",
            m.rss as f64 / 1024.0,
            m.hwm as f64 / 1024.0
        );
        memory.insert(label.clone(), json!({"rss_kib": m.rss, "hwm_kib": m.hwm}));
    }
    println!("VmHWM: the highest VmRSS since the agent started");
    json!({"catalogs": shapes, "memory": memory, "status_answer_ms_base": base})
}
