//! Gateways that know each other only by endpoint and expected SPIFFE identity: the Noise join
//! verifies each side's SVID chain and its WireGuard key binding before any WireGuard peer is
//! installed. Certificates come from `tunctl pki`. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{peers, pod};
use isthmus_lab::{plan, wait_for, GatewayConfig, Lab, Signal, TUNCTL_BIN};
use serde_json::Value;

const TRUST_DOMAIN: &str = "isthmus.local";

/// From the moment every gateway is up, each pod pair must answer within this.
const MESH_DEADLINE: Duration = Duration::from_secs(10);

/// `[interface] rotation_grace` of every gateway here: how long a rotated peer's old key still
/// works.
const ROTATION_GRACE: Duration = Duration::from_secs(6);

/// How long a refused join gets to show up in `tunctl peers`.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

fn spiffe_gateway(cluster: usize, node: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/cluster/c{cluster}/gateway/{node}")
}

/// Runs the lab's `tunctl` (outside any namespace) with `args`; panics with its output unless
/// it exits zero. Returns stdout.
fn tunctl_ok(lab: &Lab, args: &[&str]) -> String {
    let bin = lab.binary(TUNCTL_BIN).unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "tunctl {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// A trust domain's root and one intermediate per cluster, under `<lab dir>/pki`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `tunctl pki init`, then `tunctl pki intermediate --cluster c{i}` for `i` in `1..=clusters`.
    fn new(lab: &Lab, clusters: usize) -> Pki {
        Self::new_in(lab, clusters, "pki")
    }

    /// Like [`Pki::new`], under `<lab dir>/<name>`: a second, independent root.
    fn new_in(lab: &Lab, clusters: usize, name: &str) -> Pki {
        let dir = lab.dir().join(name);
        let root = dir.join("root");
        tunctl_ok(
            lab,
            &[
                "pki",
                "init",
                "--trust-domain",
                TRUST_DOMAIN,
                "--out",
                path_str(&root),
            ],
        );
        let pki = Pki { dir };
        for i in 1..=clusters {
            tunctl_ok(
                lab,
                &[
                    "pki",
                    "intermediate",
                    "--cluster",
                    &format!("c{i}"),
                    "--ca",
                    path_str(&root),
                    "--out",
                    path_str(&pki.intermediate(i)),
                ],
            );
        }
        pki
    }

    fn intermediate(&self, cluster: usize) -> PathBuf {
        self.dir.join(format!("c{cluster}-ca"))
    }

    /// `tunctl pki issue --gateway NODE --cluster c{cluster}` signed by that cluster's
    /// intermediate, into `<pki>/<out>`: svid.pem, svid.key, wg.key, bundle.pem.
    fn issue(&self, lab: &Lab, cluster: usize, node: &str, out: &str) -> PathBuf {
        let dir = self.dir.join(out);
        tunctl_ok(
            lab,
            &[
                "pki",
                "issue",
                "--gateway",
                node,
                "--cluster",
                &format!("c{cluster}"),
                "--ca",
                path_str(&self.intermediate(cluster)),
                "--out",
                path_str(&dir),
            ],
        );
        for f in ["svid.pem", "svid.key", "wg.key", "bundle.pem"] {
            assert!(
                dir.join(f).is_file(),
                "tunctl pki issue wrote no {f} in {}",
                dir.display()
            );
        }
        dir
    }
}

