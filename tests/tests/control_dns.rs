//! The control plane end to end: gateways joined by identity sync their clusters' exports
//! through the tunnels and answer `clusterset.local` DNS from the merged catalog; a killed
//! cluster's endpoints leave DNS within seconds and come back with it; the watch stream reaches
//! the node over TCP (with the routes a node needs) and nothing outside `watch_allow`. Needs root.

use std::io::BufRead as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_catalog_view::WatchLine;
use isthmus_lab::control::{control_lab, exports_toml, fqdn, wait_synced, SYNC_DEADLINE};
use isthmus_lab::vip::{add_watch_listener, node_network, WATCH_PORT};
use isthmus_lab::{plan, wait_for, Lab, Signal};

/// [`control_lab`] with gateway 1 serving the watch stream on `lan0:7474` to its node network.
fn control_lab_with_watch(n: usize) -> Lab {
    let lab = Lab::builder()
        .clusters(n)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
    let svids = lab.issue_gateway_svids().expect("issuing SVIDs");
    lab.write_control_configs(&svids, |i, extra| {
        if i == 1 {
            add_watch_listener(1, extra);
        }
    })
    .expect("writing configs");
    for i in 1..=n {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("starting gateway {i}: {e:#}"));
    }
    wait_synced(&lab, "start");
    lab
}

/// What a TCP client in `ns` got from gateway 1's watch listener.
#[derive(Debug, PartialEq)]
enum Watched {
    Line(String),
    /// Accepted, then closed without a line.
    Closed,
    Refused,
}

/// Connects from `ns` to gateway 1's watch listener and reads the first line.
fn watch_over_tcp(lab: &Lab, ns: &str) -> Watched {
    let script = [
        "import socket".to_owned(),
        "try:".to_owned(),
        format!(
            "    s = socket.create_connection(('{}', {WATCH_PORT}), timeout=5)",
            plan::gw_lan_addr(1)
        ),
        "except ConnectionRefusedError:".to_owned(),
        "    print('refused')".to_owned(),
        "    raise SystemExit(0)".to_owned(),
        "line = s.makefile('rb').readline()".to_owned(),
        "print('line ' + line.decode().strip() if line else 'closed')".to_owned(),
    ]
    .join("\n");
    let out = lab
        .run(ns, &["python3", "-c", &script])
        .unwrap_or_else(|e| panic!("watch client in {ns}: {e:#}"));
    match out.trim() {
        "refused" => Watched::Refused,
        "closed" => Watched::Closed,
        other => Watched::Line(
            other
                .strip_prefix("line ")
                .unwrap_or_else(|| panic!("watch client printed {other:?}"))
                .to_owned(),
        ),
    }
}

/// The first line of gateway 1's Unix watch socket (read from the root namespace).
fn watch_over_unix(lab: &Lab) -> WatchLine {
    let path = lab.state_dir(1).join("catalog.sock");
    let stream = std::os::unix::net::UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a WatchLine ({e}): {line}"))
}

/// `a.b.c.d/len` as (address, length), for checking the order of `routes`.
fn cidr(s: &str) -> (IpAddr, u8) {
    let (addr, len) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("{s} is no CIDR"));
    (addr.parse().unwrap(), len.parse().unwrap())
}

fn watch_refusals(lab: &Lab) -> u64 {
    lab.control_status(1)["refusals"]["watch_not_allowed"]
        .as_u64()
        .unwrap_or(0)
}

