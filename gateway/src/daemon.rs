//! The process shell: brings the interface up from a validated [`Config`], runs the data plane
//! and the operator interfaces, reloads peers on SIGHUP and removes everything on SIGTERM/SIGINT.

use crate::admin::proto::{InterfaceStatus, PeerInfo, PeerState, ReloadReport};
use crate::admin::{AdminSource, ReloadError};
use crate::config::Config;
use crate::dataplane::io::{self, Udp};
use crate::dataplane::Engine;
use crate::keys::PrivateKey;
use crate::mesh::{Directory, Inbound, Input, Mesh};
use crate::netlink::{routable, LinkControl, Netlink};
use anyhow::Context as _;
use ipnet::IpNet;
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

mod joins;
mod rows;

/// What the admin interfaces read: the engine plus the configuration in force.
pub struct DaemonState {
    pub engine: Arc<Engine>,
    config: RwLock<Config>,
    /// The peer set's one owner. Every change goes through [`DaemonState::apply`] while this
    /// lock is held, so the engine, the directory and the routes always follow one state.
    pub(crate) mesh: parking_lot::Mutex<Mesh>,
    /// The sync peers, published to the control plane after every apply.
    directory: Directory,
    started: Instant,
    offloads: BTreeMap<String, bool>,
    listen_port: u16,
    /// A rotated key the data plane switches to once every joined peer has learned it (or at
    /// the deadline): until then the old sessions keep carrying traffic.
    pending_key: parking_lot::Mutex<Option<(PrivateKey, Instant)>>,
    /// `tunctl reload` requests for the main loop.
    reloads: tokio::sync::mpsc::Sender<ReloadReply>,
    /// The control plane, once started (`[control]`).
    control: std::sync::OnceLock<Arc<crate::control::Shared>>,
    /// The applied peers changed: the main loop reconciles the kernel routes.
    routes_dirty: tokio::sync::Notify,
}

type ReloadReply = tokio::sync::oneshot::Sender<Result<ReloadReport, ReloadError>>;

/// How long a rotation waits for peers to learn the new key before switching anyway.
const ROTATION_SWITCH_DEADLINE: Duration = Duration::from_secs(10);

/// Membership messages from the control plane waiting for the mesh.
const MESH_INBOX: usize = 4096;

impl AdminSource for DaemonState {
    fn peers(&self) -> Vec<PeerInfo> {
        let now = SystemTime::now();
        let engine_rows: Vec<PeerInfo> = self
            .engine
            .peers()
            .list
            .iter()
            .map(|p| p.info(now))
            .collect();
        let identities = self.mesh.lock().identities();
        rows::peer_rows(engine_rows, identities, now)
    }

    fn status(&self) -> InterfaceStatus {
        let cfg = self.config.read();
        let peers = self.peers();
        InterfaceStatus {
            name: cfg.interface.name.clone(),
            public_key: self.engine.public_key().to_base64(),
            listen_port: self.listen_port,
            addresses: cfg
                .interface
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect(),
            mtu: cfg.interface.mtu,
            peers: peers.len(),
            connected_peers: peers
                .iter()
                .filter(|p| p.status == PeerState::Connected)
                .count(),
            uptime_secs: self.started.elapsed().as_secs(),
            pid: std::process::id(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            config_file: cfg.source.display().to_string(),
            offloads: self.offloads.clone(),
            dropped: self.engine.drops.snapshot(),
        }
    }

    fn services(&self) -> Option<Vec<crate::admin::proto::ServiceInfo>> {
        self.control.get().map(|c| c.services())
    }

    fn control(&self) -> Option<crate::admin::proto::ControlStatus> {
        let mut status = self.control.get()?.status();
        if let Some((members, refused)) = self.mesh.lock().members_status(SystemTime::now()) {
            status.members = members.iter().map(|m| m.as_str().to_string()).collect();
            for (rule, n) in refused {
                status.refusals.insert(format!("member_{rule}"), n);
            }
        }
        Some(status)
    }

    fn private_key_hex(&self) -> String {
        self.engine.private_key().to_hex()
    }

    fn reload(&self) -> futures::future::BoxFuture<'static, Result<ReloadReport, ReloadError>> {
        let reloads = self.reloads.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            reloads
                .send(tx)
                .await
                .map_err(|_| ReloadError::ShuttingDown)?;
            rx.await.map_err(|_| ReloadError::ShuttingDown)?
        })
    }
}

