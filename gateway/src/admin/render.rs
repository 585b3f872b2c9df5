//! `tunctl` output: plain aligned tables (no borders, like kubectl) and JSON/YAML dumps.
//!
//! Pure functions of a snapshot and `now`, so tests pin the exact text. Peers keep the order the
//! daemon reported them in.

use super::proto::{
    ControlStatus, InterfaceStatus, PeerInfo, PeerState, ReloadReport, ServiceInfo,
};
use anyhow::Context as _;
use serde::Serialize;
use std::fmt::Write as _;

/// How `tunctl` prints what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The table plus keys, keepalive, handshake and drop counts.
    Wide,
    /// Everything the daemon reported, exact numbers.
    Json,
    /// As json, in YAML.
    Yaml,
}

/// Columns are separated by this many spaces, as kubectl does.
const GAP: usize = 3;

/// How a peer is named on screen and in metrics: its configured name, else the first 8
/// characters of its base64 key (as `wg` abbreviates keys).
pub fn peer_label(peer: &PeerInfo) -> String {
    match &peer.name {
        Some(name) if !name.is_empty() => name.clone(),
        _ => peer.public_key.chars().take(8).collect(),
    }
}

/// `connecting`, `connected`, or `error: <reason>`.
pub fn peer_status(peer: &PeerInfo) -> String {
    match (peer.status, peer.status_reason.as_deref()) {
        (PeerState::Connecting, _) => "connecting".into(),
        (PeerState::Connected, _) => "connected".into(),
        (PeerState::Error, Some(reason)) if !reason.is_empty() => format!("error: {reason}"),
        (PeerState::Error, _) => "error".into(),
    }
}

/// IEC units with one decimal: `512 B`, `1.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The two most significant units: `45s`, `3m4s`, `2h5m`, `3d4h`.
pub fn compact_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `never`, or the age of the handshake: `12s ago`, `3m4s ago`.
pub fn handshake_age(last_unix_ms: Option<u64>, now_unix_ms: u64) -> String {
    match last_unix_ms {
        None | Some(0) => "never".into(),
        // A handshake "in the future" (clock stepped back) reads as just now.
        Some(ms) => format!(
            "{} ago",
            compact_duration(now_unix_ms.saturating_sub(ms) / 1000)
        ),
    }
}

/// The SPIFFE ID column (`<unverified>` for peers configured by bare key; an expected identity
/// not yet joined is shown with a `?`) and the SVID expiry column (`in 23h59m`, `expired`, `-`).
pub fn identity_cells(peer: &PeerInfo, now_unix_ms: u64) -> (String, String) {
    let identity = match (&peer.spiffe_id, peer.verified) {
        (Some(id), true) => id.clone(),
        (Some(id), false) => format!("{id}?"),
        (None, true) => "<verified>".into(),
        (None, false) if peer.public_key.is_empty() => "<pending>".into(),
        (None, false) => "<unverified>".into(),
    };
    let expires = match peer.svid_expires_unix_ms {
        None => "-".into(),
        Some(ms) if ms <= now_unix_ms => "expired".into(),
        Some(ms) => format!("in {}", compact_duration((ms - now_unix_ms) / 1000)),
    };
    (identity, expires)
}

/// Left-aligned columns, [`GAP`] spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}{:GAP$}", "");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dump<T: Serialize + ?Sized>(value: &T, format: OutputFormat) -> anyhow::Result<Option<String>> {
    Ok(match format {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(value).context("failed to encode JSON")?;
            text.push('\n');
            Some(text)
        }
        OutputFormat::Yaml => {
            Some(serde_yaml_ng::to_string(value).context("failed to encode YAML")?)
        }
        OutputFormat::Table | OutputFormat::Wide => None,
    })
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

/// `tunctl peers`.
pub fn peers(peers: &[PeerInfo], format: OutputFormat, now_unix_ms: u64) -> anyhow::Result<String> {
    peers_with_control(peers, None, format, now_unix_ms)
}

