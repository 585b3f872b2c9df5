//! The crate's one error type.

use std::time::Duration;

/// Why a publish or a watch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The prefix is empty or contains no key-safe characters.
    #[error("invalid prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: &'static str,
    },
    /// A key handed to [`crate::EtcdPublisher::publish`] cannot be stored.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// An option is out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        name: &'static str,
        reason: &'static str,
    },
    /// The endpoints could not be turned into a client (bad URI, empty list).
    #[error("cannot create an etcd client")]
    Client(#[source] etcd_client::Error),
    /// A request to etcd failed; the connection is rebuilt before the next try.
    #[error("etcd request failed")]
    Etcd(#[source] etcd_client::Error),
    /// A request to etcd did not complete in time.
    #[error("etcd request timed out after {0:?}")]
    Timeout(Duration),
    /// Another publisher holds the prefix's owner key.
    #[error("prefix is owned by publisher {holder:?}")]
    NotOwner { holder: String },
    /// The owner key changed between the read and the write (lease expired or taken over).
    #[error("ownership of the prefix was lost during the publish")]
    OwnershipLost,
    /// A key under the prefix changed between the read and the write.
    #[error("keys under the prefix changed during the publish")]
    Conflict,
    /// The watch was cancelled by the server for a reason other than compaction.
    #[error("etcd cancelled the watch: {reason:?}")]
    WatchCancelled { reason: String },
    /// A watch or keep-alive stream ended without an error.
    #[error("etcd closed the stream")]
    StreamClosed,
    /// A publish gave up; `source` is the last attempt's error.
    #[error("publish failed after {attempts} attempts")]
    Exhausted {
        attempts: u32,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Whether another attempt (after re-reading the prefix) may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Etcd(_) | Error::Timeout(_) | Error::OwnershipLost | Error::Conflict
        )
    }

    /// Whether the connection should be rebuilt before the next attempt.
    pub(crate) fn is_connection_error(&self) -> bool {
        matches!(self, Error::Etcd(_) | Error::Timeout(_))
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
