//! `tunctl` as an operator uses it: clear errors without a daemon or with bad arguments, and
//! against a running 3-cluster mesh, tables and dumps that agree with each other and with
//! the lab. Needs root for the mesh.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use isthmus_lab::{plan, try_wait_for, Lab, PERSISTENT_KEEPALIVE, TUNCTL_BIN, TUNNEL_MTU};
use serde_json::Value;
use support::{num, peers, status, wait_ping, MESH_UP_TIMEOUT};

fn tunctl_bin() -> std::path::PathBuf {
    let bin = isthmus_lab::default_bin_dir().join(TUNCTL_BIN);
    assert!(
        bin.is_file(),
        "{} not found: cargo build --release first",
        bin.display()
    );
    bin
}

fn tunctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(tunctl_bin());
    cmd.args(args).env_remove("ISTHMUS_ADMIN_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tunctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn tunctl_without_a_daemon_says_nobody_is_listening() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-gateway-here.sock");
    let missing_arg = missing.to_string_lossy();

    for (args, env) in [
        (vec!["--socket", missing_arg.as_ref(), "peers"], vec![]),
        (vec!["--socket", missing_arg.as_ref(), "status"], vec![]),
        (
            vec!["-o", "json", "peers"],
            vec![("ISTHMUS_ADMIN_SOCKET", missing_arg.as_ref())],
        ),
    ] {
        let out = tunctl(&args, &env);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tunctl {args:?} {env:?}: {}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!(
                "no isthmus-gateway is listening at {}",
                missing.display()
            )),
            "tunctl {args:?} {env:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    }

    // A socket file left by a dead daemon: still nobody listening, and the message says where.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let out = tunctl(&["--socket", &stale.to_string_lossy(), "peers"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&stale.display().to_string()) && stderr.contains("listening"),
        "stale socket: {stderr}"
    );
}

#[test]
fn tunctl_rejects_an_unknown_output_format() {
    let out = tunctl(&["peers", "-o", "bogus"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}: {stderr}", out.status);
    assert!(
        stderr.contains("bogus") && stderr.contains("table") && stderr.contains("yaml"),
        "clap's message should name the bad value and the possible ones: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// `render::human_bytes` as documented: bytes below 1 KiB, else one decimal in IEC units.
fn human_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    let units = ["KiB", "MiB", "GiB", "TiB"];
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// Splits an aligned table into rows of (header, cell), using where each header starts.
fn parse_table(table: &str) -> (Vec<String>, Vec<Vec<(String, String)>>) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    // Columns are 3 spaces apart at least; a header itself has at most single spaces.
    let mut starts = Vec::new();
    let mut names = Vec::new();
    let bytes = header.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b' ' && (i == 0 || header[..i].ends_with("  ")) {
            let end = header[i..].find("  ").map_or(header.len(), |e| i + e);
            starts.push(i);
            names.push(header[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    let rows = lines
        .map(|line| {
            names
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    let from = starts[k].min(line.len());
                    let to = starts.get(k + 1).map_or(line.len(), |&s| s.min(line.len()));
                    (name.clone(), line[from..to].trim().to_owned())
                })
                .collect()
        })
        .collect();
    (names, rows)
}

fn cell<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(h, _)| h == name)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

/// Whether YAML `text` has a line `key: value`, the value plain or quoted.
fn yaml_has(text: &str, key: &str, value: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start().trim_start_matches("- ");
        [
            format!("{key}: {value}"),
            format!("{key}: '{value}'"),
            format!("{key}: \"{value}\""),
        ]
        .iter()
        .any(|want| l == want)
    })
}

