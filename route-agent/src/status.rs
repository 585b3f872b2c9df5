//! What `isthmus-route-agent status` (and the admin socket) reports, as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// Where the catalog comes from (`unix:/…`, `tcp:host:port`, `etcd:…`).
    pub source: String,
    /// Whether the source is connected now.
    pub connected: bool,
    /// The source's last error, while it is not connected.
    pub source_error: Option<String>,
    /// The gateway's cluster and catalog revision last programmed.
    pub cluster: String,
    pub revision: Option<u64>,
    /// Catalog lines refused (malformed), since start.
    pub catalogs_refused: u64,
    /// The last refusal's reason.
    pub last_refusal: Option<String>,
    /// Time the last reconcile took, microseconds.
    pub last_reconcile_us: Option<u64>,
    /// The last reconcile's failure (the maps stay consistent; it is retried).
    pub reconcile_error: Option<String>,
    /// Interfaces the pod programs are attached to.
    pub interfaces: Vec<String>,
    /// The cgroup the socket programs are attached to (local processes).
    pub sockets: Option<String>,
    /// Routes installed via the gateway node (`prefix via addr`).
    pub routes: Vec<String>,
    pub services: Vec<ServiceStatus>,
    /// Services with VIPs that are not programmed, with the reason (map capacity).
    pub unprogrammed: Vec<Unprogrammed>,
    pub maps: BTreeMap<String, MapFill>,
    /// Packets by reason over every service (`forward`, `drop_no_port`, …).
    pub totals: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub id: u32,
    pub policy: String,
    pub vips: Vec<String>,
    /// `port/PROTO`.
    pub ports: Vec<String>,
    pub backends: Vec<BackendStatus>,
    /// Packets and bytes by reason.
    pub counters: BTreeMap<String, Counter>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub cluster: String,
    pub address: String,
    /// 0: the VIP's port is kept.
    pub port: u16,
    /// Slots in the service's table (its share of new flows).
    pub slots: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unprogrammed {
    pub service: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub entries: u64,
    pub capacity: u64,
}
