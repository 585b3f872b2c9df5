//! The route agent on its own, in one cluster's node with no gateway: a stand-in watch socket
//! feeds it catalogs, backends are further pods on the same node (the node routes between its
//! pods), and clients are pods and the node's own processes. Each test builds its own lab.
//!
//! What is proved: SIGTERM, and SIGKILL followed by a restart, leave no BPF program, map,
//! link, route or file behind; a catalog larger than the maps is programmed as far as it fits
//! and says so; IPv6 and dual-stack VIPs carry TCP and UDP with intact data and checksums
//! (verified by the receivers: transmit checksum offload is off in those pods); malformed catalog
//! lines change nothing; the last catalog keeps working while the source is away; pods that
//! come later are attached; VIP ports and services with no backend drop and count; local
//! processes reach VIPs through the socket programs. Needs root.

#[path = "route_agent/kernel.rs"]
mod kernel;
#[path = "route_agent/rig.rs"]
mod rig;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use isthmus_lab::agent::{watch_line, AgentSource, AgentSpec, BpfObjects};
use isthmus_lab::{netns, plan, wait_for, Probe, Serve, Signal};

use kernel::*;
use rig::*;

#[test]
fn sigterm_and_sigkill_then_restart_leave_nothing_behind() {
    let lab = lab();
    let client = lab.pod_ns(1);
    let (_, b) = backend(&lab, "b", &[PORT]);
    let watch = watch_server(&lab);
    let routes = ["10.2.0.0/16", "10.3.0.0/16", "100.96.0.2/32"];
    let service = || vec![svc("a", &[vip(1).into()], PORT, &[(b.into(), PORT)])];
    watch.set(&watch_line(1, service(), &routes));
    // The node reaches its gateway on eth0: the agent routes the catalog's prefixes there.
    let spec = spec(&watch).gateway(plan::gw_lan_addr(1));
    start(&lab, &spec);
    let s = wait_status(&lab, "revision 1 with its routes", |s| {
        s.revision == Some(1) && s.routes.len() == 3 && s.interfaces.len() == 2
    });
    assert!(s.sockets.is_some(), "socket programs not attached: {s:#?}");

    // Positive controls: while it runs, every kind of leftover is there to be found.
    assert_reaches(&lab, &client, (vip(1), PORT).into(), 1);
    let objects = running_objects(&lab);
    let found = leftovers(&lab, &objects);
    for kind in ["bpf prog", "bpf map", "bpf link", "route ", "file "] {
        assert!(
            found.iter().any(|f| f.starts_with(kind)),
            "the running agent shows no {kind}: {found:#?}"
        );
    }
    let kernel_routes = agent_routes(&lab);
    assert_eq!(kernel_routes.len(), 3, "{kernel_routes:?}");
    for r in routes {
        assert!(
            kernel_routes
                .iter()
                .any(|l| l.starts_with(r.trim_end_matches("/32")) && l.contains("via 10.1.0.1")),
            "{r} via the gateway missing: {kernel_routes:?}"
        );
    }

    let exit = lab.stop_agent(AGENT, Signal::Term).expect("SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", lab.agent_stderr(AGENT));
    let left = wait_clean(&lab, &objects);
    assert!(left.is_empty(), "left after SIGTERM: {left:#?}");
    // With the programs gone the VIP is just an address nobody routes.
    assert_fails(&lab, &client, (vip(1), PORT).into(), false, 1);

    // SIGKILL: the kernel drops the programs, maps and links with the process's descriptors,
    // but the routes stay (nobody was there to remove them).
    start(&lab, &spec);
    wait_status(&lab, "revision 1 after the restart", |s| {
        s.revision == Some(1) && s.routes.len() == 3
    });
    let objects = running_objects(&lab);
    lab.stop_agent(AGENT, Signal::Kill).expect("SIGKILL");
    wait_for(
        || objects.still_in_kernel().is_empty(),
        Duration::from_secs(5),
    );
    assert!(
        objects.still_in_kernel().is_empty(),
        "BPF objects of the killed agent: {:?}",
        objects.still_in_kernel()
    );
    assert_eq!(agent_routes(&lab).len(), 3, "a killed agent's routes stay");

    // The next run adopts them: a route the new catalog no longer has, which this run never
    // added, is removed, and the rest are kept.
    watch.set(&watch_line(2, service(), &["10.2.0.0/16", "100.96.0.2/32"]));
    start(&lab, &spec);
    let s = wait_status(&lab, "revision 2 with the stale route gone", |s| {
        s.revision == Some(2) && s.routes.len() == 2
    });
    assert!(
        wait_for(|| agent_routes(&lab).len() == 2, Duration::from_secs(2)),
        "kernel routes {:?}, status {:?}",
        agent_routes(&lab),
        s.routes
    );
    assert!(
        !agent_routes(&lab).iter().any(|r| r.starts_with("10.3.")),
        "{:?}",
        agent_routes(&lab)
    );
    assert!(
        lab.agent_stderr(AGENT).contains("adopted routes"),
        "{}",
        lab.agent_stderr(AGENT)
    );
    assert_reaches(&lab, &client, (vip(1), PORT).into(), 1);
    let objects = running_objects(&lab);
    let exit = lab.stop_agent(AGENT, Signal::Term).expect("SIGTERM");
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", lab.agent_stderr(AGENT));
    let left = wait_clean(&lab, &objects);
    assert!(left.is_empty(), "left after restart and SIGTERM: {left:#?}");
}

