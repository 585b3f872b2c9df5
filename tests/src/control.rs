//! A mesh of gateways joined by identity (SVIDs from `tunctl pki`) with the control plane on:
//! catalog sync through the tunnels, a static export file per cluster, clusterset DNS on each
//! gateway's mesh address, and helpers to ask `dig` and `tunctl services` about it.
//!
//! Layout under the lab directory: `pki/` (root, one intermediate per cluster, one SVID per
//! gateway), `c{i}-state/` (the gateway's state directory), `c{i}-exports.toml`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::PERSISTENT_KEEPALIVE;
use crate::gateway::TUNCTL_BIN;
use crate::lab::Lab;
use crate::netns;
use crate::plan;

pub const TRUST_DOMAIN: &str = "isthmus.local";
/// `[control] down_after` the control labs run with (the default).
pub const DOWN_AFTER: Duration = Duration::from_secs(3);
/// The DNS zone.
pub const ZONE: &str = "clusterset.local";

/// `spiffe://isthmus.local/cluster/c{i}/gateway/gw`.
pub fn gateway_id(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/cluster/c{i}/gateway/gw")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

impl Lab {
    /// Runs the lab's `tunctl` in the root namespace (for `pki`); fails quoting its stderr.
    pub fn tunctl_root(&self, args: &[&str]) -> Result<String> {
        let bin = self.binary(TUNCTL_BIN)?;
        netns::checked(Command::new(bin).args(args))
    }

    /// Issues a trust domain root, an intermediate per cluster and an SVID for each cluster's
    /// gateway (`<dir>/pki/c{i}-gw/{svid.pem,svid.key,wg.key,bundle.pem}`).
    pub fn issue_gateway_svids(&self) -> Result<Vec<PathBuf>> {
        let pki = self.dir().join("pki");
        let root = pki.join("root");
        self.tunctl_root(&[
            "pki",
            "init",
            "--trust-domain",
            TRUST_DOMAIN,
            "--out",
            path_str(&root),
        ])?;
        let mut out = Vec::new();
        for i in 1..=self.clusters() {
            let ca = pki.join(format!("c{i}-ca"));
            let cluster = format!("c{i}");
            self.tunctl_root(&[
                "pki",
                "intermediate",
                "--cluster",
                &cluster,
                "--ca",
                path_str(&root),
                "--out",
                path_str(&ca),
            ])?;
            let dir = pki.join(format!("c{i}-gw"));
            self.tunctl_root(&[
                "pki",
                "issue",
                "--gateway",
                "gw",
                "--cluster",
                &cluster,
                "--ca",
                path_str(&ca),
                "--out",
                path_str(&dir),
            ])?;
            out.push(dir);
        }
        Ok(out)
    }

    /// Cluster `i`'s static export file.
    pub fn exports_path(&self, i: usize) -> PathBuf {
        self.dir()
            .join(format!("c{}-exports.toml", self.cluster(i)))
    }

    /// Cluster `i`'s state directory.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir().join(format!("c{}-state", self.cluster(i)))
    }

    /// Replaces cluster `i`'s export file (atomically: the gateway never reads half a file).
    pub fn write_exports(&self, i: usize, toml: &str) -> Result<()> {
        let path = self.exports_path(i);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, toml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Writes every cluster's config: peers by identity (full mesh), `[control]` with its
    /// state directory in the lab, a static export file (created empty if missing) and DNS on
    /// the mesh address. `tweak(i, &mut config_table)` may add or change top-level tables.
    pub fn write_control_configs(
        &self,
        svids: &[PathBuf],
        mut tweak: impl FnMut(usize, &mut toml::Table),
    ) -> Result<()> {
        let n = self.clusters();
        for i in 1..=n {
            if !self.exports_path(i).exists() {
                self.write_exports(i, "")?;
            }
            let svid = &svids[i - 1];
            let mut cfg = self.gateway_config(i);
            cfg.peers.clear();
            cfg.interface.private_key_file = svid.join("wg.key");
            for (field, file) in [
                ("svid_file", "svid.pem"),
                ("svid_key_file", "svid.key"),
                ("trust_bundle_file", "bundle.pem"),
            ] {
                cfg.interface
                    .extra
                    .insert(field.into(), path_str(&svid.join(file)).to_owned().into());
            }
            let peers: Vec<toml::Value> = (1..=n)
                .filter(|&j| j != i)
                .map(|j| identity_peer(j, "spiffe_id", &gateway_id(j)))
                .collect();
            cfg.extra.insert("peer".into(), toml::Value::Array(peers));
            let mut control = toml::Table::new();
            control.insert(
                "state_dir".into(),
                path_str(&self.state_dir(i)).to_owned().into(),
            );
            cfg.extra
                .insert("control".into(), toml::Value::Table(control));
            let mut exports = toml::Table::new();
            exports.insert("source".into(), "static".into());
            exports.insert(
                "file".into(),
                path_str(&self.exports_path(i)).to_owned().into(),
            );
            cfg.extra
                .insert("exports".into(), toml::Value::Table(exports));
            tweak(i, &mut cfg.extra);
            self.write_gateway_config(i, &cfg)?;
        }
        Ok(())
    }

    /// `dig +short` from namespace `ns` at gateway `i`'s DNS (its mesh address, port 53) for
    /// `name` and `rtype`: the answer lines, empty for NXDOMAIN/NODATA/no answer.
    pub fn dig(&self, ns: &str, i: usize, name: &str, rtype: &str) -> Result<Vec<String>> {
        let server = format!("@{}", plan::mesh_addr(i));
        let out = self.run(
            ns,
            &["dig", "+short", "+time=1", "+tries=1", &server, name, rtype],
        )?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(";;"))
            .map(str::to_owned)
            .collect())
    }

    /// The DNS status word (`NOERROR`, `NXDOMAIN`, …) of a query from `ns` at gateway `i`.
    pub fn dig_status(&self, ns: &str, i: usize, name: &str, rtype: &str) -> Result<String> {
        let server = format!("@{}", plan::mesh_addr(i));
        let out = self.run(ns, &["dig", "+time=1", "+tries=1", &server, name, rtype])?;
        out.lines()
            .find_map(|l| {
                l.split("status: ")
                    .nth(1)
                    .and_then(|r| r.split(',').next())
                    .map(str::to_owned)
            })
            .with_context(|| format!("no status in dig output:\n{out}"))
    }

    /// `tunctl services -o json` of gateway `i`.
    pub fn services_json(&self, i: usize) -> Vec<serde_json::Value> {
        match self
            .tunctl(i, &["-o", "json", "services"])
            .unwrap_or_else(|e| panic!("tunctl services on gateway {i}: {e:#}"))
        {
            serde_json::Value::Array(list) => list,
            other => panic!("tunctl services on gateway {i} printed no list: {other}"),
        }
    }

    /// The `control` object of gateway `i`'s `tunctl status -o json`.
    pub fn control_status(&self, i: usize) -> serde_json::Value {
        let s = self.status_json(i);
        s.get("control")
            .cloned()
            .unwrap_or_else(|| panic!("gateway {i} status has no control section: {s}"))
    }

    /// Whether gateway `i` has an in-step sync session with every other cluster's gateway.
    pub fn control_synced(&self, i: usize) -> bool {
        self.tunctl(i, &["-o", "json", "status"])
            .ok()
            .and_then(|s| s["control"]["synced_sessions"].as_u64())
            == Some(self.clusters() as u64 - 1)
    }
}

