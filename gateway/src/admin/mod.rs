//! The daemon's operator interfaces: the admin socket `tunctl` talks to, the WireGuard
//! cross-platform userspace API (`wg show`), and the Prometheus endpoint. All three read the
//! same snapshot through [`AdminSource`].

pub mod client;
pub mod metrics;
pub mod pki_cli;
pub mod proto;
pub mod render;
pub mod server;
pub mod uapi;

#[cfg(test)]
mod testing;
mod unix_socket;

use proto::{InterfaceStatus, PeerInfo, ReloadReport};

/// What the operator interfaces may read from the running daemon.
pub trait AdminSource: Send + Sync + 'static {
    fn peers(&self) -> Vec<PeerInfo>;
    fn status(&self) -> InterfaceStatus;
    /// Lowercase hex, as the UAPI `get` prints `private_key=`.
    fn private_key_hex(&self) -> String;
    /// Re-reads the configuration (`tunctl reload`).
    fn reload(&self) -> futures::future::BoxFuture<'static, Result<ReloadReport, String>> {
        Box::pin(async { Err("this daemon cannot reload".to_string()) })
    }
}