/// `tunctl peers` with the control plane's view: each peer's mesh address and sync state
/// (`mesh_addr`, `sync` in JSON/YAML; columns SYNC, and MESH ADDR in wide).
pub fn peers_with_control(
    peers: &[PeerInfo],
    control: Option<&ControlStatus>,
    format: OutputFormat,
    now_unix_ms: u64,
) -> anyhow::Result<String> {
    let sync_of = |peer: &PeerInfo| {
        control.and_then(|c| {
            c.peers
                .iter()
                .find(|s| peer.verified && peer.spiffe_id.as_deref() == Some(s.spiffe_id.as_str()))
        })
    };
    if matches!(format, OutputFormat::Json | OutputFormat::Yaml) {
        let rows: Vec<serde_json::Value> = peers
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                if let (Some(obj), Some(s)) = (v.as_object_mut(), sync_of(p)) {
                    obj.insert("mesh_addr".into(), s.mesh_addr.clone().into());
                    obj.insert("sync".into(), s.sync.clone().into());
                }
                v
            })
            .collect();
        return Ok(dump(&rows, format)?.unwrap_or_default());
    }
    let with_sync = control.is_some();
    if peers.is_empty() {
        return Ok("no peers configured\n".into());
    }
    let wide = format == OutputFormat::Wide;
    let headers: &[&str] = if wide {
        &[
            "PEER",
            "PUBLIC KEY",
            "ENDPOINT",
            "STATUS",
            "HANDSHAKE",
            "RX",
            "TX",
            "KEEPALIVE",
            "HANDSHAKES",
            "DROPPED",
            "SPIFFE ID",
            "SVID EXPIRES",
            "ALLOWED IPS",
        ]
    } else {
        &[
            "PEER",
            "ENDPOINT",
            "STATUS",
            "HANDSHAKE",
            "RX",
            "TX",
            "SPIFFE ID",
            "SVID EXPIRES",
            "ALLOWED IPS",
        ]
    };
    let mut headers: Vec<&str> = headers.to_vec();
    if with_sync {
        if wide {
            headers.push("MESH ADDR");
        }
        headers.push("SYNC");
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|peer| {
            let endpoint = or_none(peer.endpoint.clone().unwrap_or_default());
            let handshake = handshake_age(peer.last_handshake_unix_ms, now_unix_ms);
            let allowed = or_none(peer.allowed_ips.join(","));
            let (rx, tx) = (human_bytes(peer.rx_bytes), human_bytes(peer.tx_bytes));
            let (identity, expires) = identity_cells(peer, now_unix_ms);
            let mut extra = Vec::new();
            if with_sync {
                let s = sync_of(peer);
                if wide {
                    extra.push(s.map_or("-".to_string(), |s| s.mesh_addr.clone()));
                }
                extra.push(s.map_or("-".to_string(), |s| s.sync.clone()));
            }
            let mut row = if wide {
                let keepalive = match peer.persistent_keepalive {
                    Some(secs) if secs > 0 => format!("{secs}s"),
                    _ => "off".into(),
                };
                let dropped: u64 = peer.dropped.values().sum();
                vec![
                    peer_label(peer),
                    peer.public_key.clone(),
                    endpoint,
                    peer_status(peer),
                    handshake,
                    rx,
                    tx,
                    keepalive,
                    peer.handshakes.to_string(),
                    dropped.to_string(),
                    identity,
                    expires,
                    allowed,
                ]
            } else {
                vec![
                    peer_label(peer),
                    endpoint,
                    peer_status(peer),
                    handshake,
                    rx,
                    tx,
                    identity,
                    expires,
                    allowed,
                ]
            };
            row.extend(extra);
            row
        })
        .collect();
    Ok(table(&headers, &rows))
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `tunctl status`.
pub fn status(status: &InterfaceStatus, format: OutputFormat) -> anyhow::Result<String> {
    if let Some(text) = dump(status, format)? {
        return Ok(text);
    }
    let offloads: Vec<String> = status
        .offloads
        .iter()
        .map(|(name, on)| format!("{name} {}", if *on { "on" } else { "off" }))
        .collect();
    let mut fields = vec![
        ("interface", status.name.clone()),
        ("public key", status.public_key.clone()),
        ("listening port", status.listen_port.to_string()),
        ("addresses", or_none(status.addresses.join(", "))),
        ("mtu", status.mtu.to_string()),
        (
            "peers",
            format!("{}/{} connected", status.connected_peers, status.peers),
        ),
        ("uptime", compact_duration(status.uptime_secs)),
        ("offloads", or_none(offloads.join(", "))),
        ("dropped", counts(&status.dropped)),
    ];
    if format == OutputFormat::Wide {
        fields.push(("pid", status.pid.to_string()));
        fields.push(("version", status.daemon_version.clone()));
        fields.push(("config", status.config_file.clone()));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in fields {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"), width = width);
    }
    Ok(out)
}

/// `tunctl status` with the control plane's lines (or its JSON under `control`).
pub fn status_with_control(
    st: &InterfaceStatus,
    control: Option<&ControlStatus>,
    format: OutputFormat,
) -> anyhow::Result<String> {
    let Some(c) = control else {
        return status(st, format);
    };
    if matches!(format, OutputFormat::Json | OutputFormat::Yaml) {
        let mut v = serde_json::to_value(st).context("failed to encode JSON")?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "control".into(),
                serde_json::to_value(c).context("failed to encode JSON")?,
            );
        }
        return Ok(dump(&v, format)?.unwrap_or_default());
    }
    let mut out = status(st, format)?;
    let remotes: Vec<String> = c
        .remote_clusters
        .iter()
        .map(|r| format!("{} {}", r.cluster, r.liveness))
        .collect();
    let _ = writeln!(
        out,
        "cluster:        {} (exports {})",
        c.cluster, c.watermark
    );
    let _ = writeln!(out, "services:       {}", c.services);
    let _ = writeln!(
        out,
        "sync sessions:  {}/{} synced",
        c.synced_sessions, c.sessions
    );
    let _ = writeln!(out, "clusters:       {}", or_none(remotes.join(", ")));
    if !c.members.is_empty() {
        // spiffe://<td>/cluster/<c>/gateway/<n> as <c>/<n>.
        let members: Vec<String> = c
            .members
            .iter()
            .map(|id| match id.split_once("/cluster/") {
                Some((_, rest)) => rest.replacen("/gateway/", "/", 1),
                None => id.clone(),
            })
            .collect();
        let _ = writeln!(out, "members:        {}", members.join(", "));
    }
    let _ = writeln!(out, "refused:        {}", counts(&c.refusals));
    if format == OutputFormat::Wide {
        let _ = writeln!(out, "dns queries:    {}", counts(&c.dns_queries));
        let _ = writeln!(out, "member records: {}", c.members_received);
    }
    Ok(out)
}

