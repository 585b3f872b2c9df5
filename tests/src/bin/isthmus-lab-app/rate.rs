//! `rate`: C clients each connecting, reading the greeting and closing, as fast as they can
//! for S seconds.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use isthmus_lab::app::report::RateReport;

use crate::emit_json;
use crate::stream::connect_and_greet;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_name = "ADDR:PORT")]
    pub connect: SocketAddr,
    /// How long to keep connecting.
    #[arg(long, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Clients connecting in parallel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Give up on one connection after T ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Close with a RST (SO_LINGER 0) instead of a FIN, leaving no TIME_WAIT behind: a long
    /// run at a high rate otherwise runs out of local ports.
    #[arg(long)]
    pub reset: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("must be a positive number of seconds".to_owned()),
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let (target, reset) = (args.connect, args.reset);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| std::thread::spawn(move || client(target, timeout, deadline, reset)))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        total.ok += t.ok;
        total.failed += t.failed;
        total.first_error = total.first_error.or(t.first_error);
    }
    let secs = started.elapsed().as_secs_f64();
    emit_json(&RateReport {
        connections: total.ok,
        failed: total.failed,
        per_sec: total.ok as f64 / secs,
        secs,
        first_error: total.first_error,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn client(target: SocketAddr, timeout: Duration, deadline: Instant, reset: bool) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < deadline {
        match connect_and_greet(target, timeout) {
            Ok(g) => {
                t.ok += 1;
                if reset {
                    let _ = socket2::SockRef::from(&g.stream).set_linger(Some(Duration::ZERO));
                }
            }
            Err(e) => {
                t.failed += 1;
                t.first_error.get_or_insert(e);
            }
        }
    }
    t
}
