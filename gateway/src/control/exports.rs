//! Where this cluster's exports come from: a static file (edge nodes) or an etcd prefix. Both
//! hand the full desired set to the catalog on every change.
//!
//! The export format, TOML (`[[service]]` tables) or JSON (`{"service": [...]}` or a bare
//! list), one entry per service:
//!
//! ```toml
//! [[service]]
//! namespace = "shop"
//! name = "api"
//! headless = false            # default false
//! policy = "local_first"      # local_first (default), round_robin, weighted
//! weight = 1                  # this cluster's share under weighted
//! ports = [{ name = "http", port = 8080, protocol = "TCP" }]
//! endpoints = [{ address = "10.2.1.2", port = 8080, ready = true, zone = "a" }]  # ready defaults to true
//! ```
//!
//! In etcd, the key `<prefix>/<namespace>/<name>` holds one such entry as JSON; `namespace`
//! and `name` may be left out of the value (the key names them).

use isthmus_catalog::{Endpoint, Policy, ServiceExport, ServiceName, ServicePort, DEFAULT_WEIGHT};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub headless: bool,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default = "ready_default")]
    pub ready: bool,
    #[serde(default)]
    pub zone: Option<String>,
}

fn ready_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    #[serde(default)]
    service: Vec<ExportSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonFile {
    Table(ExportFile),
    List(Vec<ExportSpec>),
}

impl ExportSpec {
    /// The export, its name from the spec or else from `key_name`; the error names the field.
    pub fn into_export(self, key_name: Option<&ServiceName>) -> Result<ServiceExport, String> {
        let namespace = self
            .namespace
            .or_else(|| key_name.map(|k| k.namespace().to_string()))
            .ok_or("namespace: missing")?;
        let name = self
            .name
            .or_else(|| key_name.map(|k| k.name().to_string()))
            .ok_or("name: missing")?;
        let service = ServiceName::new(namespace, name).map_err(|e| e.to_string())?;
        if let Some(k) = key_name {
            if *k != service {
                return Err(format!("names {service}, but its key names {k}"));
            }
        }
        let export = ServiceExport {
            name: service,
            ports: self.ports,
            headless: self.headless,
            policy: self.policy,
            weight: self.weight.unwrap_or(DEFAULT_WEIGHT),
            endpoints: self
                .endpoints
                .into_iter()
                .map(|e| Endpoint {
                    address: e.address,
                    port: e.port,
                    ready: e.ready,
                    zone: e.zone,
                })
                .collect(),
        };
        export.validate().map_err(|e| e.to_string())?;
        Ok(export)
    }
}

/// Parses an export file's text: JSON if `path` ends in `.json`, else TOML.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<ServiceExport>, String> {
    let specs = if path.extension().is_some_and(|e| e == "json") {
        match serde_json::from_str::<JsonFile>(text).map_err(|e| e.to_string())? {
            JsonFile::Table(t) => t.service,
            JsonFile::List(l) => l,
        }
    } else {
        toml::from_str::<ExportFile>(text)
            .map_err(|e| e.to_string().trim_end().replace('\n', " "))?
            .service
    };
    let mut seen = BTreeMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let export = spec
            .into_export(None)
            .map_err(|e| format!("service[{i}]: {e}"))?;
        if let Some(prev) = seen.insert(export.name.clone(), i) {
            return Err(format!(
                "service[{i}]: {} is already exported by service[{prev}]",
                export.name
            ));
        }
        out.push(export);
    }
    Ok(out)
}

/// Reads and parses an export file; the error names the file.
pub fn read_file(path: &Path) -> Result<Vec<ServiceExport>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_file(path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The exports held under an etcd prefix: keys `<namespace>/<name>` (relative to the prefix).
/// Bad keys and values are skipped with a warning; the rest are exported.
pub fn from_etcd(keys: &BTreeMap<String, Vec<u8>>) -> Vec<ServiceExport> {
    let mut out = Vec::new();
    for (key, value) in keys {
        let parsed = key
            .split_once('/')
            .ok_or_else(|| "expected <namespace>/<name>".to_string())
            .and_then(|(ns, n)| ServiceName::new(ns, n).map_err(|e| e.to_string()))
            .and_then(|name| {
                let spec: ExportSpec = serde_json::from_slice(value).map_err(|e| e.to_string())?;
                spec.into_export(Some(&name))
            });
        match parsed {
            Ok(export) => out.push(export),
            Err(error) => tracing::warn!(%key, %error, "skipping an invalid export in etcd"),
        }
    }
    out
}

/// A file's identity for change detection: modification time and length.
pub fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_files_parse() {
        let toml = r#"
[[service]]
namespace = "demo"
name = "echo"
headless = true
ports = [{ name = "tcp", port = 7000 }]
endpoints = [{ address = "10.2.1.2", port = 7000 }]
"#;
        let e = parse_file(Path::new("x.toml"), toml).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].headless && e[0].endpoints[0].ready);
        assert_eq!(e[0].name.to_string(), "demo/echo");
        let json = r#"[{"namespace":"demo","name":"web","policy":"round_robin",
            "endpoints":[{"address":"10.2.1.3","port":80,"ready":false}]}]"#;
        let e = parse_file(Path::new("x.json"), json).unwrap();
        assert_eq!(e[0].policy, Policy::RoundRobin);
        assert!(!e[0].endpoints[0].ready);
    }

    #[test]
    fn bad_files_name_the_entry() {
        let err = parse_file(
            Path::new("x.toml"),
            "[[service]]\nnamespace = \"Demo\"\nname = \"a\"\n",
        )
        .unwrap_err();
        assert!(err.starts_with("service[0]:"), "{err}");
        assert!(err.contains("Demo"), "{err}");
        let err = parse_file(
            Path::new("x.toml"),
            "[[service]]\nnamespace = \"d\"\nname = \"a\"\n[[service]]\nnamespace = \"d\"\nname = \"a\"\n",
        )
        .unwrap_err();
        assert!(err.contains("already exported by service[0]"), "{err}");
        let err = parse_file(
            Path::new("x.toml"),
            "[[service]]\nnamespace = \"d\"\nname = \"a\"\nendpoints = [{ address = \"127.0.0.1\", port = 1 }]\n",
        )
        .unwrap_err();
        assert!(err.contains("not a unicast address"), "{err}");
    }

    #[test]
    fn etcd_keys_name_the_service() {
        let mut keys = BTreeMap::new();
        keys.insert(
            "demo/api".to_string(),
            br#"{"endpoints":[{"address":"10.2.1.2","port":80}]}"#.to_vec(),
        );
        keys.insert("broken".to_string(), b"{}".to_vec());
        keys.insert("demo/other".to_string(), br#"{"name":"x"}"#.to_vec());
        let e = from_etcd(&keys);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name.to_string(), "demo/api");
    }
}
