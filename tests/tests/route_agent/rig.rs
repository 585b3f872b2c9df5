//! The lab every route-agent test builds: one cluster with no gateway, backends as further
//! pods of its node, an agent on the node following a stand-in watch socket; and the probes,
//! status reads and metrics the tests check it with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use isthmus_catalog_view::ServiceInfo;
use isthmus_lab::agent::{
    agent_metrics, in_netns, metric_value, service_info, AgentSource, AgentSpec, WatchServer,
};
use isthmus_lab::app::Arrival;
use isthmus_lab::{plan, Lab, Probe, ProbeReport, Serve};
use isthmus_route_agent::status::Status;

/// The port services and backends use unless a test says otherwise.
pub const PORT: u16 = 7000;

/// The agent's name in every lab.
pub const AGENT: &str = "node";

/// How long an agent gets to program a catalog line or attach an interface (it takes
/// milliseconds; the rest is slack for a loaded machine).
pub const PROGRAM_DEADLINE: Duration = Duration::from_secs(10);

/// A probe attempt that should fail is given this long.
pub const FAIL_TIMEOUT: Duration = Duration::from_millis(400);

/// Metrics endpoint inside the node namespace (each lab's node has its own loopback).
pub const METRICS: ([u8; 4], u16) = ([127, 0, 0, 1], 9464);

/// VIP number `n` of the clusterset range 241.0.0.0/16.
pub fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(241, 0, 0, n)
}

/// One cluster (gateway, node, pod) and no gateway process.
pub fn lab() -> Lab {
    Lab::builder()
        .clusters(1)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"))
}

/// Adds pod `suffix` to cluster 1's node and starts a server named `suffix` on its address at
/// each of `ports` (TCP and UDP).
pub fn backend(lab: &Lab, suffix: &str, ports: &[u16]) -> (String, Ipv4Addr) {
    let (ns, addr) = lab
        .add_pod(1, suffix)
        .unwrap_or_else(|e| panic!("adding pod {suffix}: {e:#}"));
    let mut serve = Serve::new(suffix);
    for &p in ports {
        serve = serve.both((addr, p));
    }
    lab.start_server(&ns, suffix, &serve)
        .unwrap_or_else(|e| panic!("starting server {suffix}: {e:#}"));
    (ns, addr)
}

/// The stand-in gateway watch socket, in the lab's directory.
pub fn watch_server(lab: &Lab) -> WatchServer {
    WatchServer::start(&lab.dir().join("watch.sock")).expect("starting the watch server")
}

/// An agent on the node following `watch`, attached to every `pod*` veth, socket programs on,
/// with maps small enough to load fast.
pub fn spec(watch: &WatchServer) -> AgentSpec {
    AgentSpec::new(AgentSource::Unix(watch.path().to_owned()))
        .interfaces(&[plan::NODE_POD_IF_PATTERN])
        .arg("--max-services=64")
        .arg("--max-backends=256")
        .arg("--max-slots=1024")
        .arg("--max-flows=4096")
}

pub fn start(lab: &Lab, spec: &AgentSpec) {
    lab.start_agent(&lab.node_ns(1), AGENT, spec)
        .unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
}

/// Waits until the agent's status satisfies `cond` and returns it; panics with the last status
/// and the agent's log otherwise.
pub fn wait_status(lab: &Lab, what: &str, cond: impl FnMut(&Status) -> bool) -> Status {
    match lab.wait_agent(AGENT, PROGRAM_DEADLINE, cond) {
        (true, Some(s)) => s,
        (_, last) => panic!(
            "agent: timed out waiting for {what}; last status {last:#?}\n{}",
            lab.agent_stderr(AGENT)
        ),
    }
}

/// Waits until catalog `revision` is programmed on every `pod*` veth the lab has.
pub fn wait_programmed(lab: &Lab, revision: u64) -> Status {
    let ifs = lab.node_pod_ifs(1);
    wait_status(lab, &format!("revision {revision} on {ifs:?}"), |s| {
        s.revision == Some(revision) && s.reconcile_error.is_none() && s.interfaces == ifs
    })
}

