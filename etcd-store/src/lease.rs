//! The lease behind a publisher's owner key, kept alive by a background task.

use std::time::Duration;

use etcd_client::Client;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::options::{bounded, client, ConnectionOptions};

/// A granted lease and the task that renews it; dropping it stops the renewals, so the lease
/// (and the owner key attached to it) expires one TTL later.
#[derive(Debug)]
pub(crate) struct Lease {
    id: i64,
    keeper: JoinHandle<()>,
}

impl Lease {
    pub(crate) async fn grant(
        client: &Client,
        endpoints: &[String],
        connection: &ConnectionOptions,
        ttl: Duration,
    ) -> Result<Lease> {
        let mut leases = client.lease_client();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let granted = bounded(connection, leases.grant(ttl_secs, None)).await?;
        let id = granted.id();
        // Renew at a third of the TTL so two lost renewals still leave the lease alive.
        let period = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1)) / 3;
        let keeper = tokio::spawn(keep(endpoints.to_vec(), connection.clone(), id, period));
        Ok(Lease { id, keeper })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// Stops renewing and revokes the lease, which deletes every key attached to it.
    pub(crate) async fn revoke(
        self,
        client: &Client,
        connection: &ConnectionOptions,
    ) -> Result<()> {
        self.keeper.abort();
        let mut leases = client.lease_client();
        bounded(connection, leases.revoke(self.id)).await.map(drop)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

enum KeepEnd {
    Expired,
}

async fn keep(endpoints: Vec<String>, connection: ConnectionOptions, id: i64, period: Duration) {
    loop {
        match keep_once(&endpoints, &connection, id, period).await {
            Ok(KeepEnd::Expired) | Err(Error::Etcd(etcd_client::Error::LeaseKeepAliveError(_))) => {
                // etcd already deleted the owner key; the next publish claims the prefix anew.
                warn!(lease = id, "owner lease expired");
                return;
            }
            Err(error) => {
                debug!(lease = id, error = %error, "lease keep-alive interrupted; retrying");
                tokio::time::sleep(period.min(Duration::from_secs(1))).await;
            }
        }
    }
}

async fn keep_once(
    endpoints: &[String],
    connection: &ConnectionOptions,
    id: i64,
    period: Duration,
) -> Result<KeepEnd> {
    // A fresh client per stream: the previous one may sit on a connection to a dead server.
    let client = client(endpoints, connection).await?;
    let mut leases = client.lease_client();
    let (mut keeper, mut responses) = bounded(connection, leases.keep_alive(id)).await?;
    loop {
        tokio::time::sleep(period).await;
        bounded(connection, keeper.keep_alive()).await?;
        match bounded(connection, responses.message()).await? {
            Some(response) if response.ttl() > 0 => {}
            Some(_) => return Ok(KeepEnd::Expired),
            None => return Err(Error::StreamClosed),
        }
    }
}
