//! Interop: the SVIDs this crate issues are standard X509-SVIDs. The `spiffe` crate parses
//! them (leaf and signing-certificate rules of the X509-SVID spec), and `openssl verify`
//! builds and checks the path against the bundle, as client and as server certificate, in
//! strict mode. Each has a negative control, so a checker that accepted anything would fail.
//! `openssl` must be installed (scripts/install-deps.sh); without it these tests fail.

mod common;

use common::{gateway, now, td, wg_keypair, Pki, DAY};
use isthmus_pki::pem_io::{self, NewFile};
use isthmus_pki::{IssuedSvid, SpiffeId, WIREGUARD_KEY_OID};
use std::path::Path;
use std::process::Command;
use std::time::UNIX_EPOCH;

fn issued(pki: &Pki) -> Vec<(&'static str, IssuedSvid)> {
    let (_, wg) = wg_keypair();
    let edge = SpiffeId::edge(&td(), "pi-7").unwrap();
    vec![
        (
            "root-signed gateway",
            pki.root
                .issue(&gateway("east", "gw-1"), &wg, now(), DAY)
                .unwrap(),
        ),
        (
            "intermediate-signed gateway",
            pki.east
                .issue(&gateway("east", "gw-2"), &wg, now(), DAY)
                .unwrap(),
        ),
        ("edge", pki.root.issue(&edge, &wg, now(), DAY).unwrap()),
    ]
}

#[test]
fn spiffe_crate_accepts_issued_svids() {
    let pki = Pki::new(&td());
    for (name, svid) in issued(&pki) {
        let chain: Vec<u8> = svid.chain_der().concat();
        let parsed = spiffe::X509Svid::parse_from_der(&chain, &svid.key_der())
            .unwrap_or_else(|e| panic!("{name}: spiffe refused the SVID: {e}"));
        assert_eq!(parsed.spiffe_id().to_string(), svid.id().as_str(), "{name}");
        assert_eq!(parsed.cert_chain().len(), svid.chain_der().len(), "{name}");
    }
    // The bundle parses as an X.509 bundle of the trust domain.
    let td = spiffe::TrustDomain::new("isthmus.local").unwrap();
    let bundle = spiffe::X509Bundle::parse_from_der(td, pki.root.cert_der()).unwrap();
    assert_eq!(bundle.authorities().len(), 1);
}

#[test]
fn spiffe_crate_refuses_a_ca_as_svid() {
    // Negative control: the library does check, it is not a mere DER parser.
    let pki = Pki::new(&td());
    let refused = spiffe::X509Svid::parse_from_der(pki.east.cert_der(), &[]);
    assert!(refused.is_err(), "a CA certificate passed as an X509-SVID");
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed (Debian `openssl`, scripts/install-deps.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl verify` at the tests' fixed instant, as `purpose`, in strict mode.
fn openssl_verify(dir: &Path, bundle: &str, chain: &str, purpose: &str) -> (bool, String) {
    let at = now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    openssl(
        &[
            "verify",
            "-x509_strict",
            "-attime",
            &at,
            "-purpose",
            purpose,
            "-CAfile",
            bundle,
            "-untrusted",
            chain,
            chain,
        ],
        dir,
    )
}

#[test]
fn openssl_verifies_issued_svids_against_the_bundle() {
    let pki = Pki::new(&td());
    let stranger = Pki::new(&td());
    let dir = tempfile::tempdir().unwrap();
    pem_io::write_new_files(&[
        NewFile::public(dir.path().join("bundle.pem"), pki.bundle.to_pem()),
        NewFile::public(dir.path().join("stranger.pem"), stranger.bundle.to_pem()),
    ])
    .unwrap();
    for (i, (name, svid)) in issued(&pki).into_iter().enumerate() {
        let chain = format!("svid{i}.pem");
        pem_io::write_public(&dir.path().join(&chain), svid.chain_pem().as_bytes()).unwrap();
        for purpose in ["sslclient", "sslserver"] {
            let (ok, text) = openssl_verify(dir.path(), "bundle.pem", &chain, purpose);
            assert!(ok && text.contains(": OK"), "{name} as {purpose}: {text}");
        }
        // Negative control: the same chain against a root of the same name it does not lead to.
        let (ok, text) = openssl_verify(dir.path(), "stranger.pem", &chain, "sslclient");
        assert!(!ok, "{name} verified against a stranger's bundle: {text}");
    }
}

#[test]
fn openssl_sees_the_binding_as_a_non_critical_extension() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let svid = pki
        .east
        .issue(&gateway("east", "gw-1"), &wg, now(), DAY)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    pem_io::write_public(&dir.path().join("svid.pem"), svid.chain_pem().as_bytes()).unwrap();
    let (ok, text) = openssl(&["x509", "-in", "svid.pem", "-noout", "-text"], dir.path());
    assert!(ok, "{text}");
    // openssl prints an extension as `<OID>:` or `<OID>: critical`.
    let line = text
        .lines()
        .find(|l| l.contains(WIREGUARD_KEY_OID))
        .unwrap_or_else(|| panic!("no binding extension in:\n{text}"));
    assert!(!line.contains("critical"), "{line}");
    assert!(text.contains("URI:spiffe://isthmus.local/cluster/east/gateway/gw-1"));
    assert!(text.contains("CA:FALSE"));
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
}
