//! Mirrors a key set into etcd under a prefix. See the crate docs for the guard protocol.

use std::collections::BTreeMap;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, KvClient, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use tracing::{debug, info, warn};

use crate::diff::{diff, Op, Stored};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::lease::Lease;
use crate::options::{bounded, client, max_response_bytes, Delay, PublisherOptions};

/// What one [`EtcdPublisher::publish`] call changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Keys created or given a new value.
    pub put: usize,
    /// Keys removed (no longer published, or written there by someone else).
    pub deleted: usize,
    /// Keys that already held the published value and were not written.
    pub unchanged: usize,
    /// Transactions committed; 0 when etcd already matched.
    pub transactions: usize,
    /// The etcd revision after the last transaction (the read revision if nothing was written).
    pub revision: i64,
}

/// Makes the keys under one prefix equal to a given set; one instance per prefix and process.
pub struct EtcdPublisher {
    endpoints: Vec<String>,
    layout: Layout,
    options: PublisherOptions,
    client: Option<Client>,
    claim: Option<Claim>,
}

impl std::fmt::Debug for EtcdPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdPublisher")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.layout.root())
            .field("owner", &self.options.owner)
            .field("lease", &self.claim.as_ref().map(|c| c.lease.id()))
            .finish_non_exhaustive()
    }
}

/// This publisher's hold on `<prefix>/_meta/owner`.
#[derive(Debug)]
struct Claim {
    lease: Lease,
}

impl EtcdPublisher {
    /// Checks the arguments and builds a client. Does not wait for etcd: an unreachable etcd is
    /// reported (and retried) by [`publish`](Self::publish). Must be called inside a Tokio
    /// runtime, which later runs the lease keep-alive task.
    pub async fn connect(
        endpoints: Vec<String>,
        prefix: &str,
        options: PublisherOptions,
    ) -> Result<Self> {
        let layout = Layout::new(prefix)?;
        options.validate()?;
        let client = client(&endpoints, &options.connection).await?;
        Ok(EtcdPublisher {
            endpoints,
            layout,
            options,
            client: Some(client),
            claim: None,
        })
    }