impl DaemonState {
    /// The one apply path: hands the engine the peer set the mesh wants at `now` (and the
    /// retiring keys), the control plane its sync peers, the routes carried into the tunnel and
    /// the member digest, and has the main loop reconcile the kernel routes. Called with the
    /// mesh lock held, so two changes never interleave.
    pub(crate) fn apply(&self, mesh: &mut Mesh, now: SystemTime) -> crate::dataplane::PeerDiff {
        let merged = mesh.desired(now);
        let diff = self
            .engine
            .apply_peer_set(&merged.peers, &mesh.retiring(now));
        self.directory.publish(&merged.mesh);
        if let Some(control) = self.control.get() {
            control.set_routes(merged.carried_routes(mesh.mesh_addrs()));
            control.set_members_digest(mesh.digest());
        }
        let refused = mesh.set_applied(merged);
        if !refused.is_empty() {
            for (who, net, holder) in &refused {
                tracing::debug!(peer = %who, prefix = %net, held_by = %holder, "prefix not given to a learned peer: another peer holds it");
            }
            tracing::warn!(
                prefixes = refused.len(),
                "prefixes not given to learned peers: other peers hold them (tunctl peers shows which)"
            );
        }
        self.routes_dirty.notify_one();
        diff
    }

    /// [`DaemonState::apply`] now, taking the mesh lock.
    pub(crate) fn apply_peers(&self) -> crate::dataplane::PeerDiff {
        let mut mesh = self.mesh.lock();
        self.apply(&mut mesh, SystemTime::now())
    }

    /// Every prefix routed to a peer right now (learned ones included).
    fn applied_prefixes(&self) -> Vec<IpNet> {
        self.mesh
            .lock()
            .applied()
            .peers
            .iter()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect()
    }

    /// The mesh address: the first address on the TUN.
    pub(crate) fn mesh_addr(&self) -> Option<std::net::IpAddr> {
        self.config
            .read()
            .interface
            .addresses
            .first()
            .map(|a| a.addr())
    }

    /// Switches the data plane to a rotated key once every joined peer re-joined with it, or
    /// once the deadline passed (a peer that missed it joins again over the underlay).
    pub(crate) fn maybe_switch_key(&self) {
        let mut pending = self.pending_key.lock();
        let Some((_, deadline)) = &*pending else {
            return;
        };
        let done = self.mesh.lock().rejoins_done();
        if !done && Instant::now() < *deadline {
            return;
        }
        if let Some((key, _)) = pending.take() {
            tracing::info!(public_key = %key.public_key(), all_peers_told = done, "data plane switched to the rotated key");
            self.engine.set_private_key(key);
        }
    }

    /// Grace periods, SVID expiry and member records past their lifetime; re-applies the
    /// peers when something ended, and re-signs our record when it is due.
    fn expire(&self) {
        let now = SystemTime::now();
        let mut mesh = self.mesh.lock();
        let expired = mesh.expire(now);
        if expired.changed {
            let diff = self.apply(&mut mesh, now);
            tracing::info!(
                removed = diff.removed.len(),
                "retired keys, expired SVIDs or lapsed members removed"
            );
        }
        if expired.refresh_due {
            self.publish_own(&mut mesh, false, now);
        }
        drop(mesh);
        self.maybe_switch_key();
    }

    /// Signs our member record (a leaving one on shutdown) and sends it to every peer.
    pub(crate) fn publish_own_record(&self, leaving: bool) {
        let mut mesh = self.mesh.lock();
        self.publish_own(&mut mesh, leaving, SystemTime::now());
    }

    fn publish_own(&self, mesh: &mut Mesh, leaving: bool, now: SystemTime) {
        let key = self.config.read().interface.private_key.public_key();
        match mesh.publish_own(&key, leaving, now) {
            Ok(out) => {
                if let Some(control) = self.control.get() {
                    control.set_members_digest(mesh.digest());
                    control.send_members(out);
                }
            }
            Err(e) => tracing::error!(error = %e, "member record not published"),
        }
    }

