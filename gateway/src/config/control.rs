//! The control plane's part of the configuration: `[control]` (catalog sync, health, VIPs,
//! state), `[exports]` (where this cluster's services come from), `[store]` (etcd mirror of
//! the merged catalog) and `[dns]`. The control plane runs only when `[control]` is present.

use super::{ConfigError, Ctx};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use isthmus_catalog::{ClusterName, HealthConfig};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// TCP port of the sync listener on the mesh address.
pub const DEFAULT_CONTROL_PORT: u16 = 51822;
/// Parent of the default state directory `/var/lib/isthmus/<interface>`.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/isthmus";
/// Clusterset VIPs: inside 240.0.0.0/4 (reserved, never on the Internet, routable on Linux),
/// away from Submariner Globalnet's 242.0.0.0/8 and from pod, service and mesh ranges.
pub const DEFAULT_VIP_RANGE: &str = "241.0.0.0/16";
pub const DEFAULT_DNS_PORT: u16 = 53;

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub cluster: ClusterName,
    pub port: u16,
    pub state_dir: PathBuf,
    pub health: HealthConfig,
    pub vip_v4: Ipv4Net,
    pub vip_v6: Option<Ipv6Net>,
    /// Unix socket streaming the merged catalog as JSON lines (route agents).
    pub watch_socket: PathBuf,
    /// The same stream over TCP, for route agents on the cluster's other nodes.
    pub watch_tcp: Option<WatchTcp>,
    pub exports: ExportSource,
    pub store: Option<EtcdTarget>,
    pub dns: Option<DnsSettings>,
}

/// `watch_listen` and `watch_allow`: a TCP listener for the watch stream and who may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTcp {
    pub listen: SocketAddr,
    /// Source prefixes allowed to connect; never empty.
    pub allow: Vec<IpNet>,
}

impl WatchTcp {
    /// Whether a connection from `addr` may read the stream. An IPv4 client of a dual-stack
    /// listener shows as `::ffff:a.b.c.d`, which the IPv4 prefixes must still match.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.allow.iter().any(|net| net.contains(&addr))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportSource {
    /// Exports nothing (a gateway that only imports).
    None,
    /// A TOML or JSON file of services, re-read when it changes.
    Static(PathBuf),
    /// Keys `<prefix>/<namespace>/<name>` holding JSON service exports.
    Etcd(EtcdTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    pub listen: SocketAddr,
    pub zone: String,
    pub ttl: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    cluster: Option<String>,
    port: Option<u16>,
    state_dir: Option<String>,
    down_after: Option<Seconds>,
    record_ttl: Option<Seconds>,
    vip_range: Option<String>,
    vip_range_v6: Option<String>,
    watch_socket: Option<String>,
    watch_listen: Option<String>,
    watch_allow: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExports {
    source: Option<String>,
    file: Option<String>,
    etcd_endpoints: Option<Vec<String>>,
    etcd_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    etcd_endpoints: Option<Vec<String>>,
    etcd_prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    enabled: Option<bool>,
    listen: Option<String>,
    zone: Option<String>,
    ttl: Option<u32>,
}

/// Seconds as a TOML integer or float.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
pub(super) enum Seconds {
    Int(i64),
    Float(f64),
}

impl Seconds {
    fn value(self) -> f64 {
        match self {
            Seconds::Int(i) => i as f64,
            Seconds::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seconds::Int(i) => write!(f, "{i}"),
            Seconds::Float(x) => write!(f, "{x}"),
        }
    }
}

pub(super) struct RawSections {
    pub control: Option<RawControl>,
    pub exports: Option<RawExports>,
    pub store: Option<RawStore>,
    pub dns: Option<RawDns>,
}

/// What the rest of the file tells the control plane.
pub(super) struct Context<'a> {
    pub base: &'a Path,
    pub interface: &'a str,
    pub mesh_addr: Option<IpAddr>,
    /// This gateway's SPIFFE ID, when it has an SVID.
    pub spiffe_id: Option<&'a str>,
}

/// The cluster of `spiffe://<td>/cluster/<cluster>/gateway/<node>`.
pub fn cluster_of(spiffe_id: &str) -> Option<&str> {
    let path = spiffe_id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        ["cluster", c, "gateway", _] => Some(c),
        _ => None,
    }
}

