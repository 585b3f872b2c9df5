//! The bench's tables: timings summarised per stage with the reference's ratio, and VmRSS.

use std::time::Duration;

use crate::{Run, Seen, Timing, EXPORT_FILE_POLL, PROBE_EVERY};

/// Minimum, median, p90 (nearest rank) and maximum.
fn summary(mut xs: Vec<Duration>) -> [Duration; 4] {
    xs.sort();
    let rank = |q: f64| xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1];
    [xs[0], rank(0.5), rank(0.9), xs[xs.len() - 1]]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// `a / b`, or `-` when `b` is below the probes' resolution and the ratio would be noise.
fn ratio(a: Duration, b: Duration, resolution: Duration) -> String {
    if b < resolution {
        "-".to_owned()
    } else {
        format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// What a row of a timing table reports, and how to get it from one timing.
type Stage = (&'static str, fn(&Timing) -> Duration);

const STAGES: [Stage; 5] = [
    ("c2 DNS (exporter)", Timing::exporter),
    ("c1 DNS", |t| t.importer(1)),
    ("c3 DNS", |t| t.importer(3)),
    ("all (c1 and c3)", Timing::all),
    ("all - c2 (sync)", Timing::propagation),
];

pub(crate) fn print_report(runs: &[Run], memory: &[(String, [u64; 3])], load: [&str; 2]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (reference, large) = (&runs[0], &runs[runs.len() - 1]);
    let seen: Vec<Seen> = runs
        .iter()
        .flat_map(|r| r.initial.iter().chain(&r.changes))
        .flat_map(|t| t.dns)
        .collect();
    let probes: u32 = seen.iter().map(|s| s.probes).sum();
    let probe_cost = seen.iter().map(|s| s.probing).sum::<Duration>() / probes.max(1);
    // A change is seen at most one probe interval plus one probe late.
    let resolution = PROBE_EVERY + probe_cost;
    println!(
        "# catalog convergence: 3 gateways; c2 exports headless services from its static file, \
         c1 and c3 import"
    );
    println!(
        "# {cpus} CPUs, kernel {}, load {} at start, {} at end",
        kernel.trim(),
        load[0],
        load[1]
    );
    println!(
        "# reference: the export file is polled every {} ms, so every figure includes a wait \
         uniform in 0..{} ms (mean {}) before c2 even reads the change",
        EXPORT_FILE_POLL.as_millis(),
        EXPORT_FILE_POLL.as_millis(),
        EXPORT_FILE_POLL.as_millis() / 2
    );
    println!(
        "# probes: DNS over TCP from each cluster's pod to its own gateway every {} ms (mean \
         {:.1} ms per probe), so a figure is late by at most ~{} ms; x ref is - where the \
         reference is below that",
        PROBE_EVERY.as_millis(),
        probe_cost.as_secs_f64() * 1000.0,
        ms(resolution)
    );

    let table = |title: &str, timings: fn(&Run) -> &[Timing]| {
        println!("\n## {title}, ms from the rename of the export file");
        println!(
            "{:<10} {:<20} {:>6} {:>7} {:>6} {:>6} {:>13}",
            "endpoints", "until", "min", "median", "p90", "max", "median x ref"
        );
        for run in runs {
            for (label, stage) in &STAGES {
                let [min, median, p90, max] = summary(timings(run).iter().map(stage).collect());
                let reference = summary(timings(reference).iter().map(stage).collect())[1];
                println!(
                    "{:<10} {:<20} {:>6} {:>7} {:>6} {:>6} {:>13}",
                    run.catalog.endpoints(),
                    label,
                    ms(min),
                    ms(median),
                    ms(p90),
                    ms(max),
                    ratio(median, reference, resolution),
                );
            }
        }
    };
    table(
        &format!(
            "first export (empty file -> every service), {} per catalog",
            reference.initial.len()
        ),
        |r| &r.initial,
    );
    println!(
        "until each gateway's DNS answers the first and the last service ({} endpoints each); \
         each export then checked untimed: tunctl services -o json on c1 and c3 counts every \
         endpoint from c2, their DNS answers every service, dig agrees, both hold c2's \
         watermark",
        large.catalog.per_service
    );
    table(
        &format!(
            "one endpoint of one service replaced, {} changes per catalog",
            reference.changes.len()
        ),
        |r| &r.changes,
    );
    println!(
        "c2 DNS: poll wait + parse + catalog update (its min is close to parse + update alone); \
         each change then checked untimed: dig from c1's and c3's pods answers it, both hold \
         c2's new watermark"
    );

    println!("\n## VmRSS of the gateways, MiB");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "", "c1 import", "c2 export", "c3 import"
    );
    for (label, rss) in memory {
        let [c1, c2, c3] = rss.map(|r| mib(r as f64));
        println!("{label:<34} {c1:>10} {c2:>10} {c3:>10}");
    }
    // Scaled from a catalog much smaller than 10,000 endpoints, the row would be allocator noise.
    let converged = format!("{} endpoints, first export", large.catalog.endpoints());
    let full = memory.iter().find(|(l, _)| *l == converged);
    if let Some((_, full)) = full.filter(|_| large.catalog.endpoints() >= 1_000) {
        let scale = 10_000.0 / large.catalog.endpoints() as f64;
        let [c1, c2, c3] = [0, 1, 2].map(|i| mib((full[i] as f64 - memory[0].1[i] as f64) * scale));
        println!("{:<34} {c1:>10} {c2:>10} {c3:>10}", "per 10,000 endpoints");
    }
    println!(
        "first export: 1 s after the first convergence; after the checks: having served \
         tunctl services -o json and a DNS query per service; highest seen: sampled after every \
         export and change; per 10,000 endpoints: (first export - nothing exported) scaled"
    );
}