    /// Membership messages from sync sessions, a batch at a time: records verified and
    /// merged, digests answered, and the peers applied once for the whole batch.
    fn on_inbound(&self, batch: Vec<Inbound>) {
        let now = SystemTime::now();
        let mut mesh = self.mesh.lock();
        let mut changed = false;
        let mut out = Vec::new();
        for Inbound { from, input } in batch {
            match input {
                Input::Records(records) => {
                    let (c, o) = mesh.receive(&from, &records, now);
                    changed |= c;
                    out.extend(o);
                }
                Input::Digest(digest) => out.extend(mesh.digest_received(&from, &digest)),
            }
        }
        if changed {
            let diff = self.apply(&mut mesh, now);
            if !diff.added.is_empty() || !diff.removed.is_empty() || !diff.restarted.is_empty() {
                tracing::info!(
                    added = diff.added.len(),
                    removed = diff.removed.len(),
                    restarted = diff.restarted.len(),
                    kept = diff.kept.len(),
                    "mesh members applied"
                );
            }
        }
        drop(mesh);
        if let Some(control) = self.control.get() {
            control.send_members(out);
        }
    }
}

/// Feeds the mesh what the sync sessions receive, in batches (a burst of records is applied
/// once, not once per message).
async fn mesh_inbox(state: Arc<DaemonState>, mut rx: tokio::sync::mpsc::Receiver<Inbound>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let state = state.clone();
        // Signature verification is CPU work: off the async workers.
        let _ = tokio::task::spawn_blocking(move || state.on_inbound(batch)).await;
    }
}

/// Routes the kernel should have through the interface for `config` and the peers `applied`
/// (which adds what was learned from member records).
fn wanted_routes(config: &Config, applied: &[IpNet]) -> BTreeSet<IpNet> {
    if !config.interface.routes {
        return BTreeSet::new();
    }
    // Prefixes of peers by identity are routed before they join: until then the engine drops
    // their packets as no_route.
    let all: Vec<IpNet> = config
        .peers
        .iter()
        .flat_map(|p| p.allowed_ips.clone())
        .chain(
            config
                .identity_peers
                .iter()
                .flat_map(|p| p.allowed_ips.clone()),
        )
        .chain(applied.iter().copied())
        .collect();
    let (routes, skipped) = routable(&all);
    for s in skipped {
        tracing::warn!(prefix = %s, "not routing a default route through the tunnel; add policy routing yourself");
    }
    routes.into_iter().collect()
}

