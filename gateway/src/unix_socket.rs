//! Owner-only Unix socket files for the sockets the daemon serves on its node: the admin
//! socket, the UAPI socket and the catalog watch socket.
//!
//! The socket is bound inside a private (0700) scratch directory, chmod-ed to 0600 and only then
//! renamed to its public path, so no other user can ever connect through a window in which the
//! socket still has umask permissions. [`SocketFile`] unlinks the path when dropped, but only
//! while the path still names the socket we bound (a second daemon may have replaced it).

use anyhow::{bail, Context as _};
use std::fs::{self, DirBuilder, Permissions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// A socket file plus the task serving it: aborting the task (on drop too) stops serving, and
/// dropping the file unlinks it.
#[derive(Debug)]
pub(crate) struct ServedSocket {
    task: JoinHandle<()>,
    file: SocketFile,
}

impl ServedSocket {
    pub(crate) fn new(task: JoinHandle<()>, file: SocketFile) -> Self {
        Self { task, file }
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        // Dropping `self` now unlinks the file.
    }
}

impl Drop for ServedSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Removes the socket file on drop if it is still the one we bound.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(error) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "failed to remove socket file");
                }
            }
            Ok(_) => tracing::debug!(
                path = %self.path.display(),
                "socket path now belongs to someone else; leaving it"
            ),
            Err(_) => {}
        }
    }
}

/// Binds an owner-only (0600) listening socket at `path`.
///
/// Creates the parent directory (0755) if missing. Refuses to start when something already
/// answers at `path` or when `path` is not a socket; removes a stale socket left by a daemon
/// that died. `what` names the socket in error messages ("admin socket", "UAPI socket").
pub(crate) async fn bind_owner_only(
    path: &Path,
    what: &str,
) -> anyhow::Result<(UnixListener, SocketFile)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(file_name) = path.file_name() else {
        bail!("{what} path {} has no file name", path.display());
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .with_context(|| format!("failed to create directory {}", parent.display()))?;

    remove_if_stale(path, what).await?;

    // Bind inside a private directory so the socket is unreachable until it is 0600.
    let scratch = parent.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&scratch);
    DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .with_context(|| format!("failed to create directory {}", scratch.display()))?;
    let result = bind_in(&scratch, path, what);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn bind_in(scratch: &Path, path: &Path, what: &str) -> anyhow::Result<(UnixListener, SocketFile)> {
    let temp = scratch.join("s");
    let listener = UnixListener::bind(&temp)
        .with_context(|| format!("failed to bind {what} at {}", path.display()))?;
    fs::set_permissions(&temp, Permissions::from_mode(0o600))
        .with_context(|| format!("failed to chmod {what} {}", temp.display()))?;
    fs::rename(&temp, path)
        .with_context(|| format!("failed to move {what} into place at {}", path.display()))?;
    let meta = fs::symlink_metadata(path)
        .with_context(|| format!("failed to stat {what} {}", path.display()))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

async fn remove_if_stale(path: &Path, what: &str) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it with the {what}",
            path.display()
        );
    }
    match UnixStream::connect(path).await {
        Ok(_) => bail!(
            "another process is already serving the {what} at {} (is another isthmus-gateway running for this interface?)",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale {what}");
            fs::remove_file(path)
                .with_context(|| format!("failed to remove stale {what} {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("failed to probe {what} {}", path.display())),
    }
}

/// Reads and discards what the client still sends, until it closes (bounded in bytes and time).
///
/// Closing a Unix socket with unread data in its receive queue resets the peer's end
/// (ECONNRESET), which would throw away the answer we just wrote; a client that sent too much
/// must still be able to read why it was refused.
pub(crate) async fn linger<R: AsyncRead + Unpin>(reader: R) {
    const MAX_BYTES: u64 = 1024 * 1024;
    const MAX_TIME: Duration = Duration::from_secs(1);
    let mut sink = tokio::io::sink();
    let mut limited = reader.take(MAX_BYTES);
    let _ = tokio::time::timeout(MAX_TIME, tokio::io::copy(&mut limited, &mut sink)).await;
}

/// Accepts connections on `listener` forever, at most `max` at a time, each handled by
/// `handle` with a clone of `state`. Aborting the task that runs this aborts every connection
/// in flight.
pub(crate) async fn accept_loop<S, F, Fut>(
    listener: UnixListener,
    state: S,
    max: usize,
    what: &'static str,
    handle: F,
) where
    S: Clone,
    F: Fn(UnixStream, S) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let conn = handle(stream, state.clone());
                connections.spawn(async move {
                    conn.await;
                    drop(permit);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
