//! The identity parts of the configuration: the gateway's own SVID and trust bundle under
//! `[interface]`, and peers named by SPIFFE identity (or by cluster) instead of by key.
//!
//! A peer by identity has no WireGuard key in the file: the key is learned in a Noise join
//! and installed only after the peer's SVID chain verifies against the bundle and binds that
//! key (see `crate::identity`).

use super::{ConfigError, Ctx};
use crate::keys::PublicKey;
use ipnet::IpNet;
use isthmus_pki::{Bundle, SpiffeId};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use crate::identity::DEFAULT_JOIN_PORT;

/// Default `rotation_grace`, seconds.
pub const DEFAULT_ROTATION_GRACE_SECS: u64 = 60;
/// Longest `rotation_grace`: a day.
const MAX_ROTATION_GRACE_SECS: u64 = 86_400;

/// The gateway's own identity, read and verified at load.
#[derive(Clone)]
pub struct IdentityConfig {
    pub svid_file: PathBuf,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    pub svid_key_file: Option<PathBuf>,
    pub bundle_file: PathBuf,
    pub bundle: Bundle,
    pub join_port: u16,
    /// How long a peer's old key keeps working after the peer rotated to a new one.
    pub rotation_grace: Duration,
    /// This gateway's SPIFFE ID, from its SVID.
    pub id: SpiffeId,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConfig")
            .field("id", &self.id.as_str())
            .field("svid_file", &self.svid_file)
            .field("bundle_file", &self.bundle_file)
            .field("join_port", &self.join_port)
            .finish_non_exhaustive()
    }
}

/// Whom a peer by identity must prove to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this SPIFFE ID.
    Id(SpiffeId),
    /// Any gateway of this cluster: `spiffe://<td>/cluster/<c>/gateway/*`.
    Cluster(String),
    /// Any gateway of the trust domain: whom a gateway with `[members]` accepts joins from
    /// (any of them may become a member anyway, by a record signed under the same roots).
    AnyGateway,
}

impl Expected {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Expected::Id(want) => want == id,
            Expected::Cluster(c) => {
                let segs: Vec<&str> = id.segments().collect();
                segs.len() == 4 && segs[0] == "cluster" && segs[1] == c && segs[2] == "gateway"
            }
            Expected::AnyGateway => {
                let segs: Vec<&str> = id.segments().collect();
                segs.len() == 4 && segs[0] == "cluster" && segs[2] == "gateway"
            }
        }
    }

    /// What a join request to such a peer names: the ID, or a pattern with `*` segments
    /// (see `crate::identity::id_matches`).
    pub fn request(&self, trust_domain: &str) -> String {
        match self {
            Expected::Id(id) => id.as_str().to_string(),
            Expected::Cluster(c) => format!("spiffe://{trust_domain}/cluster/{c}/gateway/*"),
            Expected::AnyGateway => format!("spiffe://{trust_domain}/cluster/*/gateway/*"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Expected::Id(id) => id.as_str().to_string(),
            Expected::Cluster(c) => format!("any gateway of cluster {c}"),
            Expected::AnyGateway => "any gateway of the trust domain".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPeerConfig {
    pub name: Option<String>,
    pub expected: Expected,
    /// WireGuard endpoint; without it this gateway waits for the peer to join it.
    pub endpoint: Option<SocketAddr>,
    /// Where the peer's join listener is: `endpoint`'s address and the default join port
    /// unless given.
    pub join_endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<[u8; 32]>,
}

impl IdentityPeerConfig {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.expected.describe())
    }
}

pub(super) struct RawIdentity<'a> {
    pub svid_file: Option<&'a str>,
    pub svid_key_file: Option<&'a str>,
    pub trust_bundle_file: Option<&'a str>,
    pub join_port: Option<u16>,
    pub rotation_grace: Option<u64>,
}