/// Runs the gateway until SIGTERM/SIGINT. Anything created is removed before returning, also
/// when start-up fails half way.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let name = config.interface.name.clone();
    warn_if_key_readable_by_others(&config.interface.private_key_file);
    // Checked before anything exists: the SVID key must sign records.
    let mesh = Mesh::new(&config).context("failed to start mesh membership")?;
    // The UDP port first: a port in use must fail before any interface exists.
    let udp = Arc::new(
        Udp::bind(config.interface.listen_port, &config.dataplane)
            .with_context(|| format!("failed to bind UDP port {}", config.interface.listen_port))?,
    );
    let listen_port = udp.local_port()?;

    let (tun, offload) = create_tun(&name, config.dataplane.tun_offload)
        .with_context(|| format!("failed to create TUN device {name}"))?;
    let tun = Arc::new(tun);
    let nl = Netlink::connect()?;
    let index = configure_link(&nl, &config)
        .await
        .with_context(|| format!("failed to configure {name}"))?;
    let mut routes = BTreeSet::new();
    for net in wanted_routes(&config, &[]) {
        nl.replace_route(index, net)
            .await
            .with_context(|| format!("failed to configure {name}"))?;
        routes.insert(net);
    }

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadReply>(4);
    let engine = Arc::new(Engine::new(
        config.interface.private_key.clone(),
        usize::from(config.interface.mtu),
        &config.peers,
    ));
    let offloads = BTreeMap::from([
        ("tun_offload".to_string(), offload),
        ("udp_gso".to_string(), udp.gso_segments() > 1),
        (
            "udp_gro".to_string(),
            config.dataplane.udp_gro && udp.gro_segments() > 1,
        ),
    ]);
    let state = Arc::new(DaemonState {
        engine: engine.clone(),
        config: RwLock::new(config.clone()),
        mesh: parking_lot::Mutex::new(mesh),
        directory: Directory::default(),
        started: Instant::now(),
        offloads: offloads.clone(),
        listen_port,
        pending_key: parking_lot::Mutex::new(None),
        reloads: reload_tx,
        control: std::sync::OnceLock::new(),
        routes_dirty: tokio::sync::Notify::new(),
    });
    let expiry = {
        let state = state.clone();
        tokio::spawn(async move {
            // At the mesh's next deadline (a grace period, an SVID, a member record), at
            // least once a second on the timer grid, and every step while a rotated key
            // waits to be switched.
            loop {
                let now = Instant::now();
                let step = if state.pending_key.lock().is_some() {
                    Duration::from_millis(250)
                } else {
                    Duration::from_secs(1)
                };
                let mut next = crate::clock::next_after(step, now);
                if let Some(due) = state.mesh.lock().poll_timeout() {
                    let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
                    // Never a busy loop, whatever a deadline says.
                    next = next.min(now + wait.max(Duration::from_millis(50)));
                }
                tokio::time::sleep_until(next.into()).await;
                state.expire();
            }
        })
    };
    let running = io::start(
        engine.clone(),
        tun.clone(),
        udp.clone(),
        usize::from(config.interface.mtu),
        offload,
    );

    let admin = crate::admin::server::serve_admin(&config.admin.socket, state.clone())
        .await
        .context("failed to start the admin socket")?;
    let uapi = if config.admin.uapi {
        let path = config.admin.uapi_socket(&name);
        match crate::admin::uapi::serve_uapi(&path, state.clone()).await {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = format!("{e:#}"), "WireGuard UAPI socket not available");
                None
            }
        }
    } else {
        None
    };
    let metrics = match config.admin.metrics_listen {
        Some(addr) => Some(
            crate::admin::metrics::serve_metrics(addr, state.clone())
                .await
                .with_context(|| format!("failed to serve metrics on {addr}"))?,
        ),
        None => None,
    };
    let mut joins = match &config.identity {
        Some(identity) => Some(
            joins::start(
                state.clone(),
                identity.clone(),
                config.interface.private_key.clone(),
            )
            .await
            .with_context(|| {
                format!(
                    "failed to listen for joins on TCP port {}",
                    identity.join_port
                )
            })?,
        ),
        None => None,
    };
    let mut inbox_task = None;
    let control = match &config.control {
        Some(c) => {
            let inbox = match &config.members {
                Some(_) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(MESH_INBOX);
                    inbox_task = Some(tokio::spawn(mesh_inbox(state.clone(), rx)));
                    Some(tx)
                }
                None => None,
            };
            engine.set_liveness_probe(Some(crate::control::liveness_probe(&c.health)));
            let control = crate::control::Control::start(
                c.clone(),
                state.mesh_addr(),
                Box::new(state.directory.reader()),
                inbox,
                Some(Box::new(TunnelOf(engine.clone()))),
            )
            .await
            .context("failed to start the control plane")?;
            let _ = state.control.set(control.shared());
            state.publish_own_record(false);
            Some(control)
        }
        None => None,
    };
    // The first apply: the engine already runs the configured peers, but the applied set (and
    // the control plane's routes) must hold them too, also when no join or member ever changes it.
    state.apply_peers();
    tracing::info!(
        interface = %name, port = listen_port, peers = config.peers.len(),
        public_key = %engine.public_key(), ?offloads, "isthmus-gateway running"
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        let reply = tokio::select! {
            _ = hup.recv() => None,
            Some(reply) = reload_rx.recv() => Some(reply),
            _ = state.routes_dirty.notified() => {
                let wanted = wanted_routes(&state.config.read(), &state.applied_prefixes());
                sync_routes(&nl, index, &mut routes, &wanted).await;
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let outcome = reload(&state, &nl, index, &mut routes).await;
        let rotated = outcome.as_ref().is_ok_and(|r| r.rotated);
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
        if rotated {
            // New key or SVID: the join listener must present the new chain, and every peer
            // by identity must learn the new binding through a re-join (through the tunnel
            // while the old key still carries it; the data plane switches afterwards).
            if let Some(j) = joins.take() {
                j.stop();
            }
            let (identity, key) = {
                let cfg = state.config.read();
                (cfg.identity.clone(), cfg.interface.private_key.clone())
            };
            if let Some(identity) = identity {
                let signed = state.mesh.lock().set_identity(&identity);
                match signed {
                    Ok(()) => state.publish_own_record(false),
                    Err(e) => {
                        tracing::error!(error = %e, "member record not re-signed after rotation")
                    }
                }
                state.mesh.lock().mark_rejoin_all();
                match joins::start(state.clone(), identity, key).await {
                    Ok(j) => joins = Some(j),
                    Err(e) => tracing::error!(
                        error = format!("{e:#}"),
                        "join listener did not restart after rotation"
                    ),
                }
            }
        }
        if let Some(j) = &joins {
            j.reconfigured(&state);
        }
    }
    expiry.abort();

    tracing::info!(interface = %name, "shutting down");
    // First, while the tunnels still carry it: peers hear that we leave the mesh and our Bye,
    // and drop us and fail over at once.
    state.publish_own_record(true);
    if let Some(c) = control {
        c.stop().await;
    }
    if let Some(t) = inbox_task {
        t.abort();
    }
    if let Some(j) = joins {
        j.stop();
    }
    running.stop().await;
    admin.shutdown().await;
    if let Some(u) = uapi {
        u.shutdown().await;
    }
    if let Some(m) = metrics {
        m.shutdown().await;
    }
    for net in &routes {
        if let Err(e) = nl.delete_route(index, *net).await {
            tracing::warn!(error = format!("{e:#}"), "route removal failed");
        }
    }
    // Closing the last descriptor of a non-persistent TUN device deletes the interface.
    drop(state);
    drop(engine);
    drop(tun);
    wait_link_gone(&nl, &name).await;
    tracing::info!(interface = %name, "stopped");
    Ok(())
}

/// Like `wg`, say so when the private key is readable by group or others.
fn warn_if_key_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "private key file is accessible to group or others; chmod 600 it");
        }
    }
}

