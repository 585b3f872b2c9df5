//! The daemon's side of identity-bound peers: a join listener, a connector that retries
//! pending peers with backoff, and installation of every verified peer into the engine.

use super::DaemonState;
use crate::config::{Expected, IdentityConfig};
use crate::identity::{
    join_connect, join_listen, JoinRateLimiter, JoinServerHandle, JoinedPeer, PeerVerifier,
    Presenting, RateLimitConfig, VerifiedPeer, VerifyError,
};
use crate::keys::PrivateKey;
use crate::mesh::joined::{PkiVerifier, SlotId};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A verifier whose accepted identities follow reloads.
struct LiveVerifier {
    inner: RwLock<PkiVerifier>,
}

impl PeerVerifier for LiveVerifier {
    fn verify(
        &self,
        chain: &[Vec<u8>],
        remote_static: &[u8; 32],
        expected: Option<&str>,
        now: SystemTime,
    ) -> Result<VerifiedPeer, VerifyError> {
        self.inner
            .read()
            .verify(chain, remote_static, expected, now)
    }
}

pub(super) struct Joins {
    listener: JoinServerHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    verifier: Arc<LiveVerifier>,
}

impl Joins {
    pub(super) fn reconfigured(&self, state: &DaemonState) {
        self.verifier.inner.write().accept = accepted(state);
    }

    pub(super) fn stop(self) {
        self.listener.shutdown();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Whom the join listener accepts: the configured peers by identity and, with `[members]`,
/// any gateway of the trust domain.
fn accepted(state: &DaemonState) -> Vec<Expected> {
    state.mesh.lock().accepted()
}

pub(super) async fn start(
    state: Arc<DaemonState>,
    identity: IdentityConfig,
    key: PrivateKey,
) -> anyhow::Result<Joins> {
    let verifier = Arc::new(LiveVerifier {
        inner: RwLock::new(PkiVerifier {
            bundle: identity.bundle.clone(),
            accept: accepted(&state),
        }),
    });
    let me = Presenting {
        chain: identity.chain.clone(),
        spiffe_id: Some(identity.id.as_str().to_string()),
        endpoint_hint: None,
        mesh_addr: state.mesh_addr(),
    };
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, identity.join_port));
    // After a rotation the previous listener is aborted but may not have closed its socket
    // yet: retry a bind that finds the port busy for a short while.
    let mut tries = 0;
    let (listener, mut incoming) = loop {
        let limiter = JoinRateLimiter::new(RateLimitConfig::default());
        let result =
            match join_listen(addr, key.clone(), me.clone(), verifier.clone(), limiter).await {
                // No IPv6 in this namespace: IPv4 only.
                Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
                    join_listen(
                        SocketAddr::from(([0, 0, 0, 0], identity.join_port)),
                        key.clone(),
                        me.clone(),
                        verifier.clone(),
                        JoinRateLimiter::new(RateLimitConfig::default()),
                    )
                    .await
                }
                r => r,
            };
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            r => break r?,
        }
    };
    tracing::info!(
        port = identity.join_port,
        id = identity.id.as_str(),
        "listening for joins"
    );
    let (joined_tx, mut joined_rx) = mpsc::channel::<JoinedPeer>(16);

    let installer = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let peer = tokio::select! {
                    Some(p) = incoming.recv() => p,
                    Some(p) = joined_rx.recv() => p,
                    else => return,
                };
                install(&state, &peer);
            }
        })
    };
    let connector = {
        let state = state.clone();
        let trust_domain = identity.bundle.trust_domain().as_str().to_string();
        let verifier: Arc<dyn PeerVerifier> = verifier.clone();
        tokio::spawn(connect_loop(
            state,
            trust_domain,
            me,
            identity.join_port,
            key,
            verifier,
            joined_tx,
        ))
    };
    Ok(Joins {
        listener,
        tasks: vec![installer, connector],
        verifier,
    })
}

fn install(state: &DaemonState, peer: &JoinedPeer) {
    let now = SystemTime::now();
    let mut mesh = state.mesh.lock();
    match mesh.joined(peer, now) {
        Some(_) => {
            let diff = state.apply(&mut mesh, now);
            drop(mesh);
            tracing::debug!(peer = %peer.joined.peer_id, from = %peer.remote_addr, "peer joined");
            tracing::info!(
                added = diff.added.len(),
                kept = diff.kept.len(),
                "peer joined; WireGuard key installed"
            );
            state.maybe_switch_key();
        }
        None => {
            drop(mesh);
            tracing::debug!(peer = %peer.joined.peer_id, "joined peer matches no configured peer");
            tracing::warn!("a joined peer matches no configured peer (the configuration changed during the join); ignored");
        }
    }
}

/// Joins every pending peer that has a join endpoint, retrying with exponential backoff. A
/// joined peer marked for a re-join (we rotated) is joined through the tunnel at its mesh
/// address first, so it learns the new key over the session the old key still carries; the
/// underlay join endpoint is the fallback.
async fn connect_loop(
    state: Arc<DaemonState>,
    trust_domain: String,
    me: Presenting,
    own_join_port: u16,
    key: PrivateKey,
    verifier: Arc<dyn PeerVerifier>,
    joined: mpsc::Sender<JoinedPeer>,
) {
    // Per slot: when to try next and the current backoff. Keyed by the slot's id, which
    // stays while the slot exists (a reload during a join cannot make us update another).
    let mut schedule: HashMap<SlotId, (Instant, Duration)> = HashMap::new();
    loop {
        state.maybe_switch_key();
        let targets = state.mesh.lock().join_targets(own_join_port);
        schedule.retain(|slot, _| targets.iter().any(|t| t.slot == *slot));
        for target in targets {
            let (next, backoff) = *schedule
                .entry(target.slot)
                .or_insert((Instant::now(), FIRST_RETRY));
            if Instant::now() < next {
                continue;
            }
            let want = target.expected.request(&trust_domain);
            let mut outcome = None;
            for endpoint in target.addrs {
                match join_connect(endpoint, &key, &me, want.clone(), verifier.clone()).await {
                    Ok(peer) => {
                        outcome = Some(Ok(peer));
                        break;
                    }
                    Err(e) => {
                        let reason = error_chain(&e);
                        tracing::debug!(%endpoint, error = %reason, "join failed");
                        outcome = Some(Err(reason));
                    }
                }
            }
            match outcome {
                None => {}
                Some(Ok(peer)) => {
                    schedule.insert(target.slot, (Instant::now(), FIRST_RETRY));
                    let _ = joined.send(peer).await;
                }
                Some(Err(reason)) => {
                    state.mesh.lock().join_failed(target.slot, reason);
                    // Jittered, so gateways refused together do not retry together.
                    let jitter = Duration::from_millis(
                        rand_core::RngCore::next_u64(&mut rand_core::OsRng)
                            % (backoff.as_millis() as u64 / 2 + 1),
                    );
                    schedule.insert(
                        target.slot,
                        (
                            Instant::now() + backoff + jitter,
                            (backoff * 2).min(MAX_RETRY),
                        ),
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An error and its sources, `outer: inner: innermost`, as the operator should see it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