/// `tunctl pubkey < key_file`.
fn wg_public_key(lab: &Lab, key_file: &Path) -> String {
    let bin = lab.binary(TUNCTL_BIN).unwrap_or_else(|e| panic!("{e:#}"));
    let input = std::fs::File::open(key_file)
        .unwrap_or_else(|e| panic!("opening {}: {e}", key_file.display()));
    let out = Command::new(bin)
        .arg("pubkey")
        .stdin(Stdio::from(input))
        .output()
        .expect("running tunctl pubkey");
    assert!(
        out.status.success(),
        "tunctl pubkey < {} failed: {}",
        key_file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(key.len(), 44, "tunctl pubkey printed {key:?}");
    key
}

/// How a peer by identity names whom it expects.
enum Expect {
    Id(String),
    Cluster(String),
}

/// `[[peer]]` for cluster `j` by identity, with the lab's defaults.
fn identity_peer(j: usize, expect: Expect) -> toml::Value {
    match expect {
        Expect::Id(id) => isthmus_lab::control::identity_peer(j, "spiffe_id", &id),
        Expect::Cluster(c) => isthmus_lab::control::identity_peer(j, "cluster", &c),
    }
}

/// Cluster `i`'s config from the SVID directory `dir` (its own wg.key) with one peer by
/// identity: gateway `gw` of cluster `j`.
fn write_gw_config(lab: &Lab, i: usize, dir: &Path, j: usize) -> String {
    write_identity_config(
        lab,
        i,
        dir,
        &dir.join("wg.key"),
        vec![identity_peer(j, Expect::Id(spiffe_gateway(j, "gw")))],
    )
}

/// Cluster `i`'s default config with the SVID files of `svid_dir`, WireGuard key `wg_key`, and
/// only the given peers by identity (the lab's `public_key` peers removed). Written to the lab.
fn write_identity_config(
    lab: &Lab,
    i: usize,
    svid_dir: &Path,
    wg_key: &Path,
    peers: Vec<toml::Value>,
) -> String {
    let mut cfg: GatewayConfig = lab.gateway_config(i);
    cfg.peers.clear();
    cfg.interface.private_key_file = wg_key.to_path_buf();
    for (field, file) in [
        ("svid_file", "svid.pem"),
        ("svid_key_file", "svid.key"),
        ("trust_bundle_file", "bundle.pem"),
    ] {
        cfg.interface.extra.insert(
            field.into(),
            path_str(&svid_dir.join(file)).to_owned().into(),
        );
    }
    cfg.interface.extra.insert(
        "rotation_grace".into(),
        i64::try_from(ROTATION_GRACE.as_secs()).unwrap().into(),
    );
    let n = peers.len();
    cfg.extra.insert("peer".into(), toml::Value::Array(peers));
    let text = cfg.render().expect("rendering the config");
    assert_eq!(
        text.matches("[[peer]]").count(),
        n,
        "config of gateway {i} does not render its {n} peers by identity:\n{text}"
    );
    assert!(
        !text.contains("public_key"),
        "config of gateway {i} still has a public_key peer:\n{text}"
    );
    lab.write_gateway_config(i, &cfg)
        .unwrap_or_else(|e| panic!("writing config {i}: {e:#}"));
    text
}

fn start(lab: &Lab, i: usize) {
    lab.start_gateway(i)
        .unwrap_or_else(|e| panic!("failed to start gateway {i}: {e:#}"));
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Gateway `i`'s row for its peer named `name`, if any.
fn find_peer(lab: &Lab, i: usize, name: &str) -> Option<Value> {
    peers(lab, i).into_iter().find(|p| p["name"] == name)
}

/// Waits until pod `i` gets an echo reply from pod `j`, by `deadline`.
fn wait_pod_reaches(lab: &Lab, i: usize, j: usize, deadline: Instant, since: Instant) {
    let ok = wait_for(
        || lab.ping(&lab.pod_ns(i), pod(j), 1).unwrap_or(0) == 1,
        deadline.saturating_duration_since(Instant::now()),
    );
    if !ok {
        lab.dump_gateway_logs();
    }
    assert!(
        ok,
        "pod {i} -> pod {j}: no echo reply {:?} after the gateways were up (deadline {MESH_DEADLINE:?}); \
         gateway {i} peers: {:?}",
        since.elapsed(),
        peers(lab, i)
    );
}

/// Asserts gateway `i`'s row `name` is a joined, verified, connected peer with identity `id`
/// and WireGuard key `key`.
fn assert_verified_peer(lab: &Lab, i: usize, name: &str, id: &str, key: &str) {
    // The row turns connected with the first handshake; pings just passed, so this is quick.
    let connected = wait_for(
        || find_peer(lab, i, name).is_some_and(|p| p["status"] == "connected"),
        Duration::from_secs(3),
    );
    let p = find_peer(lab, i, name)
        .unwrap_or_else(|| panic!("gateway {i} has no peer {name}: {:?}", peers(lab, i)));
    assert!(connected, "gateway {i} peer {name} is not connected: {p}");
    assert_eq!(p["verified"], true, "gateway {i} peer {name}: {p}");
    assert_eq!(p["spiffe_id"], id, "gateway {i} peer {name}: {p}");
    assert_eq!(p["public_key"], key, "gateway {i} peer {name}: {p}");
    let expires = p["svid_expires_unix_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("gateway {i} peer {name}: no svid_expires_unix_ms: {p}"));
    assert!(
        expires > now_unix_ms(),
        "gateway {i} peer {name}: SVID expiry {expires} is not in the future: {p}"
    );
}

/// Asserts no row of gateway `i` is joined: every row has an empty key, is unverified and not
/// connected. Returns the row named `name`.
fn assert_unjoined(lab: &Lab, i: usize, name: &str, context: &str) -> Value {
    let list = peers(lab, i);
    assert_eq!(list.len(), 1, "gateway {i} ({context}): {list:?}");
    for p in &list {
        assert_eq!(p["verified"], false, "gateway {i} ({context}): {p}");
        assert_eq!(p["public_key"], "", "gateway {i} ({context}): {p}");
        assert_ne!(p["status"], "connected", "gateway {i} ({context}): {p}");
    }
    find_peer(lab, i, name).unwrap_or_else(|| panic!("gateway {i} has no peer {name}: {list:?}"))
}

#[test]
fn three_gateways_join_by_identity_and_pass_traffic() {
    const N: usize = 3;
    let lab = common::lab(N);
    let pki = Pki::new(&lab, N);
    let svids: Vec<PathBuf> = (1..=N)
        .map(|i| pki.issue(&lab, i, "gw", &format!("c{i}-gw")))
        .collect();
    let keys: Vec<String> = svids
        .iter()
        .map(|d| wg_public_key(&lab, &d.join("wg.key")))
        .collect();
    for i in 1..=N {
        let peers = (1..=N)
            .filter(|&j| j != i)
            .map(|j| identity_peer(j, Expect::Id(spiffe_gateway(j, "gw"))))
            .collect();
        let svid = &svids[i - 1];
        write_identity_config(&lab, i, svid, &svid.join("wg.key"), peers);
    }
    for i in 1..=N {
        start(&lab, i);
    }
    let up = Instant::now();
    let deadline = up + MESH_DEADLINE;
    for i in 1..=N {
        for j in (1..=N).filter(|&j| j != i) {
            wait_pod_reaches(&lab, i, j, deadline, up);
        }
    }
    eprintln!(
        "full mesh of {N} passes pings {:?} after start",
        up.elapsed()
    );
    for i in 1..=N {
        for j in (1..=N).filter(|&j| j != i) {
            common::assert_pings(&lab, &lab.pod_ns(i), pod(j), 3);
        }
    }
    for i in 1..=N {
        let list = peers(&lab, i);
        assert_eq!(list.len(), N - 1, "gateway {i}: {list:?}");
        for j in (1..=N).filter(|&j| j != i) {
            assert_verified_peer(
                &lab,
                i,
                &format!("c{j}"),
                &spiffe_gateway(j, "gw"),
                &keys[j - 1],
            );
        }
    }
}

#[test]
fn wrong_identity_or_unbound_key_gets_no_tunnel() {
    let lab = common::lab(2);
    let pki = Pki::new(&lab, 2);
    let gw1 = pki.issue(&lab, 1, "gw", "c1-gw");
    // (a) A valid SVID of cluster c2, but for node `other` where gw1 expects node `gw`.
    let other = pki.issue(&lab, 2, "other", "c2-other");
    write_gw_config(&lab, 1, &gw1, 2);
    write_gw_config(&lab, 2, &other, 1);
    start(&lab, 1);
    start(&lab, 2);

    let refused = |p: &Value| {
        let reason = p["status_reason"].as_str().unwrap_or_default();
        p["status"] == "error"
            && (reason.contains("wrong-identity")
                || reason.contains("not-a-peer")
                || reason.contains("not a configured peer"))
    };
    let shown = wait_for(
        || find_peer(&lab, 1, "c2").is_some_and(|p| refused(&p)),
        REFUSAL_DEADLINE,
    );
    let row = assert_unjoined(&lab, 1, "c2", "wrong identity");
    assert!(
        shown,
        "gateway 1 does not say why c2 (presenting {}) was refused within {REFUSAL_DEADLINE:?}: {row}",
        spiffe_gateway(2, "other")
    );
    assert_eq!(row["spiffe_id"], spiffe_gateway(2, "gw"), "{row}");
    eprintln!("wrong identity, gateway 1 says: {}", row["status_reason"]);
    let received = lab.ping(&lab.pod_ns(1), pod(2), 3).unwrap_or(0);
    assert_eq!(
        received, 0,
        "pod 1 reached pod 2 through a gateway with the wrong identity"
    );
    // gw2 must not have installed gw1 either (gw1 refused to let it join, or it refused gw1).
    let row2 = assert_unjoined(&lab, 2, "c1", "wrong identity, remote side");
    eprintln!("wrong identity, gateway 2 says: {}", row2["status_reason"]);
    let row = assert_unjoined(&lab, 1, "c2", "wrong identity, after pings");
    assert!(refused(&row), "gateway 1 row changed: {row}");

    // (b) The right identity, but a WireGuard key its SVID does not bind.
    lab.stop_gateway(2, Signal::Term)
        .unwrap_or_else(|e| panic!("stopping gateway 2: {e:#}"));
    let gw2 = pki.issue(&lab, 2, "gw", "c2-gw");
    let stray_key = lab.dir().join("c2-stray.key");
    std::fs::write(&stray_key, tunctl_ok(&lab, &["genkey"])).expect("writing the stray key");
    assert_ne!(
        wg_public_key(&lab, &stray_key),
        wg_public_key(&lab, &gw2.join("wg.key")),
        "genkey gave the SVID's key"
    );
    write_identity_config(
        &lab,
        2,
        &gw2,
        &stray_key,
        vec![identity_peer(1, Expect::Id(spiffe_gateway(1, "gw")))],
    );
    let err = match lab.start_gateway(2) {
        Ok(()) => {
            lab.dump_gateway_logs();
            panic!("gateway 2 started with a WireGuard key its SVID does not bind");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(!lab.gateway_running(2), "gateway 2 is still running: {err}");
    assert!(
        err.contains("exited with") && !err.contains("exit status: 0"),
        "gateway 2 did not exit non-zero: {err}"
    );
    let stderr = lab.gateway_stderr(2);
    assert!(
        stderr.contains("svid_file"),
        "gateway 2's error does not name svid_file: {stderr}"
    );
    assert!(
        stderr.contains("key-mismatch") || stderr.contains("binds WireGuard key"),
        "gateway 2's error does not name the key binding rule: {stderr}"
    );
    eprintln!(
        "mismatched key, gateway 2 refuses to start: {}",
        stderr.trim()
    );

    // The remote view: gw1 never installs anything for c2, and says its join fails.
    let refused_since = Instant::now();
    let mut last = Value::Null;
    while refused_since.elapsed() < Duration::from_secs(3) {
        last = assert_unjoined(&lab, 1, "c2", "gateway 2 down with a mismatched key");
        let reason = last["status_reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("join"),
            "gateway 1 row for c2 gives no join reason: {last}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("mismatched key, gateway 1 says: {}", last["status_reason"]);
    let received = lab.ping(&lab.pod_ns(1), pod(2), 2).unwrap_or(0);
    assert_eq!(received, 0, "pod 1 reached pod 2");
}

#[test]
fn cluster_peer_accepts_any_gateway_of_that_cluster() {
    let lab = common::lab(2);
    let pki = Pki::new(&lab, 2);
    let gw1 = pki.issue(&lab, 1, "gw", "c1-gw");
    // Any node name of cluster c2 will do for gw1; gw1 never hears `east` in its config.
    let gw2 = pki.issue(&lab, 2, "east", "c2-east");
    let key1 = wg_public_key(&lab, &gw1.join("wg.key"));
    let key2 = wg_public_key(&lab, &gw2.join("wg.key"));
    let text = write_identity_config(
        &lab,
        1,
        &gw1,
        &gw1.join("wg.key"),
        vec![identity_peer(2, Expect::Cluster("c2".into()))],
    );
    assert!(
        text.contains("cluster = \"c2\"") && !text.contains("spiffe_id"),
        "{text}"
    );
    write_gw_config(&lab, 2, &gw2, 1);
    start(&lab, 1);
    start(&lab, 2);
    let up = Instant::now();
    let deadline = up + MESH_DEADLINE;
    wait_pod_reaches(&lab, 1, 2, deadline, up);
    wait_pod_reaches(&lab, 2, 1, deadline, up);
    eprintln!("cluster peer passes pings {:?} after start", up.elapsed());
    common::assert_pings(&lab, &lab.pod_ns(1), pod(2), 3);
    common::assert_pings(&lab, &lab.pod_ns(2), pod(1), 3);
    assert_eq!(peers(&lab, 1).len(), 1, "{:?}", peers(&lab, 1));
    assert_eq!(peers(&lab, 2).len(), 1, "{:?}", peers(&lab, 2));
    assert_verified_peer(&lab, 1, "c2", &spiffe_gateway(2, "east"), &key2);
    assert_verified_peer(&lab, 2, "c1", &spiffe_gateway(1, "gw"), &key1);
}

/// The longest run of iperf3 intervals (from `-J -i`) in which the receiver got nothing, in
/// seconds, and the bytes received in all.
fn longest_stall(iperf_json: &str) -> (f64, u64) {
    let v: Value = serde_json::from_str(iperf_json)
        .unwrap_or_else(|e| panic!("iperf3 printed no JSON ({e}):\n{iperf_json}"));
    let mut longest = 0.0f64;
    let mut run = 0.0f64;
    for iv in v["intervals"].as_array().expect("iperf3 intervals") {
        let s = &iv["sum"];
        let secs = s["seconds"].as_f64().unwrap_or(0.0);
        if s["bytes"].as_u64().unwrap_or(0) == 0 {
            run += secs;
            longest = longest.max(run);
        } else {
            run = 0.0;
        }
    }
    let total = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    (longest, total)
}

#[test]
fn static_key_rotation_under_load_keeps_the_transfer_going() {
    let lab = common::lab(2);
    let pki = Pki::new(&lab, 2);
    let gw1 = pki.issue(&lab, 1, "gw", "c1-gw");
    let gw2 = pki.issue(&lab, 2, "gw", "c2-gw");
    let old_key2 = wg_public_key(&lab, &gw2.join("wg.key"));
    write_gw_config(&lab, 1, &gw1, 2);
    write_gw_config(&lab, 2, &gw2, 1);
    start(&lab, 1);
    start(&lab, 2);
    let up = Instant::now();
    wait_pod_reaches(&lab, 1, 2, up + MESH_DEADLINE, up);
    assert_verified_peer(&lab, 1, "c2", &spiffe_gateway(2, "gw"), &old_key2);

    // A TCP transfer from pod 2 to pod 1 (-R: the client in pod 1 receives, so its 100 ms
    // intervals count bytes that really crossed the tunnel, not bytes buffered for sending).
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1"]);
    let _server = lab.spawn(&lab.pod_ns(2), &server).expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Command::new("iperf3");
    client.args([
        "-c",
        &pod(2).to_string(),
        "-t",
        "6",
        "-i",
        "0.1",
        "-J",
        "-R",
    ]);
    let mut client = lab.spawn(&lab.pod_ns(1), &client).expect("iperf3 client");
    std::thread::sleep(Duration::from_secs(2));

    // Rotate gw2 with `tunctl reload`: a new SVID bound to a new WireGuard key.
    let gw2_new = pki.issue(&lab, 2, "gw", "c2-gw-rotated");
    let new_key2 = wg_public_key(&lab, &gw2_new.join("wg.key"));
    assert_ne!(new_key2, old_key2);
    write_gw_config(&lab, 2, &gw2_new, 1);
    let reloaded = lab.tunctl_text(2, &["reload"]).expect("tunctl reload");
    let rotated_at = Instant::now();
    assert!(
        reloaded.contains("rotated"),
        "tunctl reload did not report the rotation: {reloaded}"
    );

    // gw1 learns the new binding: the new key is gw2's peer, the old one is retiring (it still
    // works during the grace period, but nothing is routed to it).
    let learned = wait_for(
        || {
            find_peer(&lab, 1, "c2").is_some_and(|p| p["public_key"] == new_key2)
                && find_peer(&lab, 1, "c2 (old key)").is_some_and(|p| p["public_key"] == old_key2)
        },
        Duration::from_secs(3),
    );
    assert!(
        learned,
        "gw1 did not learn gw2's new key beside the retiring one: {:?}",
        peers(&lab, 1)
    );
    // Learned through the tunnel: the re-join came to gw1's join port from gw2's mesh address.
    let log1 = lab.gateway_stderr(1);
    let from_mesh = format!("from={}:", plan::mesh_addr(2));
    assert!(
        log1.lines()
            .any(|l| l.contains("peer joined") && l.contains(&from_mesh)),
        "gw1 saw no re-join from gw2's mesh address ({from_mesh}):\n{log1}"
    );

    // During the grace period the old key still handshakes: a stock WireGuard peer
    // (boringtun-cli) holding gw2's old private key completes a handshake with gw1.
    let key1 = wg_public_key(&lab, &gw1.join("wg.key"));
    let old_key_file = gw2.join("wg.key");
    let during = old_key_peer(&lab, "oldkey", "10.255.0.98", &old_key_file, &key1);
    let _ = lab.ping(&during.ns, plan::mesh_addr(1), 1);
    assert!(
        wait_for(|| during.handshaked(&lab), Duration::from_secs(3)),
        "the old key did not handshake within its grace period ({:?} after the rotation)",
        rotated_at.elapsed()
    );

    let status = client
        .wait_timeout(Duration::from_secs(20))
        .expect("waiting for iperf3")
        .expect("iperf3 finished");
    let out = client.stdout();
    assert!(
        status.success(),
        "iperf3 failed across the rotation ({status}):\n{out}\n{}",
        client.stderr()
    );
    let (stall, bytes) = longest_stall(&out);
    eprintln!(
        "key rotation under load: longest gap in traffic {stall:.1} s, {bytes} bytes received"
    );
    assert!(
        bytes > 10_000_000,
        "too little traffic crossed: {bytes} bytes"
    );
    assert!(
        stall < 2.0,
        "traffic stopped for {stall:.1} s during rotation (target < 1 s)"
    );

    // The grace period ends: gw1 drops the old key, not before.
    let gone = wait_for(
        || find_peer(&lab, 1, "c2 (old key)").is_none(),
        (ROTATION_GRACE + Duration::from_secs(3)).saturating_sub(rotated_at.elapsed()),
    );
    let retired_after = rotated_at.elapsed();
    assert!(
        gone,
        "gw1 still accepts gw2's old key {retired_after:?} after the rotation: {:?}",
        peers(&lab, 1)
    );
    assert!(
        retired_after + Duration::from_millis(500) >= ROTATION_GRACE,
        "gw1 dropped the old key after {retired_after:?}, before the grace period of {ROTATION_GRACE:?}"
    );
    eprintln!("old key refused {retired_after:?} after the rotation (grace {ROTATION_GRACE:?})");
    assert_verified_peer(&lab, 1, "c2", &spiffe_gateway(2, "gw"), &new_key2);
    let keys: Vec<Value> = peers(&lab, 1)
        .iter()
        .map(|p| p["public_key"].clone())
        .collect();
    assert_eq!(
        keys,
        vec![Value::from(new_key2.clone())],
        "gw1 peers after the grace period"
    );
    let status2 = lab.status_json(2);
    assert_eq!(
        status2["public_key"], new_key2,
        "gw2 runs with the new key: {status2}"
    );
    common::assert_pings(&lab, &lab.pod_ns(2), pod(1), 3);

    // After the grace period the old key no longer handshakes: a fresh boringtun-cli with it
    // gets nowhere, and gw1 counts its attempts as from an unknown peer.
    drop(during);
    let unknown_before = common::dropped(&lab.status_json(1), "unknown_peer");
    let after = old_key_peer(&lab, "oldkey2", "10.255.0.97", &old_key_file, &key1);
    let replies = lab.ping(&after.ns, plan::mesh_addr(1), 3).unwrap_or(0);
    assert_eq!(
        replies, 0,
        "gw1 answered through a tunnel keyed with gw2's retired key"
    );
    assert!(
        !after.handshaked(&lab),
        "the old key completed a handshake after the grace period"
    );
    let unknown_after = common::dropped(&lab.status_json(1), "unknown_peer");
    assert!(unknown_after > unknown_before, "gw1 did not count the old key's handshakes as unknown_peer ({unknown_before} -> {unknown_after})");
}

/// A stock WireGuard peer (boringtun-cli, configured with `wg`) on a new WAN host at `addr`,
/// holding the private key in `key_file`, with gw1 (public key `key1`) as its only peer.
struct OldKeyPeer {
    ns: String,
    ifname: String,
    _process: isthmus_lab::ChildGuard,
}

impl OldKeyPeer {
    /// Whether `wg show` reports a completed handshake.
    fn handshaked(&self, lab: &Lab) -> bool {
        lab.run(&self.ns, &["wg", "show", &self.ifname, "latest-handshakes"])
            .ok()
            .and_then(|out| out.split_whitespace().nth(1).map(|t| t != "0"))
            .unwrap_or(false)
    }
}

fn old_key_peer(lab: &Lab, suffix: &str, addr: &str, key_file: &Path, key1: &str) -> OldKeyPeer {
    let ns = lab
        .add_wan_host(suffix, addr.parse().unwrap())
        .expect("WAN host");
    let ifname = format!("{}-{}", lab.id(), &suffix[suffix.len() - 2..]);
    let mut bt = Command::new(boringtun_bin());
    bt.args(["--foreground", "--disable-drop-privileges", &ifname])
        .env("WG_SUDO", "1");
    let process = lab.spawn(&ns, &bt).expect("boringtun-cli");
    let sock = Path::new(isthmus_lab::WG_SOCKET_DIR).join(format!("{ifname}.sock"));
    assert!(
        wait_for(|| sock.exists(), Duration::from_secs(10)),
        "boringtun-cli did not start: {}",
        process.stderr()
    );
    let endpoint1 = format!("{}:{}", plan::wan_addr(1), plan::LISTEN_PORT);
    let mesh1 = format!("{}/32", plan::mesh_addr(1));
    lab.run(
        &ns,
        &[
            "wg",
            "set",
            &ifname,
            "private-key",
            path_str(key_file),
            "peer",
            key1,
            "endpoint",
            &endpoint1,
            "allowed-ips",
            &mesh1,
        ],
    )
    .expect("wg set");
    lab.run(&ns, &["ip", "addr", "add", "100.96.0.2/24", "dev", &ifname])
        .expect("ip addr");
    lab.run(&ns, &["ip", "link", "set", &ifname, "up"])
        .expect("ip link");
    OldKeyPeer {
        ns,
        ifname,
        _process: process,
    }
}

/// boringtun-cli on PATH, else where `cargo install` puts it.
fn boringtun_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("boringtun-cli"))
            .find(|c| c.is_file())
    });
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cargo/bin/boringtun-cli")
    })
}

/// A copy of the SVID directory `src` (svid.pem, svid.key, wg.key) whose bundle.pem is
/// `bundle`: the same identity, trusting other roots.
fn with_bundle(src: &Path, bundle: &str, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).expect("creating the SVID copy");
    for f in ["svid.pem", "svid.key", "wg.key"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap_or_else(|e| panic!("copying {f}: {e}"));
    }
    std::fs::write(out.join("bundle.pem"), bundle).expect("writing bundle.pem");
    out.to_path_buf()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn root_rollover_without_downtime() {
    let lab = common::lab(2);
    let old = Pki::new(&lab, 2);
    let new = Pki::new_in(&lab, 2, "pki-new");
    let id = |i| spiffe_gateway(i, "gw");
    let svid = [
        old.issue(&lab, 1, "gw", "c1-old"),
        old.issue(&lab, 2, "gw", "c2-old"),
    ];
    for i in 1..=2 {
        let d = &svid[i - 1];
        write_gw_config(&lab, i, d, 3 - i);
        start(&lab, i);
    }
    let up = Instant::now();
    wait_pod_reaches(&lab, 1, 2, up + MESH_DEADLINE, up);

    // 1. Both gateways trust the old and the new root.
    let both = format!(
        "{}{}",
        read(&svid[0].join("bundle.pem")),
        read(&new.dir.join("root").join("ca.pem"))
    );
    for i in 1..=2 {
        let d = with_bundle(&svid[i - 1], &both, &lab.dir().join(format!("c{i}-both")));
        write_gw_config(&lab, i, &d, 3 - i);
        lab.signal_gateway(i, Signal::Hup).expect("SIGHUP");
    }
    common::assert_pings(&lab, &lab.pod_ns(1), pod(2), 3);

    // 2. Each gateway moves to an SVID from the new root (and a new WireGuard key).
    for i in 1..=2 {
        let issued = new.issue(&lab, i, "gw", &format!("c{i}-new"));
        let d = with_bundle(&issued, &both, &lab.dir().join(format!("c{i}-new-both")));
        write_gw_config(&lab, i, &d, 3 - i);
        lab.signal_gateway(i, Signal::Hup).expect("SIGHUP");
        let key = wg_public_key(&lab, &d.join("wg.key"));
        let j = 3 - i;
        let seen = wait_for(
            || {
                find_peer(&lab, j, &format!("c{i}"))
                    .is_some_and(|p| p["public_key"] == key.as_str() && p["status"] == "connected")
            },
            Duration::from_secs(10),
        );
        assert!(
            seen,
            "gateway {j} did not take gateway {i}'s new key: {:?}",
            peers(&lab, j)
        );
        common::assert_pings(&lab, &lab.pod_ns(1), pod(2), 2);
    }

    // 3. The old root leaves both bundles; everything keeps working on the new root.
    let only_new = read(&new.dir.join("root").join("ca.pem"));
    for i in 1..=2 {
        let d = with_bundle(
            &lab.dir().join(format!("c{i}-new-both")),
            &only_new,
            &lab.dir().join(format!("c{i}-new-only")),
        );
        write_gw_config(&lab, i, &d, 3 - i);
        lab.signal_gateway(i, Signal::Hup).expect("SIGHUP");
    }
    std::thread::sleep(Duration::from_millis(500));
    common::assert_pings(&lab, &lab.pod_ns(1), pod(2), 3);
    common::assert_pings(&lab, &lab.pod_ns(2), pod(1), 3);
    for i in 1..=2 {
        let p = find_peer(&lab, i, &format!("c{}", 3 - i)).expect("peer row");
        assert_eq!(p["verified"], true, "{p}");
        assert_eq!(p["spiffe_id"], id(3 - i), "{p}");
    }
}

#[test]
fn garbage_on_the_join_port_leaves_live_tunnels_alone() {
    let lab = common::lab(2);
    let pki = Pki::new(&lab, 2);
    for i in 1..=2 {
        let d = pki.issue(&lab, i, "gw", &format!("c{i}-gw"));
        write_gw_config(&lab, i, &d, 3 - i);
        start(&lab, i);
    }
    let up = Instant::now();
    wait_pod_reaches(&lab, 1, 2, up + MESH_DEADLINE, up);
    let before = find_peer(&lab, 2, "c1").expect("gw2 row for c1");

    // From a stranger on the WAN: random bytes, truncated and oversized frames, and frames
    // that stop half way, on many connections to gw2's join port.
    let junk = lab
        .add_wan_host("junk", "10.255.0.99".parse().unwrap())
        .expect("WAN host");
    let script = r#"
import os, socket, struct, random
random.seed(7)
sent = 0
for i in range(300):
    try:
        s = socket.create_connection(("10.255.0.12", 51821), timeout=2)
        kind = i % 4
        if kind == 0:
            s.sendall(os.urandom(random.randint(1, 3000)))
        elif kind == 1:
            s.sendall(struct.pack(">H", 500) + os.urandom(100))
        elif kind == 2:
            s.sendall(struct.pack(">H", 65535) + os.urandom(64))
        else:
            s.sendall(struct.pack(">H", 32) + b"\x00\x01" + os.urandom(30))
        s.close()
        sent += 1
    except OSError:
        pass
print(sent)
"#;
    let out = lab
        .run(&junk, &["python3", "-c", script])
        .expect("sending junk");
    let sent: u32 = out.trim().parse().unwrap_or(0);
    assert!(sent > 0, "no junk connection was made: {out}");

    assert!(
        lab.gateway_running(2),
        "gw2 died from junk on its join port"
    );
    common::assert_pings(&lab, &lab.pod_ns(1), pod(2), 3);
    common::assert_pings(&lab, &lab.pod_ns(2), pod(1), 3);
    let after = find_peer(&lab, 2, "c1").expect("gw2 row for c1");
    assert_eq!(
        after["public_key"], before["public_key"],
        "peer key changed: {after}"
    );
    assert_eq!(after["verified"], true, "{after}");
    assert_eq!(
        after["handshakes"], before["handshakes"],
        "junk caused a new handshake: {after}"
    );
    eprintln!("{sent} junk connections to the join port; tunnel unaffected");
}
