//! The lab itself: the topology routes what it should (and nothing more), the helpers do what
//! they say, further pods, gateway pods and nodes without a default route are wired as the
//! plan says (with gateways, where crossing clusters is the point), the test application
//! answers across clusters, and teardown leaves nothing behind. Needs root; fails loudly
//! without it.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use isthmus_lab::app::Proto;
use isthmus_lab::{netns, plan, wait_for, Lab, Probe, Serve, Signal};

fn lab(clusters: usize) -> Lab {
    Lab::builder()
        .clusters(clusters)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"))
}

fn assert_pings(lab: &Lab, ns: &str, addr: Ipv4Addr) {
    let received = lab
        .ping(ns, addr, 2)
        .unwrap_or_else(|e| panic!("ping {addr} from {ns}: {e:#}"));
    assert_eq!(received, 2, "{ns} -> {addr}: {received}/2 replies");
}

fn assert_no_namespace_of(id: &str) {
    let left: Vec<String> = netns::list_namespaces()
        .into_iter()
        .filter(|ns| ns.starts_with(&format!("{id}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
}

/// Running: not gone, and not a zombie waiting for a reaper that is not us.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

#[test]
fn lab_topology() {
    let lab = lab(2);
    let id = lab.id().to_string();
    let dir = lab.dir().to_owned();
    assert_eq!(lab.namespaces().len(), 1 + 2 * 3);
    for ns in lab.namespaces() {
        assert!(netns::namespace_exists(&ns), "{ns} missing");
    }

    for i in 1..=2 {
        let (pod, node, gw) = (lab.pod_ns(i), lab.node_ns(i), lab.gw_ns(i));
        // pod -> node -> gateway, hop by hop and across the node's forwarding.
        assert_pings(&lab, &pod, plan::node_pod_addr(i));
        assert_pings(&lab, &pod, plan::node_addr(i));
        assert_pings(&lab, &pod, plan::gw_lan_addr(i));
        // Back from the gateway to the pod through its route via the node.
        assert_pings(&lab, &gw, plan::pod_addr(i));
        assert_pings(&lab, &node, plan::pod_addr(i));
    }
    // Gateways reach each other over the WAN bridge.
    assert_pings(&lab, &lab.gw_ns(1), plan::wan_addr(2));
    assert_pings(&lab, &lab.gw_ns(2), plan::wan_addr(1));

    // Negative control: with no gateway running nothing routes between clusters, so the
    // checks above cannot pass by accident through some other path.
    let stray = lab.ping(&lab.pod_ns(1), plan::pod_addr(2), 1).unwrap_or(0);
    assert_eq!(stray, 0, "pod 1 reached pod 2 without a tunnel");

    // The key files the gateways will read exist with mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(isthmus_lab::key_path(&dir, 1))
        .expect("key file of cluster 1")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    drop(lab);
    assert_no_namespace_of(&id);
    assert!(!dir.exists(), "lab directory {} left behind", dir.display());
    assert!(
        !std::path::Path::new(isthmus_lab::RUN_DIR)
            .join(&id)
            .exists(),
        "owner file left behind"
    );
}

#[test]
fn lab_helpers_disturb_the_wan_and_clean_up_processes() {
    let lab = lab(2);
    let id = lab.id().to_string();
    let (gw1, gw2) = (lab.gw_ns(1), lab.gw_ns(2));
    assert_pings(&lab, &gw1, plan::wan_addr(2));

    lab.cut_wan(2).unwrap();
    assert_eq!(
        lab.ping(&gw1, plan::wan_addr(2), 2).unwrap(),
        0,
        "cut WAN still passes"
    );
    lab.restore_wan(2).unwrap();
    assert!(
        wait_for(
            || lab.ping(&gw1, plan::wan_addr(2), 1).unwrap_or(0) == 1,
            Duration::from_secs(5)
        ),
        "WAN did not come back after restore"
    );

    // Roaming: the old address goes dead, the new one answers.
    let roamed = Ipv4Addr::new(10, 255, 0, 99);
    lab.set_wan_addr(2, roamed).unwrap();
    assert_pings(&lab, &gw1, roamed);
    assert_eq!(lab.ping(&gw1, plan::wan_addr(2), 1).unwrap(), 0);

    lab.set_wan_link(1, false).unwrap();
    assert_eq!(
        lab.ping(&gw1, roamed, 1).unwrap_or(0),
        0,
        "WAN link down still passes"
    );
    lab.set_wan_link(1, true).unwrap();
    assert!(wait_for(
        || lab.ping(&gw1, roamed, 1).unwrap_or(0) == 1,
        Duration::from_secs(5)
    ));

    // A host added beside the gateways is on the WAN too.
    let host = lab
        .add_wan_host("ref", Ipv4Addr::new(10, 255, 0, 200))
        .unwrap();
    assert_pings(&lab, &host, plan::wan_addr(1));

    // Spawned processes log to files and die with their guard, together with their process
    // group (here the shell's background child); strays die with the lab.
    let mut sh = Command::new("sh");
    sh.args(["-c", "sleep 300 & echo $!; echo oops >&2; exec sleep 300"]);
    let mut guard = lab.spawn(&gw2, &sh).unwrap();
    assert!(wait_for(
        || guard.stdout().ends_with('\n'),
        Duration::from_secs(5)
    ));
    let helper: u32 = guard.stdout().trim().parse().unwrap();
    assert!(wait_for(
        || guard.stderr() == "oops\n",
        Duration::from_secs(5)
    ));
    assert!(guard.is_running());
    let pid = guard.pid();
    let pids = netns::namespace_pids(&gw2);
    assert!(pids.contains(&pid) && pids.contains(&helper), "{pids:?}");
    drop(guard);
    assert!(!alive(pid), "guarded process survived");
    assert!(
        wait_for(|| !alive(helper), Duration::from_secs(5)),
        "child of the guarded process survived"
    );

    let out = lab
        .exec(&gw2, &["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
        .unwrap();
    let stray: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(alive(stray));

    drop(lab);
    assert!(
        wait_for(|| !alive(stray), Duration::from_secs(5)),
        "process left in a lab namespace survived the lab"
    );
    assert_no_namespace_of(&id);
}

/// Port the test application serves on in these tests.
const APP_PORT: u16 = 7000;

/// How long a fresh pair of gateways may take to pass the first packet (handshake included).
const TUNNEL_UP: Duration = Duration::from_secs(15);

fn wait_pings(lab: &Lab, ns: &str, addr: Ipv4Addr) {
    if !wait_for(|| lab.ping(ns, addr, 1).unwrap_or(0) == 1, TUNNEL_UP) {
        lab.dump_gateway_logs();
        panic!("{ns} could not ping {addr} within {TUNNEL_UP:?}");
    }
}

/// Probes `target` from `ns` `count` times over TCP and over UDP and asserts that every
/// attempt was answered by the backend at `target` itself, named `name`.
fn assert_answers(lab: &Lab, ns: &str, target: SocketAddr, name: &str, count: u64) {
    let expected = format!("{name} {target}");
    for probe in [Probe::tcp(target), Probe::udp(target)] {
        let proto = if probe.udp { "UDP" } else { "TCP" };
        let report = lab
            .probe(ns, &probe.count(count))
            .unwrap_or_else(|e| panic!("{proto} probe {ns} -> {target}: {e:#}"));
        assert_eq!(
            (report.summary.ok, report.summary.failed),
            (count, 0),
            "{proto} {ns} -> {target}: {report}"
        );
        assert_eq!(
            report.count(name),
            count,
            "{proto} {ns} -> {target}: {report}"
        );
        assert_eq!(
            report.summary.by_answer.keys().collect::<Vec<_>>(),
            [&expected],
            "{proto} {ns} -> {target}: answered by the wrong backend"
        );
    }
}

#[test]
fn more_pods_a_gateway_pod_and_the_test_app_across_clusters() {
    let lab = Lab::builder()
        .clusters(2)
        .node_default_route(true)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
    let id = lab.id().to_string();
    let (pod1, pod2) = (lab.pod_ns(1), lab.pod_ns(2));
    let (pod1b, addr1b) = lab.add_pod(1, "b").unwrap();
    let (gwpod1, gwaddr1) = lab.add_gateway_pod(1).unwrap();
    let (pod2b, addr2b) = lab.add_pod(2, "b").unwrap();
    let extra2 = plan::pod_extra_addr(2, 0);
    lab.add_pod_addr(&pod2b, extra2).unwrap();
    assert_eq!(pod1b, format!("{id}-c1-b"));
    assert_eq!(gwpod1, format!("{id}-c1-gwpod"));
    assert_eq!(addr1b, Ipv4Addr::new(10, 1, 1, 3));
    assert_eq!(addr2b, Ipv4Addr::new(10, 2, 1, 3));
    assert_eq!(gwaddr1, Ipv4Addr::new(10, 1, 2, 2));
    assert_eq!(lab.node_pod_ifs(1), ["pod0", "pod1"]);
    assert_eq!(lab.node_pods(2), [pod2.clone(), pod2b.clone()]);
    assert_eq!(lab.pod_addrs(&pod2b), [addr2b, extra2]);

    // Refusals leave nothing half-made.
    let before = lab.namespaces();
    assert!(lab.add_pod(1, "b").is_err(), "a second pod c1-b");
    assert!(
        lab.add_pod(1, "gwpod").is_err(),
        "a pod named like the gateway pod"
    );
    assert!(lab.add_gateway_pod(1).is_err(), "a second gateway pod");
    let extra1 = plan::pod_extra_addr(1, 0);
    lab.add_pod_addr(&pod1b, extra1).unwrap();
    assert!(
        lab.add_pod_addr(&pod1, extra1).is_err(),
        "one address in two pods"
    );
    assert!(
        lab.add_pod_addr(&pod1, extra2).is_err(),
        "another cluster's address"
    );
    assert!(
        lab.add_pod_addr(&pod1, plan::node_pod_addr(1)).is_err(),
        "the node's address"
    );
    assert!(
        lab.add_pod_addr(&gwpod1, extra1).is_err(),
        "a node pod address in the gateway pod"
    );
    assert!(
        lab.add_pod_addr(&lab.node_ns(1), extra2).is_err(),
        "not a pod"
    );
    assert_eq!(lab.namespaces(), before);

    // Inside each cluster, both directions: the Calico-style pod and its node, its first pod
    // (which believes the new address on-link), the gateway; the extra address likewise.
    for (i, ns, addr) in [
        (1, &pod1b, addr1b),
        (2, &pod2b, addr2b),
        (2, &pod2b, extra2),
    ] {
        let (node, gw, first) = (lab.node_ns(i), lab.gw_ns(i), lab.pod_ns(i));
        assert_pings(&lab, &node, addr);
        assert_pings(&lab, &gw, addr);
        assert_pings(&lab, &first, addr);
        assert_pings(&lab, ns, plan::node_pod_addr(i));
        assert_pings(&lab, ns, plan::node_addr(i));
        assert_pings(&lab, ns, plan::gw_lan_addr(i));
        assert_pings(&lab, ns, plan::pod_addr(i));
    }
    assert_eq!(lab.pod_addrs(&pod1b), [addr1b, extra1]);
    assert_pings(&lab, &pod1, extra1);
    assert_pings(&lab, &lab.node_ns(1), extra1);
    // The gateway pod and its gateway, and the node through its default route.
    assert_pings(&lab, &gwpod1, plan::gw_pod_gateway_addr(1));
    assert_pings(&lab, &gwpod1, plan::node_addr(1));
    assert_pings(&lab, &lab.node_ns(1), gwaddr1);
    assert_pings(&lab, &pod1b, gwaddr1);
    // Negative control: nothing crosses between clusters before the gateways run.
    assert_eq!(lab.ping(&pod1b, addr2b, 1).unwrap_or(0), 0);

    for i in 1..=2 {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("gateway {i}: {e:#}"));
    }
    wait_pings(&lab, &pod1, plan::pod_addr(2));
    // Every cluster-1 pod, the gateway pod included, reaches both cluster-2 pods; cluster 2
    // reaches the gateway pod through the tunnel.
    for ns in [&pod1, &pod1b, &gwpod1] {
        for addr in [plan::pod_addr(2), addr2b, extra2] {
            wait_pings(&lab, ns, addr);
        }
    }
    assert_pings(&lab, &pod2, gwaddr1);
    assert_pings(&lab, &pod2b, gwaddr1);

    // Two backends in cluster 2: one bound to its pod's address, one on every address of
    // the second pod (so UDP must answer from the address each datagram reached).
    let backend_a = SocketAddr::from((plan::pod_addr(2), APP_PORT));
    lab.start_server(&pod2, "c2a", &Serve::new("c2").both(backend_a))
        .unwrap();
    lab.start_server(
        &pod2b,
        "c2b",
        &Serve::new("c2").both((Ipv4Addr::UNSPECIFIED, APP_PORT)),
    )
    .unwrap();
    let backend_b = SocketAddr::from((addr2b, APP_PORT));
    let backend_extra = SocketAddr::from((extra2, APP_PORT));
    const COUNT: u64 = 4;
    for ns in [&pod1, &pod1b, &gwpod1] {
        for target in [backend_a, backend_b, backend_extra] {
            assert_answers(&lab, ns, target, "c2", COUNT);
        }
    }
    // The servers logged every connection and datagram, from the clients' own addresses (no
    // translation on this path) to the address each asked for.
    let clients: Vec<Ipv4Addr> = vec![plan::pod_addr(1), addr1b, gwaddr1];
    let a = lab.app_arrivals("c2a");
    let b = lab.app_arrivals("c2b");
    for (arrivals, target, name) in [
        (&a, backend_a, "c2a"),
        (&b, backend_b, "c2b"),
        (&b, backend_extra, "c2b"),
    ] {
        for proto in [Proto::Tcp, Proto::Udp] {
            for client in &clients {
                let n = arrivals
                    .iter()
                    .filter(|x| x.proto == proto && x.local == target && x.peer.ip() == *client)
                    .count();
                assert_eq!(
                    n,
                    COUNT as usize,
                    "{name}: {proto:?} from {client} to {target}; log:\n{}",
                    lab.app_stdout(name)
                );
            }
        }
    }
    assert_eq!(a.len(), 2 * 3 * COUNT as usize, "{a:?}");
    assert_eq!(b.len(), 2 * 2 * 3 * COUNT as usize);

    // A few MB through the tunnel come back intact, from the second pod's extra address.
    let report = lab.transfer(&pod1b, backend_extra, 4_000_037).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.answer, format!("c2 {backend_extra}"));
    assert_eq!(report.received, 4_000_037);

    // Negative controls: a port nobody serves, and a backend that has stopped (cleanly, on
    // SIGTERM) fail every attempt.
    let nobody = SocketAddr::from((plan::pod_addr(2), APP_PORT + 1));
    let report = lab.probe(&pod1, &Probe::tcp(nobody).count(2)).unwrap();
    assert_eq!(
        (report.summary.ok, report.summary.failed),
        (0, 2),
        "{report}"
    );
    assert!(
        report
            .failures()
            .all(|f| f.error.as_deref().is_some_and(|e| e.contains("refused"))),
        "{report}"
    );
    let status = lab.stop_app("c2a", Signal::Term).unwrap();
    assert!(status.success(), "serve exited with {status} on SIGTERM");
    let report = lab
        .probe(
            &pod1,
            &Probe::udp(backend_a)
                .count(2)
                .timeout(Duration::from_millis(300)),
        )
        .unwrap();
    assert_eq!(report.summary.failed, 2, "{report}");
    assert!(lab.transfer(&pod1, backend_a, 1000).is_ok_and(|r| !r.ok));
    assert!(lab.app_running("c2b"));

    let pids = netns::namespace_pids(&pod2b);
    assert!(pids.contains(&lab.app_pid("c2b")), "{pids:?}");
    drop(lab);
    assert_no_namespace_of(&id);
}

#[test]
fn nodes_built_without_a_default_route_reach_other_clusters_only_through_added_routes() {
    let lab = Lab::builder()
        .clusters(2)
        .node_default_route(false)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
    assert!(!lab.node_default_route());
    for i in 1..=2 {
        let routes = netns::ip(&lab.node_ns(i), &["-4", "route", "show"]).unwrap();
        assert!(!routes.contains("default"), "node {i}: {routes}");
        // The cluster itself still works: pod to node to gateway and back.
        assert_pings(&lab, &lab.pod_ns(i), plan::gw_lan_addr(i));
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("gateway {i}: {e:#}"));
    }
    // The gateways route 10.1/16 and 10.2/16 into the tunnel, yet a pod gets nowhere: its
    // node has no route for the other cluster. Gateway to gateway-side pod proves the
    // tunnel itself is up.
    let (gwpod2, gwaddr2) = lab.add_gateway_pod(2).unwrap();
    wait_pings(&lab, &lab.gw_ns(1), gwaddr2);
    assert_eq!(
        lab.ping(&lab.pod_ns(1), plan::pod_addr(2), 1).unwrap_or(0),
        0
    );
    assert_eq!(lab.ping(&gwpod2, plan::pod_addr(1), 1).unwrap_or(0), 0);

    // What the route agent will do: a route to each remote cluster via the gateway.
    netns::add_route(
        &lab.node_ns(1),
        &plan::cluster_cidr(2),
        &plan::gw_lan_addr(1).to_string(),
    )
    .unwrap();
    // One direction is not enough: replies from cluster 2's pod have no way back yet.
    assert_eq!(
        lab.ping(&lab.pod_ns(1), plan::pod_addr(2), 1).unwrap_or(0),
        0
    );
    netns::add_route(
        &lab.node_ns(2),
        &plan::cluster_cidr(1),
        &plan::gw_lan_addr(2).to_string(),
    )
    .unwrap();
    wait_pings(&lab, &lab.pod_ns(1), plan::pod_addr(2));
    assert_pings(&lab, &lab.pod_ns(2), plan::pod_addr(1));
    assert_pings(&lab, &gwpod2, plan::pod_addr(1));
}