/// Reads and verifies `[interface]`'s SVID, key binding and bundle, if any is named.
pub(super) fn load_identity(
    cx: &Ctx<'_>,
    base: &Path,
    raw: RawIdentity<'_>,
    own_key: &PublicKey,
    now: SystemTime,
) -> Result<Option<IdentityConfig>, ConfigError> {
    let (svid, bundle_name) = match (raw.svid_file, raw.trust_bundle_file) {
        (None, None) => {
            if let Some(k) = raw.svid_key_file {
                return Err(cx.invalid(
                    "interface.svid_key_file",
                    k,
                    "needs interface.svid_file and interface.trust_bundle_file",
                ));
            }
            if let Some(g) = raw.rotation_grace {
                return Err(cx.invalid(
                    "interface.rotation_grace",
                    g,
                    "needs interface.svid_file and interface.trust_bundle_file",
                ));
            }
            return Ok(None);
        }
        (Some(s), Some(b)) => (s, b),
        (Some(s), None) => {
            return Err(cx.invalid(
                "interface.svid_file",
                s,
                "needs interface.trust_bundle_file too",
            ))
        }
        (None, Some(b)) => {
            return Err(cx.invalid(
                "interface.trust_bundle_file",
                b,
                "needs interface.svid_file too",
            ))
        }
    };
    let svid_file = base.join(svid);
    let chain = isthmus_pki::pem_io::read_certs(&svid_file)
        .map_err(|e| cx.invalid("interface.svid_file", svid, e))?;
    let bundle_file = base.join(bundle_name);
    let bundle = isthmus_pki::pem_io::read_to_string(&bundle_file)
        .and_then(|t| Bundle::from_pem(&t))
        .map_err(|e| cx.invalid("interface.trust_bundle_file", bundle_name, e))?;
    let svid_key_file = match raw.svid_key_file {
        None => None,
        Some(k) => {
            let p = base.join(k);
            std::fs::metadata(&p).map_err(|e| {
                cx.invalid(
                    "interface.svid_key_file",
                    k,
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            Some(p)
        }
    };
    // Our own SVID must verify and bind the interface's WireGuard key, or no peer would ever
    // accept us: refuse to start rather than fail every join.
    let verified = isthmus_pki::verify(&chain, &bundle, now, None, Some(own_key.as_bytes()))
        .map_err(|e| {
            cx.invalid(
                "interface.svid_file",
                svid,
                format!(
                    "does not verify against {bundle_name} for this interface's key: {e} [{}]",
                    e.rule()
                ),
            )
        })?;
    let rotation_grace = match raw.rotation_grace {
        None => Duration::from_secs(DEFAULT_ROTATION_GRACE_SECS),
        Some(s) if s <= MAX_ROTATION_GRACE_SECS => Duration::from_secs(s),
        Some(s) => {
            return Err(cx.invalid(
                "interface.rotation_grace",
                s,
                format!("must be 0 to {MAX_ROTATION_GRACE_SECS} seconds"),
            ))
        }
    };
    Ok(Some(IdentityConfig {
        svid_file,
        chain,
        svid_key_file,
        bundle_file,
        bundle,
        join_port: raw.join_port.unwrap_or(DEFAULT_JOIN_PORT),
        rotation_grace,
        id: verified.id().clone(),
        not_after: verified.not_after(),
    }))
}

/// Parses a peer's `spiffe_id` or `cluster` into what it must prove.
pub(super) fn expected(
    cx: &Ctx<'_>,
    i: usize,
    spiffe_id: Option<&str>,
    cluster: Option<&str>,
    identity: Option<&IdentityConfig>,
) -> Result<Expected, ConfigError> {
    let (field, value) = match (spiffe_id, cluster) {
        (Some(s), None) => ("spiffe_id", s),
        (None, Some(c)) => ("cluster", c),
        _ => unreachable!("the caller checked exactly one is set"),
    };
    let field = format!("peer[{i}].{field}");
    let Some(identity) = identity else {
        return Err(cx.invalid(
            field,
            value,
            "a peer by identity needs interface.svid_file and interface.trust_bundle_file",
        ));
    };
    let td = identity.bundle.trust_domain();
    match spiffe_id {
        Some(s) => {
            let id = SpiffeId::new(s).map_err(|e| cx.invalid(&field, s, e))?;
            if !id.is_member_of(td) {
                return Err(cx.invalid(
                    field,
                    s,
                    format!("is not in trust domain {}", td.as_str()),
                ));
            }
            Ok(Expected::Id(id))
        }
        None => {
            // The same rules as any path segment of a SPIFFE ID.
            SpiffeId::gateway(td, value, "x").map_err(|e| cx.invalid(&field, value, e))?;
            Ok(Expected::Cluster(value.to_string()))
        }
    }
}
