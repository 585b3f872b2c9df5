//! Options for both halves and the one place that builds an etcd client from them.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::error::{Error, Result};

/// Responses larger than tonic's 4 MiB default are normal for a big catalog read in one range
/// get; etcd itself caps a single value at 1.5 MiB but not a range.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How to reach etcd.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionOptions {
    /// Time allowed to open a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Time allowed for one unary request (range get, transaction, lease grant).
    pub request_timeout: Duration,
    /// HTTP/2 ping interval; finds a dead connection on a path that drops packets silently.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is declared dead.
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// Exponential backoff between reconnect attempts: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }
}

/// The running state of a [`Backoff`].
#[derive(Debug)]
pub(crate) struct Delay {
    policy: Backoff,
    next: Duration,
}

impl Delay {
    pub(crate) fn new(policy: Backoff) -> Self {
        Delay {
            policy,
            next: policy.initial,
        }
    }

    /// The delay to wait now; the one after it is twice as long (capped).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.policy.max);
        now
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.policy.initial;
    }
}

/// Options for [`crate::EtcdPublisher`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublisherOptions {
    /// Who this publisher is, written to `<prefix>/_meta/owner`. Unique among publishers that
    /// may run at the same time (e.g. the node or pod name); a publisher whose owner equals the
    /// recorded one takes the prefix over at once, so a restarted gateway need not wait out the
    /// lease of its previous run.
    pub owner: String,
    /// TTL of the lease behind the owner key: how long a crashed publisher blocks another one.
    pub lease_ttl: Duration,
    /// Attempts per [`crate::EtcdPublisher::publish`] call before it returns an error.
    pub attempts: u32,
    pub backoff: Backoff,
    pub connection: ConnectionOptions,
    /// The server's `--max-txn-ops` (etcd default 128). One slot of each transaction goes to the
    /// owner guard, so a batch carries at most `max_txn_ops - 1` writes.
    pub max_txn_ops: usize,
}

impl PublisherOptions {
    pub fn new(owner: impl Into<String>) -> Self {
        PublisherOptions {
            owner: owner.into(),
            lease_ttl: Duration::from_secs(15),
            attempts: 5,
            backoff: Backoff::default(),
            connection: ConnectionOptions::default(),
            max_txn_ops: 128,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |name, reason| Err(Error::InvalidOption { name, reason });
        if self.owner.is_empty() {
            return invalid("owner", "must not be empty");
        }
        if self.lease_ttl < Duration::from_secs(2) {
            // Keep-alives go out every third of the TTL at whole-second granularity.
            return invalid("lease_ttl", "must be at least 2 s");
        }
        if self.attempts == 0 {
            return invalid("attempts", "must be at least 1");
        }
        if self.max_txn_ops < 2 {
            return invalid("max_txn_ops", "must be at least 2");
        }
        Ok(())
    }
}

/// Options for [`crate::EtcdWatcher`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatcherOptions {
    pub backoff: Backoff,
    pub connection: ConnectionOptions,
    /// Events buffered for a slow consumer before the watch stops reading from etcd.
    pub buffer: usize,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        WatcherOptions {
            backoff: Backoff::default(),
            connection: ConnectionOptions::default(),
            buffer: 256,
        }
    }
}

/// A client for `endpoints`. This does not touch the network: tonic connects lazily, so a
/// bad URI fails here and an unreachable etcd fails the first request.
pub(crate) async fn client(endpoints: &[String], options: &ConnectionOptions) -> Result<Client> {
    let connect = ConnectOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_timeout(options.request_timeout)
        .with_keep_alive(options.keepalive_interval, options.keepalive_timeout)
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(connect))
        .await
        .map_err(Error::Client)
}

pub(crate) fn max_response_bytes() -> usize {
    MAX_RESPONSE_BYTES
}

/// Runs one etcd request with an outer deadline. tonic's own timeout starts only once a
/// connection is ready; while every endpoint is down a request could otherwise wait forever.
pub(crate) async fn bounded<T>(
    options: &ConnectionOptions,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    let limit = options.connect_timeout + options.request_timeout;
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result.map_err(Error::Etcd),
        Err(_) => Err(Error::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut delay = Delay::new(Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(350),
        ));
        let seen: Vec<_> = (0..4).map(|_| delay.next_delay().as_millis()).collect();
        assert_eq!(seen, [100, 200, 350, 350]);
        delay.reset();
        assert_eq!(delay.next_delay().as_millis(), 100);
    }

    #[test]
    fn publisher_options_are_checked() {
        PublisherOptions::new("gw-a").validate().unwrap();
        let mut bad = PublisherOptions::new("");
        assert!(bad.validate().is_err());
        bad.owner = "gw-a".into();
        bad.max_txn_ops = 1;
        assert!(matches!(
            bad.validate(),
            Err(Error::InvalidOption {
                name: "max_txn_ops",
                ..
            })
        ));
    }
}
