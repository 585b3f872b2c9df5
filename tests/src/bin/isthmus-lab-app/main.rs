//! `isthmus-lab-app`: the lab's test application, real TCP and UDP with std threads.
//!
//! - `serve --name NAME [--tcp ADDR:PORT]… [--udp ADDR:PORT]…`: TCP greets every connection
//!   with `NAME LOCAL_ADDR:PORT\n` and echoes until EOF; UDP answers every datagram with that
//!   line followed by the datagram, sent from the address the datagram reached. One stdout
//!   line per connection or datagram (`tcp <peer> <local>` / `udp <peer> <local>`), after
//!   `listening …` lines and `ready` once every socket is bound. Exits 0 on SIGTERM/SIGINT.
//! - `probe --connect ADDR:PORT [--udp] (--count N | --duration-ms D) [--interval-ms M]
//!   [--timeout-ms T]`: one JSON line per attempt, in order, then a summary line.
//! - `transfer --connect ADDR:PORT --bytes N`: sends N pseudo-random bytes, checks the echo by
//!   SHA-256, prints one JSON line; exits 1 unless every byte came back.
//! - `rate --connect ADDR:PORT --seconds S [--concurrency C]`: connections per second.
//!
//! The JSON shapes are `isthmus_lab::app::report`'s types. Bad arguments exit 2 (clap's
//! message), failures to bind or connect exit 1 with `isthmus-lab-app: <why>` on stderr.

#![forbid(unsafe_code)]

mod probe;
mod rate;
mod serve;
mod stream;
mod transfer;
mod udp;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "isthmus-lab-app",
    about = "TCP/UDP test servers and clients for the lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Answer TCP connections and UDP datagrams with NAME and the address reached.
    Serve(serve::Args),
    /// Make N attempts against a server and report each answer as JSON.
    Probe(probe::Args),
    /// Send N bytes over one TCP connection and check that the echo is identical.
    Transfer(transfer::Args),
    /// Count TCP connections per second (connect, read the greeting, close).
    Rate(rate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => serve::run(&args),
        Cmd::Probe(args) => probe::run(&args),
        Cmd::Transfer(args) => transfer::run(&args),
        Cmd::Rate(args) => rate::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("isthmus-lab-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `line` and a newline to stdout and flushes, so a test reading the log file sees
/// whole lines as they happen. Errors (a closed stdout) are ignored: the log is a side channel.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints `value` as one JSON line.
fn emit_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    emit(&serde_json::to_string(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use isthmus_lab::app::{spec, Probe, Serve};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("isthmus-lab-app").chain(args.iter().copied()))
    }

    fn parse_owned(args: &[String]) -> Cli {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn error(args: &[&str]) -> (ErrorKind, String) {
        let e = parse(args).expect_err("parsed");
        (e.kind(), e.to_string())
    }

    #[test]
    fn the_lab_specs_parse_as_they_mean() {
        let a: SocketAddr = "10.2.1.3:7000".parse().unwrap();
        let Cmd::Serve(s) = parse_owned(&Serve::new("c2").both(a).args()).command else {
            panic!("not serve");
        };
        assert_eq!((s.name.as_str(), s.tcp, s.udp), ("c2", vec![a], vec![a]));

        let probe = Probe::udp(a)
            .duration(Duration::from_secs(2))
            .interval(Duration::from_millis(50))
            .timeout(Duration::from_millis(300));
        let Cmd::Probe(p) = parse_owned(&probe.args()).command else {
            panic!("not probe");
        };
        assert_eq!(p.connect, a);
        assert!(p.udp);
        assert_eq!(
            (p.count, p.duration_ms, p.interval_ms, p.timeout_ms),
            (None, Some(2000), 50, 300)
        );

        let Cmd::Transfer(t) = parse_owned(&spec::transfer_args(a, 5)).command else {
            panic!("not transfer");
        };
        assert_eq!((t.connect, t.bytes), (a, 5));
        let Cmd::Rate(r) = parse_owned(&spec::rate_args(a, 0.5, 3)).command else {
            panic!("not rate");
        };
        assert_eq!((r.seconds, r.concurrency), (0.5, 3));
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        // A server with nothing to serve.
        let (kind, _) = error(&["serve", "--name", "c2"]);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        // A name that would not be the first word of the greeting.
        let (_, msg) = error(&["serve", "--name", "c 2", "--tcp", "1.2.3.4:5"]);
        assert!(msg.contains("one word"), "{msg}");
        let (kind, msg) = error(&["serve", "--name", "c2", "--tcp", "10.2.1.3"]);
        assert_eq!(kind, ErrorKind::ValueValidation, "{msg}");
        // A probe needs exactly one of --count and --duration-ms.
        let (kind, _) = error(&["probe", "--connect", "10.2.1.3:7000"]);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        let (kind, _) = error(&[
            "probe",
            "--connect",
            "10.2.1.3:7000",
            "--count",
            "2",
            "--duration-ms",
            "5",
        ]);
        assert_eq!(kind, ErrorKind::ArgumentConflict);
        let (kind, _) = error(&["probe", "--connect", "10.2.1.3:7000", "--count", "0"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        let (kind, _) = error(&[
            "probe",
            "--connect",
            "10.2.1.3:7000",
            "--count",
            "1",
            "--timeout-ms",
            "0",
        ]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        let (kind, _) = error(&["transfer", "--connect", "10.2.1.3:7000"]);
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
        let (_, msg) = error(&["rate", "--connect", "10.2.1.3:7000", "--seconds", "0"]);
        assert!(msg.contains("positive"), "{msg}");
        let (kind, _) = error(&["rate", "--connect", "h:1", "--seconds", "1"]);
        assert_eq!(kind, ErrorKind::ValueValidation);
        let (kind, _) = error(&["frobnicate"]);
        assert_eq!(kind, ErrorKind::InvalidSubcommand);
    }
}