#[test]
fn a_catalog_larger_than_the_maps_is_programmed_as_far_as_it_fits() {
    let lab = lab();
    let client = lab.pod_ns(1);
    let ports = [7001, 7002, 7003, 7004];
    let (_, b) = backend(&lab, "b", &ports);
    let watch = watch_server(&lab);
    // One backend each. With room for one update in flight (the largest service's backends
    // again), three backend entries hold two services.
    let a = || svc("a", &[vip(1).into()], 80, &[(b.into(), 7001)]);
    let bb = || svc("b", &[vip(2).into()], 80, &[(b.into(), 7002)]);
    let c = || svc("c", &[vip(3).into()], 80, &[(b.into(), 7003)]);
    // Sorts before every other: a newcomer must not push out what is programmed.
    let zero = || svc("0", &[vip(4).into()], 80, &[(b.into(), 7004)]);
    watch.set(&watch_line(1, vec![a(), bb()], &[]));
    let spec = AgentSpec::new(AgentSource::Unix(watch.path().to_owned()))
        .interfaces(&[plan::NODE_POD_IF_PATTERN])
        .arg("--max-backends=3")
        .arg("--max-slots=1024")
        .arg("--max-flows=1024")
        .arg(format!("--metrics-listen={}", SocketAddr::from(METRICS)));
    start(&lab, &spec);
    let s = wait_programmed(&lab, 1);
    assert!(s.unprogrammed.is_empty(), "{:?}", s.unprogrammed);
    assert_eq!(
        metric(&metrics(&lab), "isthmus_route_agent_services_unprogrammed"),
        0.0
    );
    let answer = |n: u8, port: u16| {
        let got = assert_reaches(&lab, &client, (vip(n), 80).into(), 1);
        assert_eq!(got, [format!("b {b}:{port}")], "VIP {} answered by", vip(n));
    };
    answer(1, 7001);
    answer(2, 7002);

    // Two newcomers that do not fit.
    watch.set(&watch_line(2, vec![zero(), a(), bb(), c()], &[]));
    let s = wait_programmed(&lab, 2);
    assert_eq!(names(&s), ["demo/a", "demo/b"], "{s:#?}");
    let left_out: Vec<&str> = s.unprogrammed.iter().map(|u| u.service.as_str()).collect();
    assert_eq!(left_out, ["demo/0", "demo/c"], "{:#?}", s.unprogrammed);
    for u in &s.unprogrammed {
        assert!(
            u.reason.contains("backend map (3)"),
            "{}: reason {:?} does not name the map",
            u.service,
            u.reason
        );
    }
    let text = metrics(&lab);
    assert_eq!(
        metric(&text, "isthmus_route_agent_services_unprogrammed"),
        2.0
    );
    assert_eq!(metric(&text, "isthmus_route_agent_services"), 2.0);
    let log = lab.agent_stderr(AGENT);
    assert!(
        log.contains("services not programmed") && log.contains("demo/c: 1 backends"),
        "no error naming the left-out services in the log:\n{log}"
    );
    // What fits carries traffic; what was left out is not translated, and its backend port
    // sees nothing (positive control: the backend answers on it directly).
    answer(1, 7001);
    answer(2, 7002);
    assert_fails(&lab, &client, (vip(3), 80).into(), false, 2);
    assert_fails(&lab, &client, (vip(4), 80).into(), false, 2);
    assert!(arrivals(&lab, "b", 7003).is_empty() && arrivals(&lab, "b", 7004).is_empty());
    assert_reaches(&lab, &client, (b, 7003).into(), 1);
    // Nothing half-written: the kernel's maps hold exactly the two programmed services.
    assert_maps(&lab, &s, 2);

    // The budget cannot grow at runtime; a smaller catalog makes room instead.
    watch.set(&watch_line(3, vec![bb(), c()], &[]));
    let s = wait_programmed(&lab, 3);
    assert_eq!(names(&s), ["demo/b", "demo/c"], "{s:#?}");
    assert!(s.unprogrammed.is_empty(), "{:?}", s.unprogrammed);
    assert_eq!(
        metric(&metrics(&lab), "isthmus_route_agent_services_unprogrammed"),
        0.0
    );
    answer(3, 7003);
    answer(2, 7002);
    assert_fails(&lab, &client, (vip(1), 80).into(), false, 1);
    assert_maps(&lab, &s, 2);
}

