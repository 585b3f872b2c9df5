//! The bench's lab: one node with a client pod and two backend pods, the route agent attached
//! to every pod veth and fed by [`Feed`], the backends' servers, and kube-proxy's rule set,
//! loaded into the node namespace only while a path needs it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use isthmus_catalog_view::ServiceInfo;
use isthmus_lab::agent::{service_info, watch_line, AgentSource, AgentSpec, AGENT_BIN};
use isthmus_lab::app::Serve;
use isthmus_lab::{ChildGuard, Lab, Probe, ProbeReport};
use isthmus_route_agent::status::Status;

use crate::feed::{self, Feed};
use crate::traffic::Path;

/// The lab prefix: sweeping stale bench labs never touches the tests' labs.
const LAB_PREFIX: &str = "vb";
/// The agent's name in the lab.
pub const AGENT: &str = "node";
/// The greeting servers' port (a VIP port keeps its number on the backend).
pub const WEB_PORT: u16 = 7000;
/// iperf3's port.
pub const IPERF_PORT: u16 = 5201;
/// (b): the clusterset VIPs the agent programs (the gateway's default VIP range).
pub const VIP_WEB: Ipv4Addr = Ipv4Addr::new(241, 0, 0, 10);
pub const VIP_IPERF: Ipv4Addr = Ipv4Addr::new(241, 0, 0, 11);
/// (c): the ClusterIPs kube-proxy's rules translate (a Kubernetes service CIDR).
pub const CLUSTER_IP_WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const CLUSTER_IP_IPERF: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// The cluster CIDR kube-proxy is told (`--cluster-cidr`): traffic from outside it to a
/// ClusterIP is masqueraded.
const CLUSTER_CIDR: &str = "10.1.0.0/16";
/// Revision of the bench's own catalog (the two services above); the catalog timings count
/// up from here.
pub const BASE_REVISION: u64 = 1;
/// Connections of each path's check before anything is timed.
const CHECK_CONNECTIONS: u64 = 40;

/// A backend pod.
pub struct Backend {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
}

pub struct Bench {
    pub client: String,
    pub backends: [Backend; 2],
    pub admin: PathBuf,
    pub agent_pid: u32,
    pub app: PathBuf,
    pub feed: Feed,
    /// Niceness of clients and servers (0: left alone).
    nice: i32,
    rules_file: PathBuf,
    rules_loaded: Mutex<bool>,
    /// iperf3 servers; dropped (killed) before the lab.
    _iperf: Vec<ChildGuard>,
    pub lab: Lab,
}

/// What the checks before the timed runs saw, per path.
#[derive(Debug, Clone, Default)]
pub struct PathCheck {
    /// Answers by backend name.
    pub split: BTreeMap<String, u64>,
    /// The agent's new flows during the check (translated by the programs).
    pub new_flows: u64,
    /// Connections kube-proxy's DNAT rules sent to each endpoint.
    pub dnat: BTreeMap<String, u64>,
    /// Growth of the node namespace's conntrack table during the check.
    pub conntrack_added: u64,
}

impl Bench {
    pub fn build(nice: i32) -> Result<Bench> {
        let lab = Lab::builder().prefix(LAB_PREFIX).clusters(1).build()?;
        let client = lab.pod_ns(1);
        let mut backends = Vec::new();
        for name in ["b1", "b2"] {
            let (ns, addr) = lab.add_pod(1, name)?;
            lab.start_server(
                &ns,
                name,
                &Serve::new(name).tcp(SocketAddr::from((addr, WEB_PORT))),
            )?;
            if nice != 0 {
                renice_all(lab.app_pid(name), nice)?;
            }
            backends.push(Backend {
                name: name.to_owned(),
                ns,
                addr,
            });
        }
        let backends: [Backend; 2] = backends
            .try_into()
            .map_err(|_| anyhow::anyhow!("two backends"))?;
        // One iperf3 server: iperf3's control and data connections must reach the same server,
        // and neither round-robin nor kube-proxy's random split keeps two connections together
        // (there is no client-IP affinity), so the throughput service has one backend.
        let mut iperf = Command::new("nice");
        iperf.args([
            "-n",
            &nice.to_string(),
            "iperf3",
            "-s",
            "-p",
            &IPERF_PORT.to_string(),
        ]);
        let iperf = vec![lab.spawn_named(&backends[0].ns, "iperf3-b1", &iperf)?];

        let feed = Feed::start(&lab.dir().join("watch.sock"))?;
        feed.send(base_line(&backends, BASE_REVISION));
        let spec = AgentSpec::new(AgentSource::Unix(feed.path().to_owned()))
            .interfaces(&["pod*"])
            .sockets(false)
            .arg("--log-format")
            .arg("json");
        let node = lab.node_ns(1);
        lab.start_agent(&node, AGENT, &spec)?;
        let admin = lab.agent_socket(AGENT);
        let agent_pid = lab.agent_pid(AGENT);
        let exe = std::fs::read_link(format!("/proc/{agent_pid}/exe")).unwrap_or_default();
        anyhow::ensure!(
            exe.file_name().and_then(|n| n.to_str()) == Some(AGENT_BIN),
            "pid {agent_pid} runs {}, not {AGENT_BIN}: its RSS would be someone else's",
            exe.display()
        );
        let app = lab.binary(isthmus_lab::APP_BIN)?;
        let rules_file = lab.dir().join("kube-proxy.rules");
        std::fs::write(&rules_file, kube_proxy_rules(&backends))
            .with_context(|| format!("writing {}", rules_file.display()))?;
        let bench = Bench {
            client,
            backends,
            admin,
            agent_pid,
            app,
            feed,
            nice,
            rules_file,
            rules_loaded: Mutex::new(false),
            _iperf: iperf,
            lab,
        };
        let pods: Vec<String> = bench.lab.node_pod_ifs(1);
        bench.wait_status(
            "the agent to program the bench's services on every pod veth",
            |s| {
                s.revision == Some(BASE_REVISION)
                    && s.services.len() == 2
                    && pods.iter().all(|p| s.interfaces.contains(p))
            },
        )?;
        Ok(bench)
    }

