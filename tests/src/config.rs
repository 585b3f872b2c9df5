//! The gateway's TOML configuration as the lab writes it, and WireGuard key pairs.
//!
//! The structs mirror the file shape (see gateway/README.md for what each field means). Tests
//! tweak them before writing; the `extra` tables carry fields the lab does not know by name.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::plan::{self, LabId};

/// Tunnel MTU: the lab's 1500-byte underlay minus WireGuard's 80 bytes of IPv6 worst case.
pub const TUNNEL_MTU: u32 = 1420;
pub const PERSISTENT_KEEPALIVE: u16 = 25;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayConfig {
    pub interface: InterfaceConfig,
    pub admin: AdminConfig,
    #[serde(rename = "peer", default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// Further top-level keys and tables, rendered as given.
    #[serde(flatten)]
    pub extra: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    /// TUN device name; also names the UAPI socket `/var/run/wireguard/<name>.sock`.
    pub name: String,
    /// File holding the base64 private key, mode 0600.
    pub private_key_file: PathBuf,
    pub listen_port: u16,
    /// Mesh addresses on the TUN, with prefix length.
    pub address: Vec<String>,
    pub mtu: u32,
    #[serde(flatten)]
    pub extra: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// Prometheus listener, e.g. `127.0.0.1:9750`; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    #[serde(flatten)]
    pub extra: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerConfig {
    pub name: String,
    pub public_key: String,
    /// `host:port`; absent for a peer that only ever connects to us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
    #[serde(flatten)]
    pub extra: toml::Table,
}

impl GatewayConfig {
    /// The default configuration of cluster `i`'s gateway in lab `id`, which has one cluster
    /// per entry of `public_keys` (entry `j - 1` is cluster `j`'s key): a full mesh, each peer
    /// owning its cluster's /16 and its mesh address.
    pub fn for_cluster(id: &LabId, i: usize, dir: &Path, public_keys: &[String]) -> GatewayConfig {
        let peers = public_keys
            .iter()
            .enumerate()
            .map(|(idx, key)| (idx + 1, key))
            .filter(|&(j, _)| j != i)
            .map(|(j, key)| PeerConfig {
                name: format!("c{j}"),
                public_key: key.clone(),
                endpoint: Some(format!("{}:{}", plan::wan_addr(j), plan::LISTEN_PORT)),
                allowed_ips: vec![plan::cluster_cidr(j), format!("{}/32", plan::mesh_addr(j))],
                persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
                extra: toml::Table::new(),
            })
            .collect();
        GatewayConfig {
            interface: InterfaceConfig {
                name: id.tun_name(i),
                private_key_file: key_path(dir, i),
                listen_port: plan::LISTEN_PORT,
                address: vec![plan::with_prefix(plan::mesh_addr(i))],
                mtu: TUNNEL_MTU,
                extra: toml::Table::new(),
            },
            admin: AdminConfig {
                socket: dir.join(format!("c{i}.sock")),
                metrics_listen: None,
                extra: toml::Table::new(),
            },
            peers,
            extra: toml::Table::new(),
        }
    }

    /// The peer named `name`, for tweaking.
    pub fn peer_mut(&mut self, name: &str) -> Option<&mut PeerConfig> {
        self.peers.iter_mut().find(|p| p.name == name)
    }

    /// Drops the peer named `name`; returns whether there was one.
    pub fn remove_peer(&mut self, name: &str) -> bool {
        let before = self.peers.len();
        self.peers.retain(|p| p.name != name);
        self.peers.len() != before
    }

    pub fn render(&self) -> Result<String> {
        toml::to_string(self).context("failed to render gateway config as TOML")
    }

    pub fn parse(text: &str) -> Result<GatewayConfig> {
        toml::from_str(text).context("failed to parse gateway config")
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.render()?)
            .with_context(|| format!("failed to write {}", path.display()))
    }
}

/// Where the lab keeps cluster `i`'s private key.
pub fn key_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("c{i}.key"))
}

