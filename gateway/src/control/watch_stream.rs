//! The watch stream route agents follow: one JSON [`isthmus_catalog_view::WatchLine`] per line,
//! the whole view when a client connects and a new line after every change of the control
//! plane's revision (catalog or routes). Served on an owner-only Unix socket on the gateway node
//! and, with `control.watch_listen`, over TCP to the sources in `control.watch_allow` (the
//! cluster's other nodes). Clients never write; both transports run the same client loop.

use super::Shared;
use crate::config::{ControlConfig, WatchTcp};
use crate::unix_socket::{bind_owner_only, ServedSocket};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// A client that has not read for this long (its socket buffer full) is dropped.
const WATCH_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients over the Unix socket and TCP together.
const MAX_WATCHERS: usize = 64;
/// Changes closer together than this after a line reach a client as one line.
const COALESCE: Duration = Duration::from_millis(50);

fn watch_line(shared: &Shared, revision: u64) -> Vec<u8> {
    let line = isthmus_catalog_view::WatchLine {
        schema: isthmus_catalog_view::SCHEMA_VERSION,
        revision,
        cluster: shared.config.cluster.to_string(),
        services: shared.services(),
        routes: shared.routes(),
    };
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The watch stream's listeners: the Unix socket and, with `watch_listen`, TCP. Dropping it
/// stops both; [`WatchListeners::shutdown`] also waits for them.
pub(super) struct WatchListeners {
    unix: Option<ServedSocket>,
    tcp: Option<JoinHandle<()>>,
}

impl WatchListeners {
    /// Closes both listeners and every client, and removes the socket file.
    pub(super) async fn shutdown(mut self) {
        if let Some(t) = self.tcp.take() {
            t.abort();
            let _ = t.await;
        }
        if let Some(u) = self.unix.take() {
            u.shutdown().await;
        }
    }
}

impl Drop for WatchListeners {
    fn drop(&mut self) {
        if let Some(t) = &self.tcp {
            t.abort();
        }
    }
}

/// Serves the watch stream on the Unix socket and, with `watch_listen`, on TCP to the sources
/// in `watch_allow`: every client gets the merged catalog as one JSON line at once and one
/// more line after every change. Both listeners share one limit of [`MAX_WATCHERS`] clients.
pub(super) async fn serve_watch(
    config: &ControlConfig,
    shared: Arc<Shared>,
) -> anyhow::Result<WatchListeners> {
    let permits = Arc::new(Semaphore::new(MAX_WATCHERS));
    let path = &config.watch_socket;
    let (listener, file) = bind_owner_only(path, "catalog watch socket")
        .await
        .with_context(|| format!("failed to serve the watch socket {}", path.display()))?;
    tracing::info!(path = %path.display(), "catalog watch socket listening");
    let unix = ServedSocket::new(
        tokio::spawn(unix_accept_loop(listener, shared.clone(), permits.clone())),
        file,
    );
    let tcp = match &config.watch_tcp {
        None => None,
        Some(tcp) => {
            // On failure `unix` is dropped here, which stops it and removes its file.
            let listener = TcpListener::bind(tcp.listen).await.with_context(|| {
                format!(
                    "failed to serve the watch stream on control.watch_listen = {}",
                    tcp.listen
                )
            })?;
            tracing::info!(listen = %tcp.listen, allow = ?tcp.allow, "catalog watch stream listening on TCP");
            Some(tokio::spawn(tcp_accept_loop(
                listener,
                tcp.clone(),
                shared,
                permits,
            )))
        }
    };
    Ok(WatchListeners {
        unix: Some(unix),
        tcp,
    })
}

async fn unix_accept_loop(listener: UnixListener, shared: Arc<Shared>, permits: Arc<Semaphore>) {
    let mut clients = JoinSet::new();
    loop {
        while clients.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(error) => {
                tracing::warn!(%error, "watch socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        admit(&mut clients, &shared, &permits, stream);
    }
}

/// Like [`unix_accept_loop`], after checking the source: `watch_allow` is what keeps the
/// stream (service names and addresses) to the cluster's own nodes.
async fn tcp_accept_loop(
    listener: TcpListener,
    tcp: WatchTcp,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
) {
    let mut clients = JoinSet::new();
    loop {
        while clients.try_join_next().is_some() {}
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(error) => {
                tracing::warn!(%error, "watch stream accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !tcp.allows(remote.ip()) {
            shared.count_refusal("watch_not_allowed");
            tracing::debug!(%remote, "watch connection from outside control.watch_allow; closed");
            drop(stream);
            continue;
        }
        admit(&mut clients, &shared, &permits, stream);
    }
}

/// Starts following for a new client, or closes it when [`MAX_WATCHERS`] are connected.
fn admit<W>(clients: &mut JoinSet<()>, shared: &Arc<Shared>, permits: &Arc<Semaphore>, out: W)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        tracing::debug!(max = MAX_WATCHERS, "watch client closed: too many clients");
        return;
    };
    clients.spawn(follow(shared.clone(), out, permit));
}

/// One client of the watch stream, on any transport: the view now, then after every change
/// (bursts coalesced). Ends when the client stops reading for [`WATCH_WRITE_TIMEOUT`] or goes.
async fn follow<W>(shared: Arc<Shared>, mut out: W, _permit: OwnedSemaphorePermit)
where
    W: AsyncWrite + Unpin,
{
    let mut rx = shared.revision.subscribe();
    loop {
        let revision = *rx.borrow_and_update();
        let line = watch_line(&shared, revision);
        match tokio::time::timeout(WATCH_WRITE_TIMEOUT, out.write_all(&line)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        if rx.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Control;
    use crate::config::{ControlConfig, ExportSource, WatchTcp};
    use crate::mesh::{MeshPeer, PeerDirectory};
    use isthmus_catalog::ClusterName;
    use isthmus_catalog_view::WatchLine;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader, Lines};
    use tokio::net::{TcpSocket, TcpStream, UnixStream};

    struct NoPeers;

    impl PeerDirectory for NoPeers {
        fn peers(&self) -> std::sync::Arc<[MeshPeer]> {
            std::sync::Arc::from(Vec::new())
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    async fn next<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>) -> WatchLine {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("a line within 5 s")
            .unwrap()
            .expect("a line, not the end of the stream");
        serde_json::from_str(&line).unwrap()
    }

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn unix_and_tcp_stream_the_same_lines_to_allowed_sources_only() {
        let dir = tempfile::tempdir().unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let socket = dir.path().join("catalog.sock");
        let config = ControlConfig {
            cluster: ClusterName::new("c1".to_string()).unwrap(),
            port: 0,
            state_dir: dir.path().join("state"),
            health: Default::default(),
            vip_v4: "241.0.0.0/16".parse().unwrap(),
            vip_v6: None,
            watch_socket: socket.clone(),
            watch_tcp: Some(WatchTcp {
                listen,
                allow: nets(&["127.0.0.1/32"]),
            }),
            exports: ExportSource::None,
            store: None,
            dns: None,
        };
        let control = Control::start(
            config,
            Some([127, 0, 0, 1].into()),
            Box::new(NoPeers),
            None,
            None,
        )
        .await
        .unwrap();
        let shared = control.shared();
        shared.set_routes(nets(&["100.96.0.1/32", "10.2.0.0/16", "100.96.0.1/32"]));

        let mut unix = BufReader::new(UnixStream::connect(&socket).await.unwrap()).lines();
        let mut tcp = BufReader::new(TcpStream::connect(listen).await.unwrap()).lines();
        let first = next(&mut unix).await;
        assert_eq!(first, next(&mut tcp).await);
        assert_eq!(first.schema, isthmus_catalog_view::SCHEMA_VERSION);
        assert_eq!(first.cluster, "c1");
        assert_eq!(first.routes, ["10.2.0.0/16", "100.96.0.1/32"]);

        // The same set again is no change; a new one is a new line on both.
        let revision = *shared.revision.borrow();
        shared.set_routes(nets(&["10.2.0.0/16", "100.96.0.1/32"]));
        assert_eq!(*shared.revision.borrow(), revision);
        shared.set_routes(nets(&["10.3.0.0/16", "10.2.0.0/16", "100.96.0.1/32"]));
        let second = next(&mut unix).await;
        assert_eq!(second, next(&mut tcp).await);
        assert!(second.revision > first.revision);
        assert_eq!(
            second.routes,
            ["10.2.0.0/16", "10.3.0.0/16", "100.96.0.1/32"]
        );

        // 127.0.0.2 is not in watch_allow: closed without a line, and counted.
        let stranger = TcpSocket::new_v4().unwrap();
        stranger.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stranger = stranger.connect(listen).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stranger.read_to_end(&mut got))
            .await
            .expect("closed within 5 s")
            .unwrap();
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert_eq!(shared.status().refusals.get("watch_not_allowed"), Some(&1));

        control.stop().await;
        assert!(!socket.exists(), "watch socket left behind");
        assert!(
            TcpStream::connect(listen).await.is_err(),
            "TCP listener left open"
        );
        for rest in [unix.next_line().await, tcp.next_line().await] {
            assert!(matches!(rest, Ok(None) | Err(_)), "{rest:?}");
        }
    }
}
