//! The tokio shell around the join state machines: TCP on the join port, one task per
//! connection, a deadline per connection, a bound on concurrent joins and the rate limiter in
//! front of everything. A connection that sends garbage ends only itself.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::join::{Initiator, Joined, Responder, Step};
use super::rate_limit::JoinRateLimiter;
use super::{wire, JoinError, PeerVerifier, JOIN_TIMEOUT};
use crate::keys::PrivateKey;

/// Joins in progress at once on one listener; more connections are closed at accept.
pub const MAX_CONCURRENT_JOINS: usize = 64;
/// How long a side that ends a join keeps reading after its last frame, so that closing with
/// unread bytes does not reset the connection before the peer has read the refusal.
const LINGER: Duration = Duration::from_millis(500);

/// What this gateway presents in every join it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presenting {
    /// Our SVID chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// Our SPIFFE ID: as responder, an initiator expecting someone else is refused in message
    /// 2, before it sees our chain.
    pub spiffe_id: Option<String>,
    /// Where peers should send WireGuard traffic, when not to the join's address.
    pub endpoint_hint: Option<SocketAddr>,
    /// Our mesh address, for joins through the tunnel.
    pub mesh_addr: Option<IpAddr>,
}

impl From<Vec<Vec<u8>>> for Presenting {
    fn from(chain: Vec<Vec<u8>>) -> Self {
        Self {
            chain,
            spiffe_id: None,
            endpoint_hint: None,
            mesh_addr: None,
        }
    }
}

impl Presenting {
    fn hello(&self) -> wire::JoinHello {
        wire::JoinHello {
            chain: self.chain.clone(),
            endpoint_hint: self.endpoint_hint,
            mesh_addr: self.mesh_addr,
        }
    }

    fn responder(
        &self,
        key: &PrivateKey,
        verifier: Arc<dyn PeerVerifier>,
        now: SystemTime,
    ) -> Result<Responder, JoinError> {
        let mut r = Responder::new(key, self.chain.clone(), verifier, now)?;
        if let Some(id) = &self.spiffe_id {
            r = r.with_spiffe_id(id.clone());
        }
        if let Some(hint) = self.endpoint_hint {
            r = r.with_endpoint_hint(hint);
        }
        if let Some(mesh) = self.mesh_addr {
            r = r.with_mesh_addr(mesh);
        }
        Ok(r)
    }

    fn initiator(
        &self,
        key: &PrivateKey,
        expected: String,
        verifier: Arc<dyn PeerVerifier>,
        now: SystemTime,
    ) -> Result<Initiator, JoinError> {
        let mut i = Initiator::new(key, expected, self.chain.clone(), verifier, now)?;
        if let Some(hint) = self.endpoint_hint {
            i = i.with_endpoint_hint(hint);
        }
        if let Some(mesh) = self.mesh_addr {
            i = i.with_mesh_addr(mesh);
        }
        Ok(i)
    }
}

/// A peer that finished a join with us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedPeer {
    pub joined: Joined,
    /// The address the join came from (listener) or went to (`join_connect`).
    pub remote_addr: SocketAddr,
}

/// A running join listener; dropping it stops accepting (joins in progress finish on their own).
#[derive(Debug)]
pub struct JoinServerHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl JoinServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for JoinServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One side of the join as the shell drives it.
trait Side {
    fn handle_frame(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError>;
    fn poll_frame(&mut self) -> Option<Vec<u8>>;
}

impl Side for Initiator {
    fn handle_frame(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError> {
        Initiator::handle_frame(self, frame, now)
    }
    fn poll_frame(&mut self) -> Option<Vec<u8>> {
        Initiator::poll_frame(self)
    }
}

impl Side for Responder {
    fn handle_frame(&mut self, frame: &[u8], now: SystemTime) -> Result<Step, JoinError> {
        Responder::handle_frame(self, frame, now)
    }
    fn poll_frame(&mut self) -> Option<Vec<u8>> {
        Responder::poll_frame(self)
    }
}

async fn flush<S: Side, T: AsyncWrite + Unpin>(side: &mut S, io: &mut T) -> Result<(), JoinError> {
    while let Some(frame) = side.poll_frame() {
        let framed =
            wire::encode_frame(&frame).map_err(|e| JoinError::FrameTooLarge { len: e.0 })?;
        io.write_all(&framed).await.map_err(JoinError::Io)?;
    }
    io.flush().await.map_err(JoinError::Io)
}

fn closed_or_io(e: io::Error) -> JoinError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => JoinError::ConnectionClosed,
        _ => JoinError::Io(e),
    }
}

