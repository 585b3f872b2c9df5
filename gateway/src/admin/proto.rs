//! The admin socket protocol shared by the daemon and `tunctl`: one JSON request per line,
//! one JSON response per line, then the daemon closes the connection.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped when a response changes incompatibly; `tunctl` refuses a newer major.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Peers,
    Status,
    /// Re-read the configuration file, as SIGHUP does, and report what changed.
    Reload,
    /// The merged service catalog (`tunctl services`).
    Services,
}

/// What a reload applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The interface key, SVID or trust bundle changed: peers by identity are re-joined.
    pub rotated: bool,
    pub added: usize,
    pub removed: usize,
    /// Peers whose sessions restarted (key material or keepalive changed).
    pub restarted: usize,
    pub kept: usize,
    /// Changed settings that take effect only after a restart.
    pub restart_needed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerInfo>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<InterfaceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// With `services`: the merged catalog; absent when the control plane is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceInfo>>,
    /// With `peers` and `status`: the control plane's view (sessions, refusals, DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlStatus>,
}

pub use isthmus_catalog_view::{BackendInfo, ClusterEndpoints, PortInfo, ServiceInfo};

pub use crate::control::status::{ControlStatus, PeerSync, RemoteCluster};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// No valid session yet, handshakes under way (or waiting for the peer to call in).
    Connecting,
    /// A session from a handshake younger than 180 s (WireGuard paper §6.1, Reject-After-Time).
    Connected,
    /// Something needs attention; `status_reason` says what.
    Error,
}

/// One peer as the daemon sees it now. Byte counters count inner IP packet bytes (what went
/// into and came out of the tunnel, keepalives excluded); `*_wire_bytes` count UDP payload bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub public_key: String,
    pub name: Option<String>,
    pub endpoint: Option<String>,
    pub status: PeerState,
    pub status_reason: Option<String>,
    /// Unix time of the last completed handshake, in milliseconds.
    pub last_handshake_unix_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_wire_bytes: u64,
    pub tx_wire_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub handshakes: u64,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
    /// Packets dropped that are attributable to this peer, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// The peer's SPIFFE ID: verified when `verified`, else what the configuration expects.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Expiry of the peer's verified SVID, Unix milliseconds.
    #[serde(default)]
    pub svid_expires_unix_ms: Option<u64>,
    /// The key was installed after its SVID binding verified (false for plain `public_key` peers).
    #[serde(default)]
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub public_key: String,
    pub listen_port: u16,
    pub addresses: Vec<String>,
    pub mtu: u16,
    pub peers: usize,
    pub connected_peers: usize,
    pub uptime_secs: u64,
    pub pid: u32,
    pub daemon_version: String,
    pub config_file: String,
    pub offloads: BTreeMap<String, bool>,
    /// Packets dropped by reason, all peers and unattributable drops together.
    pub dropped: BTreeMap<String, u64>,
}