#[test]
fn ipv6_and_dual_stack_vips_carry_tcp_and_udp_with_intact_data_and_checksums() {
    let lab = lab();
    let client = lab.pod_ns(1);
    let node = lab.node_ns(1);
    let (b_ns, b4) = lab.add_pod(1, "b").expect("pod b");
    let client_v6 = add_v6(&lab, 0);
    let b6 = add_v6(&lab, 1);
    for ns in [&client, &b_ns] {
        software_checksums(ns, "eth0");
    }
    lab.start_server(
        &b_ns,
        "b",
        &Serve::new("b").both((b4, PORT)).both((b6, PORT)),
    )
    .expect("server b");
    // Before the agent: the pods reach each other directly (the path itself works).
    assert_reaches(&lab, &client, (b6, PORT).into(), 1);

    // One service with a VIP and a backend of each family (each family has its own table),
    // on another port than the backends' (ports are rewritten too).
    let vip6: Ipv6Addr = "fd00:241::1".parse().unwrap();
    let watch = watch_server(&lab);
    watch.set(&watch_line(
        1,
        vec![svc(
            "ds",
            &[vip(1).into(), vip6.into()],
            80,
            &[(b4.into(), PORT), (b6.into(), PORT)],
        )],
        &[],
    ));
    start(&lab, &spec(&watch));
    let s = wait_programmed(&lab, 1);
    assert_eq!(s.services[0].backends.len(), 2, "{s:#?}");

    for (target, backend) in [
        (SocketAddr::from((vip6, 80)), SocketAddr::from((b6, PORT))),
        (SocketAddr::from((vip(1), 80)), SocketAddr::from((b4, PORT))),
    ] {
        // TCP: connections to the VIP are answered by the backend of the VIP's family.
        let answers = assert_reaches(&lab, &client, target, 3);
        assert!(
            answers.iter().all(|a| *a == format!("b {backend}")),
            "{target}: {answers:?}"
        );
        // A long transfer: every byte back in order (SHA-256 on both sides).
        let t = lab
            .transfer(&client, target, 4 << 20)
            .expect("transfer through the VIP");
        assert!(t.ok && t.received == 4 << 20, "{target}: {t:?}");
        // UDP: the answer comes from the VIP, with the datagram intact.
        let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7 + 3) as u8).collect();
        let (from, greeting, echo) = udp_ask(&client, target, &payload);
        assert_eq!(from, target, "UDP answer source");
        assert_eq!(greeting, format!("b {backend}"));
        assert_eq!(echo, payload, "UDP payload changed on the way");
    }
    // The backend saw the pod's own addresses (no source translation).
    let peers: std::collections::BTreeSet<IpAddr> =
        lab.app_arrivals("b").iter().map(|a| a.peer.ip()).collect();
    assert_eq!(
        peers,
        [IpAddr::V4(plan::pod_addr(1)), IpAddr::V6(client_v6)].into(),
        "sources seen by the backend"
    );

    // Every segment and datagram above had a software checksum that the receiver checked.
    for ns in [&client, &b_ns] {
        let errors = checksum_errors(ns);
        assert!(errors.values().all(|&n| n == 0), "{ns}: {errors:?}");
    }
    // Positive control: the backend does see a bad checksum, also through the VIP (the
    // translation fixes up the sum, it does not recompute it), and counts it.
    let before = lab.app_arrivals("b").len();
    send_bad_checksum_v6(&client, (vip6, 80).into());
    assert!(
        wait_for(
            || checksum_errors(&b_ns)["Udp6InCsumErrors"] == 1,
            Duration::from_secs(3)
        ),
        "backend counters {:?}",
        checksum_errors(&b_ns)
    );
    assert_eq!(lab.app_arrivals("b").len(), before);

    // The node's own processes reach the IPv6 VIP through the socket programs.
    let target = SocketAddr::from((vip6, 80));
    let answers = assert_reaches(&lab, &node, target, 2);
    assert!(
        answers.iter().all(|a| *a == format!("b [{b6}]:{PORT}")),
        "{answers:?}"
    );
    let (from, _, echo) = udp_ask(&node, target, b"from the node");
    assert_eq!((from, echo.as_slice()), (target, &b"from the node"[..]));
}

