//! `tunctl`: inspect a running isthmus-gateway through its admin socket, make WireGuard keys,
//! and run the trust domain's PKI (`tunctl pki …`).
//!
//! Errors print `tunctl: <message>` and exit 1; bad arguments exit 2 with clap's message.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use isthmus_gateway::admin::client;
use isthmus_gateway::admin::pki_cli::{self, PkiCommand};
use isthmus_gateway::admin::proto::Request;
use isthmus_gateway::admin::render::{self, OutputFormat};
use isthmus_gateway::keys::PrivateKey;
use std::io::{self, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the daemon puts the admin socket of interface NAME: `/run/isthmus/NAME.sock`.
const SOCKET_DIR: &str = "/run/isthmus";
const DEFAULT_INTERFACE: &str = "isthmus0";

#[derive(Debug, Parser)]
#[command(name = "tunctl", version, about = "Inspect a running isthmus-gateway")]
struct Cli {
    /// Admin socket to talk to [default: /run/isthmus/<interface>.sock]
    #[arg(long, global = true, value_name = "PATH", env = "ISTHMUS_ADMIN_SOCKET")]
    socket: Option<PathBuf>,

    /// Interface whose daemon to talk to [default: isthmus0]
    #[arg(short, long, global = true, value_name = "NAME")]
    interface: Option<String>,

    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    /// Seconds to wait for the daemon
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List peers: endpoint, session state, last handshake, traffic
    Peers,
    /// Show the interface: key, port, addresses, MTU, peers, uptime, offloads, drops
    Status,
    /// List the merged service catalog: clusters, healthy/total endpoints, VIP, policy
    Services,
    /// Re-read the daemon's configuration file, like SIGHUP, and say what changed. A new
    /// private key and SVID in it rotate the interface key: peers by identity learn the new
    /// binding through the tunnel, then the data plane switches
    Reload,
    /// Print a new private key (base64), like `wg genkey`
    Genkey,
    /// Read a private key on stdin, print its public key, like `wg pubkey`
    Pubkey,
    /// Trust domain PKI: CAs, SVIDs bound to WireGuard keys, inspect and verify
    #[command(subcommand)]
    Pki(PkiCommand),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // An explicit --socket wins; an explicit -i wins over ISTHMUS_ADMIN_SOCKET from the
    // environment, so `tunctl -i other peers` does what it says.
    let socket_from_env = matches.value_source("socket") == Some(ValueSource::EnvVariable);
    match run(cli, socket_from_env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tunctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, socket_from_env: bool) -> anyhow::Result<()> {
    match cli.command {
        Command::Genkey => return print(&format!("{}\n", PrivateKey::generate().to_base64())),
        Command::Pubkey => return pubkey(),
        Command::Pki(command) => {
            return print(&pki_cli::run(command, cli.output, SystemTime::now())?)
        }
        Command::Peers | Command::Status | Command::Services | Command::Reload => {}
    }
    let socket = socket_path(&cli, socket_from_env)?;
    let timeout = Duration::try_from_secs_f64(cli.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let text = match cli.command {
        Command::Peers => {
            let response = client::request(&socket, &Request::Peers, timeout)?;
            let peers = response
                .peers
                .context("the daemon's answer has no peer list")?;
            render::peers_with_control(&peers, response.control.as_ref(), cli.output, now_ms)?
        }
        Command::Status => {
            let response = client::request(&socket, &Request::Status, timeout)?;
            let status = response
                .status
                .context("the daemon's answer has no status")?;
            render::status_with_control(&status, response.control.as_ref(), cli.output)?
        }
        Command::Services => {
            let response = client::request(&socket, &Request::Services, timeout)?;
            let services = response
                .services
                .context("the daemon's answer has no service list")?;
            render::services(&services, cli.output)?
        }
        Command::Reload => {
            let response = client::request(&socket, &Request::Reload, timeout)?;
            let report = response
                .reload
                .context("the daemon's answer has no reload report")?;
            render::reload(&report, cli.output)?
        }
        Command::Genkey | Command::Pubkey | Command::Pki(_) => unreachable!("handled above"),
    };
    print(&text)
}

fn socket_path(cli: &Cli, socket_from_env: bool) -> anyhow::Result<PathBuf> {
    let from_interface = |name: &str| -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "invalid interface name {name:?}"
        );
        Ok(PathBuf::from(SOCKET_DIR).join(format!("{name}.sock")))
    };
    match (&cli.socket, &cli.interface) {
        (Some(socket), Some(_)) if !socket_from_env => Ok(socket.clone()),
        (_, Some(name)) => from_interface(name),
        (Some(socket), None) => Ok(socket.clone()),
        (None, None) => from_interface(DEFAULT_INTERFACE),
    }
}

fn pubkey() -> anyhow::Result<()> {
    let mut text = String::new();
    io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("failed to read a private key from stdin")?;
    let key = PrivateKey::try_from_base64(text.trim())
        .context("invalid private key on stdin (expected the base64 that `tunctl genkey` or `wg genkey` prints)")?;
    print(&format!("{}\n", key.public_key().to_base64()))
}

/// Writes to stdout; a closed pipe (`tunctl peers | head -1`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("failed to write to stdout")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tunctl").chain(args.iter().copied())).unwrap()
    }

    /// Built by hand: parsing would pick up ISTHMUS_ADMIN_SOCKET from the test's environment.
    fn cli(socket: Option<&str>, interface: Option<&str>) -> Cli {
        Cli {
            socket: socket.map(PathBuf::from),
            interface: interface.map(String::from),
            output: OutputFormat::Table,
            timeout: 5.0,
            command: Command::Peers,
        }
    }

    #[test]
    fn socket_resolution() {
        assert_eq!(
            socket_path(&cli(None, None), false).unwrap(),
            PathBuf::from("/run/isthmus/isthmus0.sock")
        );
        assert_eq!(
            socket_path(&cli(None, Some("edge1")), false).unwrap(),
            PathBuf::from("/run/isthmus/edge1.sock")
        );
        let both = cli(Some("/tmp/x.sock"), Some("edge1"));
        assert_eq!(
            socket_path(&both, false).unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        // The same, had the socket come from ISTHMUS_ADMIN_SOCKET: -i wins.
        assert_eq!(
            socket_path(&both, true).unwrap(),
            PathBuf::from("/run/isthmus/edge1.sock")
        );
        assert_eq!(
            socket_path(&cli(Some("/tmp/x.sock"), None), true).unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(socket_path(&cli(None, Some("../etc")), false).is_err());
    }

    #[test]
    fn output_formats_parse() {
        assert_eq!(parse(&["-o", "wide", "peers"]).output, OutputFormat::Wide);
        assert_eq!(parse(&["status", "-o", "yaml"]).output, OutputFormat::Yaml);
        assert!(Cli::try_parse_from(["tunctl", "-o", "xml", "peers"]).is_err());
        Cli::command().debug_assert();
    }
}
