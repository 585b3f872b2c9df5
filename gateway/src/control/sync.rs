//! Sync sessions over TCP between mesh addresses, through the tunnel: the listener, the dialer
//! and one task per session around [`SessionCore`].
//!
//! One session per peer: the side with the lower mesh address dials; the other accepts. A new
//! connection from an address that already has an inbound session replaces it (the peer
//! restarted). Only a joined peer's mesh address may connect: the source address is what
//! authenticates the peer's cluster (see `crate::mesh::directory`).

use super::session::{Close, Output, SessionCore};
use super::{DialState, Outbound, SessionEntry, Shared};
use crate::mesh::{MeshPeer, Target};
use isthmus_catalog::{encode, SyncMessage};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast::error::RecvError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Dials are tried on the gateway's timer grid (`crate::clock`), with its other timers.
const DIAL_TICK: Duration = Duration::from_millis(250);
const DIAL_IDLE: Duration = Duration::from_secs(1);
/// A session in step for this long resets the dial backoff.
const STABLE_AFTER: Duration = Duration::from_secs(5);

pub(super) async fn bind(addr: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let sa = SocketAddr::new(addr, port);
    let socket = match addr {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sa)?;
    socket.listen(64)
}

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(error) => {
                tracing::warn!(%error, "catalog sync accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(peer) = shared.directory.by_addr(remote.ip()) else {
            shared.count_refusal("unknown_source");
            tracing::debug!(%remote, "catalog sync connection from an unknown address");
            tracing::warn!("catalog sync connection from an address that is no joined peer's mesh address; closed");
            drop(stream);
            continue;
        };
        // The peer reconnected: its previous inbound session is stale.
        let stale: Vec<u64> = shared
            .sessions
            .lock()
            .iter()
            .filter(|(_, e)| e.peer.addr == peer.addr && !e.outbound)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(e) = shared.sessions.lock().remove(&id) {
                if let Some(a) = e.abort {
                    a.abort();
                }
            }
        }
        spawn_session(&shared, stream, peer, false);
    }
}

fn spawn_session(shared: &Arc<Shared>, stream: TcpStream, peer: MeshPeer, outbound: bool) {
    let id = shared
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.sessions.lock().insert(
        id,
        SessionEntry {
            peer: peer.clone(),
            outbound,
            synced: false,
            abort: None,
        },
    );
    let task = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let opened = Instant::now();
            tracing::debug!(peer = %peer.spiffe_id, mesh_addr = %peer.addr, outbound, "catalog sync session open");
            tracing::info!(cluster = %peer.cluster, outbound, "catalog sync session open");
            let end = run(&shared, stream, &peer, id).await;
            let was_synced = shared.sessions.lock().remove(&id).is_some_and(|e| e.synced);
            match &end {
                End::Shutdown => {}
                End::Closed(close) => {
                    if let Some(label) = close.refusal_label() {
                        if matches!(close, Close::Decode(_)) {
                            shared.count_refusal(label);
                        }
                        tracing::debug!(peer = %peer.spiffe_id, reason = %close, "catalog sync session closed: refused");
                        tracing::warn!(cluster = %peer.cluster, reason = %close, "catalog sync session closed: peer sent something refused; the catalog is unchanged");
                    } else {
                        tracing::debug!(peer = %peer.spiffe_id, reason = %close, "catalog sync session closed");
                        tracing::info!(cluster = %peer.cluster, reason = %close, "catalog sync session closed");
                    }
                }
                End::Io(e) => {
                    tracing::debug!(peer = %peer.spiffe_id, error = %e, "catalog sync session ended");
                    tracing::info!(cluster = %peer.cluster, error = %e, "catalog sync session ended")
                }
            }
            if outbound {
                let mut dials = shared.dials.lock();
                let d = dials.entry(peer.addr).or_insert_with(|| DialState {
                    next: Instant::now(),
                    backoff: FIRST_RETRY,
                    connecting: false,
                    last_error: None,
                });
                if was_synced && opened.elapsed() >= STABLE_AFTER {
                    d.backoff = FIRST_RETRY;
                }
                d.connecting = false;
                d.last_error = Some(end.to_string());
                d.next = Instant::now() + d.backoff;
                d.backoff = (d.backoff * 2).min(MAX_RETRY);
            }
        })
    };
    if let Some(e) = shared.sessions.lock().get_mut(&id) {
        e.abort = Some(task.abort_handle());
    }
}