pub(super) fn seconds(
    cx: &Ctx<'_>,
    field: &str,
    value: Option<Seconds>,
    default: Duration,
    max: f64,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let s = v.value();
    if !(s.is_finite() && s > 0.0 && s <= max) {
        return Err(cx.invalid(
            field,
            v,
            format!("must be more than 0 and at most {max} seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn etcd_target(
    cx: &Ctx<'_>,
    section: &str,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
) -> Result<EtcdTarget, ConfigError> {
    let endpoints = endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        return Err(cx.invalid(
            format!("{section}.etcd_endpoints"),
            "[]",
            "needs at least one etcd endpoint, e.g. http://127.0.0.1:2379",
        ));
    }
    for (i, e) in endpoints.iter().enumerate() {
        if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
            return Err(cx.invalid(
                format!("{section}.etcd_endpoints[{i}]"),
                e,
                "expected a URL, e.g. http://127.0.0.1:2379",
            ));
        }
    }
    let prefix = prefix.unwrap_or_default();
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() || !trimmed.starts_with('/') || trimmed.chars().any(char::is_control) {
        return Err(cx.invalid(
            format!("{section}.etcd_prefix"),
            &prefix,
            "expected an absolute key prefix below the root, e.g. /isthmus/clusterset",
        ));
    }
    Ok(EtcdTarget {
        endpoints,
        prefix: trimmed.to_string(),
    })
}

/// `watch_listen` with its non-empty `watch_allow`, or neither.
fn watch_tcp(
    cx: &Ctx<'_>,
    listen: Option<&str>,
    allow: Option<&[String]>,
) -> Result<Option<WatchTcp>, ConfigError> {
    let Some(text) = listen else {
        return match allow {
            Some(allow) => Err(cx.invalid(
                "control.watch_allow",
                format!("[{}]", allow.join(", ")),
                "only for the TCP watch listener: set control.watch_listen too, or remove it",
            )),
            None => Ok(None),
        };
    };
    let listen: SocketAddr = text.parse().map_err(|_| {
        cx.invalid(
            "control.watch_listen",
            text,
            "expected address:port, e.g. 10.1.0.1:7474",
        )
    })?;
    if listen.port() == 0 {
        return Err(cx.invalid("control.watch_listen", text, "port must not be 0"));
    }
    let allow = allow.unwrap_or_default();
    if allow.is_empty() {
        return Err(cx.invalid(
            "control.watch_allow",
            "[]",
            "required with watch_listen: the source prefixes that may read the stream, e.g. [\"10.1.0.0/24\"]",
        ));
    }
    let mut nets = Vec::with_capacity(allow.len());
    for (i, a) in allow.iter().enumerate() {
        let net = super::parse_prefix(a)
            .map_err(|problem| cx.invalid(format!("control.watch_allow[{i}]"), a, problem))?;
        nets.push(net);
    }
    Ok(Some(WatchTcp {
        listen,
        allow: nets,
    }))
}

/// Validates the control-plane sections. `None` when `[control]` is absent (the other three
/// sections then must be absent too).
pub(super) fn load_control(
    cx: &Ctx<'_>,
    raw: RawSections,
    ctx: Context<'_>,
) -> Result<Option<ControlConfig>, ConfigError> {
    let Some(control) = raw.control else {
        for (present, name) in [
            (raw.exports.is_some(), "exports"),
            (raw.store.is_some(), "store"),
            (raw.dns.is_some(), "dns"),
        ] {
            if present {
                return Err(cx.invalid(
                    name,
                    "[...]",
                    "needs a [control] section (the control plane is off without one)",
                ));
            }
        }
        return Ok(None);
    };
    let cluster_text = match (&control.cluster, ctx.spiffe_id) {
        (Some(c), _) => c.clone(),
        (None, Some(id)) => match cluster_of(id) {
            Some(c) => c.to_string(),
            None => {
                return Err(cx.invalid(
                    "control.cluster",
                    "",
                    format!("not set, and the SVID's ID {id} is not spiffe://<td>/cluster/<cluster>/gateway/<node>"),
                ))
            }
        },
        (None, None) => {
            return Err(cx.invalid(
                "control.cluster",
                "",
                "required without interface.svid_file (otherwise taken from the SVID)",
            ))
        }
    };
    let cluster = ClusterName::new(cluster_text.clone())
        .map_err(|e| cx.invalid("control.cluster", &cluster_text, e))?;
    if let (Some(_), Some(id)) = (&control.cluster, ctx.spiffe_id) {
        if let Some(c) = cluster_of(id) {
            if c != cluster.as_str() {
                return Err(cx.invalid(
                    "control.cluster",
                    &cluster_text,
                    format!("differs from the cluster of this gateway's SVID ({id}); peers check records against the SVID"),
                ));
            }
        }
    }
    let port = control.port.unwrap_or(DEFAULT_CONTROL_PORT);
    if port == 0 {
        return Err(cx.invalid("control.port", 0, "must be 1 to 65535"));
    }
    let state_dir = match &control.state_dir {
        Some(d) => ctx.base.join(d),
        None => Path::new(DEFAULT_STATE_ROOT).join(ctx.interface),
    };
    let defaults = HealthConfig::default();
    let down_after = seconds(
        cx,
        "control.down_after",
        control.down_after,
        defaults.down_after,
        3600.0,
    )?;
    let record_ttl = seconds(
        cx,
        "control.record_ttl",
        control.record_ttl,
        defaults.record_ttl,
        30.0 * 86_400.0,
    )?;
    let health = HealthConfig {
        down_after,
        record_ttl,
        ..defaults
    };
    let vip_text = control
        .vip_range
        .clone()
        .unwrap_or_else(|| DEFAULT_VIP_RANGE.to_string());
    let vip_v4: Ipv4Net = vip_text.parse().map_err(|_| {
        cx.invalid(
            "control.vip_range",
            &vip_text,
            "expected an IPv4 CIDR prefix, e.g. 241.0.0.0/16",
        )
    })?;
    if vip_v4.trunc() != vip_v4 {
        return Err(cx.invalid(
            "control.vip_range",
            &vip_text,
            format!("host bits are set; did you mean {}?", vip_v4.trunc()),
        ));
    }
    if vip_v4.prefix_len() > 30 {
        return Err(cx.invalid(
            "control.vip_range",
            &vip_text,
            "must hold at least 2 addresses (/30 or wider)",
        ));
    }
    let vip_v6 = match &control.vip_range_v6 {
        None => None,
        Some(t) => {
            let n: Ipv6Net = t.parse().map_err(|_| {
                cx.invalid(
                    "control.vip_range_v6",
                    t,
                    "expected an IPv6 CIDR prefix, e.g. fd00:241::/112",
                )
            })?;
            if n.trunc() != n {
                return Err(cx.invalid(
                    "control.vip_range_v6",
                    t,
                    format!("host bits are set; did you mean {}?", n.trunc()),
                ));
            }
            Some(n)
        }
    };
    let watch_socket = control
        .watch_socket
        .as_ref()
        .map(|s| ctx.base.join(s))
        .unwrap_or_else(|| state_dir.join("catalog.sock"));
    let watch_tcp = watch_tcp(
        cx,
        control.watch_listen.as_deref(),
        control.watch_allow.as_deref(),
    )?;

    let exports = match raw.exports {
        None => ExportSource::None,
        Some(e) => match e.source.as_deref() {
            None | Some("none") => {
                if e.file.is_some() || e.etcd_endpoints.is_some() || e.etcd_prefix.is_some() {
                    return Err(cx.invalid(
                        "exports.source",
                        e.source.as_deref().unwrap_or(""),
                        "set it to \"static\" (with file) or \"etcd\" (with etcd_endpoints, etcd_prefix)",
                    ));
                }
                ExportSource::None
            }
            Some("static") => {
                let Some(f) = &e.file else {
                    return Err(cx.invalid(
                        "exports.file",
                        "",
                        "required with source = \"static\"",
                    ));
                };
                if e.etcd_endpoints.is_some() || e.etcd_prefix.is_some() {
                    return Err(cx.invalid(
                        "exports.source",
                        "static",
                        "etcd_endpoints/etcd_prefix are for source = \"etcd\"",
                    ));
                }
                ExportSource::Static(ctx.base.join(f))
            }
            Some("etcd") => {
                if let Some(f) = &e.file {
                    return Err(cx.invalid("exports.file", f, "only for source = \"static\""));
                }
                ExportSource::Etcd(etcd_target(cx, "exports", e.etcd_endpoints, e.etcd_prefix)?)
            }
            Some(other) => {
                return Err(cx.invalid(
                    "exports.source",
                    other,
                    "expected \"static\", \"etcd\" or \"none\"",
                ))
            }
        },
    };
    let store = match raw.store {
        None => None,
        Some(s) => Some(etcd_target(cx, "store", s.etcd_endpoints, s.etcd_prefix)?),
    };
    let dns = match raw.dns.unwrap_or_default() {
        RawDns {
            enabled: Some(false),
            ..
        } => None,
        d => {
            let listen = match &d.listen {
                Some(text) => text.parse::<SocketAddr>().map_err(|_| {
                    cx.invalid("dns.listen", text, "expected address:port, e.g. 100.96.0.1:53")
                })?,
                None => match ctx.mesh_addr {
                    Some(a) => SocketAddr::new(a, DEFAULT_DNS_PORT),
                    None => {
                        return Err(cx.invalid(
                            "dns.listen",
                            "",
                            "required when [interface] has no address (default: the mesh address, port 53)",
                        ))
                    }
                },
            };
            let zone = d
                .zone
                .clone()
                .unwrap_or_else(|| isthmus_dns::DEFAULT_ZONE.to_string());
            zone.parse::<isthmus_dns::ZoneName>()
                .map_err(|e| cx.invalid("dns.zone", &zone, e))?;
            let ttl = d.ttl.unwrap_or(isthmus_dns::DEFAULT_TTL_SECS);
            if ttl > 86_400 {
                return Err(cx.invalid("dns.ttl", ttl, "must be 0 to 86400 seconds"));
            }
            Some(DnsSettings { listen, zone, ttl })
        }
    };
    Ok(Some(ControlConfig {
        cluster,
        port,
        state_dir,
        health,
        vip_v4,
        vip_v6,
        watch_socket,
        watch_tcp,
        exports,
        store,
        dns,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use crate::keys::PrivateKey;
    use std::path::Path;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gw.key"),
            PrivateKey::generate().to_base64(),
        )
        .unwrap();
        let text = format!(
            "[interface]\nname = \"isthmus7\"\nprivate_key_file = \"gw.key\"\naddress = [\"100.96.0.1/24\"]\n{extra}"
        );
        Config::parse(&dir.path().join("gw.toml"), &text)
    }

    fn error(extra: &str) -> String {
        parse(extra).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = parse("[control]\ncluster = \"edge\"\n").unwrap();
        let c = c.control.unwrap();
        assert_eq!(c.cluster.as_str(), "edge");
        assert_eq!(c.port, super::DEFAULT_CONTROL_PORT);
        assert_eq!(c.state_dir, Path::new("/var/lib/isthmus/isthmus7"));
        assert_eq!(
            c.watch_socket,
            Path::new("/var/lib/isthmus/isthmus7/catalog.sock")
        );
        assert_eq!(c.health.down_after, std::time::Duration::from_secs(3));
        assert_eq!(c.vip_v4.to_string(), "241.0.0.0/16");
        assert_eq!(c.exports, super::ExportSource::None);
        assert_eq!(c.watch_tcp, None);
        let dns = c.dns.unwrap();
        assert_eq!(dns.listen.to_string(), "100.96.0.1:53");
        assert_eq!((dns.zone.as_str(), dns.ttl), ("clusterset.local", 5));
        assert!(parse("").unwrap().control.is_none());
    }

    #[test]
    fn full_section() {
        let c = parse(
            "[control]\ncluster = \"c1\"\nport = 6000\nstate_dir = \"st\"\ndown_after = 1.5\nrecord_ttl = 60\n\
             vip_range = \"241.1.0.0/24\"\n[exports]\nsource = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n\
             etcd_prefix = \"/x/exports/\"\n[store]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\netcd_prefix = \"/isthmus/cs\"\n\
             [dns]\nlisten = \"127.0.0.1:5353\"\nzone = \"mesh.example\"\nttl = 30\n",
        )
        .unwrap()
        .control
        .unwrap();
        assert_eq!(c.health.down_after, std::time::Duration::from_millis(1500));
        assert!(c.state_dir.ends_with("st"));
        assert!(matches!(&c.exports, super::ExportSource::Etcd(t) if t.prefix == "/x/exports"));
        assert_eq!(c.store.unwrap().prefix, "/isthmus/cs");
        assert_eq!(c.dns.unwrap().ttl, 30);
        let off = parse("[control]\ncluster = \"c1\"\n[dns]\nenabled = false\n").unwrap();
        assert!(off.control.unwrap().dns.is_none());
    }

    #[test]
    fn errors_name_file_field_and_value() {
        for (extra, field, value, problem) in [
            ("[control]\n", "control.cluster", "", "required without interface.svid_file"),
            ("[control]\ncluster = \"C1\"\n", "control.cluster", "C1", "lowercase"),
            ("[control]\ncluster = \"c1\"\ndown_after = 0\n", "control.down_after", "0", "more than 0"),
            ("[control]\ncluster = \"c1\"\nvip_range = \"241.0.0.1/16\"\n", "control.vip_range", "241.0.0.1/16", "host bits"),
            ("[control]\ncluster = \"c1\"\nvip_range = \"fd00::/64\"\n", "control.vip_range", "fd00::/64", "IPv4"),
            ("[control]\ncluster = \"c1\"\n[exports]\nsource = \"k8s\"\n", "exports.source", "k8s", "expected"),
            ("[control]\ncluster = \"c1\"\n[exports]\nsource = \"static\"\n", "exports.file", "", "required"),
            ("[control]\ncluster = \"c1\"\n[store]\netcd_endpoints = [\"x\"]\netcd_prefix = \"/a\"\n", "store.etcd_endpoints[0]", "x", "URL"),
            ("[control]\ncluster = \"c1\"\n[store]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\netcd_prefix = \"/\"\n", "store.etcd_prefix", "/", "below the root"),
            ("[control]\ncluster = \"c1\"\n[dns]\nlisten = \"nowhere\"\n", "dns.listen", "nowhere", "address:port"),
            ("[dns]\nttl = 5\n", "dns", "[...]", "needs a [control] section"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1:7474\"\n", "control.watch_allow", "[]", "required with watch_listen"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1:7474\"\nwatch_allow = []\n", "control.watch_allow", "[]", "required with watch_listen"),
            ("[control]\ncluster = \"c1\"\nwatch_allow = [\"10.1.0.0/24\"]\n", "control.watch_allow", "[10.1.0.0/24]", "set control.watch_listen too"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1:7474\"\nwatch_allow = [\"10.1.0.0/24\", \"10.1.0.0/33\"]\n", "control.watch_allow[1]", "10.1.0.0/33", "expected a CIDR prefix"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1:7474\"\nwatch_allow = [\"10.1.0.1/24\"]\n", "control.watch_allow[0]", "10.1.0.1/24", "host bits are set; did you mean 10.1.0.0/24?"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1\"\nwatch_allow = [\"10.1.0.0/24\"]\n", "control.watch_listen", "10.1.0.1", "expected address:port"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"node-a:7474\"\nwatch_allow = [\"10.1.0.0/24\"]\n", "control.watch_listen", "node-a:7474", "expected address:port"),
            ("[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1:0\"\nwatch_allow = [\"10.1.0.0/24\"]\n", "control.watch_listen", "10.1.0.1:0", "port must not be 0"),
        ] {
            let e = error(extra);
            assert!(e.contains("gw.toml: "), "{e}");
            assert!(e.contains(&format!("{field} = {value:?}")), "{extra:?}: {e}");
            assert!(e.contains(problem), "{extra:?}: {e}");
        }
    }

    #[test]
    fn watch_listener_with_its_allowed_sources() {
        let c = parse(
            "[control]\ncluster = \"c1\"\nwatch_listen = \"10.1.0.1:7474\"\n\
             watch_allow = [\"10.1.0.0/24\", \"10.9.0.7\", \"fd00:1::/64\"]\n",
        )
        .unwrap()
        .control
        .unwrap();
        let w = c.watch_tcp.unwrap();
        assert_eq!(w.listen.to_string(), "10.1.0.1:7474");
        let allow: Vec<String> = w.allow.iter().map(|n| n.to_string()).collect();
        assert_eq!(allow, ["10.1.0.0/24", "10.9.0.7/32", "fd00:1::/64"]);
        for (addr, allowed) in [
            ("10.1.0.2", true),
            ("10.1.1.2", false),
            ("10.9.0.7", true),
            ("10.9.0.8", false),
            // An IPv4 client of a listener on [::].
            ("::ffff:10.1.0.2", true),
            ("::ffff:10.1.1.2", false),
            ("fd00:1::5", true),
            ("fd00:2::5", false),
        ] {
            assert_eq!(w.allows(addr.parse().unwrap()), allowed, "{addr}");
        }
        let v6 = parse(
            "[control]\ncluster = \"c1\"\nwatch_listen = \"[fd00::1]:7474\"\nwatch_allow = [\"fd00::/64\"]\n",
        )
        .unwrap();
        assert_eq!(
            v6.control.unwrap().watch_tcp.unwrap().listen.to_string(),
            "[fd00::1]:7474"
        );
    }

    #[test]
    fn cluster_comes_from_a_gateway_id() {
        assert_eq!(
            super::cluster_of("spiffe://td/cluster/c2/gateway/gw"),
            Some("c2")
        );
        assert_eq!(super::cluster_of("spiffe://td/edge/e1"), None);
        assert_eq!(super::cluster_of("spiffe://td/cluster/c2/gateway"), None);
    }
}