/// The node reads the stream over TCP, with what it must route via the gateway node; the pod
/// (outside `watch_allow`) is closed without a line and counted.
fn check_watch_stream(lab: &Lab) {
    let Watched::Line(text) = watch_over_tcp(lab, &lab.node_ns(1)) else {
        lab.dump_gateway_logs();
        panic!("no watch line over TCP from the node namespace");
    };
    let line: WatchLine =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a WatchLine ({e}): {text}"));
    isthmus_catalog_view::check_schema(line.schema).unwrap();
    assert_eq!(line.cluster, "c1", "{text}");
    let mut want = vec![format!("{}/32", plan::mesh_addr(1))];
    for j in 2..=lab.clusters() {
        want.push(plan::cluster_cidr(j));
        want.push(format!("{}/32", plan::mesh_addr(j)));
    }
    for w in &want {
        assert!(
            line.routes.contains(w),
            "routes lack {w}: {:?}",
            line.routes
        );
    }
    assert!(
        !line.routes.contains(&plan::cluster_cidr(1)),
        "the local cluster is not carried into the tunnel: {:?}",
        line.routes
    );
    assert!(
        line.routes.windows(2).all(|w| cidr(&w[0]) < cidr(&w[1])),
        "routes not sorted and unique: {:?}",
        line.routes
    );
    // The same stream as the Unix socket's (revisions may differ by a change in between).
    let unix = watch_over_unix(lab);
    assert_eq!(
        (&unix.cluster, &unix.services, &unix.routes),
        (&line.cluster, &line.services, &line.routes)
    );

    let before = watch_refusals(lab);
    assert_eq!(
        watch_over_tcp(lab, &lab.pod_ns(1)),
        Watched::Closed,
        "the pod ({}) is outside watch_allow = [{}]",
        plan::pod_addr(1),
        node_network(1)
    );
    assert_eq!(watch_refusals(lab), before + 1, "{}", lab.control_status(1));

    // Like every [control] setting, watch_allow is bound at start: a reload that widens it to
    // the pod network says a restart is needed and changes nothing yet.
    let path = lab.config_path(1);
    let text = std::fs::read_to_string(&path).unwrap();
    let allow = format!("\"{}\"]", node_network(1));
    assert!(text.contains(&allow), "{text}");
    let wider = text.replace(
        &allow,
        &format!("\"{}\", \"{}\"]", node_network(1), plan::pod_subnet(1)),
    );
    std::fs::write(&path, wider).unwrap();
    let report = lab
        .tunctl(1, &["-o", "json", "reload"])
        .unwrap_or_else(|e| panic!("tunctl reload: {e:#}"));
    let restart = report["restart_needed"].to_string();
    assert!(restart.contains("[control]"), "{report}");
    assert_eq!(watch_over_tcp(lab, &lab.pod_ns(1)), Watched::Closed);
    assert_eq!(watch_refusals(lab), before + 2);
}

/// A TCP server on port 7000 in cluster `i`'s pod that greets with `hello from c{i}`.
fn greeter(lab: &Lab, i: usize) -> isthmus_lab::ChildGuard {
    let script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', 7000))\n\
         s.listen(16)\n\
         while True:\n    c, _ = s.accept()\n    c.sendall(b'hello from c{i}\\n')\n    c.close()\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    lab.spawn(&lab.pod_ns(i), &cmd).expect("greeter")
}

/// Connects from `ns` to `addr:7000` and returns the first line the server sends.
fn greet(lab: &Lab, ns: &str, addr: &str) -> String {
    let script = format!(
        "import socket\ns = socket.create_connection(('{addr}', 7000), timeout=3)\nprint(s.makefile().readline().strip())\n"
    );
    lab.run(ns, &["python3", "-c", &script])
        .unwrap_or_else(|e| panic!("TCP to {addr}:7000 from {ns}: {e:#}"))
        .trim()
        .to_owned()
}

fn service<'a>(list: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|s| s["name"] == name)
}

