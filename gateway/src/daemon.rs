//! The process shell: brings the interface up from a validated [`Config`], runs the data plane
//! and the operator interfaces, reloads peers on SIGHUP and removes everything on SIGTERM/SIGINT.

use crate::admin::proto::{InterfaceStatus, PeerInfo, PeerState, ReloadReport};
use crate::admin::AdminSource;
use crate::config::Config;
use crate::dataplane::io::{self, Udp};
use crate::dataplane::Engine;
use crate::keys::PrivateKey;
use crate::netlink::{routable, LinkControl, Netlink};
use anyhow::Context as _;
use ipnet::IpNet;
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

mod joins;
pub(crate) mod mesh;

/// What the admin interfaces read: the engine plus the configuration in force.
pub struct DaemonState {
    pub engine: Arc<Engine>,
    config: RwLock<Config>,
    /// Peers by identity and their join state.
    pub(crate) membership: parking_lot::Mutex<crate::membership::Membership>,
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
    /// Mesh membership by signed records (`[members]`).
    pub(crate) mesh: Option<Arc<mesh::MeshMembers>>,
    /// The peer set last applied, with the mesh peers and refusals that came with it.
    pub(crate) merged: parking_lot::Mutex<mesh::Merged>,
    /// The applied peers changed: the main loop reconciles the kernel routes.
    routes_dirty: tokio::sync::Notify,
}

type ReloadReply = tokio::sync::oneshot::Sender<Result<ReloadReport, String>>;

/// How long a rotation waits for peers to learn the new key before switching anyway.
const ROTATION_SWITCH_DEADLINE: Duration = Duration::from_secs(10);

impl AdminSource for DaemonState {
    fn peers(&self) -> Vec<PeerInfo> {
        let now = SystemTime::now();
        let mut rows: Vec<PeerInfo> = self
            .engine
            .peers()
            .list
            .iter()
            .map(|p| p.info(now))
            .collect();
        self.membership.lock().annotate(&mut rows, now);
        for (key, id, not_after) in &self.merged.lock().members {
            if let Some(row) = rows.iter_mut().find(|r| r.public_key == key.to_base64()) {
                if row.spiffe_id.is_none() {
                    row.spiffe_id = Some(id.as_str().to_string());
                    row.svid_expires_unix_ms = Some(crate::members::unix_ms(*not_after));
                }
                row.verified = true;
            }
        }
        rows
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
        if let Some(mesh) = &self.mesh {
            status.members = mesh
                .peers(SystemTime::now())
                .iter()
                .map(|m| m.spiffe_id.as_str().to_string())
                .collect();
            for (rule, n) in mesh.refused() {
                status.refusals.insert(format!("member_{rule}"), n);
            }
        }
        Some(status)
    }

    fn private_key_hex(&self) -> String {
        self.engine.private_key().to_hex()
    }

    fn reload(&self) -> futures::future::BoxFuture<'static, Result<ReloadReport, String>> {
        let reloads = self.reloads.clone();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            reloads
                .send(tx)
                .await
                .map_err(|_| "the daemon is shutting down".to_string())?;
            rx.await
                .map_err(|_| "the daemon is shutting down".to_string())?
        })
    }
}

impl DaemonState {
    /// Hands the engine every keyed peer: configured keys, peers joined by identity and, with
    /// `[members]`, members learned from records (see [`mesh::merge`]); hands the control plane
    /// the prefixes now carried into the tunnel (for the watch stream and the etcd store); then
    /// has the main loop reconcile the kernel routes.
    pub(crate) fn apply_peers(&self) -> crate::dataplane::PeerDiff {
        let now = SystemTime::now();
        let (configured, own, mesh_addrs, keepalive) = {
            let cfg = self.config.read();
            let mesh_addrs: Vec<std::net::IpAddr> =
                cfg.interface.addresses.iter().map(|a| a.addr()).collect();
            let mut own: Vec<IpNet> = mesh_addrs.iter().copied().map(IpNet::from).collect();
            if let Some(m) = &cfg.members {
                own.extend(m.prefixes.iter().copied());
            }
            (
                cfg.peers.clone(),
                own,
                mesh_addrs,
                cfg.members.as_ref().and_then(|m| m.persistent_keepalive),
            )
        };
        let (slots, joined, retiring) = {
            let m = self.membership.lock();
            let slots: Vec<_> = m.slots.iter().map(|s| s.config.clone()).collect();
            (slots, m.joined_slots(now), m.retiring_peers(now))
        };
        let learned = self.mesh.as_ref().map(|m| mesh::Learned {
            members: m.peers(now),
            keepalive,
        });
        let merged = mesh::merge(&own, &configured, &slots, joined, learned);
        let diff = self.engine.apply_peer_set(&merged.peers, &retiring);
        {
            let mut last = self.merged.lock();
            for r in &merged.refused {
                if !last.refused.contains(r) {
                    let (who, net, holder) = r;
                    tracing::warn!(peer = %who, prefix = %net, held_by = %holder, "prefix not given to a learned peer: another peer holds it");
                }
            }
            *last = merged;
            // Under the lock, so that of two applies racing, the control plane ends with the
            // routes of the one stored last.
            if let Some(control) = self.control.get() {
                control.set_routes(last.carried_routes(&mesh_addrs));
            }
        }
        self.routes_dirty.notify_one();
        diff
    }

