//! Pods beyond the one every node starts with: further pods on a node, wired the way Calico
//! wires them; a pod on the gateway node; and extra addresses inside a pod (a second backend).
//! The address plan is in [`crate::plan`]. Every namespace made here is registered with the
//! lab, so it goes with the lab.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::lab::{lock, Lab, ETH_IF, NODE_POD_IF};
use crate::netns;
use crate::plan;

/// A pod the lab built: where it is and which addresses it holds.
#[derive(Debug, Clone)]
pub(crate) struct PodRecord {
    pub ns: String,
    pub cluster: usize,
    /// Namespace holding the other end of its veth: the node, or the gateway.
    pub host_ns: String,
    /// The other end of its veth.
    pub host_if: String,
    /// Its default gateway, the `.1` of the /24 its addresses come from.
    pub gateway: Ipv4Addr,
    pub on_gateway: bool,
    pub addrs: Vec<Ipv4Addr>,
}

impl PodRecord {
    /// The pod every node is built with.
    pub fn first(lab: &Lab, i: usize) -> PodRecord {
        PodRecord {
            ns: lab.id.pod_ns(i),
            cluster: i,
            host_ns: lab.id.node_ns(i),
            host_if: NODE_POD_IF.to_owned(),
            gateway: plan::node_pod_addr(i),
            on_gateway: false,
            addrs: vec![plan::pod_addr(i)],
        }
    }
}

impl Lab {
    /// Adds pod `ID-c{i}-{suffix}` on cluster `i`'s node and returns its namespace and address.
    ///
    /// Pod `n` (the node's first pod is 0) gets `eth0` [`plan::nth_pod_addr`]`(i, n)`/32 and
    /// `default via 10.i.1.1 dev eth0 onlink`; the node side of its veth is
    /// [`plan::node_pod_if`]`(n)` with 10.i.1.1/32 (so the node answers the pod's ARP) and a
    /// /32 route to the pod through it. The node also answers ARP on `pod0` for the new
    /// address, which the first pod believes on-link.
    pub fn add_pod(&self, i: usize, suffix: &str) -> Result<(String, Ipv4Addr)> {
        self.cluster(i);
        plan::check_pod_suffix(suffix)?;
        let ns = self.id.cluster_ns(i, suffix);
        let (node_if, addr) = {
            let mut pods = lock(&self.pods);
            anyhow::ensure!(
                !pods.iter().any(|p| p.ns == ns),
                "pod {ns} already exists in this lab"
            );
            let n = pods
                .iter()
                .filter(|p| p.cluster == i && !p.on_gateway)
                .count();
            anyhow::ensure!(
                n < plan::MAX_PODS_PER_NODE,
                "cluster {i}'s node already has {n} pods, the most the plan allows"
            );
            let addr = plan::nth_pod_addr(i, n);
            anyhow::ensure!(
                !cluster_addrs(&pods, i).contains(&addr),
                "pod {n}'s address {addr} is already in use in cluster {i} (extra addresses \
                 belong in plan::pod_extra_addr's range)"
            );
            // Reserved before anything is built: a half-built pod keeps its slot, so a retry
            // does not collide with its leftover veth.
            let record = PodRecord {
                ns: ns.clone(),
                cluster: i,
                host_ns: self.id.node_ns(i),
                host_if: plan::node_pod_if(n),
                gateway: plan::node_pod_addr(i),
                on_gateway: false,
                addrs: vec![addr],
            };
            pods.push(record.clone());
            (record.host_if, addr)
        };
        self.build_node_pod(i, &ns, &node_if, addr)
            .with_context(|| format!("failed to build pod {ns} of cluster {i}"))?;
        Ok((ns, addr))
    }

    fn build_node_pod(&self, i: usize, ns: &str, node_if: &str, addr: Ipv4Addr) -> Result<()> {
        let (node, gateway) = (&self.id.node_ns(i), plan::node_pod_addr(i));
        self.create_ns(ns)?;
        self.link(node, node_if, ns, ETH_IF)?;
        netns::add_addr(node, node_if, &plan::host(gateway))?;
        // The route first: the pod's first ARP request comes from `addr`, and with rp_filter
        // on the node must already know `addr` lives behind this veth.
        netns::add_link_route(node, &plan::host(addr), node_if)?;
        netns::sysctl(node, &format!("net.ipv4.conf.{NODE_POD_IF}.proxy_arp"), "1")?;
        netns::add_addr(ns, ETH_IF, &plan::host(addr))?;
        netns::add_onlink_route(ns, "default", &gateway.to_string(), ETH_IF)
    }

