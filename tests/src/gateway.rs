//! Running the real `isthmus-gateway` in a lab's gateway namespaces and asking it questions
//! through `tunctl`.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{GatewayConfig, KeyPair};
use crate::lab::{lock, Lab};
use crate::netns;
use crate::process::{in_namespace, tail, ChildGuard, Signal};

pub const GATEWAY_BIN: &str = "isthmus-gateway";
pub const TUNCTL_BIN: &str = "tunctl";
/// How long a gateway may take from exec to accepting connections on its admin socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gateway may take to exit after SIGTERM/SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Lab {
    /// Path of binary `name` in the lab's bin dir; an error says how to build it.
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.bin_dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "{} not found: run cargo build --release first (or point ISTHMUS_BIN_DIR at the \
             directory holding {name})",
            path.display()
        );
        Ok(path)
    }

    /// Cluster `i`'s WireGuard key pair, generated when the lab was built; the private half is
    /// in `<dir>/c{i}.key`.
    pub fn key_pair(&self, i: usize) -> &KeyPair {
        &self.keys[self.cluster(i) - 1]
    }

    pub fn public_key(&self, i: usize) -> &str {
        self.key_pair(i).public_key()
    }

    /// `<dir>/c{i}.toml`, where the gateway's config is written.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir().join(format!("c{}.toml", self.cluster(i)))
    }

    /// The default config of cluster `i`'s gateway (full mesh with every other cluster), to
    /// tweak and pass to [`Lab::write_gateway_config`]. Writes nothing.
    pub fn gateway_config(&self, i: usize) -> GatewayConfig {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| k.public_key().to_owned())
            .collect();
        GatewayConfig::for_cluster(&self.id, self.cluster(i), self.dir(), &keys)
    }

    /// Writes `cfg` as cluster `i`'s config (used by the next [`Lab::start_gateway`]).
    pub fn write_gateway_config(&self, i: usize, cfg: &GatewayConfig) -> Result<PathBuf> {
        let path = self.config_path(i);
        cfg.write(&path)?;
        lock(&self.configs).insert(i, cfg.clone());
        Ok(path)
    }

    /// The admin socket of cluster `i`'s gateway, per the config last written (or the default).
    pub fn admin_socket(&self, i: usize) -> PathBuf {
        self.current_config(i).admin.socket
    }

    fn current_config(&self, i: usize) -> GatewayConfig {
        lock(&self.configs)
            .get(&self.cluster(i))
            .cloned()
            .unwrap_or_else(|| self.gateway_config(i))
    }

    /// Starts `isthmus-gateway --config <dir>/c{i}.toml` in cluster `i`'s gateway namespace
    /// (writing the default config first if none was written) and waits up to
    /// [`START_TIMEOUT`] until its admin socket exists. Fails early, quoting the
    /// gateway's stderr, if it exits first. Restarting after a stop reuses the same config.
    pub fn start_gateway(&self, i: usize) -> Result<()> {
        let mut child = self.spawn_gateway(i)?;
        let outcome =
            self.await_gateway(i, &mut child, Instant::now() + START_TIMEOUT, START_TIMEOUT);
        let stderr = child.stderr();
        lock(&self.gateways).insert(i, child);
        outcome.map_err(|why| {
            anyhow::anyhow!(
                "gateway of cluster {i} {why}; its stderr:\n{}",
                tail(&stderr, 40)
            )
        })
    }

    /// Starts the gateways of `clusters` "at the same instant": every process is spawned in
    /// one tight loop before any is waited for, then all get [`START_TIMEOUT`] plus 250 ms per
    /// gateway (they share the lab's cores while starting) to bring up their admin sockets.
    /// Returns the instant the last one was spawned: where a mesh's formation time starts.
    /// Fails naming every gateway that did not come up, with its stderr; those that did keep
    /// running.
    pub fn start_gateways_together(&self, clusters: &[usize]) -> Result<Instant> {
        let unique: std::collections::BTreeSet<usize> = clusters.iter().copied().collect();
        anyhow::ensure!(
            unique.len() == clusters.len(),
            "cluster listed twice in {clusters:?}"
        );
        let mut spawned = Vec::with_capacity(clusters.len());
        for &i in clusters {
            match self.spawn_gateway(i) {
                Ok(child) => spawned.push((i, child)),
                Err(e) => {
                    // Guarded by the lab from here on: teardown still kills them.
                    lock(&self.gateways).extend(spawned);
                    return Err(e);
                }
            }
        }
        let last_spawned = Instant::now();
        let timeout = START_TIMEOUT
            + Duration::from_millis(250) * u32::try_from(clusters.len()).unwrap_or(u32::MAX);
        let mut failed = Vec::new();
        for (i, mut child) in spawned {
            if let Err(why) = self.await_gateway(i, &mut child, last_spawned + timeout, timeout) {
                failed.push(format!(
                    "gateway of cluster {i} {why}; its stderr:\n{}",
                    tail(&child.stderr(), 40)
                ));
            }
            lock(&self.gateways).insert(i, child);
        }
        if !failed.is_empty() {
            bail!("{}", failed.join("\n"));
        }
        Ok(last_spawned)
    }

    /// Spawns cluster `i`'s gateway after reaping its previous run and removing a stale admin
    /// socket; [`Lab::await_gateway`] tells when it is up.
    fn spawn_gateway(&self, i: usize) -> Result<ChildGuard> {
        let bin = self.binary(GATEWAY_BIN)?;
        if self.gateway_running(i) {
            bail!("the gateway of cluster {i} is already running");
        }
        // Reap the previous run (and its process group) before a new process can take its pid.
        let previous = lock(&self.gateways).remove(&i);
        drop(previous);
        if !lock(&self.configs).contains_key(&i) {
            self.write_gateway_config(i, &self.gateway_config(i))?;
        }
        let socket = self.admin_socket(i);
        // A SIGKILLed predecessor leaves its socket file; with it gone, existence means the new
        // gateway has bound it. Existence, not a probe connection: probing would be a client
        // that hangs up unannounced, which says nothing about readiness.
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| {
                    format!("failed to remove stale admin socket {}", socket.display())
                });
            }
            _ => {}
        }
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(self.config_path(i));
        // Identities and addresses are logged at DEBUG (gateway/LOGGING.md): the lab's logs
        // keep them, since tests and operators of a lab read who did what. Unless the caller
        // chose a filter.
        if std::env::var_os("ISTHMUS_LOG").is_none() {
            cmd.env(
                "ISTHMUS_LOG",
                "info,hickory_server=warn,isthmus_gateway=debug",
            );
        }
        let name = self.next_log_name(&format!("c{i}-gateway"));
        ChildGuard::spawn(&self.gw_ns(i), &name, &cmd, self.dir())
    }

    /// Waits until `deadline` (`timeout` after its spawn) for `child`'s admin socket; an error
    /// (killing it at the deadline) says why not, for "gateway of cluster {i} …".
    fn await_gateway(
        &self,
        i: usize,
        child: &mut ChildGuard,
        deadline: Instant,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let socket = self.admin_socket(i);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "exited with {status} before its admin socket was up"
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("could not be polled: {e:#}")),
            }
            if socket.exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                child.kill();
                return Err(format!(
                    "admin socket {} not up within {timeout:?}",
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` to cluster `i`'s gateway and waits for it to exit (up to [`STOP_TIMEOUT`];
    /// past that it is SIGKILLed and this is an error). Returns its exit status.
    pub fn stop_gateway(&self, i: usize, sig: Signal) -> Result<ExitStatus> {
        let mut gateways = lock(&self.gateways);
        let child = gateways
            .get_mut(&self.cluster(i))
            .with_context(|| format!("the gateway of cluster {i} was never started"))?;
        child.stop(sig, STOP_TIMEOUT)
    }

    /// Sends `sig` (e.g. HUP to reload, STOP/CONT to freeze) without waiting.
    pub fn signal_gateway(&self, i: usize, sig: Signal) -> Result<()> {
        let gateways = lock(&self.gateways);
        let child = gateways
            .get(&self.cluster(i))
            .with_context(|| format!("the gateway of cluster {i} was never started"))?;
        child.signal(sig)
    }

    pub fn gateway_running(&self, i: usize) -> bool {
        lock(&self.gateways)
            .get_mut(&self.cluster(i))
            .is_some_and(ChildGuard::is_running)
    }

    pub fn gateway_pid(&self, i: usize) -> Option<u32> {
        lock(&self.gateways)
            .get(&self.cluster(i))
            .map(ChildGuard::pid)
    }

    /// Everything the latest gateway of cluster `i` wrote to stderr (its logs).
    pub fn gateway_stderr(&self, i: usize) -> String {
        lock(&self.gateways)
            .get(&self.cluster(i))
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    pub fn gateway_stdout(&self, i: usize) -> String {
        lock(&self.gateways)
            .get(&self.cluster(i))
            .map(ChildGuard::stdout)
            .unwrap_or_default()
    }

    /// Runs `tunctl --socket <admin socket of i> ARGS…` in cluster `i`'s gateway namespace and
    /// parses its stdout as JSON; pass `-o json` in `args`.
    pub fn tunctl(&self, i: usize, args: &[&str]) -> Result<serde_json::Value> {
        let text = self.tunctl_text(i, args)?;
        serde_json::from_str(&text)
            .with_context(|| format!("tunctl {} printed no JSON:\n{text}", args.join(" ")))
    }

    /// `tunctl peers -o json` of gateway `i` as a list. Panics with the reason: for tests.
    pub fn peers_json(&self, i: usize) -> Vec<serde_json::Value> {
        let v = self
            .tunctl(i, &["-o", "json", "peers"])
            .unwrap_or_else(|e| panic!("tunctl peers on gateway {i}: {e:#}"));
        match v {
            serde_json::Value::Array(list) => list,
            other => panic!("tunctl peers on gateway {i} printed no list: {other}"),
        }
    }

    /// Gateway `i`'s row for its peer named `name`. Panics when there is none: for tests.
    pub fn peer_json(&self, i: usize, name: &str) -> serde_json::Value {
        let all = self.peers_json(i);
        all.iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("gateway {i} has no peer {name}: {all:?}"))
    }

    /// `tunctl status -o json` of gateway `i`. Panics with the reason: for tests.
    pub fn status_json(&self, i: usize) -> serde_json::Value {
        self.tunctl(i, &["-o", "json", "status"])
            .unwrap_or_else(|e| panic!("tunctl status on gateway {i}: {e:#}"))
    }

    /// Runs `tunctl --socket <admin socket of i> ARGS…` and returns its stdout as text.
    pub fn tunctl_text(&self, i: usize, args: &[&str]) -> Result<String> {
        let bin = self.binary(TUNCTL_BIN)?;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket").arg(self.admin_socket(i)).args(args);
        netns::checked(&mut in_namespace(&self.gw_ns(i), &cmd))
    }
}
