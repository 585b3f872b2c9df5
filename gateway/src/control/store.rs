//! The catalog store: the state directory (local and remote origins, VIPs), the etcd mirror,
//! and the export sources that feed the catalog.
//!
//! State directory (mode 0700), each file replaced atomically (temporary file, fsync, rename):
//! `local.json` (this cluster's origin state), `remotes.json` (a list of remote origin states),
//! `vips.json` (the VIP map, see `isthmus-catalog`).

use super::exports;
use super::{Persisted, Shared};
use crate::config::{EtcdTarget, ExportSource};
use anyhow::Context as _;
use isthmus_catalog::{OriginState, ServiceExport};
use isthmus_catalog_view::ServiceInfo;
use isthmus_etcd_store::{
    EtcdPublisher, EtcdWatcher, PublisherOptions, WatchEvent, WatcherOptions,
};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Changes closer together than this are written (to disk, to etcd) once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the static export file is checked for changes.
const FILE_POLL: Duration = Duration::from_millis(500);
/// How long start-up waits for the etcd export source's first snapshot.
const ETCD_FIRST_WAIT: Duration = Duration::from_secs(3);

pub(super) struct StateFiles {
    dir: PathBuf,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl StateFiles {
    pub(super) fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("failed to create state directory {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub(super) fn vips(&self) -> PathBuf {
        self.dir.join("vips.json")
    }

    fn local(&self) -> PathBuf {
        self.dir.join("local.json")
    }

    fn remotes(&self) -> PathBuf {
        self.dir.join("remotes.json")
    }

    /// What an earlier run left; unreadable files are logged and ignored (peers resend).
    pub(super) fn load(&self) -> Persisted {
        fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "state file unreadable; ignored");
                    return None;
                }
            };
            match serde_json::from_slice(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "state file malformed; ignored");
                    None
                }
            }
        }
        Persisted {
            local: read(&self.local()),
            remotes: read(&self.remotes()).unwrap_or_default(),
        }
    }

    /// Writes the catalog's origins and VIPs.
    pub(super) fn save(&self, shared: &Shared) -> anyhow::Result<()> {
        let (local, remotes) = {
            let mut c = shared.catalog.lock();
            c.save_vips(&self.vips())
                .with_context(|| format!("failed to write {}", self.vips().display()))?;
            let local = serde_json::to_vec(c.local().state()).context("encoding local state")?;
            let remotes: Vec<&OriginState> = c.remotes().collect();
            let remotes = serde_json::to_vec(&remotes).context("encoding remote state")?;
            (local, remotes)
        };
        write_atomic(&self.local(), &local)
            .with_context(|| format!("failed to write {}", self.local().display()))?;
        write_atomic(&self.remotes(), &remotes)
            .with_context(|| format!("failed to write {}", self.remotes().display()))?;
        Ok(())
    }
}

/// Writes the state directory after every change (debounced).
pub(super) async fn persist_loop(shared: Arc<Shared>, files: StateFiles) {
    let mut rx = shared.revision.subscribe();
    while rx.changed().await.is_ok() {
        tokio::time::sleep(DEBOUNCE).await;
        rx.borrow_and_update();
        let shared2 = shared.clone();
        let dir = files.dir.clone();
        let result = tokio::task::spawn_blocking(move || StateFiles { dir }.save(&shared2)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "saving the catalog failed"),
            Err(e) => tracing::warn!(error = %e, "saving the catalog failed"),
        }
    }
}

