//! `tunctl pki` end to end, through the real binary: make a trust domain, an intermediate and
//! SVIDs, inspect and verify them, and check what it refuses. The SVIDs it writes must be
//! accepted by the stock `spiffe` crate and by `openssl verify` (which must be installed).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn tunctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunctl"))
        .args(args)
        .env_remove("ISTHMUS_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run tunctl")
}

fn ok(args: &[&str]) -> String {
    let out = tunctl(args);
    assert!(
        out.status.success(),
        "tunctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with exit 1; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = tunctl(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "tunctl {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A trust domain with a root in `root/`, an `east` intermediate in `east/`, and gateway
/// `gw-1` of `east` issued into `gw1/`.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        ok(&[
            "pki",
            "init",
            "--trust-domain",
            "isthmus.local",
            "--out",
            p(&lab.path("root")),
        ]);
        ok(&[
            "pki",
            "intermediate",
            "--cluster",
            "east",
            "--ca",
            p(&lab.path("root")),
            "--out",
            p(&lab.path("east")),
        ]);
        ok(&[
            "pki",
            "issue",
            "--gateway",
            "gw-1",
            "--cluster",
            "east",
            "--ca",
            p(&lab.path("east")),
            "--out",
            p(&lab.path("gw1")),
            "--ttl",
            "24h",
        ]);
        lab
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
}

const GW1: &str = "spiffe://isthmus.local/cluster/east/gateway/gw-1";

#[test]
fn init_intermediate_issue_inspect_verify() {
    let lab = Lab::new();
    for key in ["root/ca.key", "east/ca.key", "gw1/svid.key", "gw1/wg.key"] {
        assert_eq!(mode(&lab.path(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&lab.path("gw1/svid.pem")), 0o644);

    // The WireGuard key file is the `wg genkey` form the gateway reads; its public key is the
    // one inspect reports as bound.
    let pubkey = Command::new(env!("CARGO_BIN_EXE_tunctl"))
        .arg("pubkey")
        .stdin(std::fs::File::open(lab.path("gw1/wg.key")).unwrap())
        .output()
        .unwrap();
    let pubkey = String::from_utf8(pubkey.stdout).unwrap().trim().to_owned();
    assert_eq!(pubkey.len(), 44);

    let svid = lab.path("gw1/svid.pem");
    let table = ok(&["pki", "inspect", p(&svid)]);
    assert!(table.contains(GW1), "{table}");
    assert!(table.contains(&pubkey), "{table}");
    assert!(
        table.contains("(in 23h59m)") || table.contains("(in 24h0m)"),
        "{table}"
    );
    assert!(
        table.contains("spiffe://isthmus.local/cluster/east "),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["pki", "inspect", "-o", "json", p(&svid)])).unwrap();
    assert_eq!(json["spiffe_id"], GW1);
    assert_eq!(json["wireguard_public_key"], pubkey.as_str());
    assert_eq!(json["chain"].as_array().unwrap().len(), 2);
    assert_eq!(json["chain"][1]["ca"], true);
    assert_eq!(json["chain"][0]["issuer"], json["chain"][1]["subject"]);
    let yaml = ok(&["pki", "inspect", "-o", "yaml", p(&svid)]);
    assert!(yaml.contains(&format!("spiffe_id: {GW1}")), "{yaml}");

    let bundle = lab.path("gw1/bundle.pem");
    let wg_key = lab.path("gw1/wg.key");
    let verified = ok(&[
        "pki",
        "verify",
        "--bundle",
        p(&bundle),
        p(&svid),
        "--id",
        GW1,
        "--wg-key-file",
        p(&wg_key),
    ]);
    assert!(verified.starts_with(&format!("ok {GW1}")), "{verified}");
    ok(&[
        "pki",
        "verify",
        "--bundle",
        p(&bundle),
        p(&svid),
        "--wg-public-key",
        &pubkey,
    ]);
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "pki",
        "verify",
        "-o",
        "json",
        "--bundle",
        p(&bundle),
        p(&svid),
    ]))
    .unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["intermediate"], "spiffe://isthmus.local/cluster/east");
}

#[test]
fn verify_names_the_broken_rule() {
    let lab = Lab::new();
    let (bundle, svid) = (lab.path("gw1/bundle.pem"), lab.path("gw1/svid.pem"));

    let wrong_id = fails(&[
        "pki",
        "verify",
        "--bundle",
        p(&bundle),
        p(&svid),
        "--id",
        "spiffe://isthmus.local/cluster/east/gateway/gw-2",
    ]);
    assert!(wrong_id.contains("rule wrong-identity"), "{wrong_id}");
    assert!(wrong_id.contains(p(&svid)), "names the file: {wrong_id}");

    // A WireGuard key that is not the one bound into the SVID.
    let other_key = lab.path("other.key");
    std::fs::write(&other_key, ok(&["genkey"])).unwrap();
    let wrong_key = fails(&[
        "pki",
        "verify",
        "--bundle",
        p(&bundle),
        p(&svid),
        "--wg-key-file",
        p(&other_key),
    ]);
    assert!(wrong_key.contains("rule key-mismatch"), "{wrong_key}");

    // A bundle from another `init` of the same trust domain.
    ok(&["pki", "init", "--out", p(&lab.path("other"))]);
    let stranger = fails(&[
        "pki",
        "verify",
        "--bundle",
        p(&lab.path("other/bundle.pem")),
        p(&svid),
    ]);
    assert!(stranger.contains("rule unknown-root"), "{stranger}");

    let bad_id = fails(&[
        "pki",
        "verify",
        "--bundle",
        p(&bundle),
        p(&svid),
        "--id",
        "spiffe://x/a/",
    ]);
    assert!(
        bad_id.contains("invalid --id") && bad_id.contains("ends with `/`"),
        "{bad_id}"
    );
    let missing = fails(&[
        "pki",
        "verify",
        "--bundle",
        p(&lab.path("nope.pem")),
        p(&svid),
    ]);
    assert!(missing.contains("nope.pem"), "{missing}");
}

