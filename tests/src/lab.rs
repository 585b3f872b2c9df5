//! A lab's life: claiming an id, building the namespaces and links, and tearing all of it down
//! in `Drop`, also when a test panics.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::config::{self, GatewayConfig, KeyPair};
use crate::netns;
use crate::owner;
use crate::plan::{self, LabId};
use crate::pods::PodRecord;
use crate::process::ChildGuard;

/// Name of the WAN bridge in the WAN namespace.
pub const WAN_BRIDGE: &str = "br0";
/// Gateway side of the WAN link.
pub const GW_WAN_IF: &str = "wan0";
/// Gateway side of the gateway–node link.
pub const GW_LAN_IF: &str = "lan0";
/// Node side of the gateway–node link, and pod side of the node–pod link.
pub const ETH_IF: &str = "eth0";
/// Node side of the node–pod link.
pub const NODE_POD_IF: &str = "pod0";
/// Labs of more clusters than this pin their WAN neighbours by default (see
/// [`LabBuilder::static_wan_neighbours`]).
pub const STATIC_WAN_NEIGHBOURS_ABOVE: usize = 16;

/// Configures a [`Lab`]; see the crate docs for the shape it builds.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    clusters: usize,
    prefix: String,
    bin_dir: Option<PathBuf>,
    mtu: Option<u32>,
    node_default_route: bool,
    static_wan_neighbours: Option<bool>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            clusters: 2,
            prefix: plan::DEFAULT_PREFIX.to_owned(),
            bin_dir: None,
            mtu: None,
            node_default_route: true,
            static_wan_neighbours: None,
        }
    }
}

impl LabBuilder {
    /// Number of clusters, 0..=[`plan::MAX_CLUSTERS`]; default 2. With 0 the lab is only the
    /// WAN, for tests that add their own namespaces.
    pub fn clusters(mut self, n: usize) -> Self {
        self.clusters = n;
        self
    }

    /// Lab id prefix (1–4 lowercase letters); default `i`. A bench may use its own, so that
    /// sweeping one kind of lab never touches the other.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Where `isthmus-gateway` and `tunctl` are. Default: `$ISTHMUS_BIN_DIR`, else
    /// `<workspace>/target/release`.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// MTU of every veth in the lab (default: the kernel's 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Whether each node gets its default route via its gateway (default true). Without it a
    /// node reaches only its gateway's LAN and its own pods; routes to other clusters are for
    /// the test (or the route agent it runs) to install. See [`plan`].
    pub fn node_default_route(mut self, on: bool) -> Self {
        self.node_default_route = on;
        self
    }

    /// Whether every gateway gets a permanent neighbour (ARP) entry for every other gateway's
    /// WAN address. Default: with more than [`STATIC_WAN_NEIGHBOURS_ABOVE`] clusters.
    ///
    /// The kernel keeps one IPv4 neighbour table for all namespaces and refuses new entries
    /// once it holds `gc_thresh3` that it could collect (see `raise_neighbour_limits`, which
    /// every build applies); permanent entries do not count. Gateways that learn each other by
    /// ARP on one bridge add n(n-1) collectable entries (992 at 32 clusters) and a burst of
    /// ARP on the WAN while they all start at once; pinned, they add neither. An address a
    /// gateway moves to ([`Lab::set_wan_addr`]) is still learned by ARP.
    pub fn static_wan_neighbours(mut self, on: bool) -> Self {
        self.static_wan_neighbours = Some(on);
        self
    }