    /// `args` as run in the client pod: under `nice` when the bench was asked to.
    pub fn client_command<S: Into<OsString>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.nice != 0 {
            argv.extend(["nice".into(), "-n".into(), self.nice.to_string().into()]);
        }
        argv.extend(args.into_iter().map(Into::into));
        argv
    }

    /// Runs `probe` from the client pod (under `nice` when asked) and parses its report.
    pub fn probe(&self, probe: &Probe) -> Result<ProbeReport> {
        let argv = self.client_command(
            std::iter::once(self.app.clone().into_os_string())
                .chain(probe.args().into_iter().map(OsString::from)),
        );
        let out = self.lab.exec(&self.client, &argv)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "probe to {} failed ({}): {}",
            probe.target,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        ProbeReport::parse(&stdout).with_context(|| format!("probe printed:\n{stdout}"))
    }

    pub fn node(&self) -> String {
        self.lab.node_ns(1)
    }

    pub fn status(&self) -> Result<Status> {
        Ok(feed::query(&self.admin)?.status)
    }

    /// Polls the agent's status (every 20 ms, up to 20 s) until `cond` holds.
    pub fn wait_status(&self, what: &str, mut cond: impl FnMut(&Status) -> bool) -> Result<Status> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            crate::check_interrupted()?;
            let last = self.status();
            if let Ok(s) = &last {
                if cond(s) {
                    return last;
                }
            }
            if std::time::Instant::now() > deadline {
                self.lab.dump_agent_logs();
                bail!("timed out waiting for {what}; last status: {last:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Loads (`true`) or removes (`false`) kube-proxy's rules in the node namespace. Removing
    /// deletes every nftables table there, so conntrack is off again for the next path.
    pub fn set_rules(&self, on: bool) -> Result<()> {
        let mut loaded = self.rules_loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == on {
            return Ok(());
        }
        let node = self.node();
        if on {
            let file = self.rules_file.display().to_string();
            self.lab
                .run(&node, &["iptables-restore", "-w", "5", &file])
                .context("failed to load kube-proxy's rules")?;
        } else {
            self.lab.run(&node, &["nft", "flush", "ruleset"])?;
            let left = self.lab.run(&node, &["nft", "list", "ruleset"])?;
            anyhow::ensure!(
                left.trim().is_empty(),
                "rules left in {node} after the flush:\n{left}"
            );
        }
        *loaded = on;
        Ok(())
    }

    /// Conntrack entries in the node namespace now. (The per-CPU `insert` statistic stays 0
    /// on current kernels, so growth of the count is what shows new entries.)
    pub fn conntrack_count(&self) -> Result<u64> {
        let text = self.lab.run(
            &self.node(),
            &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
        )?;
        text.trim()
            .parse()
            .with_context(|| format!("bad nf_conntrack_count {text:?}"))
    }

    /// Packets of each endpoint's DNAT rule (kube-proxy's KUBE-SEP chains), by backend name.
    pub fn dnat_packets(&self) -> Result<BTreeMap<String, u64>> {
        let saved = self
            .lab
            .run(&self.node(), &["iptables-save", "-c", "-t", "nat"])?;
        let mut out = BTreeMap::new();
        for b in &self.backends {
            let to = format!("--to-destination {}:{WEB_PORT}", b.addr);
            let packets = saved
                .lines()
                .filter(|l| l.contains("-j DNAT") && l.contains(&to))
                .filter_map(|l| {
                    let counters = l.strip_prefix('[')?.split(']').next()?;
                    counters.split(':').next()?.parse::<u64>().ok()
                })
                .sum();
            out.insert(b.name.clone(), packets);
        }
        Ok(out)
    }

    /// Packets translated by the agent's programs, by reason, over every service.
    pub fn agent_totals(&self) -> Result<Totals> {
        Ok(self.status()?.totals)
    }

    /// Before anything is timed: each path reaches both backends (one for the throughput
    /// service) the way it claims to — the programs count the VIP's flows, kube-proxy's DNAT
    /// rules count theirs, and conntrack is off unless the rules are loaded.
    pub fn check_paths(&self, paths: &[Path]) -> Result<BTreeMap<Path, PathCheck>> {
        let mut out = BTreeMap::new();
        for &path in paths {
            crate::check_interrupted()?;
            self.set_rules(path.rules())?;
            let before = self.agent_totals()?;
            let entries = self.conntrack_count()?;
            let mut check = PathCheck::default();
            for target in path.targets(self) {
                let report = self.probe(&Probe::tcp(target).count(CHECK_CONNECTIONS / 2))?;
                anyhow::ensure!(
                    report.summary.failed == 0,
                    "{}: connections to {target} failed: {report}",
                    path.name()
                );
                for (name, n) in &report.summary.by_name {
                    *check.split.entry(name.clone()).or_default() += n;
                }
            }
            let after = self.agent_totals()?;
            check.new_flows = delta(&before, &after, "new_flow");
            check.conntrack_added = self.conntrack_count()?.saturating_sub(entries);
            if path == Path::Iptables {
                check.dnat = self.dnat_packets()?;
            }
            ensure_no_drops(path, &before, &after)?;
            anyhow::ensure!(
                self.backends
                    .iter()
                    .all(|b| check.split.contains_key(&b.name)),
                "{}: not every backend answered: {:?}",
                path.name(),
                check.split
            );
            if path.ebpf() {
                anyhow::ensure!(
                    check.new_flows >= CHECK_CONNECTIONS,
                    "{}: the programs counted {} new flows for {CHECK_CONNECTIONS} connections",
                    path.name(),
                    check.new_flows
                );
            } else {
                anyhow::ensure!(
                    delta(&before, &after, "forward") == 0,
                    "{}: the programs translated packets of a path that is not theirs",
                    path.name()
                );
            }
            if path == Path::Iptables {
                anyhow::ensure!(
                    check.dnat.values().all(|n| *n > 0),
                    "{}: kube-proxy's DNAT rules counted {:?}",
                    path.name(),
                    check.dnat
                );
            }
            anyhow::ensure!(
                path.rules() == (check.conntrack_added > 0),
                "{}: the conntrack table grew by {} entries with kube-proxy's rules {}",
                path.name(),
                check.conntrack_added,
                if path.rules() { "loaded" } else { "absent" }
            );
            out.insert(path, check);
        }
        self.set_rules(false)?;
        Ok(out)
    }
}

/// Sets the niceness of every thread of `pid` (threads it starts later inherit it).
fn renice_all(pid: u32, nice: i32) -> Result<()> {
    let dir = format!("/proc/{pid}/task");
    let mut cmd = Command::new("renice");
    cmd.args(["-n", &nice.to_string(), "-p"]);
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        cmd.arg(task?.file_name());
    }
    isthmus_lab::netns::checked(&mut cmd)?;
    Ok(())
}

