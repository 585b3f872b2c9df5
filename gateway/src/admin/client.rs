//! A blocking admin socket client for `tunctl`: connect, send one request line, read the answer.

use super::proto::{Request, Response, PROTOCOL_VERSION};
use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response accepted; a status or peer list is far smaller.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a request to the daemon failed. Messages name the socket and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("no isthmus-gateway is listening at {} (is the daemon running? set --socket or ISTHMUS_ADMIN_SOCKET)", path.display())]
    NoDaemon { path: PathBuf },
    #[error("cannot open {}: permission denied (the admin socket is owner-only; run as root or the daemon's user)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("nothing is listening at {}: the socket is stale (the daemon exited without removing it; restart isthmus-gateway)", path.display())]
    Stale { path: PathBuf },
    #[error("cannot connect to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("isthmus-gateway at {} did not answer within {}s", path.display(), timeout.as_secs_f32())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("connection to isthmus-gateway at {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("isthmus-gateway at {} closed the connection without answering", path.display())]
    NoAnswer { path: PathBuf },
    #[error("malformed response from {}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("isthmus-gateway speaks admin protocol version {daemon}, this tunctl speaks version {client}; use the tunctl that ships with the daemon")]
    VersionMismatch { daemon: u64, client: u32 },
    #[error("isthmus-gateway refused the request: {message}")]
    Daemon { message: String },
}

/// Sends `req` to the admin socket at `socket` and returns the daemon's answer.
///
/// `timeout` bounds each read and write (not the connect, which a local listener answers at
/// once). A response carrying `error` comes back as [`ClientError::Daemon`].
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.to_path_buf();
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ClientError::NoDaemon { path: path.clone() },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: path.clone() },
        io::ErrorKind::ConnectionRefused => ClientError::Stale { path: path.clone() },
        _ => ClientError::Connect {
            path: path.clone(),
            source,
        },
    })?;
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            path: path.clone(),
            timeout,
        },
        _ => ClientError::Io {
            path: path.clone(),
            source,
        },
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;

    let mut line = serde_json::to_vec(req).expect("a Request always serializes");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_error)?;

    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut answer)
        .map_err(io_error)?;
    parse_response(&path, &answer)
}

fn parse_response(path: &Path, answer: &[u8]) -> Result<Response, ClientError> {
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Err(ClientError::NoAnswer {
            path: path.to_path_buf(),
        });
    }
    let malformed = |source| ClientError::Malformed {
        path: path.to_path_buf(),
        source,
    };
    // Check the version before the shape: a newer daemon's response may not fit `Response`.
    let value: serde_json::Value = serde_json::from_slice(answer).map_err(malformed)?;
    let daemon = value.get("version").and_then(serde_json::Value::as_u64);
    if let Some(daemon) = daemon {
        if daemon != u64::from(PROTOCOL_VERSION) {
            return Err(ClientError::VersionMismatch {
                daemon,
                client: PROTOCOL_VERSION,
            });
        }
    }
    let response: Response = serde_json::from_value(value).map_err(malformed)?;
    if let Some(message) = response.error {
        return Err(ClientError::Daemon { message });
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn missing_socket_says_no_daemon_and_how_to_point_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("isthmus0.sock");
        let error = request(&path, &Request::Peers, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "no isthmus-gateway is listening at {} (is the daemon running? set --socket or ISTHMUS_ADMIN_SOCKET)",
                path.display()
            )
        );
    }

    #[test]
    fn stale_socket_is_named_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("isthmus0.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let error = request(&path, &Request::Peers, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(error, ClientError::Stale { .. }), "{error}");
        assert!(error.to_string().contains("stale"));
    }

    #[test]
    fn permission_denied_is_explained() {
        // root bypasses the permission check; nothing to observe then.
        if std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(true)
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("isthmus0.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        let error = request(&path, &Request::Peers, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(error, ClientError::PermissionDenied { .. }),
            "{error}"
        );
    }

    #[test]
    fn silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("isthmus0.sock");
        // Accepted by the kernel backlog, never answered.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let error = request(&path, &Request::Peers, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
        assert!(error.to_string().contains("did not answer within 0.1s"));
    }

    #[test]
    fn response_checks() {
        let path = Path::new("/run/isthmus/isthmus0.sock");
        let error = parse_response(path, b"{\"version\":2,\"whatever\":[]}\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("isthmus-gateway speaks admin protocol version 2, this tunctl speaks version {PROTOCOL_VERSION}; use the tunctl that ships with the daemon")
        );
        let error = parse_response(path, b"{\"version\":1,\"error\":\"nope\"}\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "isthmus-gateway refused the request: nope"
        );
        let error = parse_response(path, b"<html>").unwrap_err();
        assert!(matches!(error, ClientError::Malformed { .. }));
        assert!(matches!(
            parse_response(path, b"").unwrap_err(),
            ClientError::NoAnswer { .. }
        ));
        let ok = parse_response(path, b"{\"version\":1,\"peers\":[]}\n").unwrap();
        assert_eq!(ok.peers, Some(vec![]));
    }
}