    /// Builds the lab. Needs root; fails (never skips) without it. Sweeps labs of dead runs with
    /// the same prefix first, once per process.
    pub fn build(self) -> Result<Lab> {
        owner::require_root()?;
        anyhow::ensure!(
            self.clusters <= plan::MAX_CLUSTERS,
            "{} clusters requested; the address plan allows at most {}",
            self.clusters,
            plan::MAX_CLUSTERS
        );
        sweep_once(&self.prefix);
        raise_neighbour_limits(self.clusters)?;
        let (id, dir, owner_file) = claim_id(&self.prefix)?;
        let bin_dir = self.bin_dir.unwrap_or_else(default_bin_dir);
        let keys: Vec<KeyPair> = (0..self.clusters).map(|_| KeyPair::generate()).collect();
        let lab = Lab {
            id,
            prefix: self.prefix,
            clusters: self.clusters,
            mtu: self.mtu,
            node_default_route: self.node_default_route,
            dir,
            owner_file,
            bin_dir,
            keys,
            namespaces: Mutex::new(Vec::new()),
            wan_hosts: AtomicUsize::new(0),
            spawned: AtomicUsize::new(0),
            configs: Mutex::new(BTreeMap::new()),
            gateways: Mutex::new(BTreeMap::new()),
            pods: Mutex::new(Vec::new()),
            apps: Mutex::new(BTreeMap::new()),
            agents: Mutex::new(BTreeMap::new()),
        };
        // From here on an error drops `lab`, which removes whatever was built so far.
        for (i, key) in (1..).zip(&lab.keys) {
            key.write_private_key(&config::key_path(lab.dir(), i))?;
        }
        lab.build_wan()
            .with_context(|| format!("failed to build the WAN of lab {}", lab.id))?;
        for i in 1..=lab.clusters {
            lab.build_cluster(i)
                .with_context(|| format!("failed to build cluster {i} of lab {}", lab.id))?;
        }
        if self
            .static_wan_neighbours
            .unwrap_or(self.clusters > STATIC_WAN_NEIGHBOURS_ABOVE)
        {
            lab.pin_wan_neighbours()
                .with_context(|| format!("failed to pin the WAN neighbours of lab {}", lab.id))?;
        }
        tracing::info!(lab = %lab.id, clusters = lab.clusters, dir = %lab.dir().display(), "lab up");
        Ok(lab)
    }
}

/// A set of network namespaces forming clusters joined by a WAN, plus the processes started in
/// them. Everything is removed when the value drops.
pub struct Lab {
    pub(crate) id: LabId,
    prefix: String,
    clusters: usize,
    mtu: Option<u32>,
    node_default_route: bool,
    dir: TempDir,
    owner_file: PathBuf,
    pub(crate) bin_dir: PathBuf,
    pub(crate) keys: Vec<KeyPair>,
    /// In creation order; removed in reverse.
    namespaces: Mutex<Vec<String>>,
    wan_hosts: AtomicUsize,
    spawned: AtomicUsize,
    /// Config last written for each cluster's gateway.
    pub(crate) configs: Mutex<BTreeMap<usize, GatewayConfig>>,
    /// Latest gateway process of each cluster, running or exited (its logs stay readable).
    pub(crate) gateways: Mutex<BTreeMap<usize, ChildGuard>>,
    /// Every pod, in creation order: the address plan's allocator.
    pub(crate) pods: Mutex<Vec<PodRecord>>,
    /// Test applications by the name they were started under, running or exited.
    pub(crate) apps: Mutex<BTreeMap<String, ChildGuard>>,
    /// Route agents by name (see [`crate::agent`]).
    pub(crate) agents: Mutex<BTreeMap<String, ChildGuard>>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("clusters", &self.clusters)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// See [`owner::sweep_stale`].
    pub fn sweep_stale(prefix: &str) -> Result<Vec<String>> {
        owner::sweep_stale(prefix)
    }

    pub fn id(&self) -> &LabId {
        &self.id
    }

    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// The lab's temporary directory: configs, keys, admin sockets, process logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Whether nodes were built with a default route via their gateway.
    pub fn node_default_route(&self) -> bool {
        self.node_default_route
    }

    pub fn wan_ns(&self) -> String {
        self.id.wan_ns()
    }

    pub fn gw_ns(&self, i: usize) -> String {
        self.cluster(i);
        self.id.gw_ns(i)
    }

    pub fn node_ns(&self, i: usize) -> String {
        self.cluster(i);
        self.id.node_ns(i)
    }

    pub fn pod_ns(&self, i: usize) -> String {
        self.cluster(i);
        self.id.pod_ns(i)
    }