#[test]
fn exported_service_resolves_across_clusters_and_reaches_its_endpoint() {
    let lab = control_lab(2);
    let _greeter = greeter(&lab, 2);
    let pod1 = lab.pod_ns(1);
    let pod2 = plan::pod_addr(2);
    // Headless: DNS answers the endpoint itself, and the connection goes to cluster 2's pod
    // address through the tunnel. (A ClusterSetIP VIP is answered too, but carrying traffic to
    // a VIP is the route agent's job, in the next issue.)
    lab.write_exports(
        2,
        &exports_toml(&[("demo/echo", true, &[pod2]), ("demo/api", false, &[pod2])]),
    )
    .unwrap();
    let written = Instant::now();
    let want = vec![pod2.to_string()];
    let resolved = wait_for(
        || lab.dig(&pod1, 1, &fqdn("demo/echo"), "A").ok() == Some(want.clone()),
        Duration::from_secs(2),
    );
    let latency = written.elapsed();
    if !resolved {
        lab.dump_gateway_logs();
    }
    assert!(
        resolved,
        "echo.demo not answered with {pod2} from cluster 1 within 2 s: {:?}; gw1 services: {:?}",
        lab.dig(&pod1, 1, &fqdn("demo/echo"), "A"),
        lab.services_json(1)
    );
    eprintln!("export in c2 -> DNS answer in c1: {latency:?}");
    let answer = lab.dig(&pod1, 1, &fqdn("demo/echo"), "A").unwrap();
    assert_eq!(greet(&lab, &pod1, &answer[0]), "hello from c2");

    // ClusterSetIP: the VIP from the configured range, as tunctl reports it.
    let vip = lab.dig(&pod1, 1, &fqdn("demo/api"), "A").unwrap();
    assert_eq!(vip.len(), 1, "{vip:?}");
    let vip: Ipv4Addr = vip[0].parse().expect("an IPv4 VIP");
    assert_eq!(
        vip.octets()[..2],
        [241, 0],
        "VIP {vip} outside 241.0.0.0/16"
    );
    let services = lab.services_json(1);
    let api = service(&services, "api").expect("api in tunctl services");
    assert_eq!(api["vips"][0], vip.to_string(), "{api}");
    assert_eq!(api["clusters"], serde_json::json!(["c2"]), "{api}");
    assert_eq!(api["endpoints_healthy"], 1, "{api}");
    let echo = service(&services, "echo").expect("echo in tunctl services");
    assert_eq!(echo["headless"], true, "{echo}");
    let table = lab.tunctl_text(1, &["services"]).unwrap();
    assert!(
        table.starts_with("SERVICE") && table.contains("echo") && table.contains(&vip.to_string()),
        "{table}"
    );
    let wide = lab.tunctl_text(1, &["-o", "wide", "services"]).unwrap();
    assert!(wide.contains("c2:up 1/1"), "{wide}");

    // The zone's rules: unknown names NXDOMAIN, other zones REFUSED; SRV for the named port.
    assert_eq!(
        lab.dig_status(&pod1, 1, &fqdn("demo/nothing"), "A")
            .unwrap(),
        "NXDOMAIN"
    );
    assert_eq!(
        lab.dig_status(&pod1, 1, "example.com", "A").unwrap(),
        "REFUSED"
    );
    let srv = lab
        .dig(&pod1, 1, &format!("_tcp._tcp.{}", fqdn("demo/api")), "SRV")
        .unwrap();
    assert_eq!(srv.len(), 1, "{srv:?}");
    assert!(
        srv[0].ends_with(&format!("7000 {}.", fqdn("demo/api"))),
        "{srv:?}"
    );

    // tunctl peers shows the peer's mesh address and sync state.
    let peers = lab.peers_json(1);
    assert_eq!(
        peers[0]["mesh_addr"],
        plan::mesh_addr(2).to_string(),
        "{peers:?}"
    );
    assert_eq!(peers[0]["sync"], "synced", "{peers:?}");

    // VIPs are stable across restarts of the gateway that allocated them.
    lab.stop_gateway(1, Signal::Term)
        .expect("stopping gateway 1");
    assert!(lab.state_dir(1).join("vips.json").is_file());
    lab.start_gateway(1).expect("restarting gateway 1");
    wait_synced(&lab, "restart of gateway 1");
    let again = wait_for(
        || lab.dig(&pod1, 1, &fqdn("demo/api"), "A").ok() == Some(vec![vip.to_string()]),
        Duration::from_secs(5),
    );
    assert!(
        again,
        "api's VIP changed across a restart: {:?}",
        lab.dig(&pod1, 1, &fqdn("demo/api"), "A")
    );
}

