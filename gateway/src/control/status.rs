//! What the control plane reports of itself (`tunctl status`, metrics): a snapshot built by
//! [`super::Shared::status`]; the admin socket carries it as it is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The control plane at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStatus {
    pub cluster: String,
    /// This cluster's export watermark, `generation.version`.
    pub watermark: String,
    pub services: usize,
    /// Sync sessions open, and how many of them are in step.
    pub sessions: usize,
    pub synced_sessions: usize,
    /// Sessions closed or connections refused, by reason (wrong_origin, own_cluster, gap,
    /// invalid, decode, unknown_source).
    pub refusals: BTreeMap<String, u64>,
    /// Membership records received (handed to membership).
    pub members_received: u64,
    /// DNS answers by response code; empty with DNS off.
    pub dns_queries: BTreeMap<String, u64>,
    pub remote_clusters: Vec<RemoteCluster>,
    /// Per peer (by SPIFFE ID): mesh address and sync state, for `tunctl peers`.
    pub peers: Vec<PeerSync>,
    /// Live mesh members learned from signed records (`[members]`), by SPIFFE ID.
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCluster {
    pub cluster: String,
    /// `up`, `hold_down` or `down`.
    pub liveness: String,
    pub offered: bool,
    pub watermark: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSync {
    pub spiffe_id: String,
    pub mesh_addr: String,
    /// `synced`, `syncing`, `connecting`, or `retrying: <last error>`.
    pub sync: String,
}
