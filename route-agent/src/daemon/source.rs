//! Following the catalog: the gateway's watch stream (Unix socket or TCP) or the etcd store,
//! reconnecting with backoff. The latest catalog is published on a `watch` channel, so the
//! owner only ever programs the newest one; while the source is away the last catalog stays
//! (the maps keep working through a gateway restart) and the next connection's first line
//! replaces it whole.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_catalog_view::{GatewayInfo, ServiceInfo, GATEWAY_KEY, SERVICES_PREFIX};
use isthmus_etcd_store::{EtcdWatcher, WatcherOptions};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::config::Source;

/// A line longer than this is refused (and the connection dropped): a catalog of 100,000
/// endpoints is about 10 MiB.
pub const MAX_LINE: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Default)]
pub struct SourceState {
    pub connected: bool,
    pub error: Option<String>,
    /// The newest catalog that parsed.
    pub catalog: Option<Arc<Catalog>>,
    /// Bumped with every new catalog (a restarted gateway may repeat a revision number).
    pub generation: u64,
    pub refused: u64,
    pub last_refusal: Option<String>,
}

pub fn spawn(source: Source) -> (watch::Receiver<SourceState>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(SourceState::default());
    let task = tokio::spawn(async move {
        match source {
            Source::Unix(path) => {
                stream_loop(&tx, || {
                    let path = path.clone();
                    async move { tokio::net::UnixStream::connect(&path).await }
                })
                .await
            }
            Source::Tcp(addr) => {
                stream_loop(&tx, || async move {
                    let s = tokio::net::TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
                .await
            }
            Source::Etcd { endpoints, prefix } => etcd_loop(&tx, endpoints, &prefix).await,
        }
    });
    (rx, task)
}

fn publish(tx: &watch::Sender<SourceState>, catalog: Catalog) {
    tx.send_modify(|s| {
        s.connected = true;
        s.error = None;
        s.catalog = Some(Arc::new(catalog));
        s.generation += 1;
    });
}

fn refuse(tx: &watch::Sender<SourceState>, why: String) {
    tracing::error!(error = %why, "catalog refused; the previous one stays programmed");
    tx.send_modify(|s| {
        s.refused += 1;
        s.last_refusal = Some(why);
    });
}

fn disconnected(tx: &watch::Sender<SourceState>, why: String) {
    tx.send_if_modified(|s| {
        let changed = s.connected || s.error.as_deref() != Some(why.as_str());
        s.connected = false;
        s.error = Some(why);
        changed
    });
}

async fn stream_loop<S, F, Fut>(tx: &watch::Sender<SourceState>, connect: F)
where
    S: AsyncRead + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        match connect().await {
            Ok(stream) => {
                tracing::info!("catalog source connected");
                tx.send_modify(|s| {
                    s.connected = true;
                    s.error = None;
                });
                let why = read_lines(tx, stream).await;
                tracing::warn!(reason = %why, "catalog source lost; keeping the last catalog");
                disconnected(tx, why);
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                tracing::debug!(error = %e, "catalog source not reachable");
                disconnected(tx, format!("connect: {e}"));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reads lines until the stream ends; returns why it ended.
async fn read_lines<S: AsyncRead + Unpin>(tx: &watch::Sender<SourceState>, stream: S) -> String {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => return format!("read: {e}"),
        };
        if n == 0 {
            return "closed by the gateway".to_owned();
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                refuse(tx, format!("a catalog line longer than {MAX_LINE} bytes"));
                return "line too long".to_owned();
            }
            return "closed in the middle of a line".to_owned();
        }
        let parsed = std::str::from_utf8(&line)
            .map_err(|_| "a catalog line that is not UTF-8".to_owned())
            .and_then(|text| Catalog::from_line(text.trim_end()).map_err(|e| e.to_string()));
        match parsed {
            Ok(catalog) => publish(tx, catalog),
            Err(why) => refuse(tx, why),
        }
    }
}

async fn etcd_loop(tx: &watch::Sender<SourceState>, endpoints: Vec<String>, prefix: &str) {
    let mut watcher = loop {
        match EtcdWatcher::watch(endpoints.clone(), prefix, WatcherOptions::default()).await {
            Ok(w) => break w,
            Err(e) => {
                // A malformed endpoint or prefix never gets better.
                disconnected(tx, format!("etcd: {e}"));
                tracing::error!(error = %e, "cannot watch the etcd store");
                tokio::time::sleep(BACKOFF_MAX).await;
            }
        }
    };
    let mut keys: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut revision = 0u64;
    while let Some(item) = watcher.recv().await {
        match item {
            Ok(event) => event.apply(&mut keys),
            Err(e) => {
                disconnected(tx, format!("etcd: {e}"));
                continue;
            }
        }
        revision += 1;
        match from_store(revision, &keys) {
            Ok(catalog) => publish(tx, catalog),
            Err(why) => refuse(tx, why),
        }
    }
}

/// The catalog from the store's keys (relative to the prefix).
pub fn from_store(revision: u64, keys: &BTreeMap<String, Vec<u8>>) -> Result<Catalog, String> {
    let mut gateway: Option<GatewayInfo> = None;
    let mut services: Vec<ServiceInfo> = Vec::new();
    for (key, value) in keys {
        let key = key.trim_start_matches('/');
        if key == GATEWAY_KEY {
            gateway = Some(
                serde_json::from_slice(value)
                    .map_err(|e| format!("etcd key {GATEWAY_KEY}: malformed: {e}"))?,
            );
        } else if key.starts_with(SERVICES_PREFIX) {
            services.push(
                serde_json::from_slice(value)
                    .map_err(|e| format!("etcd key {key}: malformed: {e}"))?,
            );
        }
    }
    Catalog::from_store(revision, gateway, services).map_err(|e| e.to_string())
}
