//! `isthmus-route-agent run|status`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use isthmus_route_agent::config::{cgroup2_root, Cli, Command, LogFormat, OutputFormat};
use isthmus_route_agent::status::Status;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            let log_format = args.log_format;
            init_logging(log_format);
            match (*args).into_config(cgroup2_root) {
                Ok(config) => {
                    runtime().and_then(|rt| rt.block_on(isthmus_route_agent::daemon::run(config)))
                }
                Err(e) => Err(anyhow::anyhow!("invalid arguments: {e}")),
            }
        }
        Command::Status(args) => runtime().and_then(|rt| {
            let status = rt.block_on(isthmus_route_agent::daemon::admin::query(
                &args.admin_socket,
            ))?;
            match args.output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                OutputFormat::Table => print!("{}", table(&status)),
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("isthmus-route-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the runtime")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let conn = if s.connected {
        "connected".to_owned()
    } else {
        format!(
            "not connected: {}",
            s.source_error.as_deref().unwrap_or("-")
        )
    };
    let _ = writeln!(out, "source       {} ({conn})", s.source);
    let _ = writeln!(
        out,
        "catalog      cluster {}, revision {}, last reconcile {}",
        if s.cluster.is_empty() {
            "-"
        } else {
            &s.cluster
        },
        s.revision.map_or("-".to_owned(), |r| r.to_string()),
        s.last_reconcile_us
            .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0))
    );
    if let Some(e) = &s.reconcile_error {
        let _ = writeln!(out, "error        {e}");
    }
    if s.catalogs_refused > 0 {
        let _ = writeln!(
            out,
            "refused      {} catalog updates; last: {}",
            s.catalogs_refused,
            s.last_refusal.as_deref().unwrap_or("-")
        );
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(out, "interfaces   {}", list(&s.interfaces));
    let _ = writeln!(out, "sockets      {}", s.sockets.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "routes       {}", list(&s.routes));
    let maps: Vec<String> = s
        .maps
        .iter()
        .map(|(m, f)| format!("{m} {}/{}", f.entries, f.capacity))
        .collect();
    let _ = writeln!(out, "maps         {}", maps.join("  "));
    let drops: Vec<String> = s
        .totals
        .iter()
        .filter(|(k, v)| k.starts_with("drop") && **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(out, "drops        {}", list(&drops));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<28} {:<18} {:<20} {:<12} {:>9} {:>7}  BACKENDS (cluster address:port slots)",
        "SERVICE", "VIPS", "PORTS", "POLICY", "NEW FLOWS", "DROPS"
    );
    for svc in &s.services {
        let new_flows = ["new_flow", "sock_connect"]
            .iter()
            .filter_map(|k| svc.counters.get(*k))
            .map(|c| c.packets)
            .sum::<u64>();
        let drops: u64 = svc
            .counters
            .iter()
            .filter(|(k, _)| k.starts_with("drop"))
            .map(|(_, c)| c.packets)
            .sum();
        let backends: Vec<String> = svc
            .backends
            .iter()
            .map(|b| {
                let port = if b.port == 0 {
                    "*".to_owned()
                } else {
                    b.port.to_string()
                };
                format!("{} {}:{port} {}", b.cluster, b.address, b.slots)
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<28} {:<18} {:<20} {:<12} {:>9} {:>7}  {}",
            format!("{}/{}", svc.namespace, svc.name),
            svc.vips.join(","),
            svc.ports.join(","),
            svc.policy,
            new_flows,
            drops,
            if backends.is_empty() {
                "none (dropped)".to_owned()
            } else {
                backends.join(", ")
            }
        );
    }
    for u in &s.unprogrammed {
        let _ = writeln!(out, "NOT PROGRAMMED {}: {}", u.service, u.reason);
    }
    out
}
