//! `isthmus-gateway`: the Isthmus tunnel gateway daemon.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use isthmus_gateway::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Isthmus gateway: WireGuard-protocol tunnels between cluster gateways.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file.
    #[arg(short, long, env = "ISTHMUS_CONFIG")]
    config: PathBuf,
    /// Log line format.
    #[arg(long, env = "ISTHMUS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter, tracing-subscriber syntax (e.g. `info`, `isthmus_gateway=debug`). hickory
    /// logs every DNS request with the client address at INFO, hence the default's second part.
    #[arg(long, env = "ISTHMUS_LOG", default_value = "info,hickory_server=warn")]
    log: String,
    /// Validate the configuration and exit without creating anything.
    #[arg(long)]
    check: bool,
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    init_logging(&args)?;
    let config = Config::load(&args.config)?;
    if args.check {
        println!(
            "{}: ok ({} peers)",
            args.config.display(),
            config.peers.len()
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the runtime")?;
    runtime.block_on(isthmus_gateway::daemon::run(config))
}
