//! Command line (every flag also an `ISTHMUS_*` variable), parsed into a validated [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use isthmus_ebpf::Capacity;

/// Default route protocol number of the routes the agent installs (`ip route … proto 73`),
/// how it finds its own routes again after a crash.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 73;
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/isthmus/route-agent.sock";

#[derive(Debug, Parser)]
#[command(
    name = "isthmus-route-agent",
    version,
    about = "Programs the eBPF maps that carry clusterset VIP traffic on this node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: follow the catalog, attach to pod veths, program the maps.
    Run(Box<RunArgs>),
    /// Show what a running agent has programmed.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The gateway's watch socket on this node (a gateway node).
    #[arg(long, env = "ISTHMUS_WATCH_SOCKET", value_name = "PATH",
          conflicts_with_all = ["watch_addr", "etcd"])]
    pub watch_socket: Option<PathBuf>,
    /// The gateway's watch stream over the cluster network (`[control] watch_listen`).
    #[arg(
        long,
        env = "ISTHMUS_WATCH_ADDR",
        value_name = "HOST:PORT",
        conflicts_with = "etcd"
    )]
    pub watch_addr: Option<SocketAddr>,
    /// etcd endpoints of the store the gateway mirrors the catalog into (`[store]`).
    #[arg(long, env = "ISTHMUS_ETCD", value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The store's key prefix.
    #[arg(
        long,
        env = "ISTHMUS_ETCD_PREFIX",
        value_name = "PREFIX",
        requires = "etcd"
    )]
    pub etcd_prefix: Option<String>,
    /// Pod veths (host side) to attach to: names or patterns with `*`, comma-separated.
    #[arg(
        long,
        env = "ISTHMUS_INTERFACES",
        value_name = "PATTERNS",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// On a node that is not the gateway: install the catalog's routes via this address (the
    /// gateway node). Leave unset on the gateway node.
    #[arg(long, env = "ISTHMUS_GATEWAY", value_name = "ADDR")]
    pub gateway: Option<IpAddr>,
    /// Route protocol number that marks the agent's routes.
    #[arg(long, env = "ISTHMUS_ROUTE_PROTOCOL", default_value_t = DEFAULT_ROUTE_PROTOCOL,
          value_parser = clap::value_parser!(u8).range(5..=255))]
    pub route_protocol: u8,
    /// cgroup v2 directory for the socket programs (local processes of this node reach VIPs);
    /// default: the cgroup v2 root (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
    #[arg(long, env = "ISTHMUS_CGROUP", value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Do not attach the socket programs.
    #[arg(long, env = "ISTHMUS_NO_SOCKET_LB")]
    pub no_socket_lb: bool,
    #[arg(long, env = "ISTHMUS_ADMIN_SOCKET", value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "ISTHMUS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Map capacity: VIP ports (and VIPs, and services).
    #[arg(long, env = "ISTHMUS_MAX_SERVICES", default_value_t = Capacity::default().services,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_services: u32,
    /// Map capacity: backends over all services.
    #[arg(long, env = "ISTHMUS_MAX_BACKENDS", default_value_t = Capacity::default().backends,
          value_parser = clap::value_parser!(u32).range(1..=16_000_000))]
    pub max_backends: u32,
    /// Map capacity: slots over all services' tables.
    #[arg(long, env = "ISTHMUS_MAX_SLOTS", default_value_t = Capacity::default().slots,
          value_parser = clap::value_parser!(u32).range(1..=16_000_000))]
    pub max_slots: u32,
    /// Map capacity: flows to VIPs held at once (least recently used go first).
    #[arg(long, env = "ISTHMUS_MAX_FLOWS", default_value_t = Capacity::default().flows,
          value_parser = clap::value_parser!(u32).range(1..=16_000_000))]
    pub max_flows: u32,
    #[arg(long, env = "ISTHMUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, env = "ISTHMUS_ADMIN_SOCKET", value_name = "PATH", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Where the catalog comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Unix(p) => write!(f, "unix:{}", p.display()),
            Source::Tcp(a) => write!(f, "tcp:{a}"),
            Source::Etcd { endpoints, prefix } => {
                write!(f, "etcd:{}{prefix}", endpoints.join(","))
            }
        }
    }
}

/// A pattern naming interfaces: literal text with `*` matching any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub interfaces: Vec<Pattern>,
    pub gateway: Option<IpAddr>,
    pub route_protocol: u8,
    /// `None`: socket programs off.
    pub cgroup: Option<PathBuf>,
    pub admin_socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub capacity: Capacity,
    pub log_format: LogFormat,
}

/// A command line that parsed but does not make sense; names the flag and value.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {why}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub why: String,
}

fn bad(flag: &'static str, value: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        value: value.into(),
        why: why.into(),
    }
}