    /// Every namespace the lab has created so far, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.namespaces).clone()
    }

    /// Creates namespace `ID-{suffix}` (with `lo` up), removed with the lab.
    pub fn add_namespace(&self, suffix: &str) -> Result<String> {
        let ns = self.id.extra_ns(suffix);
        anyhow::ensure!(
            !lock(&self.namespaces).contains(&ns),
            "namespace {ns} already exists in this lab"
        );
        self.create_ns(&ns)?;
        Ok(ns)
    }

    /// Creates namespace `ID-{suffix}` with a `wan0` on the WAN bridge at `addr`/24: a host
    /// beside the gateways, e.g. a reference WireGuard peer or a UDP relay.
    pub fn add_wan_host(&self, suffix: &str, addr: std::net::Ipv4Addr) -> Result<String> {
        let ns = self.add_namespace(suffix)?;
        let port = format!("h{}", self.wan_hosts.fetch_add(1, Ordering::Relaxed) + 1);
        self.link(&ns, GW_WAN_IF, &self.id.wan_ns(), &port)?;
        netns::enslave(&self.id.wan_ns(), &port, WAN_BRIDGE)?;
        netns::add_addr(&ns, GW_WAN_IF, &plan::with_prefix(addr))?;
        Ok(ns)
    }

    /// Panics unless `i` names a cluster of this lab: a wrong index is a bug in the test.
    pub(crate) fn cluster(&self, i: usize) -> usize {
        assert!(
            (1..=self.clusters).contains(&i),
            "cluster {i} outside 1..={} of lab {}",
            self.clusters,
            self.id
        );
        i
    }

    /// A unique log name for the next spawned process.
    pub(crate) fn next_log_name(&self, name: &str) -> String {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        format!("{n:03}-{name}")
    }

    pub(crate) fn create_ns(&self, ns: &str) -> Result<()> {
        // Registered before creation: if `ip netns add` half-succeeds, teardown still tries.
        lock(&self.namespaces).push(ns.to_owned());
        netns::add_namespace(ns)
    }

    pub(crate) fn link(&self, a_ns: &str, a: &str, b_ns: &str, b: &str) -> Result<()> {
        netns::add_veth(a_ns, a, b_ns, b)?;
        if let Some(mtu) = self.mtu {
            netns::set_mtu(a_ns, a, mtu)?;
            netns::set_mtu(b_ns, b, mtu)?;
        }
        Ok(())
    }

    fn build_wan(&self) -> Result<()> {
        let wan = self.id.wan_ns();
        self.create_ns(&wan)?;
        netns::add_bridge(&wan, WAN_BRIDGE)?;
        if let Some(mtu) = self.mtu {
            netns::set_mtu(&wan, WAN_BRIDGE, mtu)?;
        }
        Ok(())
    }

    fn build_cluster(&self, i: usize) -> Result<()> {
        let (wan, gw, node, pod) = (
            self.id.wan_ns(),
            self.id.gw_ns(i),
            self.id.node_ns(i),
            self.id.pod_ns(i),
        );
        for ns in [&gw, &node, &pod] {
            self.create_ns(ns)?;
        }

        let port = format!("c{i}");
        self.link(&gw, GW_WAN_IF, &wan, &port)?;
        netns::enslave(&wan, &port, WAN_BRIDGE)?;
        netns::add_addr(&gw, GW_WAN_IF, &plan::with_prefix(plan::wan_addr(i)))?;

        self.link(&gw, GW_LAN_IF, &node, ETH_IF)?;
        netns::add_addr(&gw, GW_LAN_IF, &plan::with_prefix(plan::gw_lan_addr(i)))?;
        netns::add_addr(&node, ETH_IF, &plan::with_prefix(plan::node_addr(i)))?;

        self.link(&node, NODE_POD_IF, &pod, ETH_IF)?;
        netns::add_addr(
            &node,
            NODE_POD_IF,
            &plan::with_prefix(plan::node_pod_addr(i)),
        )?;
        netns::add_addr(&pod, ETH_IF, &plan::with_prefix(plan::pod_addr(i)))?;

        netns::add_route(&gw, &plan::pod_subnet(i), &plan::node_addr(i).to_string())?;
        if self.node_default_route {
            netns::add_route(&node, "default", &plan::gw_lan_addr(i).to_string())?;
        }
        netns::add_route(&pod, "default", &plan::node_pod_addr(i).to_string())?;
        netns::sysctl(&gw, "net.ipv4.ip_forward", "1")?;
        netns::sysctl(&node, "net.ipv4.ip_forward", "1")?;
        lock(&self.pods).push(PodRecord::first(self, i));
        Ok(())
    }

    /// Gives every gateway a permanent neighbour entry for every other gateway's WAN address
    /// (see [`LabBuilder::static_wan_neighbours`]).
    fn pin_wan_neighbours(&self) -> Result<()> {
        let macs = (1..=self.clusters)
            .map(|i| netns::mac_address(&self.id.gw_ns(i), GW_WAN_IF))
            .collect::<Result<Vec<_>>>()?;
        for i in 1..=self.clusters {
            let batch: String = (1..=self.clusters)
                .filter(|&j| j != i)
                .map(|j| {
                    format!(
                        "neigh replace {} lladdr {} dev {GW_WAN_IF} nud permanent\n",
                        plan::wan_addr(j),
                        macs[j - 1]
                    )
                })
                .collect();
            netns::ip_batch(&self.id.gw_ns(i), &batch)?;
        }
        Ok(())
    }

    /// Prints the tails of every gateway's logs to stderr.
    pub fn dump_gateway_logs(&self) {
        for child in lock(&self.gateways).values() {
            child.dump();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes go first: a namespace that still holds a process outlives `ip netns delete`
        // with its interfaces and sockets. Dropping a guard kills it (and dumps its logs if a
        // test is panicking).
        let agents = std::mem::take(&mut *lock(&self.agents));
        drop(agents);
        let apps = std::mem::take(&mut *lock(&self.apps));
        drop(apps);
        let gateways = std::mem::take(&mut *lock(&self.gateways));
        drop(gateways);
        let namespaces = std::mem::take(&mut *lock(&self.namespaces));
        for ns in &namespaces {
            netns::kill_namespace_processes(ns);
        }
        for ns in namespaces.iter().rev() {
            if netns::namespace_exists(ns) {
                if let Err(e) = netns::delete_namespace(ns) {
                    eprintln!("isthmus-lab: failed to delete namespace {ns}: {e:#}");
                }
            }
        }
        // Namespaces a test made with `netns` directly under this lab's id.
        owner::remove_namespaces(&self.id, &self.prefix);
        owner::remove_wg_sockets(&self.id);
        if let Err(e) = std::fs::remove_file(&self.owner_file) {
            eprintln!(
                "isthmus-lab: failed to remove {}: {e}",
                self.owner_file.display()
            );
        }
        tracing::info!(lab = %self.id, "lab down");
    }
}

