//! The WireGuard cross-platform userspace API (<https://www.wireguard.com/xplatform/>), read-only,
//! so that `wg show <interface>` and `wg show <interface> dump` work against the daemon.
//!
//! The socket lives at `/var/run/wireguard/<interface>.sock` (the caller passes the path), is
//! owner-only (0600) because `get` reveals the private key, and serves any number of operations
//! per connection, as wireguard-go does:
//!
//! - `get=1\n\n` is answered with the device and its peers, then `errno=0\n\n`.
//! - `set=1\n…\n\n` is refused with `errno=-1` (EPERM): the configuration file owns the
//!   configuration, and a change made behind its back would be lost on the next reload.
//! - anything else gets `errno=-22` (EINVAL) and the connection is closed. wireguard-go closes
//!   without answering; answering costs nothing and tells a person at `socat` what happened.
//!
//! Error numbers are negative, as wireguard-go writes them and as `wg set` reads them
//! (`fscanf("errno=%d")`, then `strerror(-errno)`), so `wg set` prints "Operation not permitted".
//!
//! `rx_bytes`/`tx_bytes` are UDP payload bytes (the `*_wire_bytes` counters), matching what the
//! kernel module and wireguard-go report, not the inner-packet counters `tunctl` shows.

use super::proto::PeerInfo;
use super::AdminSource;
use crate::keys::PublicKey;
use crate::unix_socket::{accept_loop, bind_owner_only, linger, ServedSocket};
use ipnet::IpNet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

/// Time a client gets to send each operation (and the whole body of a `set`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to take each answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest operation line (`get=1`, `set=1`).
const MAX_OP_LINE: usize = 64;
/// Largest `set` body drained before refusing it (`wg setconf` of thousands of peers fits).
const MAX_SET_BYTES: usize = 16 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 16;

/// Negated errno values, the wire convention (see the module docs).
const EPERM: i32 = -1;
const EINVAL: i32 = -22;

/// A running UAPI socket. Dropping it (or [`UapiHandle::shutdown`]) stops serving and removes
/// the socket file.
#[derive(Debug)]
pub struct UapiHandle(ServedSocket);

impl UapiHandle {
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Stops accepting, aborts connections in flight and removes the socket file.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

/// Binds the UAPI socket at `path` (normally `/var/run/wireguard/<interface>.sock`) and serves
/// it from a spawned task.
pub async fn serve_uapi(path: &Path, source: Arc<dyn AdminSource>) -> anyhow::Result<UapiHandle> {
    let (listener, file) = bind_owner_only(path, "UAPI socket").await?;
    tracing::info!(path = %path.display(), "UAPI socket listening");
    let task = tokio::spawn(accept_loop(
        listener,
        source,
        MAX_CONNECTIONS,
        "UAPI socket",
        |stream, source| async move { handle(stream, &*source).await },
    ));
    Ok(UapiHandle(ServedSocket::new(task, file)))
}

/// The answer to `get=1`, `errno=0` and the closing blank line included.
pub fn render_get(source: &dyn AdminSource) -> String {
    let mut out = String::new();
    let private_key = source.private_key_hex();
    if is_hex_key(&private_key) {
        line(&mut out, "private_key", private_key.to_ascii_lowercase());
    }
    let listen_port = source.status().listen_port;
    // As wireguard-go: a port of 0 (not bound) is left out.
    if listen_port != 0 {
        line(&mut out, "listen_port", listen_port);
    }
    for peer in source.peers() {
        render_peer(&mut out, &peer);
    }
    out.push_str("errno=0\n\n");
    out
}

fn render_peer(out: &mut String, peer: &PeerInfo) {
    let Ok(key) = PublicKey::try_from_base64(&peer.public_key) else {
        tracing::debug!(public_key = %peer.public_key, "peer key is not base64 of 32 bytes; left out of UAPI get");
        return;
    };
    // `public_key` opens a peer section; every key after it belongs to that peer.
    line(out, "public_key", hex::encode(key.as_bytes()));
    line(out, "protocol_version", 1);
    if let Some(endpoint) = peer.endpoint.as_deref() {
        // `wg` would resolve a host name with getaddrinfo; hand it numeric addresses only.
        // SocketAddr's Display brackets IPv6, as the UAPI requires.
        match endpoint.parse::<SocketAddr>() {
            Ok(addr) => line(out, "endpoint", addr),
            Err(_) => {
                tracing::debug!(
                    endpoint,
                    "peer endpoint is not ip:port; left out of UAPI get"
                )
            }
        }
    }
    let handshake_ms = peer.last_handshake_unix_ms.unwrap_or(0);
    line(out, "last_handshake_time_sec", handshake_ms / 1000);
    line(
        out,
        "last_handshake_time_nsec",
        (handshake_ms % 1000) * 1_000_000,
    );
    line(out, "tx_bytes", peer.tx_wire_bytes);
    line(out, "rx_bytes", peer.rx_wire_bytes);
    line(
        out,
        "persistent_keepalive_interval",
        peer.persistent_keepalive.unwrap_or(0),
    );
    for allowed in &peer.allowed_ips {
        let net = allowed
            .parse::<IpNet>()
            .or_else(|_| allowed.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(net) => line(out, "allowed_ip", net),
            Err(_) => tracing::debug!(allowed_ip = %allowed, "not a prefix; left out of UAPI get"),
        }
    }
}

fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{key}={value}");
}