    /// Adds pod `ID-c{i}-gwpod` on cluster `i`'s gateway node: `eth0`
    /// [`plan::gw_pod_addr`]/24 with its default route via the gateway's
    /// [`plan::GW_POD_IF`] ([`plan::gw_pod_gateway_addr`]/24). Other clusters reach it
    /// through the tunnel, since it is inside cluster `i`'s /16.
    pub fn add_gateway_pod(&self, i: usize) -> Result<(String, Ipv4Addr)> {
        self.cluster(i);
        let ns = self.id.gw_pod_ns(i);
        let gw = self.id.gw_ns(i);
        let addr = plan::gw_pod_addr(i);
        {
            let mut pods = lock(&self.pods);
            anyhow::ensure!(
                !pods.iter().any(|p| p.ns == ns),
                "cluster {i} already has a gateway pod"
            );
            pods.push(PodRecord {
                ns: ns.clone(),
                cluster: i,
                host_ns: gw.clone(),
                host_if: plan::GW_POD_IF.to_owned(),
                gateway: plan::gw_pod_gateway_addr(i),
                on_gateway: true,
                addrs: vec![addr],
            });
        }
        let build = || -> Result<()> {
            self.create_ns(&ns)?;
            self.link(&gw, plan::GW_POD_IF, &ns, ETH_IF)?;
            let gateway = plan::gw_pod_gateway_addr(i);
            netns::add_addr(&gw, plan::GW_POD_IF, &plan::with_prefix(gateway))?;
            netns::add_addr(&ns, ETH_IF, &plan::with_prefix(addr))?;
            netns::add_route(&ns, "default", &gateway.to_string())
        };
        build().with_context(|| format!("failed to build the gateway pod of cluster {i}"))?;
        Ok((ns, addr))
    }

    /// Adds `addr`/32 to `eth0` of pod `ns` (any pod the lab built) and a /32 route to it on
    /// the node or gateway, so one pod can host two backends. `addr` must be a free host
    /// address of the pod's /24 (10.i.1.0/24 on a node, 10.i.2.0/24 on the gateway node);
    /// [`plan::pod_extra_addr`] gives ones no pod will take.
    pub fn add_pod_addr(&self, ns: &str, addr: Ipv4Addr) -> Result<()> {
        let (host_ns, host_if) = {
            let mut pods = lock(&self.pods);
            let pod = pods
                .iter()
                .find(|p| p.ns == ns)
                .with_context(|| format!("{ns} is not a pod of this lab"))?;
            anyhow::ensure!(
                plan::is_pod_host_in(pod.gateway, addr),
                "{addr} is not a free host address of the /24 of pod {ns} (its gateway is {})",
                pod.gateway
            );
            anyhow::ensure!(
                !cluster_addrs(&pods, pod.cluster).contains(&addr),
                "{addr} is already in use in cluster {}",
                pod.cluster
            );
            let (host_ns, host_if) = (pod.host_ns.clone(), pod.host_if.clone());
            let pod = pods.iter_mut().find(|p| p.ns == ns).expect("found above");
            pod.addrs.push(addr);
            (host_ns, host_if)
        };
        netns::add_addr(ns, ETH_IF, &plan::host(addr))?;
        netns::add_link_route(&host_ns, &plan::host(addr), &host_if)
    }

    /// Addresses of pod `ns`, its own first; empty for a namespace that is not a pod.
    pub fn pod_addrs(&self, ns: &str) -> Vec<Ipv4Addr> {
        lock(&self.pods)
            .iter()
            .find(|p| p.ns == ns)
            .map(|p| p.addrs.clone())
            .unwrap_or_default()
    }

    /// Namespaces of the pods on cluster `i`'s node, the first pod first (not the gateway
    /// pod).
    pub fn node_pods(&self, i: usize) -> Vec<String> {
        self.cluster(i);
        lock(&self.pods)
            .iter()
            .filter(|p| p.cluster == i && !p.on_gateway)
            .map(|p| p.ns.clone())
            .collect()
    }

    /// Node-side veth names of the pods on cluster `i`'s node (`pod0`, `pod1`, …): what the
    /// route agent attaches to.
    pub fn node_pod_ifs(&self, i: usize) -> Vec<String> {
        self.cluster(i);
        lock(&self.pods)
            .iter()
            .filter(|p| p.cluster == i && !p.on_gateway)
            .map(|p| p.host_if.clone())
            .collect()
    }
}

fn cluster_addrs(pods: &[PodRecord], i: usize) -> Vec<Ipv4Addr> {
    pods.iter()
        .filter(|p| p.cluster == i)
        .flat_map(|p| p.addrs.iter().copied())
        .collect()
}
