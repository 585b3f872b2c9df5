//! The gateway's TOML configuration: parsed once into a validated [`Config`].
//!
//! The `[interface]` and `[[peer]]` sections use wg-quick's vocabulary in snake_case. Every
//! error names the file, the field and the offending value, and nothing is applied until the
//! whole file has validated (see `gateway/README.md` for the field reference).

mod control;
mod identity;
mod members;

pub use control::{
    cluster_of, ControlConfig, DnsSettings, EtcdTarget, ExportSource, WatchTcp,
    DEFAULT_CONTROL_PORT, DEFAULT_VIP_RANGE,
};
pub use identity::{Expected, IdentityConfig, IdentityPeerConfig, DEFAULT_JOIN_PORT};
pub use members::{overlaps, MembersConfig, TableConfig, DEFAULT_MEMBER_KEEPALIVE};

use crate::keys::{PrivateKey, PublicKey};
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_MTU: u16 = 1420;
pub const DEFAULT_NAME: &str = "isthmus0";
/// Where `wg(8)` looks for userspace implementations (the cross-platform UAPI).
pub const UAPI_DIR: &str = "/var/run/wireguard";
pub const ADMIN_DIR: &str = "/run/isthmus";

/// A configuration problem, naming where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: {field} = {value:?}: {problem}")]
    Invalid {
        file: PathBuf,
        field: String,
        value: String,
        problem: String,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub interface: InterfaceConfig,
    pub admin: AdminConfig,
    pub dataplane: DataplaneConfig,
    /// Peers configured by WireGuard public key.
    pub peers: Vec<PeerConfig>,
    /// The gateway's SVID and trust bundle, when it takes part in identity-bound joins.
    pub identity: Option<IdentityConfig>,
    /// Peers configured by SPIFFE identity (or cluster); their keys come from Noise joins.
    pub identity_peers: Vec<IdentityPeerConfig>,
    /// Catalog sync, DNS and the store: present when the file has a `[control]` section.
    pub control: Option<ControlConfig>,
    /// Mesh membership by signed records: present when the file has a `[members]` section.
    pub members: Option<MembersConfig>,
}

#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    pub name: String,
    pub private_key: PrivateKey,
    pub private_key_file: PathBuf,
    pub listen_port: u16,
    pub addresses: Vec<IpNet>,
    pub mtu: u16,
    /// Install kernel routes for the peers' allowed prefixes through the TUN device.
    pub routes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub uapi: bool,
}

impl AdminConfig {
    pub fn uapi_socket(&self, name: &str) -> PathBuf {
        Path::new(UAPI_DIR).join(format!("{name}.sock"))
    }
}

/// Switches for the kernel offloads, each on by default; some kernels have bugs in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub tun_offload: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: Option<String>,
    pub public_key: PublicKey,
    pub preshared_key: Option<[u8; 32]>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: RawInterface,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
    control: Option<control::RawControl>,
    exports: Option<control::RawExports>,
    store: Option<control::RawStore>,
    dns: Option<control::RawDns>,
    members: Option<members::RawMembers>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Option<String>,
    private_key_file: String,
    listen_port: Option<u16>,
    address: Option<OneOrMany>,
    mtu: Option<i64>,
    routes: Option<bool>,
    svid_file: Option<String>,
    svid_key_file: Option<String>,
    trust_bundle_file: Option<String>,
    join_port: Option<u16>,
    rotation_grace: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<String>,
    metrics_listen: Option<String>,
    uapi: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    tun_offload: Option<bool>,
    udp_gso: Option<bool>,
    udp_gro: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    public_key: Option<String>,
    spiffe_id: Option<String>,
    cluster: Option<String>,
    preshared_key_file: Option<String>,
    endpoint: Option<String>,
    join_endpoint: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<String>,
    persistent_keepalive: Option<u16>,
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn invalid(
        &self,
        field: impl fmt::Display,
        value: impl fmt::Display,
        problem: impl fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            field: field.to_string(),
            value: value.to_string(),
            problem: problem.to_string(),
        }
    }
}