#[test]
fn refuses_to_overwrite_or_to_sign_outside_the_cluster() {
    let lab = Lab::new();
    let root_cert = std::fs::read(lab.path("root/ca.pem")).unwrap();
    let again = fails(&["pki", "init", "--out", p(&lab.path("root"))]);
    assert!(again.contains("ca.pem already exists"), "{again}");
    assert_eq!(std::fs::read(lab.path("root/ca.pem")).unwrap(), root_cert);

    let outside = fails(&[
        "pki",
        "issue",
        "--gateway",
        "gw-9",
        "--cluster",
        "west",
        "--ca",
        p(&lab.path("east")),
        "--out",
        p(&lab.path("gw9")),
    ]);
    assert!(outside.contains("outside"), "{outside}");
    assert!(!lab.path("gw9").exists(), "nothing written");

    let edge_by_intermediate = fails(&[
        "pki",
        "issue",
        "--edge",
        "pi-7",
        "--ca",
        p(&lab.path("east")),
        "--out",
        p(&lab.path("pi")),
    ]);
    assert!(
        edge_by_intermediate.contains("outside"),
        "{edge_by_intermediate}"
    );

    let nested = fails(&[
        "pki",
        "intermediate",
        "--cluster",
        "east",
        "--ca",
        p(&lab.path("east")),
        "--out",
        p(&lab.path("nested")),
    ]);
    assert!(nested.contains("only a root"), "{nested}");

    let no_cluster = fails(&[
        "pki",
        "issue",
        "--gateway",
        "gw-1",
        "--ca",
        p(&lab.path("root")),
        "--out",
        p(&lab.path("x")),
    ]);
    assert!(no_cluster.contains("--cluster is required"), "{no_cluster}");
    let no_ca = fails(&[
        "pki",
        "issue",
        "--edge",
        "pi",
        "--ca",
        p(&lab.path("missing")),
        "--out",
        p(&lab.path("y")),
    ]);
    assert!(no_ca.contains("missing/ca.pem"), "{no_ca}");
}

#[test]
fn issued_files_are_accepted_by_the_spiffe_crate_and_openssl() {
    let lab = Lab::new();
    ok(&[
        "pki",
        "issue",
        "--edge",
        "pi-7",
        "--ca",
        p(&lab.path("root")),
        "--out",
        p(&lab.path("edge")),
    ]);
    ok(&[
        "pki",
        "issue",
        "--gateway",
        "gw-2",
        "--cluster",
        "west",
        "--ca",
        p(&lab.path("root")),
        "--out",
        p(&lab.path("gw2")),
    ]);
    for (dir, id) in [
        ("gw1", GW1),
        ("edge", "spiffe://isthmus.local/edge/pi-7"),
        ("gw2", "spiffe://isthmus.local/cluster/west/gateway/gw-2"),
    ] {
        let chain_pem = std::fs::read_to_string(lab.path(&format!("{dir}/svid.pem"))).unwrap();
        let key_pem = std::fs::read_to_string(lab.path(&format!("{dir}/svid.key"))).unwrap();
        let chain: Vec<u8> = pem_blocks(&chain_pem).concat();
        let key = pem_blocks(&key_pem).remove(0);
        let svid = spiffe::X509Svid::parse_from_der(&chain, &key)
            .unwrap_or_else(|e| panic!("{dir}: the spiffe crate refused it: {e}"));
        assert_eq!(svid.spiffe_id().to_string(), id);

        let out = Command::new("openssl")
            .args([
                "verify",
                "-x509_strict",
                "-purpose",
                "sslclient",
                "-CAfile",
                "bundle.pem",
            ])
            .args(["-untrusted", "svid.pem", "svid.pem"])
            .current_dir(lab.path(dir))
            .output()
            .expect("the openssl CLI must be installed (see scripts/install-deps.sh)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("svid.pem: OK"),
            "{dir}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The DER of each PEM block (base64 between the BEGIN/END lines).
fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut blocks = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            body.clear();
        } else if line.starts_with("-----END") {
            blocks.push(
                base64::engine::general_purpose::STANDARD
                    .decode(&body)
                    .unwrap(),
            );
        } else {
            body.push_str(line.trim());
        }
    }
    blocks
}
