//! Isthmus catalog store in etcd: publish a key set under a prefix, watch a prefix.
//!
//! With `--etcd`, the gateway mirrors its merged service catalog into the cluster's etcd with
//! an [`EtcdPublisher`], and route agents follow it with an [`EtcdWatcher`]; an
//! [`EtcdWatcher`] on a prefix that operators fill is also an export source. Both halves deal
//! in opaque bytes under string keys, so this crate knows nothing about catalog types.
//!
//! # Key layout
//!
//! Every key lives under a prefix, normalised to end in exactly one `/`; keys handed to and
//! returned by this crate are relative to it. `<prefix>/_meta/` is reserved for the store's own
//! bookkeeping: it cannot be published to and watchers do not report it.
//!
//! | key | value | written by |
//! |---|---|---|
//! | `<prefix>/_meta/owner` | the publisher's `owner` string, attached to its lease | [`EtcdPublisher`] |
//! | `<prefix>/<key>` | caller's bytes | [`EtcdPublisher`] |
//!
//! The gateway's convention (to be completed by the gateway):
//!
//! | key | value |
//! |---|---|
//! | `/isthmus/<clusterset>/services/<namespace>/<name>` | the merged service record, JSON |
//!
//! # Publishing contract
//!
//! [`EtcdPublisher::publish`] makes the set of keys under the prefix (outside `_meta/`)
//! exactly the given map: one range get of the prefix, then only changed keys are put and only
//! missing ones deleted, so a restarted gateway rewrites nothing that is already right and keys
//! written there by anyone else are removed. Writes go in transactions of at most
//! `max_txn_ops - 1` operations (etcd's `--max-txn-ops`, default 128, bounds a transaction).
//! A failed call returns an error after its retries; the next call re-reads and re-diffs, so
//! the caller only has to call `publish` again with its current catalog.
//!
//! ## Ownership: one writer per prefix
//!
//! Two gateways of one cluster (an HA pair during a failover, or a misconfiguration) must not
//! take turns overwriting each other's catalog. The chosen guard is an owner key plus
//! compare-and-swap:
//!
//! - `<prefix>/_meta/owner` holds the publisher's `owner` and is attached to a lease
//!   (`lease_ttl`, default 15 s) that a background task renews. A publisher writes only after
//!   claiming this key: it creates it if absent, or replaces it if it names the same `owner`
//!   (a restart of the same gateway). If it names another owner, `publish` returns
//!   [`Error::NotOwner`] without writing; the caller retries later. When the holder dies its
//!   lease expires and the next `publish` of a standby claims the prefix;
//!   [`EtcdPublisher::release`] hands over at once on clean shutdown.
//! - Every transaction compares the owner key's mod revision with the one the claim produced,
//!   so a publisher that lost its lease (paused process, long partition) cannot write after a
//!   successor took over, even for one batch. Each write also compares the key's mod revision
//!   with the one read, so a concurrent change is never silently overwritten: the transaction
//!   fails and the publish re-reads ([`Error::Conflict`] if that keeps happening).
//!
//! Published keys are not attached to the lease: when a gateway stops, route agents keep the
//! last catalog until a successor publishes.
//!
//! # Watching contract
//!
//! [`EtcdWatcher::watch`] yields [`WatchEvent::Snapshot`] from a range get at revision `R`,
//! then [`WatchEvent::Put`] / [`WatchEvent::Delete`] from a watch starting at `R + 1`. After a
//! disconnect it resumes at the revision after the last event delivered; if etcd compacted
//! that history away it sends a new snapshot instead. The consumer applies items in order and
//! replaces its state on each snapshot.
//!
//! Both halves reconnect by themselves with exponential backoff ([`Backoff`]); requests are
//! bounded by [`ConnectionOptions`] so a dead etcd yields errors, never a hang.

#![forbid(unsafe_code)]

mod diff;
mod error;
mod layout;
mod lease;
mod options;
mod publisher;
mod watcher;

pub use error::{Error, Result};
pub use options::{Backoff, ConnectionOptions, PublisherOptions, WatcherOptions};
pub use publisher::{EtcdPublisher, PublishStats};
pub use watcher::{EtcdWatcher, WatchEvent};
