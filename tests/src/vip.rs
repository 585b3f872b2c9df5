//! A lab where clusterset VIPs carry traffic: three clusters joined by identity with the control
//! plane on, backends in pods that answer with their cluster's name (TCP and UDP), and a route
//! agent on every node and on every gateway node.
//!
//! | cluster | pods (address) | role |
//! |---|---|---|
//! | c1 | `pod` (10.1.1.2), `b` (10.1.1.3), `gwpod` on the gateway (10.1.2.2) | clients; `b` is c1's local backend |
//! | c2 | `pod` (10.2.1.2), `b` (10.2.1.3) | two backends |
//! | c3 | `pod` (10.3.1.2), `b` (10.3.1.3) | two backends |
//!
//! Every backend pod runs `isthmus-lab-app serve --name c{i}` on port [`VIP_PORT`] (TCP and
//! UDP). The gateways serve the watch stream over TCP on `lan0:`[`WATCH_PORT`] to their node
//! network; each node's agent (`node{i}`) follows it, attaches to `pod*` and installs the
//! routes via the gateway (nodes have no default route: the agent's routes are what connects
//! them), and each gateway's agent (`gw{i}`) follows the Unix socket and attaches to `gpod*`.
//! The services each cluster exports are [`exports`]: `demo/rr` (round-robin, 2 + 2 backends
//! in c2 and c3), `demo/wt` (weighted 3:1, c2 with two endpoints, c3 with one), `demo/lf`
//! (local-first, one endpoint in each cluster), `demo/dead` (c2, no endpoint ready).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::agent::{AgentSource, AgentSpec};
use crate::app::Serve;
use crate::control::{fqdn, wait_synced};
use crate::lab::Lab;
use crate::plan;

/// The port every demo service exports (TCP and UDP).
pub const VIP_PORT: u16 = 7000;
/// The gateways' TCP watch listener, on `lan0`.
pub const WATCH_PORT: u16 = 7474;
/// How long the agents get to program a catalog change (the gateway polls its export file
/// every 500 ms; sync and the watch stream add milliseconds).
pub const PROGRAM_DEADLINE: Duration = Duration::from_secs(15);

/// Options of [`vip_lab`].
#[derive(Debug, Clone)]
pub struct VipLabOptions {
    /// `[control] down_after` in seconds, if not the default (3).
    pub down_after: Option<f64>,
    /// Agents and routes on every node (else nodes keep their default route and only c1's
    /// node runs an agent).
    pub all_agents: bool,
    /// The services (per cluster export file); default [`exports`].
    pub exports: fn(usize, bool) -> String,
}

impl Default for VipLabOptions {
    fn default() -> Self {
        VipLabOptions {
            down_after: None,
            all_agents: true,
            exports,
        }
    }
}

/// Backend addresses of cluster `i`'s pods: `pod` and `b`.
pub fn backends(i: usize) -> [Ipv4Addr; 2] {
    [plan::nth_pod_addr(i, 0), plan::nth_pod_addr(i, 1)]
}

fn endpoint(addr: Ipv4Addr, ready: bool) -> String {
    format!("{{ address = \"{addr}\", port = {VIP_PORT}, ready = {ready} }}")
}

fn service(name: &str, policy: &str, weight: u32, endpoints: &[String]) -> String {
    format!(
        "[[service]]\nnamespace = \"demo\"\nname = \"{name}\"\npolicy = \"{policy}\"\n\
         weight = {weight}\nports = [{{ name = \"tcp\", port = {VIP_PORT}, protocol = \"TCP\" }}, \
         {{ name = \"udp\", port = {VIP_PORT}, protocol = \"UDP\" }}]\nendpoints = [{}]\n\n",
        endpoints.join(", ")
    )
}

/// Cluster `i`'s export file; `c1_ready` says whether c1's local-first endpoint is ready.
pub fn exports(i: usize, c1_ready: bool) -> String {
    let [a, b] = backends(i);
    match i {
        1 => service("lf", "local_first", 1, &[endpoint(b, c1_ready)]),
        2 => [
            service(
                "rr",
                "round_robin",
                1,
                &[endpoint(a, true), endpoint(b, true)],
            ),
            service("wt", "weighted", 3, &[endpoint(a, true), endpoint(b, true)]),
            service("lf", "local_first", 1, &[endpoint(a, true)]),
            service("dead", "round_robin", 1, &[endpoint(a, false)]),
        ]
        .concat(),
        3 => [
            service(
                "rr",
                "round_robin",
                1,
                &[endpoint(a, true), endpoint(b, true)],
            ),
            service("wt", "weighted", 1, &[endpoint(a, true)]),
            service("lf", "local_first", 1, &[endpoint(a, true)]),
        ]
        .concat(),
        _ => String::new(),
    }
}

/// The Unix watch socket of cluster `i`'s gateway (the control plane's default).
pub fn watch_socket(lab: &Lab, i: usize) -> PathBuf {
    lab.state_dir(i).join("catalog.sock")
}

/// Cluster `i`'s node network, which may read the TCP watch stream.
pub fn node_network(i: usize) -> String {
    let [a, b, c, _] = plan::gw_lan_addr(i).octets();
    format!("{a}.{b}.{c}.0/24")
}

/// Adds the TCP watch listener (`lan0:`[`WATCH_PORT`], readable by the node network) to
/// cluster `i`'s `[control]`.
pub fn add_watch_listener(i: usize, extra: &mut toml::Table) {
    let Some(toml::Value::Table(control)) = extra.get_mut("control") else {
        return;
    };
    control.insert(
        "watch_listen".into(),
        format!("{}:{WATCH_PORT}", plan::gw_lan_addr(i)).into(),
    );
    control.insert(
        "watch_allow".into(),
        toml::Value::Array(vec![node_network(i).into()]),
    );
}

