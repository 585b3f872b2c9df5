//! Config parsing: the happy path and one test per kind of bad input, each checking that the
//! message names the file, the field and the value.

use super::*;
use crate::keys::PrivateKey;
use std::io::Write as _;

struct Dir {
    dir: tempfile::TempDir,
    peer: String,
}

fn setup() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate();
    std::fs::write(dir.path().join("gw.key"), key.to_base64()).unwrap();
    Dir {
        dir,
        peer: PrivateKey::generate().public_key().to_base64(),
    }
}

fn parse(d: &Dir, text: &str) -> Result<Config, ConfigError> {
    let path = d.dir.path().join("gw.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    Config::load(&path)
}

fn good(d: &Dir) -> String {
    format!(
        r#"
[interface]
name = "isthmus7"
private_key_file = "gw.key"
listen_port = 51999
address = ["100.96.0.1/24"]
mtu = 1400

[admin]
metrics_listen = "127.0.0.1:9750"

[[peer]]
name = "cluster-b"
public_key = "{}"
endpoint = "192.0.2.2:51820"
allowed_ips = ["10.2.0.0/16", "100.96.0.2/32"]
persistent_keepalive = 25
"#,
        d.peer
    )
}

#[test]
fn parses_a_full_config() {
    let d = setup();
    let c = parse(&d, &good(&d)).unwrap();
    assert_eq!(c.interface.name, "isthmus7");
    assert_eq!(c.interface.listen_port, 51999);
    assert_eq!(c.interface.mtu, 1400);
    assert_eq!(c.admin.socket, Path::new("/run/isthmus/isthmus7.sock"));
    assert_eq!(
        c.admin.metrics_listen,
        Some("127.0.0.1:9750".parse().unwrap())
    );
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].allowed_ips.len(), 2);
    assert_eq!(c.peers[0].persistent_keepalive, Some(25));
    assert_eq!(
        c.peers[0].endpoint,
        Some("192.0.2.2:51820".parse().unwrap())
    );
    assert!(c.dataplane.tun_offload && c.dataplane.udp_gso && c.dataplane.udp_gro);
}

#[test]
fn defaults_apply() {
    let d = setup();
    let c = parse(&d, "[interface]\nprivate_key_file = \"gw.key\"\n").unwrap();
    assert_eq!(c.interface.name, DEFAULT_NAME);
    assert_eq!(c.interface.listen_port, DEFAULT_LISTEN_PORT);
    assert_eq!(c.interface.mtu, DEFAULT_MTU);
    assert!(c.peers.is_empty());
    assert!(c.admin.uapi);
}

/// Each bad input, and the pieces its message must contain.
#[test]
fn bad_inputs_name_file_field_and_value() {
    let d = setup();
    let base = good(&d);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            base.replace(&d.peer, "not-a-key"),
            vec!["peer[0].public_key", "not-a-key", "base64"],
        ),
        (
            base.replace(&d.peer, "AAAA"),
            vec!["peer[0].public_key", "32"],
        ),
        (
            base.replace("10.2.0.0/16", "10.2.0.0/33"),
            vec!["peer[0].allowed_ips[0]", "10.2.0.0/33", "CIDR"],
        ),
        (
            base.replace("10.2.0.0/16", "banana"),
            vec!["peer[0].allowed_ips[0]", "banana"],
        ),
        (
            base.replace("10.2.0.0/16", "10.2.3.0/16"),
            vec!["allowed_ips[0]", "host bits", "10.2.0.0/16"],
        ),
        (
            base.replace(
                "listen_port = 51999",
                "listen_port = 51999\ncolour = \"blue\"",
            ),
            vec!["colour", "unknown field"],
        ),
        (
            base.replace("gw.key", "missing.key"),
            vec!["interface.private_key_file", "missing.key", "cannot read"],
        ),
        (
            base.replace("192.0.2.2:51820", "192.0.2.2"),
            vec!["peer[0].endpoint", "192.0.2.2", "host:port"],
        ),
        (
            base.replace("mtu = 1400", "mtu = 100"),
            vec!["interface.mtu", "100"],
        ),
        (
            base.replace("isthmus7", "a-name-longer-than-15"),
            vec!["interface.name", "IFNAMSIZ"],
        ),
        (
            base.replace("127.0.0.1:9750", "localhost"),
            vec!["admin.metrics_listen", "localhost"],
        ),
        (
            base.replace("100.96.0.1/24", "100.96.0.1/99"),
            vec!["interface.address[0]", "100.96.0.1/99"],
        ),
        (base.replace("[interface]", "[interfac]"), vec!["gw.toml"]),
        (
            format!(
                "{base}\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.9.0.0/16\"]\n",
                d.peer
            ),
            vec!["peer[1].public_key", "same key as peer[0]"],
        ),
        (
            format!(
                "{base}\n[[peer]]\npublic_key = \"{}\"\nallowed_ips = [\"10.2.0.0/16\"]\n",
                PrivateKey::generate().public_key()
            ),
            vec!["peer[1].allowed_ips[0]", "already allowed for peer[0]"],
        ),
    ];
    for (text, wants) in cases {
        let err = parse(&d, &text).expect_err(&text).to_string();
        assert!(err.contains("gw.toml"), "{err} should name the file");
        for w in wants {
            assert!(err.contains(w), "{err:?} should contain {w:?}");
        }
    }
}

#[test]
fn bad_key_file_contents_are_named() {
    let d = setup();
    std::fs::write(d.dir.path().join("gw.key"), "garbage").unwrap();
    let err = parse(&d, &good(&d)).unwrap_err().to_string();
    assert!(
        err.contains("interface.private_key_file")
            && err.contains("gw.key")
            && err.contains("base64"),
        "{err}"
    );
}

#[test]
fn own_key_as_peer_is_refused() {
    let d = setup();
    let own =
        PrivateKey::try_from_base64(&std::fs::read_to_string(d.dir.path().join("gw.key")).unwrap())
            .unwrap();
    let text = good(&d).replace(&d.peer, &own.public_key().to_base64());
    let err = parse(&d, &text).unwrap_err().to_string();
    assert!(err.contains("own public key"), "{err}");
}
