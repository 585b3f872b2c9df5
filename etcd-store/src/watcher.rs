//! Follows the keys under a prefix: a snapshot, then changes, across reconnects and compaction.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::options::{bounded, client, max_response_bytes, Delay, WatcherOptions};

/// One change to the keys under the watched prefix; keys are relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The complete set of keys. The first item of every watcher, and again whenever the
    /// history needed to resume was compacted away: replace all state with it.
    Snapshot(BTreeMap<String, Vec<u8>>),
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

impl WatchEvent {
    /// Applies the event to `keys`, the prefix's content as the events so far left it.
    pub fn apply(self, keys: &mut BTreeMap<String, Vec<u8>>) {
        match self {
            WatchEvent::Snapshot(all) => *keys = all,
            WatchEvent::Put { key, value } => {
                keys.insert(key, value);
            }
            WatchEvent::Delete { key } => {
                keys.remove(&key);
            }
        }
    }
}

/// A [`Stream`] of [`WatchEvent`]s for one prefix, fed by a background task.
///
/// Applying the events in order to the first [`WatchEvent::Snapshot`] gives the prefix's
/// content at the revision of the last event: no event is lost or repeated across reconnects,
/// because the task resumes the watch at the revision after the last one it delivered. An
/// `Err` item reports a failed connection or watch; the stream carries on by itself (with
/// backoff) and ends only when dropped. Keys under `_meta/` and keys that are not UTF-8 are
/// not reported.
#[derive(Debug)]
pub struct EtcdWatcher {
    events: mpsc::Receiver<Result<WatchEvent>>,
    task: JoinHandle<()>,
}

impl EtcdWatcher {
    /// Starts watching. Fails only on a bad prefix or endpoint; an unreachable etcd shows up
    /// as `Err` items. Must be called inside a Tokio runtime.
    pub async fn watch(
        endpoints: Vec<String>,
        prefix: &str,
        options: WatcherOptions,
    ) -> Result<Self> {
        let layout = Layout::new(prefix)?;
        // Built only to reject malformed endpoints now rather than as an endless error stream.
        client(&endpoints, &options.connection).await?;
        let (tx, events) = mpsc::channel(options.buffer.max(1));
        let task = tokio::spawn(run(endpoints, layout, options, tx));
        Ok(EtcdWatcher { events, task })
    }

    /// The next item; `None` only if the background task ended unexpectedly.
    pub async fn recv(&mut self) -> Option<Result<WatchEvent>> {
        self.events.recv().await
    }
}

impl Stream for EtcdWatcher {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for EtcdWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum SessionEnd {
    ReceiverGone,
    Compacted,
    Failed(Error),
}

/// Where the consumer stands: the revision its state reflects, once it has had a snapshot.
struct Follower {
    layout: Layout,
    options: WatcherOptions,
    tx: mpsc::Sender<Result<WatchEvent>>,
    revision: Option<i64>,
}

async fn run(
    endpoints: Vec<String>,
    layout: Layout,
    options: WatcherOptions,
    tx: mpsc::Sender<Result<WatchEvent>>,
) {
    let mut delay = Delay::new(options.backoff);
    let mut follower = Follower {
        layout,
        options,
        tx,
        revision: None,
    };
    loop {
        let started = tokio::time::Instant::now();
        match follower.session(&endpoints).await {
            SessionEnd::ReceiverGone => return,
            SessionEnd::Compacted => {}
            SessionEnd::Failed(error) => {
                // A session that lived longer than the longest backoff was healthy; the failure
                // is a new outage, not the next round of one that keeps failing.
                if started.elapsed() >= follower.options.backoff.max {
                    delay.reset();
                }
                let wait = delay.next_delay();
                warn!(
                    prefix = %follower.layout.root(),
                    error = %error,
                    retry_in = ?wait,
                    "etcd watch interrupted"
                );
                if follower.tx.send(Err(error)).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Follower {
    /// One connection: a snapshot if the consumer needs one, then the watch until it breaks.
    async fn session(&mut self, endpoints: &[String]) -> SessionEnd {
        match self.try_session(endpoints).await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn try_session(&mut self, endpoints: &[String]) -> Result<SessionEnd, SessionEnd> {
        let connection = &self.options.connection;
        let client = client(endpoints, connection)
            .await
            .map_err(SessionEnd::Failed)?;
        let revision = match self.revision {
            Some(revision) => revision,
            None => {
                let mut kv = client
                    .kv_client()
                    .max_decoding_message_size(max_response_bytes());
                let options = GetOptions::new().with_prefix();
                let read = bounded(connection, kv.get(self.layout.root(), Some(options)))
                    .await
                    .map_err(SessionEnd::Failed)?;
                let revision = read.header().map_or(0, |h| h.revision());
                let snapshot = read
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((self.relative_key(kv)?, kv.value().to_vec())))
                    .collect();
                self.send(WatchEvent::Snapshot(snapshot)).await?;
                debug!(prefix = %self.layout.root(), revision, "sent snapshot");
                self.revision = Some(revision);
                revision
            }
        };

        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watches = client
            .watch_client()
            .max_decoding_message_size(max_response_bytes());
        let mut stream = bounded(connection, watches.watch(self.layout.root(), Some(options)))
            .await
            .map_err(SessionEnd::Failed)?;
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(SessionEnd::Failed(Error::StreamClosed)),
                Err(error) => return Err(SessionEnd::Failed(Error::Etcd(error))),
            };
            if response.compact_revision() != 0 {
                // etcd no longer has the revisions after ours (mvcc compaction); only a fresh
                // read can bring the consumer up to date.
                info!(
                    prefix = %self.layout.root(),
                    from = revision + 1,
                    compacted = response.compact_revision(),
                    "watch history compacted; taking a new snapshot"
                );
                self.revision = None;
                return Ok(SessionEnd::Compacted);
            }
            if response.canceled() {
                let reason = response.cancel_reason().to_owned();
                return Err(SessionEnd::Failed(Error::WatchCancelled { reason }));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if let Some(key) = self.relative_key(kv) {
                    let change = match event.event_type() {
                        EventType::Put => WatchEvent::Put {
                            key,
                            value: kv.value().to_vec(),
                        },
                        EventType::Delete => WatchEvent::Delete { key },
                    };
                    self.send(change).await?;
                }
                // A delete's kv carries the deleting revision, so this is right for both kinds.
                self.revision = Some(kv.mod_revision());
            }
        }
    }

    async fn send(&self, event: WatchEvent) -> Result<(), SessionEnd> {
        self.tx
            .send(Ok(event))
            .await
            .map_err(|_| SessionEnd::ReceiverGone)
    }

    fn relative_key(&self, kv: &KeyValue) -> Option<String> {
        if self.layout.is_reserved(kv.key()) {
            return None;
        }
        let relative = self.layout.relative(kv.key())?;
        match std::str::from_utf8(relative) {
            Ok(key) => Some(key.to_owned()),
            Err(_) => {
                warn!(prefix = %self.layout.root(), key = ?relative, "skipping non-UTF-8 key");
                None
            }
        }
    }
}
