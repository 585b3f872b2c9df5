//! `probe`: attempts on a schedule, each on its own thread so that one hanging until its
//! timeout does not delay the next; results are printed in order as soon as every earlier one
//! is in. With no interval the attempts run back to back, one after the other.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::ArgGroup;
use isthmus_lab::app::report::{Attempt, Summary};

use crate::emit_json;
use crate::stream::connect_and_greet;

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("amount").required(true).args(["count", "duration_ms"])))]
pub struct Args {
    /// Server to reach.
    #[arg(long, value_name = "ADDR:PORT")]
    pub connect: SocketAddr,
    /// A UDP request/response instead of a TCP connection.
    #[arg(long)]
    pub udp: bool,
    /// Number of attempts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Attempt every --interval-ms until this many ms have passed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_ms: Option<u64>,
    /// Start an attempt every M ms; 0 runs them back to back.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Give up on an attempt after T ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let start = Instant::now();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Attempt>();
    let plan = Schedule {
        target: args.connect,
        udp: args.udp,
        count: args.count,
        duration: args.duration_ms.map(Duration::from_millis),
        interval: Duration::from_millis(args.interval_ms),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let scheduler = std::thread::spawn(move || plan.run(start, &tx));

    // Results come in any order; print each once all before it are out.
    let mut pending = BTreeMap::new();
    let mut attempts = Vec::new();
    for a in rx {
        pending.insert(a.i, a);
        while let Some(a) = pending.remove(&(attempts.len() as u64)) {
            emit_json(&a)?;
            attempts.push(a);
        }
    }
    scheduler
        .join()
        .map_err(|_| anyhow::anyhow!("the scheduler panicked"))??;
    anyhow::ensure!(
        pending.is_empty(),
        "attempts {:?} came back after a gap",
        pending.keys().collect::<Vec<_>>()
    );
    emit_json(&Summary::of(&attempts, start_unix_ms))?;
    Ok(ExitCode::SUCCESS)
}

struct Schedule {
    target: SocketAddr,
    udp: bool,
    count: Option<u64>,
    duration: Option<Duration>,
    interval: Duration,
    timeout: Duration,
}

impl Schedule {
    fn run(&self, start: Instant, tx: &mpsc::Sender<Attempt>) -> Result<()> {
        for i in 0.. {
            if self.count.is_some_and(|n| i >= n) {
                break;
            }
            let due = start + self.interval * u32::try_from(i).unwrap_or(u32::MAX);
            if self
                .duration
                .is_some_and(|d| due.max(Instant::now()) >= start + d)
            {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let (target, udp, timeout) = (self.target, self.udp, self.timeout);
            let one = move || attempt(i, start, target, udp, timeout);
            if self.interval.is_zero() {
                // Back to back: the receiver is gone only if printing failed, which the main
                // thread reports.
                let _ = tx.send(one());
            } else {
                let tx = tx.clone();
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let _ = tx.send(one());
                    })
                    .with_context(|| format!("failed to start attempt {i}"))?;
            }
        }
        Ok(())
    }
}

fn attempt(i: u64, start: Instant, target: SocketAddr, udp: bool, timeout: Duration) -> Attempt {
    let began = Instant::now();
    let start_ms = u64::try_from(began.duration_since(start).as_millis()).unwrap_or(u64::MAX);
    let result = if udp {
        udp_exchange(i, target, timeout)
    } else {
        connect_and_greet(target, timeout).map(|g| {
            let local = g.stream.local_addr().ok();
            (g.answer, local)
        })
    };
    let latency_us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok((answer, local)) => Attempt {
            i,
            start_ms,
            ok: true,
            answer: Some(answer),
            latency_us: Some(latency_us),
            local: local.map(|a| a.to_string()),
            error: None,
        },
        Err(error) => Attempt {
            i,
            start_ms,
            ok: false,
            answer: None,
            latency_us: None,
            local: None,
            error: Some(error),
        },
    }
}

/// Sends `probe <i>` and expects `NAME ADDR:PORT\nprobe <i>` back.
fn udp_exchange(
    i: u64,
    target: SocketAddr,
    timeout: Duration,
) -> Result<(String, Option<SocketAddr>), String> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(target)
        .map_err(|e| format!("connect: {e}"))?;
    let payload = format!("probe {i}");
    let deadline = Instant::now() + timeout;
    socket
        .send(payload.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {timeout:?}"));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("set read timeout: {e}"))?;
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {timeout:?}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("recv: {e}")),
        };
        let reply = String::from_utf8_lossy(&buf[..n]);
        let Some((answer, echo)) = reply.split_once('\n') else {
            return Err(format!("answer without a newline: {reply:?}"));
        };
        if echo != payload {
            return Err(format!("echo {echo:?} is not the request {payload:?}"));
        }
        return Ok((answer.to_owned(), socket.local_addr().ok()));
    }
}
