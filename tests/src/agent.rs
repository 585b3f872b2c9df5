//! Route agents in a lab: started in a namespace (entering only its network namespace, so the
//! cgroup v2 mount stays visible for the socket programs), queried through their admin socket,
//! stopped with a signal. And [`WatchServer`], a stand-in for a gateway's watch socket, for
//! tests that feed an agent a catalog of their own.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use isthmus_catalog_view::{BackendInfo, PortInfo, ServiceInfo, WatchLine, SCHEMA_VERSION};
use isthmus_route_agent::status::Status;

use crate::lab::{lock, Lab};
use crate::process::{ChildGuard, Signal};

pub const AGENT_BIN: &str = "isthmus-route-agent";
/// How long an agent gets to load its programs and answer on its admin socket.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(15);
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an agent gets its catalog.
#[derive(Debug, Clone)]
pub enum AgentSource {
    Unix(PathBuf),
    Tcp(SocketAddr),
    /// The etcd store a gateway mirrors into: endpoint URL and key prefix.
    Etcd(String, String),
}

/// The command line of one agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub source: AgentSource,
    /// `--interfaces` patterns.
    pub interfaces: Vec<String>,
    /// `--gateway`: install the catalog's routes via this address.
    pub gateway: Option<IpAddr>,
    /// Attach the socket programs (local processes).
    pub sockets: bool,
    /// Further arguments (capacity flags, metrics).
    pub extra: Vec<String>,
}

impl AgentSpec {
    pub fn new(source: AgentSource) -> AgentSpec {
        AgentSpec {
            source,
            interfaces: Vec::new(),
            gateway: None,
            sockets: true,
            extra: Vec::new(),
        }
    }