fn create_tun(name: &str, offload: bool) -> std::io::Result<(tun_rs::AsyncDevice, bool)> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .offload(offload)
            .build_async()
    };
    if offload {
        match build(true) {
            Ok(d) => return Ok((d, true)),
            Err(e) => tracing::warn!(error = %e, "TUN offload unavailable; continuing without it"),
        }
    }
    build(false).map(|d| (d, false))
}

async fn configure_link(nl: &impl LinkControl, config: &Config) -> anyhow::Result<u32> {
    let index = nl.link_index(&config.interface.name).await?;
    nl.set_mtu(index, u32::from(config.interface.mtu)).await?;
    for a in &config.interface.addresses {
        nl.add_address(index, *a).await?;
    }
    nl.set_up(index).await?;
    Ok(index)
}

async fn wait_link_gone(nl: &impl LinkControl, name: &str) {
    for _ in 0..50 {
        if nl.link_index(name).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(interface = %name, "interface still present after shutdown");
}

/// SIGHUP or `tunctl reload`: re-read the file; apply peer changes atomically, or keep
/// everything on error. The report says whether the interface's key or SVID was rotated.
async fn reload(
    state: &DaemonState,
    nl: &impl LinkControl,
    index: u32,
    routes: &mut BTreeSet<IpNet>,
) -> Result<ReloadReport, ReloadError> {
    let path = state.config.read().source.clone();
    let new = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration is unchanged");
            return Err(ReloadError::Config(e));
        }
    };
    let mut restart_needed = Vec::new();
    {
        let old = state.config.read();
        let i_old = &old.interface;
        let i_new = &new.interface;
        let mut ignored = Vec::new();
        if i_old.name != i_new.name {
            ignored.push("interface.name");
        }
        if i_old.listen_port != i_new.listen_port {
            ignored.push("interface.listen_port");
        }
        if i_old.addresses != i_new.addresses {
            ignored.push("interface.address");
        }
        if i_old.mtu != i_new.mtu {
            ignored.push("interface.mtu");
        }
        if old.admin != new.admin || old.dataplane != new.dataplane {
            ignored.push("[admin]/[dataplane]");
        }
        // The control plane's sockets, store and DNS are bound once at start; the export file
        // itself is followed live.
        if old.control != new.control {
            ignored.push("[control]/[exports]/[store]/[dns]");
        }
        if !ignored.is_empty() {
            tracing::warn!(fields = ?ignored, "these changes take effect only after a restart");
        }
        restart_needed.extend(ignored.iter().map(|s| s.to_string()));
    }
    let rotated = rotate(state, &new);
    let new_peers = new.peers.clone();
    let new_identity_peers = new.identity_peers.clone();
    {
        let mut cfg = state.config.write();
        // Only the peers are applied; the rest keeps its running values until a restart.
        cfg.peers = new_peers;
        cfg.identity_peers = new_identity_peers;
    }
    let diff = {
        let mut mesh = state.mesh.lock();
        mesh.reconfigure(&new);
        state.apply(&mut mesh, SystemTime::now())
    };
    let wanted = wanted_routes(&new, &state.applied_prefixes());
    sync_routes(nl, index, routes, &wanted).await;
    tracing::info!(
        added = diff.added.len(),
        removed = diff.removed.len(),
        restarted = diff.restarted.len(),
        kept = diff.kept.len(),
        "configuration reloaded"
    );
    Ok(ReloadReport {
        rotated,
        added: diff.added.len(),
        removed: diff.removed.len(),
        restarted: diff.restarted.len(),
        kept: diff.kept.len(),
        restart_needed,
    })
}