/// Peers of gateway 1 as JSON, read twice around `f` until both reads agree (no traffic in
/// between), so that the text `f` returns can be compared with exact numbers.
fn stable<T>(lab: &Lab, mut f: impl FnMut() -> T) -> (Vec<Value>, T) {
    for _ in 0..5 {
        let before = peers(lab, 1);
        let out = f();
        if peers(lab, 1) == before {
            return (before, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("gateway 1's peer counters never held still");
}

#[test]
fn tunctl_reports_a_running_mesh() {
    let lab = support::lab(3);
    support::start_gateways(&lab);
    let pod1 = lab.pod_ns(1);
    wait_ping(&lab, &pod1, plan::pod_addr(2), MESH_UP_TIMEOUT);
    wait_ping(&lab, &pod1, plan::pod_addr(3), MESH_UP_TIMEOUT);
    try_wait_for(
        "both of gateway 1's peers to show connected",
        || peers(&lab, 1).iter().all(|p| p["status"] == "connected"),
        Duration::from_secs(10),
    )
    .unwrap();

    // The default table.
    let (json, table) = stable(&lab, || lab.tunctl_text(1, &["peers"]).unwrap());
    let (headers, rows) = parse_table(&table);
    assert_eq!(
        headers,
        [
            "PEER",
            "ENDPOINT",
            "STATUS",
            "HANDSHAKE",
            "RX",
            "TX",
            "SPIFFE ID",
            "SVID EXPIRES",
            "ALLOWED IPS"
        ],
        "table:\n{table}"
    );
    assert_eq!(rows.len(), 2, "one row per peer:\n{table}");
    for (j, name) in [(2, "c2"), (3, "c3")] {
        let p = json.iter().find(|p| p["name"] == name).unwrap();
        let row = rows
            .iter()
            .find(|r| cell(r, "PEER") == name)
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        assert_eq!(
            cell(row, "ENDPOINT"),
            format!("{}:{}", plan::wan_addr(j), plan::LISTEN_PORT)
        );
        assert_eq!(cell(row, "STATUS"), "connected", "table:\n{table}");
        let handshake = cell(row, "HANDSHAKE");
        assert!(
            handshake.ends_with("s ago") && handshake != "never",
            "HANDSHAKE {handshake:?}"
        );
        assert!(num(p, "rx_bytes") > 0 && num(p, "tx_bytes") > 0, "{p}");
        assert_eq!(cell(row, "RX"), human_bytes(num(p, "rx_bytes")));
        assert_eq!(cell(row, "TX"), human_bytes(num(p, "tx_bytes")));
        assert_eq!(
            cell(row, "ALLOWED IPS"),
            format!("{},{}/32", plan::cluster_cidr(j), plan::mesh_addr(j))
        );
        assert_eq!(p["public_key"], lab.public_key(j));
        // Peers configured by bare public key are shown as such, with no SVID.
        assert_eq!(cell(row, "SPIFFE ID"), "<unverified>");
        assert_eq!(cell(row, "SVID EXPIRES"), "-");
        assert_eq!(p["verified"], false);
    }

    // -o wide: the same rows plus key, keepalive, handshake count and drops.
    let (json, wide) = stable(&lab, || {
        lab.tunctl_text(1, &["-o", "wide", "peers"]).unwrap()
    });
    let (headers, rows) = parse_table(&wide);
    assert_eq!(
        headers,
        [
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
            "ALLOWED IPS"
        ],
        "wide:\n{wide}"
    );
    assert_eq!(rows.len(), 2, "wide:\n{wide}");
    for (j, name) in [(2, "c2"), (3, "c3")] {
        let p = json.iter().find(|p| p["name"] == name).unwrap();
        let row = rows.iter().find(|r| cell(r, "PEER") == name).unwrap();
        assert_eq!(cell(row, "PUBLIC KEY"), lab.public_key(j));
        assert_eq!(cell(row, "STATUS"), "connected");
        assert_eq!(cell(row, "KEEPALIVE"), format!("{PERSISTENT_KEEPALIVE}s"));
        assert_eq!(cell(row, "HANDSHAKES"), num(p, "handshakes").to_string());
        assert!(num(p, "handshakes") >= 1);
        let dropped: u64 = p["dropped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(cell(row, "DROPPED"), dropped.to_string());
        assert_eq!(cell(row, "RX"), human_bytes(num(p, "rx_bytes")));
    }

    // -o yaml: a list of the same peers, with the same keys and states.
    let (json, yaml) = stable(&lab, || {
        lab.tunctl_text(1, &["-o", "yaml", "peers"]).unwrap()
    });
    assert_eq!(
        yaml.lines().filter(|l| l.starts_with("- ")).count(),
        2,
        "yaml:\n{yaml}"
    );
    for p in &json {
        for field in ["public_key", "name", "endpoint", "status"] {
            let value = p[field].as_str().unwrap();
            assert!(
                yaml_has(&yaml, field, value),
                "yaml has no {field}: {value}:\n{yaml}"
            );
        }
        for field in ["rx_bytes", "tx_bytes", "handshakes"] {
            let value = num(p, field).to_string();
            assert!(
                yaml_has(&yaml, field, &value),
                "yaml has no {field}: {value}:\n{yaml}"
            );
        }
    }

    // status -o json.
    let s = status(&lab, 1);
    let ifname = lab.gateway_config(1).interface.name;
    assert_eq!(s["name"], ifname.as_str(), "{s}");
    assert_eq!(s["public_key"], lab.public_key(1), "{s}");
    assert_eq!(num(&s, "listen_port"), u64::from(plan::LISTEN_PORT), "{s}");
    assert_eq!(num(&s, "peers"), 2, "{s}");
    assert_eq!(num(&s, "connected_peers"), 2, "{s}");
    assert_eq!(num(&s, "mtu"), u64::from(TUNNEL_MTU), "{s}");
    assert_eq!(
        s["addresses"],
        serde_json::json!([plan::with_prefix(plan::mesh_addr(1))]),
        "{s}"
    );
    assert_eq!(
        num(&s, "pid"),
        u64::from(lab.gateway_pid(1).unwrap()),
        "{s}"
    );
    assert_eq!(
        Path::new(s["config_file"].as_str().unwrap()),
        lab.config_path(1),
        "{s}"
    );
    assert!(s["dropped"].is_object(), "{s}");

    // status as a table names the same things.
    let table = lab.tunctl_text(1, &["status"]).unwrap();
    for want in [
        "interface:".to_owned(),
        ifname.clone(),
        lab.public_key(1).to_owned(),
        plan::LISTEN_PORT.to_string(),
        "2/2 connected".to_owned(),
    ] {
        assert!(
            table.contains(&want),
            "status table lacks {want:?}:\n{table}"
        );
    }
}