/// `[[peer]]` for cluster `j` by identity (`how` is `spiffe_id` or `cluster`, naming `whom`),
/// with the lab's endpoint, allowed IPs (cluster CIDR and mesh address) and keepalive, and no
/// `public_key`.
pub fn identity_peer(j: usize, how: &str, whom: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("name".into(), format!("c{j}").into());
    t.insert(how.into(), whom.into());
    t.insert(
        "endpoint".into(),
        format!("{}:{}", plan::wan_addr(j), plan::LISTEN_PORT).into(),
    );
    t.insert(
        "allowed_ips".into(),
        toml::Value::Array(vec![
            plan::cluster_cidr(j).into(),
            format!("{}/32", plan::mesh_addr(j)).into(),
        ]),
    );
    t.insert(
        "persistent_keepalive".into(),
        i64::from(PERSISTENT_KEEPALIVE).into(),
    );
    toml::Value::Table(t)
}

/// An export file with one service per `(namespace/name, headless, endpoints)`, port 7000
/// named `tcp`.
pub fn exports_toml(services: &[(&str, bool, &[Ipv4Addr])]) -> String {
    let mut out = String::new();
    for (name, headless, endpoints) in services {
        let (ns, n) = name.split_once('/').expect("namespace/name");
        let eps: Vec<String> = endpoints
            .iter()
            .map(|a| format!("{{ address = \"{a}\", port = 7000 }}"))
            .collect();
        out.push_str(&format!(
            "[[service]]\nnamespace = \"{ns}\"\nname = \"{n}\"\nheadless = {headless}\n\
             ports = [{{ name = \"tcp\", port = 7000 }}]\nendpoints = [{}]\n\n",
            eps.join(", ")
        ));
    }
    out
}

/// How long a fresh mesh gets to join, handshake and bring every sync session in step.
pub const SYNC_DEADLINE: Duration = Duration::from_secs(20);