/// A WireGuard static key pair, both halves base64 (standard alphabet, padded) as `wg` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    private: String,
    public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key from the OS RNG, clamped like `wg genkey` (RFC 7748 §5).
    pub fn generate() -> KeyPair {
        KeyPair::from_secret_bytes(StaticSecret::random_from_rng(OsRng).to_bytes())
    }

    pub fn from_secret_bytes(mut bytes: [u8; 32]) -> KeyPair {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair {
            private: BASE64.encode(secret.to_bytes()),
            public: BASE64.encode(public.as_bytes()),
        }
    }

    pub fn private_key(&self) -> &str {
        &self.private
    }

    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Writes the private key (plus newline, as `wg genkey` does) to `path` with mode 0600.
    pub fn write_private_key(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        // `mode` applies only when the file is created; an older file keeps its bits otherwise.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to chmod {}", path.display()))?;
        writeln!(file, "{}", self.private)
            .with_context(|| format!("failed to write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn key_pair_matches_rfc7748_vector() {
        // RFC 7748 §6.1, Alice.
        let pair = KeyPair::from_secret_bytes(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(pair.public_key(), BASE64.encode(public));
        let private = BASE64.decode(pair.private_key()).unwrap();
        assert_eq!(private.len(), 32);
        assert_eq!(private[0] & 7, 0, "not clamped");
        assert_eq!(private[31] & 0xc0, 0x40, "not clamped");
    }

    #[test]
    fn generated_keys_differ_and_are_44_chars() {
        let (a, b) = (KeyPair::generate(), KeyPair::generate());
        assert_ne!(a, b);
        assert_eq!(a.public_key().len(), 44);
        assert_eq!(a.private_key().len(), 44);
        assert!(!format!("{a:?}").contains(a.private_key()));
    }

    #[test]
    fn private_key_file_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let pair = KeyPair::generate();
        pair.write_private_key(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", pair.private_key())
        );
    }

    fn sample() -> GatewayConfig {
        let id = LabId::parse("i", "i0a1b2").unwrap();
        let keys = ["KEY1".to_owned(), "KEY2".to_owned(), "KEY3".to_owned()];
        GatewayConfig::for_cluster(&id, 2, Path::new("/tmp/lab"), &keys)
    }

    #[test]
    fn default_config_renders_the_documented_shape() {
        let expected = r#"[interface]
name = "i0a1b2-2"
private_key_file = "/tmp/lab/c2.key"
listen_port = 51820
address = ["100.96.0.2/24"]
mtu = 1420

[admin]
socket = "/tmp/lab/c2.sock"

[[peer]]
name = "c1"
public_key = "KEY1"
endpoint = "10.255.0.11:51820"
allowed_ips = ["10.1.0.0/16", "100.96.0.1/32"]
persistent_keepalive = 25

[[peer]]
name = "c3"
public_key = "KEY3"
endpoint = "10.255.0.13:51820"
allowed_ips = ["10.3.0.0/16", "100.96.0.3/32"]
persistent_keepalive = 25
"#;
        assert_eq!(sample().render().unwrap(), expected);
    }

    #[test]
    fn tweaks_render_and_round_trip() {
        let mut cfg = sample();
        cfg.admin.metrics_listen = Some("127.0.0.1:9750".into());
        assert!(cfg.remove_peer("c1"));
        assert!(!cfg.remove_peer("c1"));
        let peer = cfg.peer_mut("c3").unwrap();
        peer.endpoint = None;
        peer.allowed_ips = vec!["10.3.1.0/24".into()];
        cfg.interface
            .extra
            .insert("fwmark".into(), toml::Value::Integer(51820));
        let mut dns = toml::Table::new();
        dns.insert("listen".into(), toml::Value::String("127.0.0.1:53".into()));
        cfg.extra.insert("dns".into(), toml::Value::Table(dns));

        let text = cfg.render().unwrap();
        assert!(text.contains(
            "[admin]\nsocket = \"/tmp/lab/c2.sock\"\nmetrics_listen = \"127.0.0.1:9750\"\n"
        ));
        assert!(text.contains("fwmark = 51820"));
        assert!(text.contains("[dns]\nlisten = \"127.0.0.1:53\""));
        assert!(!text.contains("endpoint"));
        assert!(!text.contains("c1"));
        assert_eq!(GatewayConfig::parse(&text).unwrap(), cfg);
    }

    #[test]
    fn a_lone_gateway_has_no_peer_tables() {
        let id = LabId::parse("i", "i0a1b2").unwrap();
        let cfg = GatewayConfig::for_cluster(&id, 1, Path::new("/l"), &["K".to_owned()]);
        let text = cfg.render().unwrap();
        assert!(!text.contains("peer"), "{text}");
        assert_eq!(GatewayConfig::parse(&text).unwrap(), cfg);
    }
}