/// `tunctl services`: SERVICE, NAMESPACE, CLUSTERS, ENDPOINTS (healthy/total), VIP, POLICY;
/// wide adds PORTS, HEADLESS and per-cluster health.
pub fn services(services: &[ServiceInfo], format: OutputFormat) -> anyhow::Result<String> {
    if let Some(text) = dump(services, format)? {
        return Ok(text);
    }
    if services.is_empty() {
        return Ok("no services\n".into());
    }
    let wide = format == OutputFormat::Wide;
    let mut headers = vec![
        "SERVICE",
        "NAMESPACE",
        "CLUSTERS",
        "ENDPOINTS",
        "VIP",
        "POLICY",
    ];
    if wide {
        headers.extend(["PORTS", "HEADLESS", "HEALTH"]);
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let vip = if s.headless {
                "None (headless)".to_string()
            } else {
                or_none(s.vips.join(","))
            };
            let mut row = vec![
                s.name.clone(),
                s.namespace.clone(),
                or_none(s.clusters.join(",")),
                format!("{}/{}", s.endpoints_healthy, s.endpoints_total),
                vip,
                s.policy.clone(),
            ];
            if wide {
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| match &p.name {
                        Some(n) => format!("{n}:{}/{}", p.port, p.protocol),
                        None => format!("{}/{}", p.port, p.protocol),
                    })
                    .collect();
                let health: Vec<String> = s
                    .per_cluster
                    .iter()
                    .map(|c| {
                        format!(
                            "{}:{} {}/{}",
                            c.cluster,
                            if c.offered { "up" } else { "down" },
                            c.ready,
                            c.total
                        )
                    })
                    .collect();
                row.push(or_none(ports.join(",")));
                row.push(s.headless.to_string());
                row.push(or_none(health.join(",")));
            }
            row
        })
        .collect();
    Ok(table(&headers, &rows))
}

