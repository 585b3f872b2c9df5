//! The catalog view schema: what a gateway tells everyone outside it about the merged service
//! catalog. The same records travel on the watch stream (Unix socket on the gateway node, TCP
//! for other nodes), under the etcd store prefix, and out of `tunctl services -o json`; the
//! gateway writes them, `tunctl` and the route agent read them.
//!
//! # Versioning
//!
//! [`SCHEMA_VERSION`] is carried by every [`WatchLine`] and [`GatewayInfo`]. Adding a field
//! (with a serde default) keeps the version; removing or changing the meaning of one bumps it,
//! and a reader refuses a version it does not know ([`check_schema`]) rather than guess.
//!
//! # The watch stream
//!
//! One JSON [`WatchLine`] per line: the whole view at once when a client connects, then a new
//! line after every change (bursts coalesced). A client never writes; the gateway closes a
//! client that does not read for a few seconds.
//!
//! # The etcd store
//!
//! Under the configured prefix: `services/<namespace>/<name>` holds one [`ServiceInfo`], and
//! [`GATEWAY_KEY`] holds the [`GatewayInfo`] of the gateway that owns the prefix.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Version of the records in this crate; see the crate docs.
pub const SCHEMA_VERSION: u32 = 1;

/// The etcd key (under the store prefix) of the owning gateway's [`GatewayInfo`].
pub const GATEWAY_KEY: &str = "gateway";

/// The etcd key prefix (under the store prefix) of the service records.
pub const SERVICES_PREFIX: &str = "services/";

/// The etcd key (under the store prefix) of one service: `services/<namespace>/<name>`.
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{SERVICES_PREFIX}{namespace}/{name}")
}

/// A reader's check of a record's schema version.
pub fn check_schema(schema: u32) -> Result<(), SchemaError> {
    if schema == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(SchemaError { found: schema })
    }
}

/// A record of a schema version this build does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaError {
    pub found: u32,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "catalog view schema {} is not supported (this build reads {SCHEMA_VERSION})",
            self.found
        )
    }
}

impl std::error::Error for SchemaError {}

fn schema_v1() -> u32 {
    1
}

/// One line of the watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchLine {
    /// [`SCHEMA_VERSION`] of the writer.
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// Increases with every change of the gateway's catalog (restarts from 0 when the gateway
    /// restarts).
    pub revision: u64,
    /// The gateway's own cluster: the "local" of `local_first`.
    pub cluster: String,
    /// Every service of the merged catalog, sorted by namespace and name.
    pub services: Vec<ServiceInfo>,
    /// Prefixes the gateway carries into the tunnel (every peer's allowed IPs, learned ones
    /// included) and its own mesh address: what a node that is not the gateway routes via the
    /// gateway node. CIDR strings, sorted.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// What the gateway that owns an etcd store prefix says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub cluster: String,
    /// As [`WatchLine::routes`].
    #[serde(default)]
    pub routes: Vec<String>,
}

/// One service of the merged catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// Clusterset VIPs (an IPv4 one, and an IPv6 one when the gateway has a v6 range); empty
    /// for headless services and while the range is full.
    pub vips: Vec<String>,
    pub headless: bool,
    /// `local_first`, `round_robin` or `weighted`.
    pub policy: String,
    pub ports: Vec<PortInfo>,
    /// Exporting clusters whose endpoints are offered now.
    pub clusters: Vec<String>,
    /// Exporting clusters that are down or held down.
    pub unavailable: Vec<String>,
    pub endpoints_healthy: usize,
    pub endpoints_total: usize,
    pub per_cluster: Vec<ClusterEndpoints>,
    /// What the route agents program: the ready endpoints of offered clusters chosen by the
    /// service's policy from this gateway's cluster, with their relative weights.
    pub backends: Vec<BackendInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEndpoints {
    pub cluster: String,
    pub offered: bool,
    pub ready: usize,
    pub total: usize,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub cluster: String,
    pub address: String,
    /// The endpoint's port. The catalog carries one target port per endpoint: a service with
    /// one port number (over any protocols) sends it to this port; a service with several port
    /// numbers sends each to the same number on the endpoint.
    pub port: u16,
    pub weight: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_schema_or_routes_reads_as_version_1() {
        let line: WatchLine =
            serde_json::from_str(r#"{"revision":3,"cluster":"c1","services":[]}"#).unwrap();
        assert_eq!(line.schema, 1);
        assert!(line.routes.is_empty());
        assert!(check_schema(line.schema).is_ok());
    }

    #[test]
    fn an_unknown_schema_is_refused_with_both_versions() {
        let e = check_schema(7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "catalog view schema 7 is not supported (this build reads 1)"
        );
    }

    #[test]
    fn service_keys() {
        assert_eq!(service_key("shop", "api"), "services/shop/api");
    }
}