/// Locks `m`, carrying on after a panic in another thread: teardown must still run.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sweep_once(prefix: &str) {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| match owner::sweep_stale(prefix) {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("isthmus-lab: removed stale namespaces {removed:?}");
        }
        Ok(_) => {}
        Err(e) => eprintln!("isthmus-lab: sweeping stale labs failed: {e:#}"),
    });
}

/// A fresh id claimed in the owner registry, with its temporary directory.
fn claim_id(prefix: &str) -> Result<(LabId, TempDir, PathBuf)> {
    for _ in 0..32 {
        let id = LabId::generate(prefix)?;
        if netns::list_namespaces()
            .iter()
            .any(|ns| LabId::of_namespace(prefix, ns).as_ref() == Some(&id))
        {
            continue;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("isthmus-{id}-"))
            .tempdir()
            .context("failed to create the lab's temporary directory")?;
        match owner::claim(&id, dir.path()) {
            Ok(owner_file) => return Ok((id, dir, owner_file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("failed to write an owner file under {}", owner::RUN_DIR)
                })
            }
        }
    }
    bail!("no free lab id with prefix {prefix:?} after 32 tries")
}

/// `$ISTHMUS_BIN_DIR`, else the running program's directory when the gateway is there (cargo
/// builds the lab's own binaries next to it, also with a custom `CARGO_TARGET_DIR`), else
/// `<workspace root>/target/release`.
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ISTHMUS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .filter(|d| d.join(crate::gateway::GATEWAY_BIN).is_file())
    {
        return dir;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
        .join("release")
}

/// Raises the kernel's neighbour-table limits for a lab of `clusters`, never lowering them.
///
/// The ARP and NDP tables are one per host, shared by every namespace, with a hard limit
/// (`gc_thresh3`, 1024 by default) on their total: a lab of N clusters on one host holds about
/// 2·N² entries (each gateway's WAN neighbours, and one per peer address sent to through its
/// TUN, NOARP entries included), so from ~24 clusters on the table overflows ("neighbor table
/// overflow!", sends fail with ENOBUFS) and tunnels stall for reasons no real deployment has,
/// where every gateway is a host of its own.
pub fn raise_neighbour_limits(clusters: usize) -> Result<()> {
    let need = (4 * clusters * clusters + 64 * clusters).max(1024);
    for family in ["ipv4", "ipv6"] {
        for (knob, value) in [
            ("gc_thresh1", need / 4),
            ("gc_thresh2", need / 2),
            ("gc_thresh3", need),
        ] {
            let path = format!("/proc/sys/net/{family}/neigh/default/{knob}");
            let current: usize = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {path}"))?
                .trim()
                .parse()
                .with_context(|| format!("{path} is not a number"))?;
            if current < value {
                std::fs::write(&path, value.to_string())
                    .with_context(|| format!("failed to raise {path} to {value}"))?;
            }
        }
    }
    Ok(())
}