fn is_hex_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

enum Read {
    Line(Vec<u8>),
    Eof,
    TooLong,
    TimedOut,
}

/// Reads one `\n`-terminated line of at most `max` bytes within [`READ_TIMEOUT`].
async fn read_line<R>(reader: &mut BufReader<R>, max: usize) -> std::io::Result<Read>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut limited = (&mut *reader).take(max as u64);
    let read = limited.read_until(b'\n', &mut buf);
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => Ok(Read::TimedOut),
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Ok(Read::Eof),
        Ok(Ok(_)) if buf.last() == Some(&b'\n') => Ok(Read::Line(buf)),
        Ok(Ok(n)) if n >= max => Ok(Read::TooLong),
        // Bytes then EOF with no newline: a truncated operation.
        Ok(Ok(_)) => Ok(Read::Eof),
    }
}

async fn handle(stream: UnixStream, source: &dyn AdminSource) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if serve_ops(&mut reader, &mut write, source).await == Close::Linger {
        let _ = write.shutdown().await;
        linger(reader).await;
    }
}

#[derive(PartialEq, Eq)]
enum Close {
    /// The client left or stalled: nothing more to say.
    Now,
    /// We answered an error and hang up; let the client read it.
    Linger,
}

async fn serve_ops<R>(
    reader: &mut BufReader<R>,
    write: &mut OwnedWriteHalf,
    source: &dyn AdminSource,
) -> Close
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        // `wg` probes a socket by connecting and closing at once; EOF here is normal.
        let op = match read_line(reader, MAX_OP_LINE).await {
            Ok(Read::Line(op)) => op,
            Ok(Read::Eof | Read::TimedOut) | Err(_) => return Close::Now,
            Ok(Read::TooLong) => {
                tracing::debug!("UAPI operation line too long");
                let _ = reply(write, &format!("errno={EINVAL}\n\n")).await;
                return Close::Linger;
            }
        };
        match op.as_slice() {
            b"get=1\n" => match read_line(reader, MAX_OP_LINE).await {
                Ok(Read::Line(blank)) if blank == b"\n" => {
                    if reply(write, &render_get(source)).await.is_err() {
                        return Close::Now;
                    }
                }
                Ok(Read::Eof | Read::TimedOut) | Err(_) => return Close::Now,
                Ok(_) => {
                    tracing::debug!("UAPI get=1 not followed by a blank line");
                    let _ = reply(write, &format!("errno={EINVAL}\n\n")).await;
                    return Close::Linger;
                }
            },
            b"set=1\n" => {
                // Take the whole body first: closing on unread data would reset the
                // connection before `wg` reads the answer.
                if !drain_set(reader).await {
                    return Close::Now;
                }
                tracing::warn!(
                    config_file = %source.status().config_file,
                    "refused a UAPI set (wg set / wg setconf): the configuration is owned by the config file; edit it and reload the daemon"
                );
                if reply(write, &format!("errno={EPERM}\n\n")).await.is_err() {
                    return Close::Now;
                }
            }
            other => {
                tracing::debug!(op = %String::from_utf8_lossy(other).trim_end(), "unknown UAPI operation");
                let _ = reply(write, &format!("errno={EINVAL}\n\n")).await;
                return Close::Linger;
            }
        }
    }
}

