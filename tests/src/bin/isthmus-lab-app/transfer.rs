//! `transfer`: N pseudo-random bytes out on one connection while the echo is read back on
//! another thread of the same socket; SHA-256 of both sides compared.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use isthmus_lab::app::report::TransferReport;
use sha2::{Digest, Sha256};

use crate::emit_json;
use crate::stream::connect_and_greet;

const CHUNK: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Server to send to; it must echo (`serve`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub connect: SocketAddr,
    /// Bytes to send.
    #[arg(long)]
    pub bytes: u64,
    /// Limit for connecting, for the greeting, and for any silence while reading the echo.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Seed of the bytes sent.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut report = TransferReport {
        answer: String::new(),
        bytes: args.bytes,
        received: 0,
        ok: false,
        secs: 0.0,
        sent_sha256: String::new(),
        received_sha256: String::new(),
        error: None,
    };
    if let Err(e) = transfer(args, timeout, &mut report) {
        report.error = Some(e);
    }
    report.ok = report.error.is_none()
        && report.received == report.bytes
        && report.sent_sha256 == report.received_sha256;
    emit_json(&report)?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn transfer(args: &Args, timeout: Duration, report: &mut TransferReport) -> Result<(), String> {
    let greeted = connect_and_greet(args.connect, timeout)?;
    report.answer = greeted.answer;
    let stream = greeted.stream;
    let writer_stream = stream
        .try_clone()
        .map_err(|e| format!("clone socket: {e}"))?;
    let (bytes, seed) = (args.bytes, args.seed);
    let started = Instant::now();
    let writer = std::thread::spawn(move || send(&writer_stream, bytes, seed));

    let mut hasher = Sha256::new();
    hasher.update(&greeted.rest);
    report.received = greeted.rest.len() as u64;
    let read = receive(&stream, timeout, &mut hasher, &mut report.received);
    if read.is_err() {
        // Unblocks a writer stuck on a peer that stopped reading.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent = writer
        .join()
        .map_err(|_| "the writer panicked".to_owned())?;
    report.secs = started.elapsed().as_secs_f64();
    report.received_sha256 = hex(&hasher.finalize());
    report.sent_sha256 = sent?;
    read
}

/// Sends `bytes` bytes of the seeded stream, half-closes, and returns their SHA-256.
fn send(mut stream: &TcpStream, bytes: u64, seed: u64) -> Result<String, String> {
    let mut rng = SplitMix64(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        rng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("send after {} bytes: {e}", bytes - left))?;
        left -= n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-close: {e}"))?;
    Ok(hex(&hasher.finalize()))
}

/// Reads the echo to EOF into `hasher`, counting into `received`.
fn receive(
    mut stream: &TcpStream,
    idle: Duration,
    hasher: &mut Sha256,
    received: &mut u64,
) -> Result<(), String> {
    stream
        .set_read_timeout(Some(idle))
        .map_err(|e| format!("set read timeout: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                hasher.update(&buf[..n]);
                *received += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("echo stalled for {idle:?} after {received} bytes"));
            }
            Err(e) => return Err(format!("read echo after {received} bytes: {e}")),
        }
    }
}

/// Steele, Lea and Flood's SplitMix64: fast, seedable, good enough to make every byte count.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_stream_depends_on_the_seed_only() {
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        SplitMix64(7).fill(&mut a);
        SplitMix64(7).fill(&mut b);
        assert_eq!(a, b);
        SplitMix64(8).fill(&mut b);
        assert_ne!(a, b);
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