    pub fn interfaces(mut self, patterns: &[&str]) -> AgentSpec {
        self.interfaces = patterns.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    pub fn gateway(mut self, addr: impl Into<IpAddr>) -> AgentSpec {
        self.gateway = Some(addr.into());
        self
    }

    pub fn sockets(mut self, on: bool) -> AgentSpec {
        self.sockets = on;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> AgentSpec {
        self.extra.push(a.into());
        self
    }

    fn args(&self, admin: &Path) -> Vec<String> {
        let mut args = vec!["run".to_owned()];
        match &self.source {
            AgentSource::Unix(p) => {
                args.push("--watch-socket".into());
                args.push(p.display().to_string());
            }
            AgentSource::Tcp(a) => {
                args.push("--watch-addr".into());
                args.push(a.to_string());
            }
            AgentSource::Etcd(endpoint, prefix) => {
                args.extend(["--etcd".into(), endpoint.clone()]);
                args.extend(["--etcd-prefix".into(), prefix.clone()]);
            }
        }
        if !self.interfaces.is_empty() {
            args.push("--interfaces".into());
            args.push(self.interfaces.join(","));
        }
        if let Some(gw) = self.gateway {
            args.push("--gateway".into());
            args.push(gw.to_string());
        }
        if !self.sockets {
            args.push("--no-socket-lb".into());
        }
        args.push("--admin-socket".into());
        args.push(admin.display().to_string());
        args.extend(self.extra.iter().cloned());
        args
    }
}

impl Lab {
    /// The admin socket of agent `name`.
    pub fn agent_socket(&self, name: &str) -> PathBuf {
        self.dir().join(format!("agent-{name}.sock"))
    }

    /// Starts `isthmus-route-agent run` in `ns` as `name` and waits until it answers on its
    /// admin socket. Fails quoting its stderr if it exits first.
    pub fn start_agent(&self, ns: &str, name: &str, spec: &AgentSpec) -> Result<()> {
        let bin = self.binary(AGENT_BIN)?;
        let admin = self.agent_socket(name);
        {
            let mut agents = lock(&self.agents);
            if let Some(old) = agents.get_mut(name) {
                if old.is_running() {
                    bail!("an agent named {name} is already running");
                }
            }
            let mut cmd = Command::new(bin);
            cmd.args(spec.args(&admin))
                .env("ISTHMUS_LOG", "isthmus_route_agent=debug,info");
            let child =
                ChildGuard::spawn_net_only(ns, &self.next_log_name(name), &cmd, self.dir())?;
            agents.insert(name.to_owned(), child);
        }
        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        loop {
            if self.agent_status(name).is_ok() {
                return Ok(());
            }
            {
                let mut agents = lock(&self.agents);
                let child = agents.get_mut(name).expect("inserted above");
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "agent {name} in {ns} exited with {status} at start; its stderr:\n{}",
                        child.stderr()
                    );
                }
                if Instant::now() >= deadline {
                    child.kill();
                    bail!(
                        "agent {name} in {ns} did not answer within {AGENT_START_TIMEOUT:?}; its stderr:\n{}",
                        child.stderr()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `isthmus-route-agent status -o json` of agent `name`.
    pub fn agent_status(&self, name: &str) -> Result<Status> {
        let bin = self.binary(AGENT_BIN)?;
        let out = crate::netns::checked(Command::new(bin).args([
            "status",
            "--admin-socket",
            &self.agent_socket(name).display().to_string(),
            "-o",
            "json",
        ]))?;
        serde_json::from_str(&out).with_context(|| format!("agent {name}'s status: {out}"))
    }

    /// `isthmus-route-agent status` (the table) of agent `name`.
    pub fn agent_status_text(&self, name: &str) -> Result<String> {
        let bin = self.binary(AGENT_BIN)?;
        crate::netns::checked(Command::new(bin).args([
            "status",
            "--admin-socket",
            &self.agent_socket(name).display().to_string(),
        ]))
    }

    /// Waits until agent `name`'s status satisfies `cond`; returns the last status either way.
    pub fn wait_agent(
        &self,
        name: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Status) -> bool,
    ) -> (bool, Option<Status>) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(s) = self.agent_status(name) {
                let ok = cond(&s);
                last = Some(s);
                if ok {
                    return (true, last);
                }
            }
            if Instant::now() >= deadline {
                return (false, last);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn agent_pid(&self, name: &str) -> u32 {
        lock(&self.agents)
            .get(name)
            .unwrap_or_else(|| panic!("no agent named {name}"))
            .pid()
    }

    pub fn agent_running(&self, name: &str) -> bool {
        lock(&self.agents)
            .get_mut(name)
            .is_some_and(ChildGuard::is_running)
    }

    pub fn agent_stderr(&self, name: &str) -> String {
        lock(&self.agents)
            .get(name)
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    pub fn signal_agent(&self, name: &str, sig: Signal) -> Result<()> {
        lock(&self.agents)
            .get(name)
            .with_context(|| format!("no agent named {name}"))?
            .signal(sig)
    }

    /// Sends `sig` and waits for the agent to exit.
    pub fn stop_agent(&self, name: &str, sig: Signal) -> Result<ExitStatus> {
        lock(&self.agents)
            .get_mut(name)
            .with_context(|| format!("no agent named {name}"))?
            .stop(sig, AGENT_STOP_TIMEOUT)
    }

    /// Prints every agent's stderr tail.
    pub fn dump_agent_logs(&self) {
        for child in lock(&self.agents).values() {
            child.dump();
        }
    }
}

/// The kernel objects an agent process holds, read from its `/proc/<pid>/fdinfo`: BPF
/// programs, maps and links by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpfObjects {
    pub progs: Vec<u32>,
    pub maps: Vec<u32>,
    pub links: Vec<u32>,
}

impl BpfObjects {
    pub fn of_pid(pid: u32) -> Result<BpfObjects> {
        let dir = format!("/proc/{pid}/fdinfo");
        let mut out = BpfObjects::default();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            for line in text.lines() {
                let mut it = line.split(':');
                let (Some(k), Some(v)) = (it.next(), it.next()) else {
                    continue;
                };
                let Ok(id) = v.trim().parse::<u32>() else {
                    continue;
                };
                match k.trim() {
                    "prog_id" => out.progs.push(id),
                    "map_id" => out.maps.push(id),
                    "link_id" => out.links.push(id),
                    _ => {}
                }
            }
        }
        for v in [&mut out.progs, &mut out.maps, &mut out.links] {
            v.sort_unstable();
            v.dedup();
        }
        Ok(out)
    }

    /// The ones the kernel still has (asked with `bpftool … show id N`).
    pub fn still_in_kernel(&self) -> BpfObjects {
        let alive = |kind: &str, id: u32| {
            Command::new("bpftool")
                .args([kind, "show", "id", &id.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        BpfObjects {
            progs: self
                .progs
                .iter()
                .copied()
                .filter(|i| alive("prog", *i))
                .collect(),
            maps: self
                .maps
                .iter()
                .copied()
                .filter(|i| alive("map", *i))
                .collect(),
            links: self
                .links
                .iter()
                .copied()
                .filter(|i| alive("link", *i))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.maps.is_empty() && self.links.is_empty()
    }

    /// Entries in each of these maps as the kernel holds them, by map name (`bpftool map
    /// dump`): what the agent really wrote, not its own record of it. Maps that are gone are
    /// left out.
    pub fn map_entries(&self) -> Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for id in &self.maps {
            let id = id.to_string();
            let Ok(show) = crate::netns::checked(
                Command::new("bpftool").args(["-j", "map", "show", "id", &id]),
            ) else {
                continue;
            };
            let show: serde_json::Value =
                serde_json::from_str(&show).with_context(|| format!("bpftool map show: {show}"))?;
            let name = show["name"].as_str().unwrap_or_default().to_owned();
            let dump = crate::netns::checked(
                Command::new("bpftool").args(["-j", "map", "dump", "id", &id]),
            )?;
            let dump: serde_json::Value =
                serde_json::from_str(&dump).with_context(|| format!("bpftool map dump: {dump}"))?;
            let n = dump
                .as_array()
                .with_context(|| format!("bpftool map dump id {id} is not a list"))?
                .len();
            out.insert(name, n);
        }
        Ok(out)
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (setns(2) on CLONE_NEWNET
/// moves only the calling thread), for sockets a test opens there itself: an unconnected UDP
/// socket that reads the source of an answer, an HTTP request to an agent's metrics.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let path = Path::new(crate::netns::NETNS_DIR).join(ns);
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {ns}"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in namespace {ns} panicked"))?
    })
}

/// `GET /metrics` from an agent's `--metrics-listen` address `addr` inside namespace `ns`:
/// the body, after checking for a 200.
pub fn agent_metrics(ns: &str, addr: SocketAddr) -> Result<String> {
    in_netns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr} in {ns}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP header in {response:?}"))?;
        anyhow::ensure!(
            head.starts_with("HTTP/1.1 200"),
            "GET /metrics: {}",
            head.lines().next().unwrap_or_default()
        );
        Ok(body.to_owned())
    })
}

/// The value of the sample `name` (with exactly these `{labels}`, or none) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[derive(Default)]
struct WatchState {
    line: Option<String>,
    version: u64,
    kick: u64,
    accepting: bool,
    stop: bool,
}

/// A stand-in for a gateway's watch socket: serves the line given to [`WatchServer::set`] to
/// every client at once and again after every change.
pub struct WatchServer {
    path: PathBuf,
    state: Arc<Mutex<WatchState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatchServer {
    pub fn start(path: &Path) -> Result<WatchServer> {
        let state = Arc::new(Mutex::new(WatchState {
            accepting: true,
            ..WatchState::default()
        }));
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let shared = state.clone();
        let sock_path = path.to_owned();
        let thread = std::thread::spawn(move || serve(listener, &sock_path, &shared));
        Ok(WatchServer {
            path: path.to_owned(),
            state,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `line` (one JSON document, no newline) from now on.
    pub fn set_raw(&self, line: String) {
        let mut s = lock(&self.state);
        s.line = Some(line);
        s.version += 1;
    }

    pub fn set(&self, line: &WatchLine) {
        self.set_raw(serde_json::to_string(line).expect("a watch line encodes"));
    }

    /// Closes every connection and refuses new ones until [`WatchServer::resume`]: the gateway
    /// is away.
    pub fn pause(&self) {
        let mut s = lock(&self.state);
        s.accepting = false;
        s.kick += 1;
    }

    pub fn resume(&self) {
        lock(&self.state).accepting = true;
    }
}

impl Drop for WatchServer {
    fn drop(&mut self) {
        lock(&self.state).stop = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, path: &Path, state: &Mutex<WatchState>) {
    let mut listener = Some(listener);
    let mut clients: Vec<UnixStream> = Vec::new();
    let (mut sent, mut kicked) = (0u64, 0u64);
    loop {
        let (line, version, kick, accepting, stop) = {
            let s = lock(state);
            (s.line.clone(), s.version, s.kick, s.accepting, s.stop)
        };
        if stop {
            return;
        }
        if kick != kicked {
            kicked = kick;
            clients.clear();
        }
        match (&listener, accepting) {
            (Some(_), false) => {
                listener = None;
                let _ = std::fs::remove_file(path);
            }
            (None, true) => {
                let _ = std::fs::remove_file(path);
                if let Ok(l) = UnixListener::bind(path) {
                    let _ = l.set_nonblocking(true);
                    listener = Some(l);
                }
            }
            _ => {}
        }
        if let Some(l) = &listener {
            while let Ok((mut c, _)) = l.accept() {
                let _ = c.set_nonblocking(false);
                if let Some(line) = &line {
                    if writeln!(c, "{line}").is_err() {
                        continue;
                    }
                }
                clients.push(c);
            }
        }
        if version != sent {
            sent = version;
            if let Some(line) = &line {
                clients.retain_mut(|c| writeln!(c, "{line}").is_ok());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A watch line at `revision` with `services` and `routes`.
pub fn watch_line(revision: u64, services: Vec<ServiceInfo>, routes: &[&str]) -> WatchLine {
    WatchLine {
        schema: SCHEMA_VERSION,
        revision,
        cluster: "c1".to_owned(),
        services,
        routes: routes.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// A ClusterSetIP service `ns/name` at `vips` with TCP+UDP `port` (and any `extra_ports`)
/// whose backends are `(cluster, address, port, weight)`.
pub fn service_info(
    service: &str,
    vips: &[&str],
    policy: &str,
    ports: &[(u16, &str)],
    backends: &[(&str, &str, u16, u32)],
) -> ServiceInfo {
    let (namespace, name) = service.split_once('/').expect("namespace/name");
    ServiceInfo {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        vips: vips.iter().map(|v| (*v).to_owned()).collect(),
        headless: false,
        policy: policy.to_owned(),
        ports: ports
            .iter()
            .map(|(p, proto)| PortInfo {
                name: None,
                port: *p,
                protocol: (*proto).to_owned(),
            })
            .collect(),
        clusters: Vec::new(),
        unavailable: Vec::new(),
        endpoints_healthy: backends.len(),
        endpoints_total: backends.len(),
        per_cluster: Vec::new(),
        backends: backends
            .iter()
            .map(|(c, a, p, w)| BackendInfo {
                cluster: (*c).to_owned(),
                address: (*a).to_owned(),
                port: *p,
                weight: *w,
            })
            .collect(),
    }
}
