//! `[members]`: mesh membership by signed records (see the mesh module). With it, a gateway
//! needs only one seed peer: it signs a record of itself (identity, WireGuard key, endpoints,
//! mesh address, prefixes), gossips it over the catalog sync sessions, installs every member
//! it learns as a WireGuard peer, and accepts joins from any gateway of its trust domain.

use super::control::{seconds, Seconds};
use super::{parse_prefix, resolve_endpoint, ConfigError, Ctx, IdentityConfig};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Keepalive for peers learned from records, seconds: keeps NAT bindings and the health
/// heartbeat path warm.
pub const DEFAULT_MEMBER_KEEPALIVE: u16 = 25;
/// A record's lifetime; its owner re-signs it every third of this.
pub const DEFAULT_MEMBER_TTL_SECS: u64 = 600;
const MAX_MEMBER_TTL_SECS: f64 = 86_400.0;
const MIN_MEMBER_TTL_SECS: f64 = 3.0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersConfig {
    /// The cluster CIDRs this gateway serves, advertised in its record.
    pub prefixes: Vec<IpNet>,
    /// The WireGuard endpoint members send to; `None`: reachable only by its own handshakes.
    pub endpoint: Option<SocketAddr>,
    /// Where this gateway's join listener is reached (advertised).
    pub join_endpoint: Option<SocketAddr>,
    /// `persistent_keepalive` of peers learned from records (0: off).
    pub persistent_keepalive: Option<u16>,
    pub table: TableConfig,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMembers {
    #[serde(default)]
    prefixes: Vec<String>,
    endpoint: Option<String>,
    join_endpoint: Option<String>,
    persistent_keepalive: Option<u16>,
    ttl: Option<Seconds>,
}

pub(super) struct Context<'a> {
    pub identity: Option<&'a IdentityConfig>,
    pub control: bool,
    pub mesh_addr: Option<IpAddr>,
    /// Every prefix configured for a peer: ours must not overlap them.
    pub peer_prefixes: Vec<IpNet>,
}

pub(super) fn load_members(
    cx: &Ctx<'_>,
    raw: Option<RawMembers>,
    ctx: Context<'_>,
) -> Result<Option<MembersConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(identity) = ctx.identity else {
        return Err(cx.invalid(
            "members",
            "[...]",
            "needs interface.svid_file and interface.trust_bundle_file (records are signed with the SVID)",
        ));
    };
    if identity.svid_key_file.is_none() {
        return Err(cx.invalid(
            "members",
            "[...]",
            "needs interface.svid_key_file: records are signed with the SVID's key",
        ));
    }
    if !ctx.control {
        return Err(cx.invalid(
            "members",
            "[...]",
            "needs a [control] section: records travel over the catalog sync sessions",
        ));
    }
    let Some(mesh_addr) = ctx.mesh_addr else {
        return Err(cx.invalid(
            "members",
            "[...]",
            "needs a mesh address (interface.address)",
        ));
    };
    let mut prefixes: Vec<IpNet> = Vec::new();
    for (i, p) in raw.prefixes.iter().enumerate() {
        let field = format!("members.prefixes[{i}]");
        let net = parse_prefix(p).map_err(|e| cx.invalid(&field, p, e))?;
        if let Some(other) = prefixes.iter().find(|o| overlaps(o, &net)) {
            return Err(cx.invalid(&field, p, format!("overlaps {other}")));
        }
        if let Some(other) = ctx.peer_prefixes.iter().find(|o| overlaps(o, &net)) {
            return Err(cx.invalid(
                &field,
                p,
                format!("overlaps {other}, allowed for a configured peer"),
            ));
        }
        if net.contains(&mesh_addr) {
            return Err(cx.invalid(
                &field,
                p,
                format!("contains this gateway's mesh address {mesh_addr}"),
            ));
        }
        prefixes.push(net);
    }
    let endpoint = match &raw.endpoint {
        None => None,
        Some(e) => Some(resolve_endpoint(e).map_err(|p| cx.invalid("members.endpoint", e, p))?),
    };
    let join_endpoint = match &raw.join_endpoint {
        Some(e) => {
            Some(resolve_endpoint(e).map_err(|p| cx.invalid("members.join_endpoint", e, p))?)
        }
        None => endpoint.map(|ep| SocketAddr::new(ep.ip(), identity.join_port)),
    };
    let ttl = seconds(
        cx,
        "members.ttl",
        raw.ttl,
        Duration::from_secs(DEFAULT_MEMBER_TTL_SECS),
        MAX_MEMBER_TTL_SECS,
    )?;
    if ttl.as_secs_f64() < MIN_MEMBER_TTL_SECS {
        return Err(cx.invalid(
            "members.ttl",
            ttl.as_secs_f64(),
            format!("must be at least {MIN_MEMBER_TTL_SECS} seconds"),
        ));
    }
    let defaults = TableConfig::default();
    Ok(Some(MembersConfig {
        prefixes,
        endpoint,
        join_endpoint,
        persistent_keepalive: Some(raw.persistent_keepalive.unwrap_or(DEFAULT_MEMBER_KEEPALIVE))
            .filter(|k| *k > 0),
        table: TableConfig {
            member_ttl: ttl,
            // Raised by the table to at least member_ttl + skew.
            tombstone_ttl: defaults.tombstone_ttl.min(ttl * 3),
            max_clock_skew: defaults.max_clock_skew,
        },
    }))
}