/// `tunctl reload`: one line of what changed.
pub fn reload(report: &ReloadReport, format: OutputFormat) -> anyhow::Result<String> {
    if let Some(text) = dump(report, format)? {
        return Ok(text);
    }
    let mut out = format!(
        "reloaded: {} added, {} removed, {} restarted, {} kept",
        report.added, report.removed, report.restarted, report.kept
    );
    if report.rotated {
        out.push_str("; key/SVID rotated, re-joining peers by identity");
    }
    if !report.restart_needed.is_empty() {
        let _ = write!(
            out,
            "; needs a restart to apply: {}",
            report.restart_needed.join(", ")
        );
    }
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::{peer_key, FakeSource, HANDSHAKE_MS};
    use crate::admin::AdminSource as _;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn ages_are_compact() {
        let now = 1_000_000_000;
        assert_eq!(handshake_age(None, now), "never");
        assert_eq!(handshake_age(Some(now - 12_400), now), "12s ago");
        assert_eq!(handshake_age(Some(now - 184_000), now), "3m4s ago");
        assert_eq!(handshake_age(Some(now - 7_500_000), now), "2h5m ago");
        assert_eq!(handshake_age(Some(now - 273_600_000), now), "3d4h ago");
        assert_eq!(handshake_age(Some(now + 5_000), now), "0s ago");
        assert_eq!(compact_duration(60), "1m0s");
    }

    #[test]
    fn table_aligns_without_trailing_space() {
        let text = table(
            &["A", "LONGER", "C"],
            &[
                vec!["wide-cell".into(), "x".into(), "last".into()],
                vec!["y".into(), "z".into(), String::new()],
            ],
        );
        assert_eq!(
            text,
            "A           LONGER   C\n\
             wide-cell   x        last\n\
             y           z\n"
        );
    }

    #[test]
    fn identity_columns() {
        let mut p = FakeSource::new().peers().remove(0);
        let now = 1_000_000_000;
        assert_eq!(identity_cells(&p, now), ("<unverified>".into(), "-".into()));
        p.spiffe_id = Some("spiffe://td/cluster/b/gateway/g".into());
        p.verified = true;
        p.svid_expires_unix_ms = Some(now + 3_600_000);
        assert_eq!(
            identity_cells(&p, now),
            ("spiffe://td/cluster/b/gateway/g".into(), "in 1h0m".into())
        );
        p.svid_expires_unix_ms = Some(now - 1);
        assert_eq!(identity_cells(&p, now).1, "expired");
        p.verified = false;
        assert_eq!(
            identity_cells(&p, now).0,
            "spiffe://td/cluster/b/gateway/g?"
        );
    }

    #[test]
    fn peers_table() {
        let source = FakeSource::new();
        let now = HANDSHAKE_MS + 12_000;
        let text = peers(&source.peers(), OutputFormat::Table, now).unwrap();
        let short: String = peer_key(2).chars().take(8).collect();
        let short3: &str = "edge-7";
        let expected = format!(
            "PEER        ENDPOINT              STATUS                         HANDSHAKE   RX        TX        SPIFFE ID      SVID EXPIRES   ALLOWED IPS\n\
             cluster-b   192.0.2.10:51820      connected                      12s ago     1.2 MiB   4.0 KiB   <unverified>   -              10.1.0.0/16,fd00:1::/64\n\
             {short}    [2001:db8::2]:51820   connecting                     never       0 B       0 B       <unverified>   -              10.2.0.0/16\n\
             {short3}      <none>                error: endpoint unresolvable   never       0 B       0 B       <unverified>   -              <none>\n"
        );
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn peers_wide_has_keys_and_counts() {
        let source = FakeSource::new();
        let text = peers(&source.peers(), OutputFormat::Wide, HANDSHAKE_MS + 184_000).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PEER        PUBLIC KEY"), "{text}");
        assert!(lines[0].contains(
            "KEEPALIVE   HANDSHAKES   DROPPED   SPIFFE ID      SVID EXPIRES   ALLOWED IPS"
        ));
        assert!(lines[1].contains(&peer_key(1)));
        assert!(lines[1].contains("3m4s ago"));
        assert!(lines[1].contains(" 25s "));
        assert!(lines[2].contains(" off "));
        // dropped sums reasons: 2 + 1
        let columns: Vec<&str> = lines[1].split("   ").map(str::trim).collect();
        assert!(columns.contains(&"3"), "{columns:?}");
        assert!(lines[3].contains(" 7 "));
    }

    #[test]
    fn peers_json_and_yaml_are_exact() {
        let source = FakeSource::new();
        let json = peers(&source.peers(), OutputFormat::Json, 0).unwrap();
        let back: Vec<PeerInfo> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, source.peers());
        assert!(json.contains("\"rx_bytes\": 1258291"));
        let yaml = peers(&source.peers(), OutputFormat::Yaml, 0).unwrap();
        let back: Vec<PeerInfo> = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, source.peers());
        assert!(yaml.contains("rx_bytes: 1258291"));
    }

    #[test]
    fn no_peers() {
        assert_eq!(
            peers(&[], OutputFormat::Table, 0).unwrap(),
            "no peers configured\n"
        );
        assert_eq!(peers(&[], OutputFormat::Json, 0).unwrap(), "[]\n");
    }

    #[test]
    fn status_table_and_wide() {
        let status_ = FakeSource::new().status();
        let text = status(&status_, OutputFormat::Table).unwrap();
        assert_eq!(
            text,
            "interface:      isthmus0\n\
             public key:     GoKOHKmMnVDs1HlV8C09+3O8llMmkEQGWeuCgowTf0g=\n\
             listening port: 51820\n\
             addresses:      10.99.0.1/32, fd99::1/128\n\
             mtu:            1420\n\
             peers:          1/3 connected\n\
             uptime:         1d2h\n\
             offloads:       gro on, gso off\n\
             dropped:        bad_source 2, decrypt 1, no_route 5\n"
        );
        let wide = status(&status_, OutputFormat::Wide).unwrap();
        assert!(wide.starts_with(&text));
        assert!(wide.ends_with(
            "pid:            4242\n\
             version:        0.1.0\n\
             config:         /etc/isthmus/gateway.toml\n"
        ));
        let json = status(&status_, OutputFormat::Json).unwrap();
        let back: InterfaceStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status_);
        let yaml = status(&status_, OutputFormat::Yaml).unwrap();
        let back: InterfaceStatus = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, status_);
    }
}