impl RunArgs {
    /// Validates the flags. `cgroup_root` finds the default cgroup v2 root (the real one reads
    /// `/proc/self/mountinfo`; tests pass their own).
    pub fn into_config(
        self,
        cgroup_root: impl FnOnce() -> Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let source = match (self.watch_socket, self.watch_addr, self.etcd.is_empty()) {
            (Some(p), None, true) => Source::Unix(p),
            (None, Some(a), true) => Source::Tcp(a),
            (None, None, false) => {
                for e in &self.etcd {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        return Err(bad(
                            "--etcd",
                            e,
                            "expected a URL such as http://127.0.0.1:2379",
                        ));
                    }
                }
                let prefix = self.etcd_prefix.ok_or_else(|| {
                    bad(
                        "--etcd-prefix",
                        "",
                        "needed with --etcd: the gateway's [store] etcd_prefix",
                    )
                })?;
                if !prefix.starts_with('/') || prefix.trim_end_matches('/').is_empty() {
                    return Err(bad(
                        "--etcd-prefix",
                        prefix,
                        "expected an absolute key prefix below the root, e.g. /isthmus/clusterset",
                    ));
                }
                Source::Etcd {
                    endpoints: self.etcd,
                    prefix,
                }
            }
            _ => {
                return Err(bad(
                    "--watch-socket/--watch-addr/--etcd",
                    "",
                    "give exactly one catalog source",
                ))
            }
        };
        let mut interfaces = Vec::new();
        for p in self.interfaces {
            let p = p.trim().to_owned();
            if p.is_empty() || p.len() > 15 || p.contains('/') || p.contains(char::is_whitespace) {
                return Err(bad(
                    "--interfaces",
                    p,
                    "an interface name or pattern of 1 to 15 characters (`*` matches any run)",
                ));
            }
            interfaces.push(Pattern(p));
        }
        if let Some(gw) = self.gateway {
            if gw.is_unspecified() || gw.is_multicast() || gw.is_loopback() {
                return Err(bad("--gateway", gw.to_string(), "not a unicast address"));
            }
        }
        let cgroup = if self.no_socket_lb {
            None
        } else {
            match self.cgroup {
                Some(p) => Some(p),
                None => Some(cgroup_root().ok_or_else(|| {
                    bad(
                        "--cgroup",
                        "",
                        "no cgroup v2 hierarchy is mounted: give --cgroup PATH or --no-socket-lb",
                    )
                })?),
            }
        };
        Ok(Config {
            source,
            interfaces,
            gateway: self.gateway,
            route_protocol: self.route_protocol,
            cgroup,
            admin_socket: self.admin_socket,
            metrics_listen: self.metrics_listen,
            capacity: Capacity {
                services: self.max_services,
                backends: self.max_backends,
                slots: self.max_slots,
                flows: self.max_flows,
            },
            log_format: self.log_format,
        })
    }
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // … mount-point … - fstype source options
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["isthmus-route-agent", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(run) => (*run)
                .into_config(|| Some(PathBuf::from("/sys/fs/cgroup/unified")))
                .map_err(|e| e.to_string()),
            Command::Status(_) => unreachable!(),
        }
    }

    #[test]
    fn sources_parse_and_exactly_one_is_required() {
        let c = parse(&["--watch-socket", "/run/c.sock", "--interfaces", "pod*,eth1"]).unwrap();
        assert_eq!(c.source, Source::Unix("/run/c.sock".into()));
        assert!(c.interfaces[0].matches("pod12") && c.interfaces[1].matches("eth1"));
        assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let c = parse(&[
            "--watch-addr",
            "10.1.0.1:7474",
            "--gateway",
            "10.1.0.1",
            "--no-socket-lb",
        ])
        .unwrap();
        assert_eq!(c.source, Source::Tcp("10.1.0.1:7474".parse().unwrap()));
        assert_eq!(c.cgroup, None);
        let c = parse(&[
            "--etcd",
            "http://127.0.0.1:2379",
            "--etcd-prefix",
            "/isthmus/c1",
        ])
        .unwrap();
        assert!(matches!(c.source, Source::Etcd { .. }));
        for (args, want) in [
            (vec![], "give exactly one catalog source"),
            (
                vec!["--watch-socket", "/a", "--watch-addr", "1.2.3.4:5"],
                "cannot be used with",
            ),
            (
                vec!["--etcd", "127.0.0.1:2379", "--etcd-prefix", "/p"],
                "--etcd \"127.0.0.1:2379\": expected a URL",
            ),
            (vec!["--etcd", "http://e:2379"], "--etcd-prefix"),
            (
                vec!["--etcd", "http://e:2379", "--etcd-prefix", "p"],
                "absolute key prefix",
            ),
            (vec!["--watch-addr", "10.1.0.1"], "invalid value '10.1.0.1'"),
            (
                vec![
                    "--watch-socket",
                    "/a",
                    "--interfaces",
                    "a-very-long-interface-name",
                ],
                "--interfaces",
            ),
            (
                vec!["--watch-socket", "/a", "--gateway", "0.0.0.0"],
                "--gateway \"0.0.0.0\": not a unicast",
            ),
            (
                vec!["--watch-socket", "/a", "--max-backends", "0"],
                "--max-backends",
            ),
            (
                vec!["--watch-socket", "/a", "--route-protocol", "2"],
                "--route-protocol",
            ),
        ] {
            let e = parse(&args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e} does not contain {want}");
        }
    }

    #[test]
    fn without_cgroup2_the_socket_programs_need_a_path_or_off() {
        let cli = Cli::try_parse_from(["x", "run", "--watch-socket", "/a"]).unwrap();
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        let e = run.into_config(|| None).unwrap_err();
        assert!(e.to_string().contains("--no-socket-lb"), "{e}");
    }

    #[test]
    fn patterns_match_like_globs() {
        let p = Pattern("veth*x".into());
        assert!(p.matches("vethx") && p.matches("veth12x") && !p.matches("veth12"));
        assert!(Pattern("*".into()).matches("anything"));
        assert!(!Pattern("pod0".into()).matches("pod01"));
    }
}