impl Config {
    /// Reads and validates a config file; key files it names are read too.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if it were the contents of `path` (relative key paths resolve
    /// against `path`'s folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_at(path, text, std::time::SystemTime::now())
    }

    /// [`parse`](Self::parse) with the time certificates are checked at passed in.
    pub fn parse_at(
        path: &Path,
        text: &str,
        now: std::time::SystemTime,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let cx = Ctx { file: path };
        let base = path.parent().unwrap_or(Path::new("."));

        let iface = raw.interface;
        let name = iface.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        validate_ifname(&name).map_err(|p| cx.invalid("interface.name", &name, p))?;

        let key_path = base.join(&iface.private_key_file);
        let private_key = read_key_file(&key_path)
            .and_then(|t| {
                PrivateKey::try_from_base64(&t)
                    .map_err(|e| format!("file {}: {e}", key_path.display()))
            })
            .map_err(|p| cx.invalid("interface.private_key_file", &iface.private_key_file, p))?;

        let mut addresses = Vec::new();
        for (i, a) in iface
            .address
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let net = parse_address(a)
                .map_err(|p| cx.invalid(format!("interface.address[{i}]"), a, p))?;
            addresses.push(net);
        }

        let mtu_raw = iface.mtu.unwrap_or(i64::from(DEFAULT_MTU));
        let min_mtu = if addresses.iter().any(|a| a.addr().is_ipv6()) {
            1280
        } else {
            576
        };
        if !(min_mtu..=9000).contains(&mtu_raw) {
            return Err(cx.invalid(
                "interface.mtu",
                mtu_raw,
                format!("must be between {min_mtu} and 9000"),
            ));
        }
        let mtu = mtu_raw as u16;

        let admin = AdminConfig {
            socket: raw
                .admin
                .socket
                .map(|s| base.join(s))
                .unwrap_or_else(|| Path::new(ADMIN_DIR).join(format!("{name}.sock"))),
            metrics_listen: match raw.admin.metrics_listen {
                None => None,
                Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
                    cx.invalid(
                        "admin.metrics_listen",
                        &s,
                        "expected address:port, e.g. 127.0.0.1:9750",
                    )
                })?),
            },
            uapi: raw.admin.uapi.unwrap_or(true),
        };

        let dataplane = DataplaneConfig {
            tun_offload: raw.dataplane.tun_offload.unwrap_or(true),
            udp_gso: raw.dataplane.udp_gso.unwrap_or(true),
            udp_gro: raw.dataplane.udp_gro.unwrap_or(true),
        };

        let own_public = private_key.public_key();
        let identity = identity::load_identity(
            &cx,
            base,
            identity::RawIdentity {
                svid_file: iface.svid_file.as_deref(),
                svid_key_file: iface.svid_key_file.as_deref(),
                trust_bundle_file: iface.trust_bundle_file.as_deref(),
                join_port: iface.join_port,
                rotation_grace: iface.rotation_grace,
            },
            &own_public,
            now,
        )?;
        let mut identity_peers: Vec<IdentityPeerConfig> = Vec::new();
        let mut peers: Vec<PeerConfig> = Vec::new();
        let mut seen_keys: HashMap<PublicKey, usize> = HashMap::new();
        let mut seen_prefixes: HashMap<IpNet, usize> = HashMap::new();
        for (i, p) in raw.peers.into_iter().enumerate() {
            let field = |f: &str| format!("peer[{i}].{f}");
            let named = [
                p.public_key.is_some(),
                p.spiffe_id.is_some(),
                p.cluster.is_some(),
            ];
            if named.iter().filter(|n| **n).count() != 1 {
                return Err(cx.invalid(
                    format!("peer[{i}]"),
                    p.name.as_deref().unwrap_or(""),
                    "give exactly one of public_key, spiffe_id, cluster",
                ));
            }
            let expected = match &p.public_key {
                Some(_) => None,
                None => Some(identity::expected(
                    &cx,
                    i,
                    p.spiffe_id.as_deref(),
                    p.cluster.as_deref(),
                    identity.as_ref(),
                )?),
            };
            if expected.is_none() && p.join_endpoint.is_some() {
                return Err(cx.invalid(
                    field("join_endpoint"),
                    p.join_endpoint.as_deref().unwrap_or(""),
                    "only for peers by spiffe_id or cluster",
                ));
            }
            let public_key = match &p.public_key {
                Some(k) => {
                    let key = PublicKey::try_from_base64(k)
                        .map_err(|e| cx.invalid(field("public_key"), k, e))?;
                    if key == own_public {
                        return Err(cx.invalid(
                            field("public_key"),
                            k,
                            "is this interface's own public key",
                        ));
                    }
                    if let Some(prev) = seen_keys.insert(key, i) {
                        return Err(cx.invalid(
                            field("public_key"),
                            k,
                            format!("same key as peer[{prev}]"),
                        ));
                    }
                    Some(key)
                }
                None => None,
            };
            let preshared_key = match &p.preshared_key_file {
                None => None,
                Some(f) => {
                    let path = base.join(f);
                    let text = read_key_file(&path)
                        .map_err(|e| cx.invalid(field("preshared_key_file"), f, e))?;
                    let k = PublicKey::try_from_base64(&text).map_err(|e| {
                        cx.invalid(
                            field("preshared_key_file"),
                            f,
                            format!("file {}: {e}", path.display()),
                        )
                    })?;
                    Some(*k.as_bytes())
                }
            };
            let endpoint = match &p.endpoint {
                None => None,
                Some(e) => Some(
                    resolve_endpoint(e).map_err(|prob| cx.invalid(field("endpoint"), e, prob))?,
                ),
            };
            let mut allowed_ips = Vec::new();
            for (j, a) in p.allowed_ips.iter().enumerate() {
                let net = parse_prefix(a)
                    .map_err(|prob| cx.invalid(field(&format!("allowed_ips[{j}]")), a, prob))?;
                if let Some(prev) = seen_prefixes.insert(net, i) {
                    let problem = if prev == i {
                        "listed twice".to_string()
                    } else {
                        format!("already allowed for peer[{prev}]")
                    };
                    return Err(cx.invalid(field(&format!("allowed_ips[{j}]")), a, problem));
                }
                allowed_ips.push(net);
            }
            let persistent_keepalive = p.persistent_keepalive.filter(|&k| k > 0);
            match (public_key, expected) {
                (Some(public_key), _) => peers.push(PeerConfig {
                    name: p.name,
                    public_key,
                    preshared_key,
                    endpoint,
                    allowed_ips,
                    persistent_keepalive,
                }),
                (None, Some(expected)) => {
                    let join_endpoint = match &p.join_endpoint {
                        Some(e) => Some(
                            resolve_endpoint(e)
                                .map_err(|prob| cx.invalid(field("join_endpoint"), e, prob))?,
                        ),
                        None => endpoint.map(|ep| SocketAddr::new(ep.ip(), DEFAULT_JOIN_PORT)),
                    };
                    identity_peers.push(IdentityPeerConfig {
                        name: p.name,
                        expected,
                        endpoint,
                        join_endpoint,
                        allowed_ips,
                        persistent_keepalive,
                        preshared_key,
                    });
                }
                (None, None) => unreachable!("exactly one of public_key, spiffe_id, cluster"),
            }
        }

        let control = control::load_control(
            &cx,
            control::RawSections {
                control: raw.control,
                exports: raw.exports,
                store: raw.store,
                dns: raw.dns,
            },
            control::Context {
                base,
                interface: &name,
                mesh_addr: addresses.first().map(|a| a.addr()),
                spiffe_id: identity.as_ref().map(|i| i.id.as_str()),
            },
        )?;
        let members = members::load_members(
            &cx,
            raw.members,
            members::Context {
                identity: identity.as_ref(),
                control: control.is_some(),
                mesh_addr: addresses.first().map(|a| a.addr()),
                peer_prefixes: seen_prefixes.keys().copied().collect(),
            },
        )?;
        Ok(Config {
            source: path.to_path_buf(),
            interface: InterfaceConfig {
                name,
                private_key,
                private_key_file: key_path,
                listen_port: iface.listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
                addresses,
                mtu,
                routes: iface.routes.unwrap_or(true),
            },
            admin,
            dataplane,
            peers,
            identity,
            identity_peers,
            control,
            members,
        })
    }
}

fn read_key_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes (IFNAMSIZ)".into());
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("must not be . or .. nor contain '/', ':' or white space".into());
    }
    Ok(())
}

/// An interface address: `ip/len`, or a bare ip meaning a host prefix.
fn parse_address(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "expected an address with prefix length, e.g. 100.96.0.1/24".to_string())
}

/// A routed prefix: `network/len` with no host bits set.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let net =
        parse_address(text).map_err(|_| "expected a CIDR prefix, e.g. 10.2.0.0/16".to_string())?;
    if net.trunc() != net {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

pub(crate) fn resolve_endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port must not be 0".into());
        }
        return Ok(sa);
    }
    if !text.contains(':') {
        return Err("expected host:port, e.g. 192.0.2.1:51820".into());
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| "resolves to no address".to_string())
}

#[cfg(test)]
mod tests;