/// The first export set, before any session starts; for etcd also the running watcher.
pub(super) async fn first_exports(
    source: &ExportSource,
    persisted: Option<OriginState>,
) -> anyhow::Result<(Vec<ServiceExport>, Option<EtcdWatcher>)> {
    let previous = || -> Vec<ServiceExport> {
        persisted
            .clone()
            .map(|s| s.services.into_values().collect())
            .unwrap_or_default()
    };
    match source {
        ExportSource::None => Ok((Vec::new(), None)),
        ExportSource::Static(path) => {
            let exports = exports::read_file(path).map_err(|e| anyhow::anyhow!(e))?;
            Ok((exports, None))
        }
        ExportSource::Etcd(target) => {
            let mut watcher = EtcdWatcher::watch(
                target.endpoints.clone(),
                &target.prefix,
                WatcherOptions::default(),
            )
            .await
            .with_context(|| format!("failed to watch exports under {}", target.prefix))?;
            let deadline = tokio::time::Instant::now() + ETCD_FIRST_WAIT;
            loop {
                match tokio::time::timeout_at(deadline, watcher.recv()).await {
                    Ok(Some(Ok(WatchEvent::Snapshot(keys)))) => {
                        return Ok((exports::from_etcd(&keys), Some(watcher)))
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, prefix = %target.prefix, "etcd export source not reachable yet")
                    }
                    Ok(None) | Err(_) => {
                        tracing::warn!(prefix = %target.prefix, "no export snapshot from etcd yet; exporting the persisted set until it comes");
                        return Ok((previous(), Some(watcher)));
                    }
                }
            }
        }
    }
}

/// Re-reads the static export file when its modification time or length changes. A broken
/// file is logged and the previous exports stay.
pub(super) async fn static_loop(shared: Arc<Shared>, path: PathBuf) {
    let mut last = exports::stamp(&path);
    let mut tick = crate::clock::grid_interval(FILE_POLL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = exports::stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match exports::read_file(&path) {
            Ok(exports) => {
                if let Err(e) = shared.set_exports(exports) {
                    tracing::warn!(file = %path.display(), error = %e, "exports refused; the previous ones stay");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "export file unreadable; the previous exports stay")
            }
        }
    }
}

/// Follows the etcd export prefix: every snapshot or change re-exports the whole set.
pub(super) async fn etcd_exports_loop(shared: Arc<Shared>, mut watcher: EtcdWatcher) {
    let mut keys: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some(item) = watcher.recv().await {
        match item {
            Ok(event) => event.apply(&mut keys),
            Err(e) => {
                tracing::warn!(error = %e, "etcd export watch interrupted; retrying");
                continue;
            }
        }
        if let Err(e) = shared.set_exports(exports::from_etcd(&keys)) {
            tracing::warn!(error = %e, "exports from etcd refused; the previous ones stay");
        }
    }
}

/// The etcd key of a service: `services/<namespace>/<name>` under the prefix.
pub fn etcd_key(s: &ServiceInfo) -> String {
    isthmus_catalog_view::service_key(&s.namespace, &s.name)
}

/// Mirrors the merged catalog and our [`isthmus_catalog_view::GatewayInfo`] into etcd after
/// every change (debounced); releases the prefix on shutdown.
pub(super) async fn publish_loop(shared: Arc<Shared>, target: EtcdTarget) {
    let owner = format!("{}/{}", shared.config.cluster, shared.mesh_addr);
    let mut publisher = match EtcdPublisher::connect(
        target.endpoints.clone(),
        &target.prefix,
        PublisherOptions::new(owner),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, prefix = %target.prefix, "etcd store not started");
            return;
        }
    };
    let mut rx = shared.revision.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut dirty = true;
    loop {
        if dirty {
            tokio::time::sleep(DEBOUNCE).await;
            rx.borrow_and_update();
            let mut entries: BTreeMap<String, Vec<u8>> = shared
                .services()
                .iter()
                .filter_map(|s| Some((etcd_key(s), serde_json::to_vec(s).ok()?)))
                .collect();
            let n = entries.len();
            let gateway = isthmus_catalog_view::GatewayInfo {
                schema: isthmus_catalog_view::SCHEMA_VERSION,
                cluster: shared.config.cluster.to_string(),
                routes: shared.routes(),
            };
            if let Ok(json) = serde_json::to_vec(&gateway) {
                entries.insert(isthmus_catalog_view::GATEWAY_KEY.to_string(), json);
            }
            let publish = publisher.publish(entries);
            tokio::select! {
                r = publish => match r {
                    Ok(stats) => {
                        dirty = false;
                        tracing::debug!(services = n, put = stats.put, deleted = stats.deleted, "catalog published to etcd");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, prefix = %target.prefix, "publishing the catalog to etcd failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
            continue;
        }
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    break;
                }
                dirty = true;
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Err(e) = publisher.release().await {
        tracing::warn!(error = %e, "releasing the etcd prefix failed");
    }
}