#[test]
fn killed_cluster_leaves_dns_and_returns() {
    let lab = control_lab_with_watch(3);
    let pod1 = lab.pod_ns(1);
    let (pod2, pod3) = (plan::pod_addr(2), plan::pod_addr(3));
    lab.write_exports(
        2,
        &exports_toml(&[("demo/both", true, &[pod2]), ("demo/only2", true, &[pod2])]),
    )
    .unwrap();
    lab.write_exports(3, &exports_toml(&[("demo/both", true, &[pod3])]))
        .unwrap();
    let both = vec![pod2.to_string(), pod3.to_string()];
    let synced = wait_for(
        || {
            lab.dig(&pod1, 1, &fqdn("demo/both"), "A").ok() == Some(both.clone())
                && lab.dig(&pod1, 1, &fqdn("demo/only2"), "A").ok() == Some(vec![pod2.to_string()])
        },
        Duration::from_secs(5),
    );
    assert!(
        synced,
        "cluster 1 does not answer both clusters' endpoints: {:?}",
        lab.services_json(1)
    );
    check_watch_stream(&lab);

    lab.stop_gateway(2, Signal::Kill)
        .expect("SIGKILL gateway 2");
    let killed = Instant::now();
    let only3 = vec![pod3.to_string()];
    let withdrawn = wait_for(
        || {
            lab.dig(&pod1, 1, &fqdn("demo/both"), "A").ok() == Some(only3.clone())
                && lab
                    .dig_status(&pod1, 1, &fqdn("demo/only2"), "A")
                    .ok()
                    .as_deref()
                    == Some("NXDOMAIN")
        },
        Duration::from_secs(5),
    );
    let took = killed.elapsed();
    assert!(
        withdrawn,
        "cluster 2's endpoints still answered {took:?} after SIGKILL: both = {:?}, only2 = {:?}",
        lab.dig(&pod1, 1, &fqdn("demo/both"), "A"),
        lab.dig(&pod1, 1, &fqdn("demo/only2"), "A")
    );
    eprintln!("SIGKILL of gateway 2 -> its endpoints out of cluster 1's DNS: {took:?}");
    // Cluster 3 kept answering all along.
    assert_eq!(
        lab.dig(&pod1, 3, &fqdn("demo/both"), "A").unwrap(),
        only3,
        "gateway 3's own view"
    );
    let status = lab.control_status(1);
    let c2 = status["remote_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == "c2")
        .cloned()
        .unwrap_or_default();
    assert_eq!(c2["offered"], false, "{status}");

    lab.start_gateway(2).expect("restarting gateway 2");
    let restarted = Instant::now();
    let back = wait_for(
        || {
            lab.dig(&pod1, 1, &fqdn("demo/both"), "A").ok() == Some(both.clone())
                && lab.dig(&pod1, 1, &fqdn("demo/only2"), "A").ok() == Some(vec![pod2.to_string()])
        },
        SYNC_DEADLINE,
    );
    if !back {
        lab.dump_gateway_logs();
    }
    assert!(
        back,
        "cluster 2's endpoints did not return within {SYNC_DEADLINE:?} of its restart: {:?}",
        lab.services_json(1)
    );
    eprintln!(
        "restart of gateway 2 -> its endpoints back in cluster 1's DNS: {:?}",
        restarted.elapsed()
    );

    // A clean shutdown closes both watch listeners.
    lab.stop_gateway(1, Signal::Term)
        .expect("stopping gateway 1");
    assert!(
        !lab.state_dir(1).join("catalog.sock").exists(),
        "watch socket left behind"
    );
    assert_eq!(watch_over_tcp(&lab, &lab.node_ns(1)), Watched::Refused);
}