#[test]
fn malformed_lines_are_refused_and_the_last_catalog_keeps_working() {
    let lab = lab();
    let client = lab.pod_ns(1);
    let (_, b) = backend(&lab, "b", &[7001, 7002]);
    let watch = watch_server(&lab);
    let a = |port: u16| svc("a", &[vip(1).into()], 80, &[(b.into(), port)]);
    watch.set(&watch_line(1, vec![a(7001)], &[]));
    start(
        &lab,
        &spec(&watch).arg(format!("--metrics-listen={}", SocketAddr::from(METRICS))),
    );
    wait_programmed(&lab, 1);
    let on = |port: u16| {
        let got = assert_reaches(&lab, &client, (vip(1), 80).into(), 2);
        assert!(got.iter().all(|g| *g == format!("b {b}:{port}")), "{got:?}");
    };
    on(7001);

    // Each line would move demo/a to port 7002 if it were taken at all.
    let mut bad_vip = watch_line(3, vec![a(7002), svc("bad", &[vip(2).into()], 80, &[])], &[]);
    bad_vip.services[1].vips = vec!["241.0.0.300".to_owned()];
    let mut schema = watch_line(4, vec![a(7002)], &[]);
    schema.schema = 2;
    let cases: [(String, &str); 3] = [
        (
            r#"{"schema":1,"revision":2,"services":[{"namespace":"demo""#.to_owned(),
            "malformed watch line",
        ),
        (
            serde_json::to_string(&bad_vip).unwrap(),
            r#"service demo/bad: vips "241.0.0.300": not an IP address"#,
        ),
        (
            serde_json::to_string(&schema).unwrap(),
            "schema 2 is not supported",
        ),
    ];
    for (n, (line, reason)) in (1..).zip(cases) {
        watch.set_raw(line);
        let s = wait_status(&lab, &format!("refusal {n}"), |s| s.catalogs_refused == n);
        let why = s.last_refusal.clone().unwrap_or_default();
        assert!(
            why.contains(reason),
            "refusal {n}: {why:?} lacks {reason:?}"
        );
        assert_eq!(s.revision, Some(1), "{s:#?}");
        assert_eq!(names(&s), ["demo/a"]);
        assert_eq!(s.services[0].backends[0].port, 7001, "{s:#?}");
        assert!(s.connected, "a bad line dropped the source: {s:#?}");
        on(7001);
    }
    assert_eq!(
        metric(&metrics(&lab), "isthmus_route_agent_catalogs_refused_total"),
        3.0
    );
    assert!(arrivals(&lab, "b", 7002).is_empty());

    // The agent still reads the stream: the next good line is programmed.
    watch.set(&watch_line(5, vec![a(7002)], &[]));
    wait_programmed(&lab, 5);
    on(7002);
}

