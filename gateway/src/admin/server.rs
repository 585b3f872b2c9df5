//! The admin socket: one JSON [`Request`] line in, one JSON [`Response`] line out, then close.
//!
//! The socket is owner-only (0600). A client gets [`READ_TIMEOUT`] to send its request line of at
//! most [`MAX_REQUEST_BYTES`]; at most [`MAX_CONNECTIONS`] are served at once, the rest wait in
//! the listen backlog.

use super::proto::{Request, Response, PROTOCOL_VERSION};
use super::AdminSource;
use crate::unix_socket::{accept_loop, bind_owner_only, linger, ServedSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Time a client gets to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served concurrently.
pub const MAX_CONNECTIONS: usize = 16;

/// A running admin socket. Dropping it (or [`AdminHandle::shutdown`]) stops serving and removes
/// the socket file.
#[derive(Debug)]
pub struct AdminHandle(ServedSocket);

impl AdminHandle {
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Stops accepting, aborts connections in flight and removes the socket file.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// Binds the admin socket at `path` and serves it from a spawned task.
///
/// Fails if another process already answers at `path`, or if `path` exists and is not a socket.
pub async fn serve_admin(path: &Path, source: Arc<dyn AdminSource>) -> anyhow::Result<AdminHandle> {
    let (listener, file) = bind_owner_only(path, "admin socket").await?;
    tracing::info!(path = %path.display(), "admin socket listening");
    let task = tokio::spawn(accept_loop(
        listener,
        source,
        MAX_CONNECTIONS,
        "admin socket",
        |stream, source| async move { handle(stream, &*source).await },
    ));
    Ok(AdminHandle(ServedSocket::new(task, file)))
}

async fn handle(stream: UnixStream, source: &dyn AdminSource) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    let response =
        match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => {
                tracing::debug!("admin client sent no request in time");
                error_response(format!(
                    "no request line received within {}s",
                    READ_TIMEOUT.as_secs()
                ))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "admin socket read failed");
                return;
            }
            // Connected and left without a word: a liveness probe.
            Ok(Ok(0)) => return,
            Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
                error_response(format!("request longer than {MAX_REQUEST_BYTES} bytes"))
            }
            Ok(Ok(_)) => respond(&line, source).await,
        };
    let mut text = match serde_json::to_vec(&response) {
        Ok(text) => text,
        Err(error) => {
            tracing::warn!(%error, "failed to encode admin response");
            return;
        }
    };
    text.push(b'\n');
    let write_all = async {
        write.write_all(&text).await?;
        write.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write_all).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "admin socket write failed"),
        Err(_) => tracing::debug!("admin client did not take its response in time"),
    }
    linger(reader.into_inner().into_inner()).await;
}

/// Answers one request line (no socket I/O, for tests).
pub async fn respond(line: &[u8], source: &dyn AdminSource) -> Response {
    let request: Request = match serde_json::from_slice(trim_ascii(line)) {
        Ok(request) => request,
        Err(error) => return error_response(format!("malformed request: {error}")),
    };
    tracing::debug!(?request, "admin request");
    let mut response = empty_response();
    match request {
        Request::Peers => {
            response.peers = Some(source.peers());
            response.control = source.control();
        }
        Request::Status => {
            response.status = Some(source.status());
            response.control = source.control();
        }
        Request::Services => match source.services() {
            Some(services) => response.services = Some(services),
            None => {
                return error_response(
                    "the control plane is off (no [control] section in the configuration)".into(),
                )
            }
        },
        Request::Reload => match source.reload().await {
            Ok(report) => response.reload = Some(report),
            Err(error) => return error_response(error.to_string()),
        },
    }
    response
}

fn empty_response() -> Response {
    Response {
        version: PROTOCOL_VERSION,
        error: None,
        peers: None,
        status: None,
        reload: None,
        services: None,
        control: None,
    }
}

fn error_response(error: String) -> Response {
    Response {
        error: Some(error),
        ..empty_response()
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::client::{self, ClientError};
    use crate::admin::testing::FakeSource;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn malformed_requests_name_the_problem() {
        let source = FakeSource::new();
        let r = respond(b"{\"op\":\"reboot\"}\n", &source).await;
        let error = r.error.unwrap();
        assert!(error.starts_with("malformed request:"), "{error}");
        assert!(error.contains("reboot"), "{error}");
        assert!(respond(b"not json", &source).await.error.is_some());
        let ok = respond(b"{\"op\":\"peers\"}\r\n", &source).await;
        assert_eq!(ok.error, None);
        assert_eq!(ok.peers.unwrap(), source.peers());
    }

    #[tokio::test]
    async fn serves_requests_owner_only_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/isthmus/isthmus0.sock");
        let handle = serve_admin(&path, Arc::new(FakeSource::new()))
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let parent_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(parent_mode & 0o777, 0o755);

        let p = path.clone();
        let response = tokio::task::spawn_blocking(move || {
            client::request(&p, &Request::Peers, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.version, PROTOCOL_VERSION);
        assert_eq!(response.peers.unwrap(), FakeSource::new().peers());

        let p = path.clone();
        let response = tokio::task::spawn_blocking(move || {
            client::request(&p, &Request::Status, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status.unwrap().name, "isthmus0");

        // A second daemon on the same path is refused while the first is alive.
        let second = serve_admin(&path, Arc::new(FakeSource::new())).await;
        let error = format!("{:#}", second.unwrap_err());
        assert!(error.contains("already serving"), "{error}");

        handle.shutdown().await;
        assert!(!path.exists());
        let p = path.clone();
        let error = tokio::task::spawn_blocking(move || {
            client::request(&p, &Request::Peers, Duration::from_secs(1))
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(error, ClientError::NoDaemon { .. }), "{error}");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        // A bound socket nobody accepts on any more: what a crashed daemon leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let handle = serve_admin(&path, Arc::new(FakeSource::new()))
            .await
            .unwrap();
        drop(handle);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        std::fs::write(&path, b"precious").unwrap();
        let error = serve_admin(&path, Arc::new(FakeSource::new()))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("not a socket"));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn oversized_and_silent_clients_get_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _handle = serve_admin(&path, Arc::new(FakeSource::new()))
            .await
            .unwrap();

        let mut stream = UnixStream::connect(&path).await.unwrap();
        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        // The server may close before taking everything; only the answer matters.
        let _ = stream.write_all(&big).await;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        let response: Response = serde_json::from_str(answer.trim()).unwrap();
        assert!(response.error.unwrap().contains("longer than"));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _handle = serve_admin(&path, Arc::new(FakeSource::new()))
            .await
            .unwrap();
        let mut stream = UnixStream::connect(&path).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let response: Response = serde_json::from_str(answer.trim()).unwrap();
        assert!(response.error.unwrap().contains("no request line"));
    }
}