/// A lab of `n` clusters joined by identity with the control plane on and every sync session
/// in step. Panics with the gateways' logs otherwise: for tests.
pub fn control_lab(n: usize) -> Lab {
    let lab = Lab::builder()
        .clusters(n)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
    let svids = lab.issue_gateway_svids().expect("issuing SVIDs");
    lab.write_control_configs(&svids, |_, _| {})
        .expect("writing configs");
    for i in 1..=n {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("starting gateway {i}: {e:#}"));
    }
    wait_synced(&lab, "start");
    lab
}

/// Waits until every gateway has an in-step session with every other; panics otherwise.
pub fn wait_synced(lab: &Lab, when: &str) {
    let start = std::time::Instant::now();
    let ok = crate::wait_for(
        || (1..=lab.clusters()).all(|i| lab.control_synced(i)),
        SYNC_DEADLINE,
    );
    if !ok {
        lab.dump_gateway_logs();
    }
    assert!(
        ok,
        "sync sessions not in step within {SYNC_DEADLINE:?} ({when}): {:?}",
        (1..=lab.clusters())
            .map(|i| lab.tunctl(i, &["-o", "json", "status"]).ok())
            .collect::<Vec<_>>()
    );
    eprintln!(
        "all sync sessions in step {:?} after {when}",
        start.elapsed()
    );
}

/// `<name>.<ns>.svc.clusterset.local` of `ns/name`.
pub fn fqdn(service: &str) -> String {
    let (ns, name) = service.split_once('/').expect("namespace/name");
    format!("{name}.{ns}.svc.{ZONE}")
}

/// `[members]` lifetime the seeded labs run with, seconds: short, so a killed member's record
/// lapses within a test (it is re-signed every third of it).
pub const MEMBER_TTL_SECS: u64 = 6;

/// A lab of `n` clusters in which gateway `i` is given only one peer, `seed(i)`: see
/// [`Lab::write_seeded_configs`] (with a [`MEMBER_TTL_SECS`] record lifetime). Gateways are
/// started but not waited for.
pub fn seeded_lab(n: usize, seed: impl Fn(usize) -> usize) -> Lab {
    let lab = Lab::builder()
        .clusters(n)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
    let svids = lab.issue_gateway_svids().expect("issuing SVIDs");
    lab.write_seeded_configs(&svids, seed, Some(MEMBER_TTL_SECS))
        .expect("writing configs");
    for i in 1..=n {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("starting gateway {i}: {e:#}"));
    }
    lab
}

impl Lab {
    /// Writes every cluster's config like [`Lab::write_control_configs`], except that gateway
    /// `i` is given only one peer, `seed(i)` (by cluster, with its endpoint and no prefixes),
    /// and `[members]` advertising its cluster CIDR and WAN endpoint (record lifetime `ttl`
    /// seconds, or the default): everything else it must learn from signed member records.
    pub fn write_seeded_configs(
        &self,
        svids: &[PathBuf],
        seed: impl Fn(usize) -> usize,
        ttl: Option<u64>,
    ) -> Result<()> {
        self.write_seeded_configs_with(svids, seed, ttl, |_, _| {})
    }

    /// [`Lab::write_seeded_configs`], then `tweak(i, &mut config_table)` on each.
    pub fn write_seeded_configs_with(
        &self,
        svids: &[PathBuf],
        seed: impl Fn(usize) -> usize,
        ttl: Option<u64>,
        mut tweak: impl FnMut(usize, &mut toml::Table),
    ) -> Result<()> {
        self.write_control_configs(svids, |i, extra| {
            let s = seed(i);
            assert_ne!(s, i, "a gateway is not its own seed");
            let mut peer = identity_peer(s, "cluster", &format!("c{s}"));
            if let toml::Value::Table(t) = &mut peer {
                t.remove("allowed_ips");
            }
            extra.insert("peer".into(), toml::Value::Array(vec![peer]));
            let mut members = toml::Table::new();
            members.insert(
                "prefixes".into(),
                toml::Value::Array(vec![plan::cluster_cidr(i).into()]),
            );
            members.insert(
                "endpoint".into(),
                format!("{}:{}", plan::wan_addr(i), plan::LISTEN_PORT).into(),
            );
            members.insert(
                "persistent_keepalive".into(),
                i64::from(PERSISTENT_KEEPALIVE).into(),
            );
            if let Some(ttl) = ttl {
                members.insert("ttl".into(), i64::try_from(ttl).unwrap_or(i64::MAX).into());
            }
            extra.insert("members".into(), toml::Value::Table(members));
            tweak(i, extra);
        })
    }

    /// The live members gateway `i` learned from records (SPIFFE IDs), empty if it cannot say.
    pub fn members_of(&self, i: usize) -> Vec<String> {
        self.tunctl(i, &["-o", "json", "status"])
            .ok()
            .and_then(|s| {
                s["control"]["members"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }
}
