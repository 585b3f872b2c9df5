//! The agent's side doors: a watch socket that writes each catalog line the moment the bench
//! sets it (the lab's `WatchServer` polls every 5 ms, which would blur the timings), and its
//! admin socket read in-process (spawning `isthmus-route-agent status` would cost a process
//! start per poll).

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use isthmus_route_agent::status::Status;

/// How often the accept thread looks for a new connection (only the agent's first connect
/// and its reconnects wait for it).
const ACCEPT_POLL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Shared {
    line: Option<String>,
    clients: Vec<UnixStream>,
}

/// A stand-in for the gateway's watch socket: every client gets the current line when it
/// connects and every new line as soon as [`Feed::send`] is called.
pub struct Feed {
    path: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feed {
    pub fn start(path: &Path) -> Result<Feed> {
        let _ = std::fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.set_nonblocking(false);
                            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            let ok = match &s.line {
                                Some(line) => writeln!(c, "{line}").is_ok(),
                                None => true,
                            };
                            if ok {
                                s.clients.push(c);
                            }
                        }
                        Err(_) => std::thread::sleep(ACCEPT_POLL),
                    }
                }
            })
        };
        Ok(Feed {
            path: path.to_owned(),
            shared,
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `line` current and writes it to every connected client. Returns the instant just
    /// before the first byte was written, and how many clients got it.
    pub fn send(&self, line: String) -> (Instant, usize) {
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let t0 = Instant::now();
        s.clients.retain_mut(|c| writeln!(c, "{line}").is_ok());
        s.line = Some(line);
        (t0, s.clients.len())
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One answer of the agent's admin socket: the status and how long it took from connect to
/// the last byte.
pub struct Answer {
    pub status: Status,
    pub took: Duration,
    /// When the last byte arrived.
    pub at: Instant,
}

/// Asks the agent on admin socket `path` for its status.
pub fn query(path: &Path) -> Result<Answer> {
    let start = Instant::now();
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("connecting to the agent's admin socket {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::with_capacity(64 * 1024);
    stream
        .read_to_end(&mut buf)
        .context("reading the agent's status")?;
    let at = Instant::now();
    let status = serde_json::from_slice(&buf).context("the agent's answer is not a status")?;
    Ok(Answer {
        status,
        took: at - start,
        at,
    })
}