enum End {
    Shutdown,
    Closed(Close),
    Io(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Shutdown => f.write_str("shutting down"),
            End::Closed(c) => write!(f, "{c}"),
            End::Io(e) => f.write_str(e),
        }
    }
}

async fn send(
    wr: &mut OwnedWriteHalf,
    core: &mut SessionCore,
    msg: &SyncMessage,
) -> Result<(), End> {
    let frame = match encode(msg) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, kind = msg.kind(), "sync message not sent");
            return Ok(());
        }
    };
    // A peer that takes no data for as long as a silent one would be given is gone; a slow
    // one keeps its session.
    match tokio::time::timeout(core.write_timeout(), wr.write_all(&frame)).await {
        Ok(Ok(())) => {
            core.on_sent(Instant::now());
            Ok(())
        }
        Ok(Err(e)) => Err(End::Io(format!("write failed: {e}"))),
        Err(_) => Err(End::Io("peer does not take data".into())),
    }
}

async fn run(shared: &Arc<Shared>, stream: TcpStream, peer: &MeshPeer, id: u64) -> End {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut deltas = shared.deltas.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let (mut core, hello) = {
        let catalog = shared.catalog.lock();
        let health = catalog.config();
        let every = super::session::heartbeat_every(health, shared.liveness.is_some());
        let mut core = SessionCore::new(peer.cluster.clone(), health, every, Instant::now())
            .aligned_to(shared.beat_epoch);
        if shared.liveness.is_some() {
            core = core.with_tunnel(health);
        }
        let hello = core.open(&catalog);
        (core, hello)
    };
    if let Err(e) = send(&mut wr, &mut core, &hello).await {
        return e;
    }
    // Membership: what we hold, so the peer sends what we lack (a peer given only us as its
    // seed learns the mesh this way) and we send what it lacks.
    if let Some(msg) = shared.digest_message(false) {
        if let Err(e) = send(&mut wr, &mut core, &msg).await {
            return e;
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let wake = core.poll_timeout();
        tokio::select! {
            read = rd.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return End::Io("peer closed the connection".into()),
                    Ok(n) => n,
                    Err(e) => return End::Io(format!("read failed: {e}")),
                };
                let mut out = Vec::new();
                let result = {
                    let mut catalog = shared.catalog.lock();
                    core.on_bytes(&buf[..n], &mut catalog, Instant::now(), &mut out)
                };
                for o in out {
                    match o {
                        Output::Send(msg) => {
                            if let Err(e) = send(&mut wr, &mut core, &msg).await {
                                return e;
                            }
                        }
                        Output::Changed => shared.changed(),
                        Output::Members(m) => shared.members(peer, m),
                        Output::MembersDigest(d) => shared.members_digest(peer, d),
                    }
                }
                if let Some(e) = shared.sessions.lock().get_mut(&id) {
                    e.synced = core.synced();
                }
                if let Err(close) = result {
                    return End::Closed(close);
                }
            }
            delta = deltas.recv() => {
                let msgs = match delta {
                    Ok(Outbound { to, msg }) if to.includes(peer.addr) => vec![msg],
                    Ok(_) => continue,
                    // Fell behind the change stream: a snapshot catches the peer up, and a
                    // digest asking for one back repairs membership both ways.
                    Err(RecvError::Lagged(_)) => {
                        let snapshot = shared.catalog.lock().snapshot();
                        std::iter::once(snapshot).chain(shared.digest_message(true)).collect()
                    }
                    Err(RecvError::Closed) => return End::Shutdown,
                };
                for msg in msgs {
                    if let Err(e) = send(&mut wr, &mut core, &msg).await {
                        return e;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if let Some(at) = shared.liveness.as_ref().and_then(|l| l.last_heard(peer.addr)) {
                    core.on_tunnel_heard(at);
                }
                let due = {
                    let catalog = shared.catalog.lock();
                    core.handle_timeout(&catalog, Instant::now())
                };
                match due {
                    Ok(Some(hb)) => {
                        if let Err(e) = send(&mut wr, &mut core, &hb).await {
                            return e;
                        }
                    }
                    Ok(None) => {}
                    Err(close) => return End::Closed(close),
                }
            }
            _ = shutdown.changed() => {
                // What was queued before the shutdown goes first (a leaving member record).
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while let Ok(Outbound { to, msg }) = deltas.try_recv() {
                        if to.includes(peer.addr) {
                            send(&mut wr, &mut core, &msg).await?;
                        }
                    }
                    send(&mut wr, &mut core, &SyncMessage::Bye).await
                })
                .await;
                let _ = wr.shutdown().await;
                return End::Shutdown;
            }
        }
    }
}