    /// Every prefix routed to a peer right now (learned ones included).
    fn applied_prefixes(&self) -> Vec<IpNet> {
        self.merged
            .lock()
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
        let done = self.membership.lock().rejoins_done();
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
        let mut changed = self.membership.lock().expire(now);
        if let Some(mesh) = &self.mesh {
            // Installed members whose record is no longer fresh: their owner stopped
            // re-signing it (it died without leaving).
            let fresh: Vec<_> = mesh.peers(now).into_iter().map(|p| p.spiffe_id).collect();
            let lapsed: Vec<_> = self
                .merged
                .lock()
                .members
                .iter()
                .map(|(_, id, _)| id.clone())
                .filter(|id| !fresh.contains(id))
                .collect();
            changed |= mesh.expire(now);
            if !lapsed.is_empty() {
                let mut m = self.membership.lock();
                for id in &lapsed {
                    tracing::warn!(member = %id, "member record not renewed in time: the member is gone");
                    m.left(id);
                }
                changed = true;
            }
            if mesh.needs_refresh(now) {
                self.publish_own_record(false);
            }
        }
        if changed {
            let diff = self.apply_peers();
            tracing::info!(
                removed = diff.removed.len(),
                "retired keys, expired SVIDs or lapsed members removed"
            );
            self.send_gossip();
        }
        self.maybe_switch_key();
    }

    /// Signs our member record (a leaving one on shutdown) and sends it to every peer.
    pub(crate) fn publish_own_record(&self, leaving: bool) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        let key = self.config.read().interface.private_key.public_key();
        let Some(mesh_addr) = self.mesh_addr() else {
            return;
        };
        match mesh.sign_own(&key, mesh_addr, leaving, SystemTime::now()) {
            Ok(()) => self.send_gossip(),
            Err(e) => tracing::error!(error = format!("{e:#}"), "member record not published"),
        }
    }

    /// Hands every record we hold to the control plane, which sends it on every session.
    fn send_gossip(&self) {
        if let (Some(mesh), Some(control)) = (&self.mesh, self.control.get()) {
            control.set_gossip(mesh.gossip());
        }
    }

    /// Records a peer sent over a sync session: verified, merged, and if anything changed,
    /// applied and sent on.
    pub(crate) fn receive_records(&self, records: &[crate::members::OpaqueMember]) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        let received = mesh.receive(records, SystemTime::now());
        if !received.changed {
            return;
        }
        {
            let mut m = self.membership.lock();
            for id in &received.left {
                m.left(id);
            }
        }
        let diff = self.apply_peers();
        if !diff.added.is_empty() || !diff.removed.is_empty() || !diff.restarted.is_empty() {
            tracing::info!(
                added = diff.added.len(),
                removed = diff.removed.len(),
                restarted = diff.restarted.len(),
                kept = diff.kept.len(),
                "mesh members applied"
            );
        }
        self.send_gossip();
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
    let mesh = match (&config.members, &config.identity) {
        (Some(m), Some(identity)) => Some(Arc::new(
            mesh::MeshMembers::new(m, identity).context("failed to start mesh membership")?,
        )),
        _ => None,
    };
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
        membership: parking_lot::Mutex::new(crate::membership::Membership::new(
            &config.identity_peers,
            config
                .identity
                .as_ref()
                .map_or(Duration::ZERO, |i| i.rotation_grace),
        )),
        started: Instant::now(),
        offloads: offloads.clone(),
        listen_port,
        pending_key: parking_lot::Mutex::new(None),
        reloads: reload_tx,
        control: std::sync::OnceLock::new(),
        mesh,
        merged: parking_lot::Mutex::new(mesh::Merged::default()),
        routes_dirty: tokio::sync::Notify::new(),
    });
    state.membership.lock().accept_any_gateway =
        config.members.as_ref().map(|m| m.persistent_keepalive);
    let expiry = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
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
    let control = match &config.control {
        Some(c) => {
            let directory = crate::control::peers::MembershipDirectory {
                state: Arc::downgrade(&state),
            };
            let control =
                crate::control::Control::start(c.clone(), state.mesh_addr(), Box::new(directory))
                    .await
                    .context("failed to start the control plane")?;
            let shared = control.shared();
            let weak = Arc::downgrade(&state);
            shared.set_members_hook(Arc::new(move |_peer, records| {
                if let Some(state) = weak.upgrade() {
                    state.receive_records(&records);
                }
            }));
            let _ = state.control.set(shared);
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
                if let Some(mesh) = &state.mesh {
                    match mesh.set_identity(&identity) {
                        Ok(()) => state.publish_own_record(false),
                        Err(e) => tracing::error!(
                            error = format!("{e:#}"),
                            "member record not re-signed after rotation"
                        ),
                    }
                }
                state.membership.lock().mark_rejoin_all();
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
) -> Result<ReloadReport, String> {
    let path = state.config.read().source.clone();
    let new = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration is unchanged");
            return Err(format!(
                "reload refused; the running configuration is unchanged: {e}"
            ));
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
        cfg.identity_peers = new_identity_peers.clone();
    }
    {
        let mut m = state.membership.lock();
        m.reconfigure(&new_identity_peers);
        if let Some(i) = &new.identity {
            m.grace = i.rotation_grace;
        }
    }
    let diff = state.apply_peers();
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
        if state.membership.lock().any_joined() {
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