    /// The normalised prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        self.layout.root()
    }

    /// Makes the keys under the prefix (outside `_meta/`) exactly `entries`.
    ///
    /// Reads the prefix once, then writes only the difference, in transactions of at most
    /// `max_txn_ops - 1` writes. Retries up to `options.attempts` times with backoff, rebuilding
    /// the connection and re-reading before each retry. Returns [`Error::NotOwner`] at once if
    /// another publisher holds the prefix. Between transactions of one call, watchers may see a
    /// mix of the old and the new set; after an error, some batches may have been applied and
    /// the next call finishes the job.
    pub async fn publish(&mut self, entries: BTreeMap<String, Vec<u8>>) -> Result<PublishStats> {
        let mut desired = BTreeMap::new();
        for (key, value) in entries {
            self.layout.validate(&key)?;
            desired.insert(self.layout.full_key(&key), value);
        }
        let mut delay = Delay::new(self.options.backoff);
        let attempts = self.options.attempts;
        let mut attempt = 1;
        loop {
            let error = match self.try_publish(&desired).await {
                Ok(stats) => {
                    debug!(prefix = %self.layout.root(), ?stats, "published");
                    return Ok(stats);
                }
                Err(error) => error,
            };
            if error.is_connection_error() {
                self.client = None;
            }
            if !error.is_retryable() {
                return Err(error);
            }
            if attempt == attempts {
                return Err(Error::Exhausted {
                    attempts,
                    source: Box::new(error),
                });
            }
            let wait = delay.next_delay();
            warn!(
                prefix = %self.layout.root(),
                attempt,
                error = %error,
                retry_in = ?wait,
                "etcd publish attempt failed"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Gives the prefix up: revokes the owner lease so another publisher can take over at once.
    /// The published keys stay; they are not attached to the lease, so route agents keep their
    /// view while gateways restart or fail over.
    pub async fn release(mut self) -> Result<()> {
        let Some(claim) = self.claim.take() else {
            return Ok(());
        };
        let client = self.client().await?;
        claim
            .lease
            .revoke(&client, &self.options.connection)
            .await?;
        info!(prefix = %self.layout.root(), owner = %self.options.owner, "released prefix");
        Ok(())
    }

    async fn client(&mut self) -> Result<Client> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = client(&self.endpoints, &self.options.connection).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn try_publish(&mut self, desired: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<PublishStats> {
        let client = self.client().await?;
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(max_response_bytes());
        let connection = &self.options.connection;
        let read = bounded(
            connection,
            kv.get(self.layout.root(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let owner_key = self.layout.owner_key();
        let mut owner = None;
        let mut stored = BTreeMap::new();
        for entry in read.kvs() {
            if entry.key() == owner_key.as_slice() {
                owner = Some(entry.clone());
            } else if !self.layout.is_reserved(entry.key()) {
                let have = Stored {
                    value: entry.value().to_vec(),
                    mod_revision: entry.mod_revision(),
                };
                stored.insert(entry.key().to_vec(), have);
            }
        }
        let guard = self.ensure_owner(&client, owner.as_ref()).await?;

        let (ops, unchanged) = diff(&stored, desired);
        let mut stats = PublishStats {
            unchanged,
            revision: read.header().map_or(0, |h| h.revision()),
            ..PublishStats::default()
        };
        for batch in ops.chunks(self.options.max_txn_ops - 1) {
            let revision = self.commit(&mut kv, guard, batch).await?;
            for op in batch {
                match op {
                    Op::Put { .. } => stats.put += 1,
                    Op::Delete { .. } => stats.deleted += 1,
                }
            }
            stats.transactions += 1;
            stats.revision = revision;
        }
        Ok(stats)
    }

    /// Applies one batch if the owner key and every touched key are as the read saw them.
    async fn commit(&mut self, kv: &mut KvClient, guard: i64, batch: &[Op]) -> Result<i64> {
        let owner_key = self.layout.owner_key();
        let mut compares = vec![Compare::mod_revision(
            owner_key.clone(),
            CompareOp::Equal,
            guard,
        )];
        let mut writes = Vec::with_capacity(batch.len());
        for op in batch {
            compares.push(Compare::mod_revision(
                op.key(),
                CompareOp::Equal,
                op.expected_mod_revision(),
            ));
            writes.push(match op {
                Op::Put { key, value, .. } => TxnOp::put(key.clone(), value.clone(), None),
                Op::Delete { key, .. } => TxnOp::delete(key.clone(), None),
            });
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(writes)
            .or_else(vec![TxnOp::get(owner_key, None)]);
        let response = bounded(&self.options.connection, kv.txn(txn)).await?;
        if response.succeeded() {
            return Ok(response.header().map_or(0, |h| h.revision()));
        }
        let owner_now = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(KeyValue::mod_revision)),
            _ => None,
        });
        if owner_now.flatten() == Some(guard) {
            Err(Error::Conflict)
        } else {
            // The lease expired or another publisher took over; decide again on the next read.
            self.claim = None;
            Err(Error::OwnershipLost)
        }
    }

    /// Returns the owner key's mod revision that this publisher's writes are guarded by,
    /// claiming the key first if it is free or held by an earlier run with the same owner.
    async fn ensure_owner(&mut self, client: &Client, current: Option<&KeyValue>) -> Result<i64> {
        let me = self.options.owner.as_bytes();
        match current {
            Some(kv) if kv.value() != me => {
                self.claim = None;
                Err(Error::NotOwner {
                    holder: String::from_utf8_lossy(kv.value()).into_owned(),
                })
            }
            Some(kv)
                if self
                    .claim
                    .as_ref()
                    .is_some_and(|c| c.lease.id() == kv.lease()) =>
            {
                Ok(kv.mod_revision())
            }
            _ => {
                let expected = current.map_or(0, KeyValue::mod_revision);
                self.claim(client, expected).await
            }
        }
    }

    /// Writes the owner key under a fresh lease if it still has `expected` mod revision
    /// (0: absent). Any earlier lease of ours is dropped first: it has expired, or it is
    /// attached to nothing once the key is rewritten.
    async fn claim(&mut self, client: &Client, expected: i64) -> Result<i64> {
        self.claim = None;
        let connection = &self.options.connection;
        let lease =
            Lease::grant(client, &self.endpoints, connection, self.options.lease_ttl).await?;
        let owner_key = self.layout.owner_key();
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                owner_key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then(vec![TxnOp::put(
                owner_key,
                self.options.owner.as_bytes(),
                Some(PutOptions::new().with_lease(lease.id())),
            )]);
        let response = bounded(connection, client.kv_client().txn(txn)).await?;
        if !response.succeeded() {
            // Someone wrote the key since our read; revoke our unused lease and re-read.
            let _ = lease.revoke(client, connection).await;
            return Err(Error::Conflict);
        }
        let revision = response.header().map_or(0, |h| h.revision());
        info!(
            prefix = %self.layout.root(),
            owner = %self.options.owner,
            lease = lease.id(),
            took_over = expected != 0,
            "claimed prefix"
        );
        self.claim = Some(Claim { lease });
        Ok(revision)
    }
}