/// Reads a `set` body up to its blank line. False if the client went away, stalled or sent more
/// than [`MAX_SET_BYTES`].
async fn drain_set<R>(reader: &mut BufReader<R>) -> bool
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut total = 0;
    let drain = async {
        loop {
            let mut buf = Vec::new();
            let n = (&mut *reader)
                .take((MAX_SET_BYTES - total) as u64)
                .read_until(b'\n', &mut buf)
                .await
                .ok()?;
            total += n;
            if n == 0 || total >= MAX_SET_BYTES {
                return None;
            }
            if buf == b"\n" {
                return Some(());
            }
        }
    };
    matches!(
        tokio::time::timeout(READ_TIMEOUT, drain).await,
        Ok(Some(()))
    )
}

async fn reply(write: &mut OwnedWriteHalf, text: &str) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::{peer_key, FakeSource, HANDSHAKE_MS};
    use std::os::unix::fs::PermissionsExt as _;

    fn hex_of(base64: &str) -> String {
        hex::encode(PublicKey::try_from_base64(base64).unwrap().as_bytes())
    }

    #[test]
    fn get_lists_device_then_peers_then_errno() {
        let source = FakeSource::new();
        let text = render_get(&source);
        let expected = format!(
            "private_key={private}\n\
             listen_port=51820\n\
             public_key={p1}\n\
             protocol_version=1\n\
             endpoint=192.0.2.10:51820\n\
             last_handshake_time_sec={sec}\n\
             last_handshake_time_nsec=250000000\n\
             tx_bytes=5000\n\
             rx_bytes=1300000\n\
             persistent_keepalive_interval=25\n\
             allowed_ip=10.1.0.0/16\n\
             allowed_ip=fd00:1::/64\n\
             public_key={p2}\n\
             protocol_version=1\n\
             endpoint=[2001:db8::2]:51820\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=148\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=10.2.0.0/16\n\
             public_key={p3}\n\
             protocol_version=1\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=0\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             errno=0\n\n",
            private = source.private_key_hex(),
            p1 = hex_of(&peer_key(1)),
            p2 = hex_of(&peer_key(2)),
            p3 = hex_of(&peer_key(3)),
            sec = HANDSHAKE_MS / 1000,
        );
        assert_eq!(text, expected);
    }

    struct Odd;
    impl AdminSource for Odd {
        fn peers(&self) -> Vec<PeerInfo> {
            let mut peer = FakeSource::new().peers().remove(0);
            peer.endpoint = Some("gw.example.com:51820".into());
            peer.allowed_ips = vec!["10.0.0.1".into(), "garbage".into()];
            let mut bad_key = peer.clone();
            bad_key.public_key = "AAAA".into();
            vec![bad_key, peer]
        }
        fn status(&self) -> super::super::proto::InterfaceStatus {
            let mut status = FakeSource::new().status();
            status.listen_port = 0;
            status
        }
        fn private_key_hex(&self) -> String {
            String::new()
        }
    }

    #[test]
    fn get_leaves_out_what_wg_cannot_parse() {
        let text = render_get(&Odd);
        assert!(!text.contains("private_key="));
        assert!(!text.contains("listen_port="));
        assert_eq!(text.matches("public_key=").count(), 1);
        assert!(!text.contains("endpoint="));
        assert!(text.contains("allowed_ip=10.0.0.1/32\n"));
        assert!(!text.contains("garbage"));
        assert!(text.ends_with("errno=0\n\n"));
    }

    async fn exchange(path: &Path, request: &[u8]) -> String {
        let mut stream = UnixStream::connect(path).await.unwrap();
        stream.write_all(request).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn socket_answers_get_refuses_set_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard/isthmus0.sock");
        let handle = serve_uapi(&path, Arc::new(FakeSource::new()))
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let expected = render_get(&FakeSource::new());
        assert_eq!(exchange(&path, b"get=1\n\n").await, expected);
        // Several operations on one connection, as wireguard-go allows.
        assert_eq!(
            exchange(&path, b"get=1\n\nget=1\n\n").await,
            format!("{expected}{expected}")
        );
        assert_eq!(
            exchange(&path, b"set=1\nlisten_port=1\nreplace_peers=true\n\n").await,
            "errno=-1\n\n"
        );
        assert_eq!(exchange(&path, b"reboot=1\n\n").await, "errno=-22\n\n");
        assert_eq!(exchange(&path, b"get=1\nx\n").await, "errno=-22\n\n");
        // A bare connect-and-close probe, as `wg show` does first.
        assert_eq!(exchange(&path, b"").await, "");

        handle.shutdown().await;
        assert!(!path.exists());
    }

    /// Runs the real `wg show` against the socket when `wg` is installed and
    /// `/var/run/wireguard` is writable (root); skipped otherwise.
    #[tokio::test]
    async fn wg_show_reads_it() {
        let Ok(version) = std::process::Command::new("wg").arg("--version").output() else {
            eprintln!("skipped: wg is not installed");
            return;
        };
        if !version.status.success() {
            return;
        }
        let name = format!("ist{}", std::process::id() % 100_000);
        let path = Path::new("/var/run/wireguard").join(format!("{name}.sock"));
        let handle = match serve_uapi(&path, Arc::new(FakeSource::new())).await {
            Ok(handle) => handle,
            Err(error) => {
                eprintln!("skipped: cannot serve {}: {error:#}", path.display());
                return;
            }
        };
        let wg = |args: &'static [&'static str]| {
            let name = name.clone();
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new("wg")
                    .arg("show")
                    .arg(&name)
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "wg show {name} {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            })
        };
        let pretty = wg(&[]).await.unwrap();
        assert!(pretty.contains(&format!("interface: {name}")), "{pretty}");
        assert!(
            pretty.contains("public key: GoKOHKmMnVDs1HlV8C09+3O8llMmkEQGWeuCgowTf0g="),
            "{pretty}"
        );
        assert!(pretty.contains("listening port: 51820"), "{pretty}");
        assert!(
            pretty.contains(&format!("peer: {}", peer_key(1))),
            "{pretty}"
        );
        assert!(pretty.contains("endpoint: [2001:db8::2]:51820"), "{pretty}");
        assert!(
            pretty.contains("allowed ips: 10.1.0.0/16, fd00:1::/64"),
            "{pretty}"
        );
        assert!(
            pretty.contains("persistent keepalive: every 25 seconds"),
            "{pretty}"
        );

        let dump = wg(&["dump"]).await.unwrap();
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 4, "{dump}");
        let first: Vec<&str> = lines[0].split('\t').collect();
        assert_eq!(first[0], crate::admin::testing::PRIVATE_KEY);
        assert_eq!(first[2], "51820");
        let peer = lines
            .iter()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .find(|f| f[0] == peer_key(1))
            .expect("connected peer in dump");
        // public-key preshared-key endpoint allowed-ips latest-handshake rx tx keepalive
        assert_eq!(peer[2], "192.0.2.10:51820");
        assert_eq!(peer[3], "10.1.0.0/16,fd00:1::/64");
        assert_eq!(peer[4], (HANDSHAKE_MS / 1000).to_string());
        assert_eq!(peer[5], "1300000");
        assert_eq!(peer[6], "5000");
        assert_eq!(peer[7], "25");

        // `wg set` is refused with EPERM, and says so.
        let name2 = name.clone();
        let set = tokio::task::spawn_blocking(move || {
            std::process::Command::new("wg")
                .args(["set", &name2, "listen-port", "1"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(!set.status.success());
        let stderr = String::from_utf8_lossy(&set.stderr);
        assert!(stderr.contains("Operation not permitted"), "{stderr}");

        handle.shutdown().await;
        assert!(!path.exists());
    }
}