/// Starts cluster `i`'s agents: on the node (TCP watch stream, `pod*`, routes via the gateway
/// when `routes`) and on the gateway node (Unix watch socket, `gpod*`).
pub fn start_agents(lab: &Lab, i: usize, routes: bool) -> Result<()> {
    let mut spec = AgentSpec::new(AgentSource::Tcp(SocketAddr::from((
        plan::gw_lan_addr(i),
        WATCH_PORT,
    ))))
    .interfaces(&[plan::NODE_POD_IF_PATTERN]);
    if routes {
        spec = spec.gateway(plan::gw_lan_addr(i));
    }
    lab.start_agent(&lab.node_ns(i), &node_agent(i), &spec)?;
    let spec =
        AgentSpec::new(AgentSource::Unix(watch_socket(lab, i))).interfaces(&[plan::GW_POD_IF]);
    lab.start_agent(&lab.gw_ns(i), &gw_agent(i), &spec)
}

/// The agent on cluster `i`'s node.
pub fn node_agent(i: usize) -> String {
    format!("node{i}")
}

/// The agent on cluster `i`'s gateway node.
pub fn gw_agent(i: usize) -> String {
    format!("gw{i}")
}

/// Builds the lab described in the module docs and waits until every agent has programmed
/// every service with a VIP. Panics with the logs otherwise: for tests.
pub fn vip_lab(options: &VipLabOptions) -> Lab {
    let lab = Lab::builder()
        .clusters(3)
        .node_default_route(!options.all_agents)
        .build()
        .unwrap_or_else(|e| panic!("building the VIP lab: {e:#}"));
    if let Err(e) = build(&lab, options) {
        lab.dump_gateway_logs();
        lab.dump_agent_logs();
        panic!("building the VIP lab: {e:#}");
    }
    lab
}

fn build(lab: &Lab, options: &VipLabOptions) -> Result<()> {
    for i in 1..=3 {
        lab.add_pod(i, "b")?;
        let pods = [lab.pod_ns(i), lab.id().cluster_ns(i, "b")];
        for (ns, addr) in pods.iter().zip(backends(i)) {
            if i == 1 && addr == plan::pod_addr(1) {
                continue; // c1's first pod is the client.
            }
            let name = format!("srv-{}", ns.rsplit('-').next().unwrap_or("pod"));
            lab.start_server(
                ns,
                &format!("c{i}-{name}"),
                &Serve::new(&format!("c{i}")).both(SocketAddr::from((addr, VIP_PORT))),
            )?;
        }
        lab.write_exports(i, &(options.exports)(i, true))?;
    }
    lab.add_gateway_pod(1)?;

    let svids = lab.issue_gateway_svids()?;
    let down_after = options.down_after;
    lab.write_control_configs(&svids, |i, extra| {
        add_watch_listener(i, extra);
        if let (Some(d), Some(toml::Value::Table(control))) = (down_after, extra.get_mut("control"))
        {
            control.insert("down_after".into(), d.into());
        }
    })?;
    for i in 1..=3 {
        lab.start_gateway(i)
            .with_context(|| format!("starting gateway {i}"))?;
    }
    wait_synced(lab, "start");

    if options.all_agents {
        for i in 1..=3 {
            start_agents(lab, i, true)?;
        }
    } else {
        let spec = AgentSpec::new(AgentSource::Tcp(SocketAddr::from((
            plan::gw_lan_addr(1),
            WATCH_PORT,
        ))))
        .interfaces(&[plan::NODE_POD_IF_PATTERN]);
        lab.start_agent(&lab.node_ns(1), &node_agent(1), &spec)?;
    }
    let agents: Vec<String> = (1..=3)
        .flat_map(|i| [node_agent(i), gw_agent(i)])
        .filter(|a| options.all_agents || a == "node1")
        .collect();
    for agent in &agents {
        // Every service with a VIP (all but none here: all are ClusterSetIP) programmed.
        let (ok, last) = lab.wait_agent(agent, PROGRAM_DEADLINE, |s| {
            s.services.len() == 4 && s.connected
        });
        anyhow::ensure!(ok, "agent {agent} did not program the 4 services: {last:?}");
    }
    Ok(())
}

/// The VIP of `demo/<name>` as cluster 1's gateway answers it (`dig` from c1's pod).
pub fn vip_of(lab: &Lab, name: &str) -> Result<Ipv4Addr> {
    let answers = lab.dig(&lab.pod_ns(1), 1, &fqdn(&format!("demo/{name}")), "A")?;
    answers
        .first()
        .with_context(|| format!("no A record for demo/{name}"))?
        .parse()
        .with_context(|| format!("the A record of demo/{name} is not an address: {answers:?}"))
}

/// The VIP of `demo/<name>` from agent `agent`'s status (also for services DNS does not
/// answer, such as one with no ready endpoint).
pub fn programmed_vip(lab: &Lab, agent: &str, name: &str) -> Result<Ipv4Addr> {
    let status = lab.agent_status(agent)?;
    let svc = status
        .services
        .iter()
        .find(|s| s.namespace == "demo" && s.name == name)
        .with_context(|| format!("agent {agent} has no demo/{name}"))?;
    svc.vips
        .iter()
        .find_map(|v| v.parse().ok())
        .with_context(|| format!("demo/{name} has no IPv4 VIP in agent {agent}"))
}
