//! Isthmus service catalog: per-cluster exports, versioned merge, health and failover state,
//! clusterset VIPs, and the sync wire format. Pure logic: no sockets, no clock, no threads; the
//! only I/O is [`VipAllocator::load`] and [`VipAllocator::save`].
//!
//! # Model
//!
//! Every cluster is the only authority for its own records (an *origin*). Its gateway keeps them
//! in a [`LocalCatalog`] as an [`OriginState`] stamped with a [`Watermark`] (generation, version)
//! and publishes them to every other gateway directly over the full mesh: a snapshot when a
//! session starts, then one [`Delta`] per change. Records are never relayed, so a receiver
//! checks each record's origin against the sender's verified SVID.
//!
//! # Contract for the daemon
//!
//! - Build a [`MergedCatalog`] from the [`LocalCatalog`] (a fresh generation, see
//!   [`LocalCatalog::new`], or the persisted state via [`LocalCatalog::restore`]), a
//!   [`HealthConfig`] and a [`VipAllocator`] ([`VipAllocator::load`]); then
//!   [`MergedCatalog::restore`] any persisted remote origins.
//! - Call [`MergedCatalog::set_exports`] with the source's first full export set *before* the
//!   first session, or peers briefly see this cluster export nothing; call it again with the
//!   full set on every source change and send the returned delta to every connected peer.
//! - Per session (TCP through the tunnel, peer cluster taken from its SVID): send
//!   [`MergedCatalog::hello`], then feed received bytes to a [`FrameDecoder`] and every message
//!   to [`MergedCatalog::apply`]. Act on the [`Applied`] result (send a `Reply` back; refresh
//!   DNS, the store and the route agents on `Updated`; hand `Members` to membership). On
//!   [`Refused::Gap`] send [`SyncMessage::SnapshotRequest`]; on any other refusal or decode
//!   error, log it and close the session. Send [`MergedCatalog::heartbeat`] when nothing else was
//!   sent for `down_after / 3` (1 s by default) and `Bye` before a deliberate close.
//! - Call [`MergedCatalog::observe_alive`] for other signs of life (a WireGuard handshake).
//! - Sleep until [`MergedCatalog::poll_timeout`] (an instant in the past means "now"), then call
//!   [`MergedCatalog::handle_timeout`] and act on its [`Event`]s; re-read [`MergedCatalog::view`]
//!   or [`MergedCatalog::lookup`] after any event or update.
//! - Persist [`MergedCatalog::local`], [`MergedCatalog::remotes`] and the VIPs
//!   ([`MergedCatalog::save_vips`]) whenever they change.
//!
//! Every function takes `now` from the caller, so tests run failover on a virtual clock.
//!
//! # Guarantees
//!
//! - A snapshot replaces an origin's records only if its watermark is newer; a delta applies only
//!   on exactly the version held (else [`Refused::Gap`], nothing applied); duplicates and stale
//!   messages change nothing. A replica therefore only ever holds states its origin actually
//!   had, and, once the last snapshot or delta arrives, exactly the origin's final state.
//! - Health, failover and flap damping: see [`health`]. The local cluster is always offered.
//! - The merged view and lookups are deterministic and sorted: see [`view`].
//! - The wire format and its limits: see [`codec`] and [`limits`].
#![forbid(unsafe_code)]

mod bounded;
pub mod codec;
mod error;
pub mod fuzzing;
pub mod health;
pub mod limits;
mod merged;
mod message;
mod model;
mod names;
mod origin;
pub mod view;
mod vip;

pub use codec::{decode, decode_frame, encode, DecodeError, FrameDecoder, PROTOCOL_VERSION};
pub use error::{Error, Violation};
pub use health::{ClusterHealth, HealthConfig, Liveness};
pub use merged::{Applied, Event, MergedCatalog, Refused, Unchanged};
pub use message::{Change, Delta, DigestEntry, Hello, MembersDigest, OpaqueMember, SyncMessage};
pub use model::{Endpoint, Policy, Protocol, ServiceExport, ServicePort, DEFAULT_WEIGHT};
pub use names::{ClusterName, ServiceName, MAX_LABEL_LEN};
pub use origin::{LocalCatalog, OriginState, Watermark};
pub use view::{resolve_backends, Backend, Lookup, Offer, ServiceView};
pub use vip::{VipAllocator, Vips};
