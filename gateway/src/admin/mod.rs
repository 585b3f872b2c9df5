//! The daemon's operator interfaces: the admin socket `tunctl` talks to, the WireGuard
//! cross-platform userspace API (`wg show`), and the Prometheus endpoint. All three read the
//! same snapshot through [`AdminSource`].

pub mod client;
pub mod metrics;
pub mod peers;
pub mod pki_cli;
pub mod proto;
pub mod render;
pub mod server;
pub mod uapi;

#[cfg(test)]
mod testing;

use proto::{ControlStatus, InterfaceStatus, PeerInfo, ReloadReport, ServiceInfo};

/// What the operator interfaces may read from the running daemon.
pub trait AdminSource: Send + Sync + 'static {
    fn peers(&self) -> Vec<PeerInfo>;
    fn status(&self) -> InterfaceStatus;
    /// Lowercase hex, as the UAPI `get` prints `private_key=`.
    fn private_key_hex(&self) -> String;
    /// Re-reads the configuration (`tunctl reload`).
    /// The merged service catalog; `None` when the control plane is off.
    fn services(&self) -> Option<Vec<ServiceInfo>> {
        None
    }
    /// The control plane's sessions, refusals and DNS counters; `None` when it is off.
    fn control(&self) -> Option<ControlStatus> {
        None
    }
    fn reload(&self) -> futures::future::BoxFuture<'static, Result<ReloadReport, ReloadError>> {
        Box::pin(async { Err(ReloadError::Unsupported) })
    }
}

/// Why a reload (`tunctl reload`, SIGHUP) applied nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file does not load; the running configuration is kept whole.
    #[error("reload refused; the running configuration is unchanged: {0}")]
    Config(#[source] crate::config::ConfigError),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("this daemon cannot reload")]
    Unsupported,
}