/// A round-robin service `demo/NAME` at `vips` with TCP+UDP `port` and these backends.
pub fn svc(name: &str, vips: &[IpAddr], port: u16, backends: &[(IpAddr, u16)]) -> ServiceInfo {
    let vips: Vec<String> = vips.iter().map(ToString::to_string).collect();
    let vips: Vec<&str> = vips.iter().map(String::as_str).collect();
    let addrs: Vec<String> = backends.iter().map(|(a, _)| a.to_string()).collect();
    let backends: Vec<(&str, &str, u16, u32)> = addrs
        .iter()
        .zip(backends)
        .map(|(a, (_, p))| ("c1", a.as_str(), *p, 1))
        .collect();
    service_info(
        &format!("demo/{name}"),
        &vips,
        "round_robin",
        &[(port, "TCP"), (port, "UDP")],
        &backends,
    )
}

pub fn probe(lab: &Lab, ns: &str, p: &Probe) -> ProbeReport {
    lab.probe(ns, p)
        .unwrap_or_else(|e| panic!("probe {p:?} from {ns}: {e:#}"))
}

/// `n` TCP connections from `ns` to `target`; every one must succeed. Returns the answers.
pub fn assert_reaches(lab: &Lab, ns: &str, target: SocketAddr, n: u64) -> Vec<String> {
    let r = probe(lab, ns, &Probe::tcp(target).count(n));
    assert_eq!(
        r.summary.ok,
        n,
        "{ns} -> {target}: {r}\n{}",
        lab.agent_stderr(AGENT)
    );
    r.attempts.into_iter().filter_map(|a| a.answer).collect()
}

/// `n` attempts (TCP, or UDP request/response) from `ns` to `target`; every one must fail.
/// Returns their errors.
pub fn assert_fails(lab: &Lab, ns: &str, target: SocketAddr, udp: bool, n: u64) -> Vec<String> {
    let p = if udp {
        Probe::udp(target)
    } else {
        Probe::tcp(target)
    };
    let r = probe(lab, ns, &p.count(n).timeout(FAIL_TIMEOUT));
    assert_eq!(
        r.summary.ok, 0,
        "{ns} -> {target} (udp {udp}) got through: {r}"
    );
    r.attempts.into_iter().filter_map(|a| a.error).collect()
}

/// Arrivals at server `name` on local port `port`.
pub fn arrivals(lab: &Lab, name: &str, port: u16) -> Vec<Arrival> {
    lab.app_arrivals(name)
        .into_iter()
        .filter(|a| a.local.port() == port)
        .collect()
}

/// One datagram from an unconnected UDP socket in `ns` to `target`; returns where the answer
/// came from and its payload after the server's greeting line.
pub fn udp_ask(ns: &str, target: SocketAddr, payload: &[u8]) -> (SocketAddr, String, Vec<u8>) {
    let payload = payload.to_vec();
    in_netns(ns, move || {
        let bind: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(&payload, target)?;
        let mut buf = vec![0u8; 65_536];
        let (n, from) = s.recv_from(&mut buf)?;
        let reply = &buf[..n];
        let nl = reply
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow::anyhow!("answer without a greeting: {reply:?}"))?;
        let greeting = String::from_utf8_lossy(&reply[..nl]).into_owned();
        Ok((from, greeting, reply[nl + 1..].to_vec()))
    })
    .unwrap_or_else(|e| panic!("UDP {target} from {ns}: {e:#}"))
}

/// Counters of one service in a status (0 when absent).
pub fn counter(s: &Status, service: &str, reason: &str) -> u64 {
    s.services
        .iter()
        .find(|x| x.name == service)
        .unwrap_or_else(|| panic!("no service {service} in {s:#?}"))
        .counters
        .get(reason)
        .map_or(0, |c| c.packets)
}

pub fn names(s: &Status) -> Vec<String> {
    s.services
        .iter()
        .map(|x| format!("{}/{}", x.namespace, x.name))
        .collect()
}

pub fn metrics(lab: &Lab) -> String {
    agent_metrics(&lab.node_ns(1), METRICS.into())
        .unwrap_or_else(|e| panic!("agent metrics: {e:#}"))
}

pub fn metric(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}
