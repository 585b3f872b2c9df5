//! A malformed config stops `isthmus-gateway` before it creates anything: it exits non-zero
//! with a message naming the file, the field and the value, and leaves no interface and no
//! socket behind. `--check` on a good file creates nothing either, and a listen port already
//! in use fails naming the port. Needs root (namespaces, TUN) and `python3`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use isthmus_lab::{key_path, wait_for, GatewayConfig, KeyPair, Lab, Signal, WG_SOCKET_DIR};

/// How long a gateway may take to reject a config (it should be instant).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Interface names in `ns`.
fn links(ns: &str) -> BTreeSet<String> {
    isthmus_lab::netns::ip(ns, &["-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

struct Env {
    lab: Lab,
    ns: String,
    good: GatewayConfig,
}

impl Env {
    fn new() -> Env {
        // No clusters: just a namespace of our own for the gateway under test.
        let lab = Lab::builder()
            .clusters(0)
            .build()
            .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
        let ns = lab.add_namespace("cfg").unwrap();
        let own = KeyPair::generate();
        own.write_private_key(&key_path(lab.dir(), 1)).unwrap();
        let keys = [
            own.public_key().to_owned(),
            KeyPair::generate().public_key().to_owned(),
        ];
        let good = GatewayConfig::for_cluster(lab.id(), 1, lab.dir(), &keys);
        Env { lab, ns, good }
    }

    fn ifname(&self) -> &str {
        &self.good.interface.name
    }

    /// Every file the gateway of `good` would create: its admin and UAPI sockets.
    fn sockets(&self) -> Vec<PathBuf> {
        vec![
            self.good.admin.socket.clone(),
            Path::new(WG_SOCKET_DIR).join(format!("{}.sock", self.ifname())),
        ]
    }

    fn write(&self, name: &str, cfg: &GatewayConfig) -> PathBuf {
        let path = self.lab.dir().join(format!("{name}.toml"));
        cfg.write(&path).unwrap();
        path
    }

    /// Runs `isthmus-gateway ARGS…` in the namespace until it exits (killed, and a failure,
    /// if it is still running after [`EXIT_TIMEOUT`]); returns its status and stderr.
    fn run_gateway(&self, name: &str, args: &[&str]) -> (ExitStatus, String, String) {
        let mut cmd = Command::new(self.lab.binary(isthmus_lab::GATEWAY_BIN).unwrap());
        cmd.args(args);
        let mut child = self
            .lab
            .spawn_named(&self.ns, &format!("gateway-{name}"), &cmd)
            .unwrap();
        match child.wait_timeout(EXIT_TIMEOUT).unwrap() {
            Some(status) => (status, child.stdout(), child.stderr()),
            None => {
                child.kill();
                panic!(
                    "case {name}: isthmus-gateway {} still running after {EXIT_TIMEOUT:?}; \
                     stderr:\n{}",
                    args.join(" "),
                    child.stderr()
                );
            }
        }
    }

    /// Asserts that nothing the gateway would create exists.
    fn assert_nothing_created(&self, case: &str, before: &BTreeSet<String>) {
        let after = links(&self.ns);
        assert_eq!(
            &after, before,
            "case {case}: interfaces in {} changed",
            self.ns
        );
        for socket in self.sockets() {
            assert!(
                !socket.exists(),
                "case {case}: {} was created",
                socket.display()
            );
        }
    }
}

#[test]
fn malformed_configs_fail_naming_file_field_and_value() {
    let env = Env::new();
    let before = links(&env.ns);
    let good = &env.good;
    let dir = env.lab.dir();

    let missing_key = dir.join("no-such.key");
    let key_dir = dir.join("key-is-a-directory");
    std::fs::create_dir(&key_dir).unwrap();
    let not_a_key = dir.join("not-a-key.key");
    std::fs::write(&not_a_key, "hello\n").unwrap();

    type Tweak = Box<dyn Fn(&mut GatewayConfig)>;
    let cases: Vec<(&str, Tweak, &str, String)> = vec![
        (
            "bad-key",
            Box::new(|c| c.peers[0].public_key = "not-base64!".into()),
            "peer[0].public_key",
            "not-base64!".into(),
        ),
        (
            "bad-cidr",
            Box::new(|c| c.peers[0].allowed_ips = vec!["10.0.0.0/33".into()]),
            "peer[0].allowed_ips[0]",
            "10.0.0.0/33".into(),
        ),
        (
            "unknown-field",
            Box::new(|c| {
                c.interface
                    .extra
                    .insert("colour".into(), toml::Value::String("blue".into()));
            }),
            "colour",
            "blue".into(),
        ),
        (
            "missing-key-file",
            Box::new({
                let p = missing_key.clone();
                move |c| c.interface.private_key_file = p.clone()
            }),
            "interface.private_key_file",
            missing_key.display().to_string(),
        ),
        (
            "key-file-is-a-directory",
            Box::new({
                let p = key_dir.clone();
                move |c| c.interface.private_key_file = p.clone()
            }),
            "interface.private_key_file",
            key_dir.display().to_string(),
        ),
        (
            "key-file-not-a-key",
            Box::new({
                let p = not_a_key.clone();
                move |c| c.interface.private_key_file = p.clone()
            }),
            "interface.private_key_file",
            not_a_key.display().to_string(),
        ),
        (
            "endpoint-without-port",
            Box::new(|c| c.peers[0].endpoint = Some("10.255.0.12".into())),
            "peer[0].endpoint",
            "10.255.0.12".into(),
        ),
        (
            "endpoint-port-zero",
            Box::new(|c| c.peers[0].endpoint = Some("10.255.0.12:0".into())),
            "peer[0].endpoint",
            "10.255.0.12:0".into(),
        ),
        (
            "mtu-too-small",
            Box::new(|c| c.interface.mtu = 100),
            "interface.mtu",
            "100".into(),
        ),
        (
            "mtu-too-large",
            Box::new(|c| c.interface.mtu = 65536),
            "interface.mtu",
            "65536".into(),
        ),
    ];

    for (name, tweak, field, value) in &cases {
        let mut cfg = good.clone();
        tweak(&mut cfg);
        let path = env.write(name, &cfg);
        let path_arg = path.to_string_lossy();
        let (status, _, stderr) = env.run_gateway(name, &["--config", &path_arg]);
        assert!(
            !status.success(),
            "case {name}: exited {status} on a bad config; stderr:\n{stderr}"
        );
        for (what, needle) in [
            ("the config file", path_arg.as_ref()),
            ("the field", *field),
            ("the value", value.as_str()),
        ] {
            assert!(
                stderr.contains(needle),
                "case {name}: stderr does not name {what} ({needle:?}):\n{stderr}"
            );
        }
        env.assert_nothing_created(name, &before);
    }
}

#[test]
fn check_validates_a_good_config_and_creates_nothing() {
    let env = Env::new();
    let before = links(&env.ns);
    let path = env.write("good", &env.good);
    let path_arg = path.to_string_lossy();

    let (status, stdout, stderr) = env.run_gateway("check", &["--check", "--config", &path_arg]);
    assert!(
        status.success(),
        "--check on a good config exited {status}:\n{stdout}{stderr}"
    );
    env.assert_nothing_created("check", &before);

    // Positive control: the same file, without --check, does create the interface and the
    // sockets that the checks above look for, and removes them on SIGTERM.
    let mut cmd = Command::new(env.lab.binary(isthmus_lab::GATEWAY_BIN).unwrap());
    cmd.args(["--config", &path_arg]);
    let mut gw = env.lab.spawn_named(&env.ns, "gateway-good", &cmd).unwrap();
    let up = wait_for(
        || env.sockets().iter().all(|s| s.exists()) || !gw.is_running(),
        Duration::from_secs(10),
    );
    assert!(
        up && gw.is_running(),
        "the good config did not bring a gateway up:\n{}",
        gw.stderr()
    );
    assert!(
        links(&env.ns).contains(env.ifname()),
        "running gateway has no interface {} in {}",
        env.ifname(),
        env.ns
    );
    let status = gw.stop(Signal::Term, Duration::from_secs(10)).unwrap();
    assert!(status.success(), "gateway exited {status} on SIGTERM");
    env.assert_nothing_created("after SIGTERM", &before);
}

#[test]
fn listen_port_in_use_fails_naming_the_port() {
    let env = Env::new();
    let port = env.good.interface.listen_port;
    // Something else holds the gateway's UDP port, on every address, IPv4 and IPv6.
    const BIND: &str = r#"import socket,sys,time
p=int(sys.argv[1])
a=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
a.bind(('0.0.0.0',p))
b=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)
b.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)
b.bind(('::',p))
print('ready',flush=True)
time.sleep(3600)
"#;
    let holder = support::spawn_ready(&env.lab, &env.ns, "port-holder", BIND, &[&port.to_string()]);
    let before = links(&env.ns);

    let path = env.write("port-in-use", &env.good);
    let path_arg = path.to_string_lossy();
    let (status, _, stderr) = env.run_gateway("port-in-use", &["--config", &path_arg]);
    assert!(
        !status.success(),
        "gateway started although UDP port {port} is taken; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&port.to_string()),
        "stderr does not name port {port}:\n{stderr}"
    );
    env.assert_nothing_created("port-in-use", &before);
    drop(holder);
}