/// Dials every peer whose mesh address is above ours and has no session, with backoff, and
/// closes the sessions of peers that are no longer peers (they left, or were removed).
pub(super) async fn dial_loop(shared: Arc<Shared>) {
    let mut pending = true;
    loop {
        // Every grid step while a peer waits for its dial, once a second when all are in session.
        let step = if pending { DIAL_TICK } else { DIAL_IDLE };
        tokio::time::sleep_until(crate::clock::next_after(step, Instant::now()).into()).await;
        let now = Instant::now();
        let peers = shared.directory.peers();
        let gone: Vec<(u64, MeshPeer)> = shared
            .sessions
            .lock()
            .iter()
            .filter(|(_, e)| !peers.contains(&e.peer))
            .map(|(id, e)| (*id, e.peer.clone()))
            .collect();
        for (id, peer) in gone {
            if let Some(e) = shared.sessions.lock().remove(&id) {
                tracing::debug!(peer = %peer.spiffe_id, mesh_addr = %peer.addr, "catalog sync session closed: no longer a peer");
                tracing::info!(cluster = %peer.cluster, "catalog sync session closed: no longer a peer");
                if let Some(a) = e.abort {
                    a.abort();
                }
            }
        }
        shared
            .dials
            .lock()
            .retain(|addr, _| peers.iter().any(|p| p.addr == *addr));
        let open: std::collections::BTreeSet<IpAddr> = shared
            .sessions
            .lock()
            .values()
            .map(|e| e.peer.addr)
            .collect();
        pending = false;
        for peer in peers.iter().cloned() {
            if peer.addr <= shared.mesh_addr || open.contains(&peer.addr) {
                continue;
            }
            pending = true;
            {
                let mut dials = shared.dials.lock();
                let d = dials.entry(peer.addr).or_insert_with(|| DialState {
                    next: now,
                    backoff: FIRST_RETRY,
                    connecting: false,
                    last_error: None,
                });
                if d.connecting || d.next > now {
                    continue;
                }
                d.connecting = true;
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                match connect(shared.mesh_addr, peer.addr, shared.config.port).await {
                    Ok(stream) => spawn_session(&shared, stream, peer, true),
                    Err(e) => {
                        tracing::debug!(peer = %peer.spiffe_id, mesh_addr = %peer.addr, error = %e, "catalog sync connect failed");
                        let mut dials = shared.dials.lock();
                        if let Some(d) = dials.get_mut(&peer.addr) {
                            d.connecting = false;
                            d.last_error = Some(e);
                            d.next = Instant::now() + d.backoff;
                            d.backoff = (d.backoff * 2).min(MAX_RETRY);
                        }
                    }
                }
            });
        }
    }
}

/// Connects from our mesh address, so the peer sees the address its tunnel authenticates.
async fn connect(local: IpAddr, remote: IpAddr, port: u16) -> Result<TcpStream, String> {
    let socket = match local {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(local, 0))
        .map_err(|e| format!("bind {local}: {e}"))?;
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        socket.connect(SocketAddr::new(remote, port)),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect {remote}:{port}: {e}")),
        Err(_) => Err(format!("connect {remote}:{port}: timed out")),
    }
}

/// Mean period of anti-entropy: a digest asking for a reply to one random session.
const ANTI_ENTROPY_EVERY: Duration = Duration::from_secs(20);

/// Now and then (20 s on average, jittered so gateways do not fall into step), sends our
/// member digest asking for a reply to one session chosen at random: a record a relay did not
/// pass on, or one lost with a dropped session, reaches everyone in a few rounds.
pub(super) async fn anti_entropy_loop(shared: Arc<Shared>) {
    use rand_core::RngCore as _;
    loop {
        let jitter = rand_core::OsRng.next_u64() % ANTI_ENTROPY_EVERY.as_millis() as u64;
        let wait = ANTI_ENTROPY_EVERY / 2 + Duration::from_millis(jitter);
        tokio::time::sleep(wait).await;
        let Some(msg) = shared.digest_message(true) else {
            continue;
        };
        let addrs: Vec<IpAddr> = shared
            .sessions
            .lock()
            .values()
            .filter(|e| e.synced)
            .map(|e| e.peer.addr)
            .collect();
        if addrs.is_empty() {
            continue;
        }
        let pick = addrs[(rand_core::OsRng.next_u64() % addrs.len() as u64) as usize];
        let _ = shared.deltas.send(Outbound {
            to: Target::One(pick),
            msg,
        });
    }
}
