//! The catalog as the agent reads it: a [`WatchLine`] (or the etcd records) validated into
//! typed services. A line with anything malformed is refused whole, naming the service, the
//! field and the value, and the previous catalog stays programmed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use isthmus_catalog_view::{check_schema, GatewayInfo, ServiceInfo, WatchLine};
use isthmus_ebpf::layout::Proto;

/// `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    LocalFirst,
    RoundRobin,
    Weighted,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::LocalFirst => "local_first",
            Policy::RoundRobin => "round_robin",
            Policy::Weighted => "weighted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub cluster: String,
    pub address: IpAddr,
    pub port: u16,
    /// Relative share (the gateway resolved the policy; equal weights mean equal shares).
    pub weight: u32,
}

/// One service of the catalog, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    pub vips: Vec<IpAddr>,
    pub headless: bool,
    pub policy: Policy,
    /// TCP and UDP ports; other protocols are not carried by the programs.
    pub ports: Vec<(u16, Proto)>,
    /// Ports of a protocol the programs do not carry (SCTP), for status.
    pub skipped_ports: Vec<String>,
    pub backends: Vec<Backend>,
}

/// The whole catalog at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub revision: u64,
    pub cluster: String,
    pub services: BTreeMap<ServiceName, Service>,
    /// Prefixes nodes route via the gateway node.
    pub routes: Vec<IpNet>,
}

/// A record the agent cannot read; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CatalogError(pub String);

fn bad(service: &ServiceInfo, field: &str, value: impl fmt::Debug, why: &str) -> CatalogError {
    CatalogError(format!(
        "service {}/{}: {field} {value:?}: {why}",
        service.namespace, service.name
    ))
}

impl Catalog {
    /// Parses one line of the watch stream.
    pub fn from_line(line: &str) -> Result<Catalog, CatalogError> {
        let parsed: WatchLine = serde_json::from_str(line)
            .map_err(|e| CatalogError(format!("malformed watch line: {e}")))?;
        Catalog::from_watch(parsed)
    }

    pub fn from_watch(line: WatchLine) -> Result<Catalog, CatalogError> {
        check_schema(line.schema).map_err(|e| CatalogError(e.to_string()))?;
        let routes = parse_routes(&line.routes)?;
        let services = parse_services(line.services)?;
        Ok(Catalog {
            revision: line.revision,
            cluster: line.cluster,
            services,
            routes,
        })
    }

    /// The catalog from the etcd store: every `services/...` record and the `gateway` one.
    pub fn from_store(
        revision: u64,
        gateway: Option<GatewayInfo>,
        services: Vec<ServiceInfo>,
    ) -> Result<Catalog, CatalogError> {
        let (cluster, routes) = match gateway {
            Some(g) => {
                check_schema(g.schema).map_err(|e| CatalogError(e.to_string()))?;
                (g.cluster, parse_routes(&g.routes)?)
            }
            None => (String::new(), Vec::new()),
        };
        Ok(Catalog {
            revision,
            cluster,
            services: parse_services(services)?,
            routes,
        })
    }
}

