//! What a cluster exports: services with ports, endpoints and a load-balancing policy.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Bad, Error, Value};
use crate::limits::{MAX_ENDPOINTS, MAX_PORTS, MAX_ZONE_LEN};
use crate::names::{label_problem, ServiceName};

/// Weight of an export that does not say.
pub const DEFAULT_WEIGHT: u32 = 1;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// A DNS-1123 label if present (used in SRV records as `_<name>._<proto>`).
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// How the route agents choose among the clusters that offer a service. The service's policy is
/// taken from one export (see [`crate::view`]); `weight` comes from each cluster's own export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Ready endpoints of the local cluster if it has any, else those of every healthy cluster.
    #[default]
    LocalFirst,
    /// Every ready endpoint of every healthy cluster, equally.
    RoundRobin,
    /// Each healthy cluster gets a share proportional to its export's `weight`.
    Weighted,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    pub ready: bool,
    /// Topology zone (a Kubernetes label value), if the source knows it.
    #[serde(default)]
    pub zone: Option<String>,
}

/// One cluster's export of one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceExport {
    pub name: ServiceName,
    #[serde(
        default,
        deserialize_with = "crate::bounded::vec::<_, _, { MAX_PORTS }>"
    )]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub headless: bool,
    #[serde(default)]
    pub policy: Policy,
    /// This cluster's share under [`Policy::Weighted`]; 0 drains it while others have weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(
        default,
        deserialize_with = "crate::bounded::vec::<_, _, { MAX_ENDPOINTS }>"
    )]
    pub endpoints: Vec<Endpoint>,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl ServiceExport {
    /// An export with no ports or endpoints and default policy and weight.
    pub fn new(name: ServiceName) -> Self {
        Self {
            name,
            ports: Vec::new(),
            headless: false,
            policy: Policy::default(),
            weight: DEFAULT_WEIGHT,
            endpoints: Vec::new(),
        }
    }

    /// Checks every field; the error names the service, the field (with its index) and the value.
    pub fn validate(&self) -> Result<(), Error> {
        self.check()
            .map_err(|bad| bad.into_error(&self.name.to_string()))
    }

    /// Sorts ports by (port, protocol) and endpoints by (address, port), so that two exports that
    /// differ only in order compare equal and do not produce a delta.
    pub fn normalize(&mut self) {
        self.ports.sort_by_key(|p| (p.port, p.protocol));
        self.endpoints.sort();
    }

    pub fn ready_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    pub(crate) fn check(&self) -> Result<(), Bad<'_>> {
        check_ports(&self.ports)?;
        check_endpoints(&self.endpoints)
    }
}

fn count(n: usize) -> Value<'static> {
    Value::Number(n as u64)
}

fn check_ports(ports: &[ServicePort]) -> Result<(), Bad<'_>> {
    if ports.len() > MAX_PORTS {
        return Err(Bad::new("ports", count(ports.len()), "more than 128 ports"));
    }
    for (i, p) in ports.iter().enumerate() {
        if p.port == 0 {
            return Err(Bad::new("ports[].port", Value::Number(0), "must be 1 to 65535").at(i));
        }
        if let Some(name) = &p.name {
            if let Some(reason) = label_problem(name) {
                return Err(Bad::new("ports[].name", Value::Text(name), reason).at(i));
            }
        }
        // At most 128 ports: quadratic is cheaper than a set here.
        for q in &ports[..i] {
            if (q.port, q.protocol) == (p.port, p.protocol) {
                let value = Value::Number(p.port.into());
                return Err(Bad::new("ports[].port", value, "listed twice for one protocol").at(i));
            }
            if let (Some(a), Some(b)) = (&q.name, &p.name) {
                if a == b {
                    return Err(
                        Bad::new("ports[].name", Value::Text(b), "used by two ports").at(i),
                    );
                }
            }
        }
    }
    Ok(())
}

/// Kubernetes label value rule: at most 63 of `A-Z a-z 0-9 - _ .`, alphanumeric at both ends.
fn zone_problem(zone: &str) -> Option<&'static str> {
    if zone.is_empty() || zone.len() > MAX_ZONE_LEN {
        return Some("must be 1 to 63 bytes");
    }
    if !zone
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some("only letters, digits, '-', '_' and '.' are allowed");
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge(zone.bytes().next()) || !edge(zone.bytes().last()) {
        return Some("must start and end with a letter or digit");
    }
    None
}

/// An address another cluster could send to. Loopback would steer a remote gateway's traffic
/// into its own host, so it is refused with the other non-unicast forms.
fn address_problem(a: IpAddr) -> Option<&'static str> {
    let bad = match a {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_loopback() || v6.is_multicast(),
    };
    bad.then_some("not a unicast address")
}

fn check_endpoints(endpoints: &[Endpoint]) -> Result<(), Bad<'_>> {
    if endpoints.len() > MAX_ENDPOINTS {
        let reason = "more than 10000 endpoints";
        return Err(Bad::new("endpoints", count(endpoints.len()), reason));
    }
    let mut sorted = true;
    for (i, e) in endpoints.iter().enumerate() {
        if e.port == 0 {
            let reason = "must be 1 to 65535";
            return Err(Bad::new("endpoints[].port", Value::Number(0), reason).at(i));
        }
        if let Some(reason) = address_problem(e.address) {
            return Err(Bad::new("endpoints[].address", Value::Addr(e.address), reason).at(i));
        }
        if let Some(zone) = &e.zone {
            if let Some(reason) = zone_problem(zone) {
                return Err(Bad::new("endpoints[].zone", Value::Text(zone), reason).at(i));
            }
        }
        if i > 0 {
            let prev = &endpoints[i - 1];
            let (a, b) = ((prev.address, prev.port), (e.address, e.port));
            if a == b {
                return Err(duplicate_endpoint(e, i));
            }
            sorted &= a < b;
        }
    }
    // Normalized exports are sorted, so the common case needs no allocation.
    if !sorted {
        let mut keys: Vec<(IpAddr, u16, usize)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.address, e.port, i))
            .collect();
        keys.sort_unstable();
        for w in keys.windows(2) {
            if (w[0].0, w[0].1) == (w[1].0, w[1].1) {
                let i = w[0].2.max(w[1].2);
                return Err(duplicate_endpoint(&endpoints[i], i));
            }
        }
    }
    Ok(())
}

fn duplicate_endpoint(e: &Endpoint, i: usize) -> Bad<'_> {
    let value = Value::Endpoint(e.address, e.port);
    Bad::new("endpoints[]", value, "listed twice").at(i)
}

#[cfg(test)]
mod tests;