/// Whether two prefixes share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// How long records live. Defaults: members 10 minutes (refreshed every 200 s), tombstones
/// 30 minutes, clock skew 2 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// A record older than this (by its generation) is dropped: its owner died without
    /// leaving. Owners re-sign every third of it (`MemberTable::needs_refresh`).
    pub member_ttl: Duration,
    /// How long a leaving record, or an operator's removal, is kept to refuse older records.
    /// At least `member_ttl + max_clock_skew` (raised to that by `MemberTable::new`): by
    /// then every older record is too old to be accepted anyway.
    pub tombstone_ttl: Duration,
    /// Records signed further than this in the future are refused until they are not.
    pub max_clock_skew: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            member_ttl: Duration::from_secs(600),
            tombstone_ttl: Duration::from_secs(1800),
            max_clock_skew: Duration::from_secs(120),
        }
    }
}

impl TableConfig {
    /// How often the owner re-signs its record: a third of `member_ttl`, so two refreshes may
    /// be lost before peers drop it.
    pub fn refresh_interval(&self) -> Duration {
        self.member_ttl / 3
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use crate::keys::PrivateKey;
    use isthmus_pki::{Authority, SpiffeId, TrustDomain};
    use std::time::{Duration, SystemTime};

    /// A config with an SVID binding its key (and the key file when `with_key`), `[control]`,
    /// and `extra` appended.
    fn parse(with_key: bool, extra: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let td = TrustDomain::new("isthmus.local").unwrap();
        let root = Authority::root(
            &td,
            now - Duration::from_secs(60),
            Duration::from_secs(86_400),
        )
        .unwrap();
        let key = PrivateKey::generate();
        let id = SpiffeId::gateway(&td, "c1", "gw").unwrap();
        let svid = root
            .issue(
                &id,
                key.public_key().as_bytes(),
                now - Duration::from_secs(60),
                Duration::from_secs(3600),
            )
            .unwrap();
        let p = dir.path();
        std::fs::write(p.join("gw.key"), key.to_base64()).unwrap();
        std::fs::write(p.join("svid.pem"), svid.chain_pem()).unwrap();
        std::fs::write(p.join("svid.key"), svid.key_pem()).unwrap();
        std::fs::write(p.join("bundle.pem"), root.cert_pem()).unwrap();
        let svid_key = if with_key {
            "svid_key_file = \"svid.key\"\n"
        } else {
            ""
        };
        let text = format!(
            "[interface]\nprivate_key_file = \"gw.key\"\naddress = [\"100.96.0.1/24\"]\n\
             svid_file = \"svid.pem\"\ntrust_bundle_file = \"bundle.pem\"\n{svid_key}\
             [control]\nstate_dir = \"state\"\n{extra}"
        );
        Config::parse(&p.join("gw.toml"), &text)
    }

    fn error(with_key: bool, extra: &str) -> String {
        parse(with_key, extra).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_derived_join_endpoint() {
        let c = parse(
            true,
            "[members]\nprefixes = [\"10.1.0.0/16\"]\nendpoint = \"192.0.2.1:51820\"\n",
        )
        .unwrap();
        let m = c.members.unwrap();
        assert_eq!(m.prefixes, vec!["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(m.join_endpoint, Some("192.0.2.1:51821".parse().unwrap()));
        assert_eq!(
            m.persistent_keepalive,
            Some(super::DEFAULT_MEMBER_KEEPALIVE)
        );
        assert_eq!(m.table.member_ttl, Duration::from_secs(600));
        assert!(parse(true, "").unwrap().members.is_none());
        let off = parse(true, "[members]\npersistent_keepalive = 0\n").unwrap();
        assert_eq!(off.members.unwrap().persistent_keepalive, None);
    }

    #[test]
    fn bad_members_sections_name_the_field_and_the_problem() {
        for (with_key, extra, want) in [
            (false, "[members]\n", "needs interface.svid_key_file"),
            (true, "[members]\nprefixes = [\"10.1.0.1/16\"]\n", "members.prefixes[0] = \"10.1.0.1/16\": host bits are set"),
            (true, "[members]\nprefixes = [\"10.1.0.0/16\", \"10.1.2.0/24\"]\n", "members.prefixes[1] = \"10.1.2.0/24\": overlaps 10.1.0.0/16"),
            (true, "[members]\nprefixes = [\"100.96.0.0/16\"]\n", "contains this gateway's mesh address"),
            (true, "[members]\nendpoint = \"nowhere\"\n", "members.endpoint = \"nowhere\": expected host:port"),
            (true, "[members]\nttl = 1\n", "members.ttl = \"1\": must be at least 3 seconds"),
            (true, "[members]\nttl = -5\n", "members.ttl"),
            (true, "[members]\nseeds = 3\n", "unknown field `seeds`"),
            (
                true,
                "[members]\nprefixes = [\"10.2.0.0/16\"]\n[[peer]]\npublic_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nallowed_ips = [\"10.2.0.0/24\"]\n",
                "overlaps 10.2.0.0/24, allowed for a configured peer",
            ),
        ] {
            let e = error(with_key, extra);
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }
}