/// The bench's catalog: `bench/web` (two backends, [`WEB_PORT`]) and `bench/iperf` (the first
/// backend, [`IPERF_PORT`]), round-robin.
pub fn base_services(backends: &[Backend; 2]) -> Vec<ServiceInfo> {
    let web: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    vec![
        service_info(
            "bench/iperf",
            &[&VIP_IPERF.to_string()],
            "round_robin",
            &[(IPERF_PORT, "TCP")],
            &[("c1", &web[0], IPERF_PORT, 1)],
        ),
        service_info(
            "bench/web",
            &[&VIP_WEB.to_string()],
            "round_robin",
            &[(WEB_PORT, "TCP")],
            &[("c1", &web[0], WEB_PORT, 1), ("c1", &web[1], WEB_PORT, 1)],
        ),
    ]
}

fn base_line(backends: &[Backend; 2], revision: u64) -> String {
    serde_json::to_string(&watch_line(revision, base_services(backends), &[]))
        .expect("a watch line encodes")
}

/// What kube-proxy (iptables mode) writes for two ClusterIP services — `bench/web` with both
/// backends, `bench/iperf` with the first — on a node whose cluster CIDR is [`CLUSTER_CIDR`]:
/// the filter table's forwarding rules and the nat table's service chains, with
/// kube-proxy's comments, masquerade marks and the NodePort tail rule.
fn kube_proxy_rules(backends: &[Backend; 2]) -> String {
    let sep = |tag: &str, svc: &str, addr: Ipv4Addr, port: u16| {
        format!(
            "-A KUBE-SEP-{tag} -s {addr}/32 -m comment --comment \"{svc}\" -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-{tag} -p tcp -m comment --comment \"{svc}\" -m tcp -j DNAT \
             --to-destination {addr}:{port}\n"
        )
    };
    let svc_head = |tag: &str, svc: &str, ip: Ipv4Addr, port: u16| {
        format!(
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{svc} cluster IP\" -m tcp \
             --dport {port} -j KUBE-SVC-{tag}\n\
             -A KUBE-SVC-{tag} ! -s {CLUSTER_CIDR} -d {ip}/32 -p tcp -m comment --comment \
             \"{svc} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ\n"
        )
    };
    let (b1, b2) = (backends[0].addr, backends[1].addr);
    let mut nat = String::new();
    nat += "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :POSTROUTING ACCEPT [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
            :KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-BENCHWEBTCP7000 - [0:0]\n\
            :KUBE-SVC-BENCHIPERFTCP5201 - [0:0]\n:KUBE-SEP-BENCHWEBB1 - [0:0]\n\
            :KUBE-SEP-BENCHWEBB2 - [0:0]\n:KUBE-SEP-BENCHIPERFB1 - [0:0]\n";
    nat += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
            -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
            -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
            -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
            -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
            -j MASQUERADE --random-fully\n";
    nat += &sep("BENCHIPERFB1", "bench/iperf:tcp", b1, IPERF_PORT);
    nat += &sep("BENCHWEBB1", "bench/web:tcp", b1, WEB_PORT);
    nat += &sep("BENCHWEBB2", "bench/web:tcp", b2, WEB_PORT);
    nat += &svc_head(
        "BENCHIPERFTCP5201",
        "bench/iperf:tcp",
        CLUSTER_IP_IPERF,
        IPERF_PORT,
    );
    nat += &svc_head("BENCHWEBTCP7000", "bench/web:tcp", CLUSTER_IP_WEB, WEB_PORT);
    nat += "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this \
            must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    nat += &format!(
        "-A KUBE-SVC-BENCHIPERFTCP5201 -m comment --comment \"bench/iperf:tcp -> {b1}:{IPERF_PORT}\" \
         -j KUBE-SEP-BENCHIPERFB1\n\
         -A KUBE-SVC-BENCHWEBTCP7000 -m comment --comment \"bench/web:tcp -> {b1}:{WEB_PORT}\" -m \
         statistic --mode random --probability 0.50000000000 -j KUBE-SEP-BENCHWEBB1\n\
         -A KUBE-SVC-BENCHWEBTCP7000 -m comment --comment \"bench/web:tcp -> {b2}:{WEB_PORT}\" \
         -j KUBE-SEP-BENCHWEBB2\n"
    );
    nat += "COMMIT\n";
    let filter = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                  :KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n\
                  :KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n\
                  -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load \
                  balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
                  -A INPUT -m comment --comment \"kubernetes health check service ports\" -j \
                  KUBE-NODEPORTS\n\
                  -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes \
                  externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
                  -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load \
                  balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
                  -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
                  -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service \
                  portals\" -j KUBE-SERVICES\n\
                  -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes \
                  externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
                  -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load \
                  balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
                  -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service \
                  portals\" -j KUBE-SERVICES\n\
                  -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
                  -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark \
                  --mark 0x4000/0x4000 -j ACCEPT\n\
                  -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m \
                  conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                  COMMIT\n";
    format!("{filter}{nat}")
}

/// The agent's packet counters by reason.
pub type Totals = BTreeMap<String, u64>;

/// How much counter `k` grew from `before` to `after`.
pub fn delta(before: &Totals, after: &Totals, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// Fails if the programs dropped anything between the two readings.
pub fn ensure_no_drops(path: Path, before: &Totals, after: &Totals) -> Result<()> {
    let drops: u64 = after
        .keys()
        .filter(|k| k.starts_with("drop"))
        .map(|k| delta(before, after, k))
        .sum();
    anyhow::ensure!(
        drops == 0,
        "{}: the programs dropped {drops} packets",
        path.name()
    );
    Ok(())
}