#[test]
fn while_the_source_is_away_the_last_catalog_carries_traffic() {
    let lab = lab();
    let client = lab.pod_ns(1);
    let (_, b) = backend(&lab, "b", &[7001, 7002]);
    let watch = watch_server(&lab);
    let a = |port: u16| svc("a", &[vip(1).into()], 80, &[(b.into(), port)]);
    watch.set(&watch_line(1, vec![a(7001)], &[]));
    start(&lab, &spec(&watch));
    let s = wait_programmed(&lab, 1);
    assert!(s.connected && s.source_error.is_none(), "{s:#?}");

    watch.pause();
    let s = wait_status(&lab, "the source lost", |s| !s.connected);
    assert!(s.source_error.is_some(), "{s:#?}");
    let r = probe(
        &lab,
        &client,
        // Long enough for the reconnect backoff to reach its 2 s cap.
        &Probe::tcp((vip(1), 80))
            .duration(Duration::from_secs(3))
            .interval(Duration::from_millis(100)),
    );
    assert!(
        r.summary.ok >= 25 && r.summary.failed == 0,
        "VIP traffic while the source is away: {r}"
    );
    assert_eq!(
        r.summary.by_answer.keys().collect::<Vec<_>>(),
        [&format!("b {b}:7001")]
    );
    let s = lab.agent_status(AGENT).expect("status");
    assert!(!s.connected && s.revision == Some(1), "{s:#?}");

    // Back with a changed catalog: reconnected and programmed within the 2 s backoff cap.
    watch.set(&watch_line(2, vec![a(7002)], &[]));
    let resumed = Instant::now();
    watch.resume();
    let s = wait_status(&lab, "revision 2 after the source returned", |s| {
        s.revision == Some(2)
    });
    let took = resumed.elapsed();
    eprintln!("route agent: catalog source back, new catalog programmed after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(s.connected && s.source_error.is_none(), "{s:#?}");
    let got = assert_reaches(&lab, &client, (vip(1), 80).into(), 2);
    assert!(got.iter().all(|g| *g == format!("b {b}:7002")), "{got:?}");
}

#[test]
fn pods_that_come_later_are_attached_and_gone_ones_leave() {
    let lab = lab();
    let (_, b) = backend(&lab, "b", &[PORT]);
    let watch = watch_server(&lab);
    watch.set(&watch_line(
        1,
        vec![svc("a", &[vip(1).into()], PORT, &[(b.into(), PORT)])],
        &[],
    ));
    start(&lab, &spec(&watch));
    let s = wait_programmed(&lab, 1);
    assert_eq!(s.interfaces, ["pod0", "pod1"]);
    // Two TCX links (ingress, egress) per veth beside the socket programs' links.
    let links = || {
        BpfObjects::of_pid(lab.agent_pid(AGENT))
            .expect("the agent's BPF objects")
            .links
            .len()
    };
    let links_before = links();

    let (late, _) = lab.add_pod(1, "late").expect("pod late");
    let late_if = lab.node_pod_ifs(1)[2].clone();
    wait_status(&lab, &format!("{late_if} attached"), |s| {
        s.interfaces.contains(&late_if)
    });
    assert_eq!(links(), links_before + 2);
    let got = assert_reaches(&lab, &late, (vip(1), PORT).into(), 2);
    assert!(got.iter().all(|g| *g == format!("b {b}:{PORT}")), "{got:?}");
    let s = lab.agent_status(AGENT).expect("status");
    assert_eq!(counter(&s, "a", "new_flow"), 2, "{s:#?}");

    netns::ip(&lab.node_ns(1), &["link", "del", &late_if]).expect("deleting the late veth");
    let s = wait_status(&lab, &format!("{late_if} gone"), |s| {
        !s.interfaces.contains(&late_if)
    });
    assert_eq!(s.interfaces, ["pod0", "pod1"]);
    // Its links are closed, not kept by a dead interface's name.
    assert_eq!(links(), links_before);
    // The others keep working.
    assert_reaches(&lab, &lab.pod_ns(1), (vip(1), PORT).into(), 1);
}

#[test]
fn missing_ports_and_services_without_backends_drop_and_count() {
    let lab = lab();
    let client = lab.pod_ns(1);
    let node = lab.node_ns(1);
    // The backend also listens on the port the VIP does not have: a no-port packet
    // translated anyway would show up there.
    let (_, b) = backend(&lab, "b", &[PORT, PORT + 1]);
    let watch = watch_server(&lab);
    watch.set(&watch_line(
        1,
        vec![
            svc("a", &[vip(1).into()], PORT, &[(b.into(), PORT)]),
            svc("dead", &[vip(2).into()], PORT, &[]),
        ],
        &[],
    ));
    start(&lab, &spec(&watch));
    wait_programmed(&lab, 1);

    // From a pod: 3 TCP connections (one SYN each within the timeout) and 2 UDP datagrams
    // to each, all lost, none forwarded by the node anywhere, none at the backend.
    let no_port: SocketAddr = (vip(1), PORT + 1).into();
    let no_backend: SocketAddr = (vip(2), PORT).into();
    let forwarded_before = forwarded(&node);
    for target in [no_port, no_backend] {
        assert_fails(&lab, &client, target, false, 3);
        assert_fails(&lab, &client, target, true, 2);
    }
    assert_eq!(
        forwarded(&node),
        forwarded_before,
        "the node forwarded drops"
    );
    assert_eq!(lab.app_arrivals("b"), [], "arrived at the backend");
    let s = lab.agent_status(AGENT).expect("status");
    assert_eq!(counter(&s, "a", "drop_no_port"), 5, "{s:#?}");
    assert_eq!(counter(&s, "dead", "drop_no_backend"), 5, "{s:#?}");
    assert_eq!(counter(&s, "a", "drop_no_backend"), 0, "{s:#?}");
    assert_eq!(counter(&s, "dead", "drop_no_port"), 0, "{s:#?}");
    assert_eq!(s.totals.get("drop_no_port"), Some(&5), "{:?}", s.totals);
    let dead = s.services.iter().find(|x| x.name == "dead").expect("dead");
    assert!(dead.backends.is_empty(), "{dead:#?}");
    // Positive controls: an address that is no VIP passes the programs untouched and the node
    // forwards it (to its gateway, which has no route for it); the service's own port answers.
    assert_fails(&lab, &client, (vip(99), PORT).into(), true, 1);
    assert!(
        forwarded(&node) > forwarded_before,
        "the counter does not move"
    );
    assert_reaches(&lab, &client, (vip(1), PORT).into(), 1);
    assert_eq!(
        lab.app_arrivals("b").len(),
        1,
        "{:?}",
        lab.app_arrivals("b")
    );

    // The node's own processes: connect() itself is refused, and counted once per socket.
    for target in [no_port, no_backend] {
        for udp in [false, true] {
            let errors = assert_fails(&lab, &node, target, udp, 1);
            assert!(
                errors.iter().all(|e| e.contains("Operation not permitted")),
                "{target} (udp {udp}) from the node: {errors:?}"
            );
        }
    }
    let after = lab.agent_status(AGENT).expect("status");
    assert_eq!(counter(&after, "a", "drop_no_port"), 5 + 2, "{after:#?}");
    assert_eq!(
        counter(&after, "dead", "drop_no_backend"),
        5 + 2,
        "{after:#?}"
    );
    assert_eq!(
        lab.app_arrivals("b").len(),
        1,
        "{:?}",
        lab.app_arrivals("b")
    );
}

#[test]
fn local_processes_reach_vips_over_tcp_and_udp() {
    let lab = lab();
    let node = lab.node_ns(1);
    let (_, b) = backend(&lab, "b", &[PORT]);
    let watch = watch_server(&lab);
    watch.set(&watch_line(
        1,
        vec![svc("a", &[vip(1).into()], PORT, &[(b.into(), PORT)])],
        &[],
    ));
    start(&lab, &spec(&watch));
    wait_programmed(&lab, 1);
    let target: SocketAddr = (vip(1), PORT).into();

    let got = assert_reaches(&lab, &node, target, 3);
    assert!(got.iter().all(|g| *g == format!("b {b}:{PORT}")), "{got:?}");
    let r = probe(&lab, &node, &Probe::udp(target).count(2));
    assert_eq!(r.summary.ok, 2, "UDP (connected) from the node: {r}");
    // Unconnected: the answer reads as coming from the VIP.
    let (from, greeting, echo) = udp_ask(&node, target, b"hello from the node");
    assert_eq!(from, target, "UDP answer source");
    assert_eq!(greeting, format!("b {b}:{PORT}"));
    assert_eq!(echo, b"hello from the node");
    // The backend saw the node, not some translated source.
    let node_src = IpAddr::V4(plan::node_pod_addr(1));
    let seen = lab.app_arrivals("b");
    assert!(
        seen.len() == 6 && seen.iter().all(|a| a.peer.ip() == node_src),
        "{seen:?}"
    );

    // One translation per connect() and per sendto(), the answer's source rewritten once;
    // no pod program saw any of it.
    let s = lab.agent_status(AGENT).expect("status");
    assert_eq!(counter(&s, "a", "sock_connect"), 6, "{s:#?}");
    assert_eq!(counter(&s, "a", "reverse"), 1, "{s:#?}");
    assert_eq!(counter(&s, "a", "forward"), 0, "{s:#?}");
    // The socket programs act for the node's own namespace only: a pod's connection is
    // translated on its veth, not at its socket.
    assert_reaches(&lab, &lab.pod_ns(1), target, 1);
    let s = lab.agent_status(AGENT).expect("status");
    assert_eq!(counter(&s, "a", "sock_connect"), 6, "{s:#?}");
    assert!(counter(&s, "a", "forward") >= 1, "{s:#?}");
}
