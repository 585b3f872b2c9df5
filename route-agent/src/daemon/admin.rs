//! The admin socket: every connection gets the agent's [`Status`] as one JSON line, then the
//! agent closes it. `isthmus-route-agent status` is the client.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::status::Status;

pub type StatusRequest = oneshot::Sender<Status>;

/// The bound socket; the file is removed on drop.
pub struct AdminSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (mode 0600; a stale socket file from a dead agent is replaced, a live one or
/// anything that is not a socket is an error) and answers from `requests`.
pub async fn serve(
    path: &Path,
    requests: mpsc::Sender<StatusRequest>,
) -> anyhow::Result<AdminSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt as _;
            anyhow::ensure!(
                meta.file_type().is_socket(),
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
            anyhow::ensure!(
                UnixStream::connect(path).await.is_err(),
                "another agent answers on {}",
                path.display()
            );
            std::fs::remove_file(path)
                .with_context(|| format!("failed to remove the stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to inspect {}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("failed to bind the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to restrict {}", path.display()))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                if requests.send(tx).await.is_err() {
                    return;
                }
                let Ok(status) = rx.await else { return };
                let mut line = serde_json::to_vec(&status).unwrap_or_default();
                line.push(b'\n');
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.write_all(&line),
                )
                .await;
            });
        }
    });
    Ok(AdminSocket {
        path: path.to_owned(),
        task,
    })
}

/// Asks the agent at `path` for its status.
pub async fn query(path: &Path) -> anyhow::Result<Status> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "failed to connect to the agent's admin socket {} (is isthmus-route-agent running?)",
            path.display()
        )
    })?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await
    .context("the agent did not answer within 10 s")?
    .context("failed to read the agent's answer")?;
    serde_json::from_slice(&buf).context("the agent's answer is not a status")
}