/// Adds and removes kernel routes through the interface until they are `wanted`; a failure
/// is logged and retried at the next reconcile.
async fn sync_routes(
    nl: &impl LinkControl,
    index: u32,
    routes: &mut BTreeSet<IpNet>,
    wanted: &BTreeSet<IpNet>,
) {
    for net in wanted.difference(routes).copied().collect::<Vec<_>>() {
        match nl.replace_route(index, net).await {
            Ok(()) => {
                routes.insert(net);
            }
            Err(e) => {
                tracing::error!(prefix = %net, error = format!("{e:#}"), "adding route failed")
            }
        }
    }
    for net in routes.difference(wanted).copied().collect::<Vec<_>>() {
        match nl.delete_route(index, net).await {
            Ok(()) => {
                routes.remove(&net);
            }
            Err(e) => {
                tracing::error!(prefix = %net, error = format!("{e:#}"), "removing route failed")
            }
        }
    }
}

/// Applies a new interface key, SVID and/or trust bundle from a reloaded file (static key
/// rotation, root rollover). The new SVID already verified against the new bundle and binds the
/// new key (checked at load).
fn rotate(state: &DaemonState, new: &Config) -> bool {
    let (key_changed, svid_changed) = {
        let old = state.config.read();
        (
            old.interface.private_key.public_key() != new.interface.private_key.public_key(),
            // A new SVID, or a bundle with a root added or removed (root rollover).
            old.identity.as_ref().map(|i| (&i.chain, &i.bundle))
                != new.identity.as_ref().map(|i| (&i.chain, &i.bundle)),
        )
    };
    if !key_changed && !svid_changed {
        return false;
    }
    if key_changed {
        if state.mesh.lock().any_joined() {
            // Joined peers learn the new key first, through the tunnel the old key still
            // carries; `maybe_switch_key` switches the data plane when they have.
            *state.pending_key.lock() = Some((
                new.interface.private_key.clone(),
                Instant::now() + ROTATION_SWITCH_DEADLINE,
            ));
        } else {
            state
                .engine
                .set_private_key(new.interface.private_key.clone());
        }
        if !new.peers.is_empty() {
            tracing::warn!(
                peers = new.peers.len(),
                "static key rotated: peers configured by public_key must be given the new key"
            );
        }
    }
    let mut cfg = state.config.write();
    cfg.interface.private_key = new.interface.private_key.clone();
    cfg.interface.private_key_file = new.interface.private_key_file.clone();
    cfg.identity = new.identity.clone();
    tracing::info!(
        public_key = %new.interface.private_key.public_key(),
        id = new.identity.as_ref().map(|i| i.id.as_str()).unwrap_or("-"),
        "interface key/SVID rotated; re-joining peers by identity"
    );
    true
}

/// The engine's view of its peers' liveness, for the control plane's health.
struct TunnelOf(Arc<Engine>);

impl crate::control::TunnelLiveness for TunnelOf {
    fn last_heard(&self, mesh_addr: std::net::IpAddr) -> Option<std::time::Instant> {
        self.0.last_heard(mesh_addr)
    }

    fn handshakes(&self, mesh_addr: std::net::IpAddr) -> u64 {
        self.0.peers().route(mesh_addr).map_or(0, |p| {
            p.stats
                .handshakes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}
