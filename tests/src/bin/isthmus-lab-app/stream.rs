//! The client side of a greeting: connect, read `NAME LOCAL_ADDR:PORT\n`, all within one
//! deadline.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest greeting accepted: a name and an address with room to spare.
const MAX_GREETING: usize = 512;

/// A connection whose greeting has been read.
pub struct Greeted {
    pub stream: TcpStream,
    /// The greeting without its newline.
    pub answer: String,
    /// Bytes that arrived after the greeting in the same reads.
    pub rest: Vec<u8>,
}

/// Connects to `target` and reads its greeting, failing once `timeout` has passed since the
/// call. The error says which step failed.
pub fn connect_and_greet(target: SocketAddr, timeout: Duration) -> Result<Greeted, String> {
    let deadline = Instant::now() + timeout;
    let stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; MAX_GREETING];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no greeting within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("set read timeout: {e}"))?;
        let n = match (&stream).read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "closed before the greeting ({} bytes of it)",
                    buf.len()
                ))
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no greeting within {timeout:?}"));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read greeting: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let rest = buf.split_off(pos + 1);
            buf.truncate(pos);
            let answer = String::from_utf8(buf).map_err(|_| "greeting is not UTF-8".to_owned())?;
            stream
                .set_read_timeout(None)
                .map_err(|e| format!("clear read timeout: {e}"))?;
            return Ok(Greeted {
                stream,
                answer,
                rest,
            });
        }
        if buf.len() > MAX_GREETING {
            return Err(format!("no newline in the first {} bytes", buf.len()));
        }
    }
}