/// Reads one `u16`-length-prefixed frame, refusing an oversized length before reading its body.
async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> Result<Vec<u8>, JoinError> {
    let mut prefix = [0u8; 2];
    io.read_exact(&mut prefix).await.map_err(closed_or_io)?;
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > wire::MAX_FRAME_LEN {
        return Err(JoinError::FrameTooLarge { len });
    }
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await.map_err(closed_or_io)?;
    Ok(frame)
}

/// Runs a join to its end over `io`. Frames queued by a failing step (a refusal) are sent
/// before the error is returned.
async fn drive<S: Side, T: AsyncRead + AsyncWrite + Unpin>(
    side: &mut S,
    io: &mut T,
) -> Result<Joined, JoinError> {
    loop {
        flush(side, io).await?;
        let frame = read_frame(io).await?;
        match side.handle_frame(&frame, SystemTime::now()) {
            Ok(Step::Continue) => {}
            Ok(Step::Joined(joined)) => {
                flush(side, io).await?;
                return Ok(joined);
            }
            Err(e) => {
                // Best effort: the refusal is the peer's only way to learn why.
                let _ = flush(side, io).await;
                return Err(e);
            }
        }
    }
}

/// Half-closes and drains briefly, so unread input does not turn our close into a reset that
/// could discard our last frame at the peer.
async fn linger_close<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T) {
    let _ = io.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Listens for joins on `addr`. Each verified peer arrives on the returned receiver; the
/// listener stops when the handle is dropped or the receiver is closed.
pub async fn join_listen(
    addr: SocketAddr,
    local_key: PrivateKey,
    me: Presenting,
    verifier: Arc<dyn PeerVerifier>,
    limiter: JoinRateLimiter,
) -> io::Result<(JoinServerHandle, mpsc::Receiver<JoinedPeer>)> {
    // Refuse a chain that cannot be sent now, not on the first join.
    me.hello()
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(
        listener,
        Arc::new(local_key),
        Arc::new(me),
        verifier,
        limiter,
        tx,
    ));
    Ok((JoinServerHandle { local_addr, task }, rx))
}

async fn accept_loop(
    listener: TcpListener,
    local_key: Arc<PrivateKey>,
    me: Arc<Presenting>,
    verifier: Arc<dyn PeerVerifier>,
    mut limiter: JoinRateLimiter,
    tx: mpsc::Sender<JoinedPeer>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_JOINS));
    loop {
        let (stream, peer) = match listener.accept().await {
            // A dual-stack listener reports IPv4 peers as v4-mapped IPv6; say what they are.
            Ok((stream, peer)) => (
                stream,
                SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            ),
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(error = %e, "join listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        if !limiter.try_admit(peer.ip(), Instant::now()) {
            tracing::debug!(%peer, error = %JoinError::RateLimited, "join refused");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "join refused: too many joins in progress");
            continue;
        };
        let (key, me, verifier, tx) = (local_key.clone(), me.clone(), verifier.clone(), tx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match serve_one(stream, &key, &me, verifier).await {
                Ok(joined) => {
                    tracing::debug!(%peer, peer_id = %joined.peer_id, "join accepted");
                    let _ = tx
                        .send(JoinedPeer {
                            joined,
                            remote_addr: peer,
                        })
                        .await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "join failed"),
            }
        });
    }
}

async fn serve_one(
    mut stream: TcpStream,
    key: &PrivateKey,
    me: &Presenting,
    verifier: Arc<dyn PeerVerifier>,
) -> Result<Joined, JoinError> {
    let _ = stream.set_nodelay(true);
    let mut responder = me.responder(key, verifier, SystemTime::now())?;
    let result = tokio::time::timeout(JOIN_TIMEOUT, drive(&mut responder, &mut stream))
        .await
        .unwrap_or(Err(JoinError::Timeout));
    linger_close(&mut stream).await;
    result
}

/// Joins the gateway at `addr`, which must prove to be `expected`.
pub async fn join_connect(
    addr: SocketAddr,
    local_key: &PrivateKey,
    me: &Presenting,
    expected: String,
    verifier: Arc<dyn PeerVerifier>,
) -> Result<JoinedPeer, JoinError> {
    let mut initiator = me.initiator(local_key, expected, verifier, SystemTime::now())?;
    let run = async {
        let mut stream = TcpStream::connect(addr).await.map_err(JoinError::Io)?;
        let _ = stream.set_nodelay(true);
        let result = drive(&mut initiator, &mut stream).await;
        linger_close(&mut stream).await;
        result
    };
    let joined = tokio::time::timeout(JOIN_TIMEOUT, run)
        .await
        .unwrap_or(Err(JoinError::Timeout))?;
    Ok(JoinedPeer {
        joined,
        remote_addr: addr,
    })
}

#[cfg(test)]
mod tests;