fn parse_routes(routes: &[String]) -> Result<Vec<IpNet>, CatalogError> {
    let mut out = Vec::with_capacity(routes.len());
    for r in routes {
        let net: IpNet = r
            .parse()
            .map_err(|_| CatalogError(format!("routes: {r:?} is not a CIDR prefix")))?;
        out.push(net.trunc());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn parse_services(
    services: Vec<ServiceInfo>,
) -> Result<BTreeMap<ServiceName, Service>, CatalogError> {
    let mut out = BTreeMap::new();
    for s in services {
        let service = parse_service(&s)?;
        if out.contains_key(&service.name) {
            return Err(CatalogError(format!(
                "service {} appears twice",
                service.name
            )));
        }
        out.insert(service.name.clone(), service);
    }
    Ok(out)
}

fn parse_service(s: &ServiceInfo) -> Result<Service, CatalogError> {
    if s.namespace.is_empty() || s.name.is_empty() {
        return Err(CatalogError(format!(
            "a service with an empty namespace or name ({:?}/{:?})",
            s.namespace, s.name
        )));
    }
    let mut vips = Vec::new();
    for v in &s.vips {
        let ip: IpAddr = v
            .parse()
            .map_err(|_| bad(s, "vips", v, "not an IP address"))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(bad(s, "vips", v, "not a unicast address"));
        }
        vips.push(ip);
    }
    let policy = match s.policy.as_str() {
        "local_first" => Policy::LocalFirst,
        "round_robin" => Policy::RoundRobin,
        "weighted" => Policy::Weighted,
        other => {
            return Err(bad(
                s,
                "policy",
                other,
                "not local_first, round_robin or weighted",
            ))
        }
    };
    let mut ports = Vec::new();
    let mut skipped_ports = Vec::new();
    for p in &s.ports {
        if p.port == 0 {
            return Err(bad(s, "ports[].port", 0, "must be 1 to 65535"));
        }
        match p.protocol.as_str() {
            "TCP" => ports.push((p.port, Proto::Tcp)),
            "UDP" => ports.push((p.port, Proto::Udp)),
            "SCTP" => skipped_ports.push(format!("{}/SCTP", p.port)),
            other => return Err(bad(s, "ports[].protocol", other, "not TCP, UDP or SCTP")),
        }
    }
    ports.sort();
    ports.dedup();
    let mut backends = Vec::new();
    for b in &s.backends {
        let address: IpAddr = b
            .address
            .parse()
            .map_err(|_| bad(s, "backends[].address", &b.address, "not an IP address"))?;
        if b.port == 0 {
            return Err(bad(s, "backends[].port", 0, "must be 1 to 65535"));
        }
        backends.push(Backend {
            cluster: b.cluster.clone(),
            address,
            port: b.port,
            weight: b.weight,
        });
    }
    backends.sort();
    backends.dedup_by(|a, b| (a.address, a.port) == (b.address, b.port));
    Ok(Service {
        name: ServiceName {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        },
        vips,
        headless: s.headless,
        policy,
        ports,
        skipped_ports,
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(service: serde_json::Value) -> String {
        serde_json::json!({
            "schema": 1, "revision": 4, "cluster": "c1",
            "routes": ["10.2.0.0/16", "100.96.0.1/32"],
            "services": [service],
        })
        .to_string()
    }

    fn service() -> serde_json::Value {
        serde_json::json!({
            "namespace": "demo", "name": "echo", "vips": ["241.0.0.1"], "headless": false,
            "policy": "round_robin",
            "ports": [{"name": "tcp", "port": 7000, "protocol": "TCP"},
                      {"name": null, "port": 7000, "protocol": "UDP"},
                      {"name": null, "port": 9, "protocol": "SCTP"}],
            "clusters": ["c2"], "unavailable": [], "endpoints_healthy": 1, "endpoints_total": 1,
            "per_cluster": [],
            "backends": [{"cluster": "c2", "address": "10.2.1.2", "port": 7000, "weight": 1}],
        })
    }

    #[test]
    fn a_good_line_parses_into_typed_services() {
        let c = Catalog::from_line(&line(service())).unwrap();
        assert_eq!(c.revision, 4);
        assert_eq!(c.routes.len(), 2);
        let s = c.services.values().next().unwrap();
        assert_eq!(s.name.to_string(), "demo/echo");
        assert_eq!(s.ports, vec![(7000, Proto::Tcp), (7000, Proto::Udp)]);
        assert_eq!(s.skipped_ports, vec!["9/SCTP"]);
        assert_eq!(s.policy, Policy::RoundRobin);
        assert_eq!(s.backends[0].address, "10.2.1.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_records_are_refused_naming_service_field_and_value() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "vips",
                serde_json::json!(["241.0.0.x"]),
                "service demo/echo: vips \"241.0.0.x\": not an IP address",
            ),
            (
                "vips",
                serde_json::json!(["127.0.0.1"]),
                "not a unicast address",
            ),
            (
                "policy",
                serde_json::json!("fastest"),
                "policy \"fastest\": not local_first",
            ),
            (
                "backends",
                serde_json::json!([{"cluster": "c2", "address": "10.2.1", "port": 1, "weight": 1}]),
                "backends[].address \"10.2.1\"",
            ),
            (
                "backends",
                serde_json::json!([{"cluster": "c2", "address": "10.2.1.2", "port": 0, "weight": 1}]),
                "backends[].port 0",
            ),
            (
                "ports",
                serde_json::json!([{"port": 80, "protocol": "ICMP"}]),
                "ports[].protocol \"ICMP\"",
            ),
        ];
        for (field, value, want) in cases {
            let mut s = service();
            s[field] = value.clone();
            let e = Catalog::from_line(&line(s)).unwrap_err();
            assert!(e.0.contains(want), "{field}: {e} does not contain {want}");
        }
        let e = Catalog::from_line("{\"revision\":1}").unwrap_err();
        assert!(e.0.starts_with("malformed watch line"), "{e}");
        let e = Catalog::from_line(
            &serde_json::json!({"schema": 2, "revision": 1, "cluster": "c1", "services": []})
                .to_string(),
        )
        .unwrap_err();
        assert!(e.0.contains("schema 2 is not supported"), "{e}");
        let e = Catalog::from_line(
            &serde_json::json!({"revision": 1, "cluster": "c1", "services": [], "routes": ["10.0.0.0/33"]})
                .to_string(),
        )
        .unwrap_err();
        assert!(e.0.contains("10.0.0.0/33"), "{e}");
    }

    #[test]
    fn a_service_twice_is_refused() {
        let l = serde_json::json!({
            "revision": 1, "cluster": "c1", "services": [service(), service()],
        })
        .to_string();
        assert!(Catalog::from_line(&l).unwrap_err().0.contains("twice"));
    }
}
