//! Clusterset VIPs carry traffic (issue 9), end to end on one 3-cluster lab ([`vip_lab`]):
//! DNS gives the VIP; connections through it land by the service's policy (round-robin,
//! weighted 3:1, local-first and its fallback) and keep their backend while other services'
//! maps change; UDP works both ways; a pod on the gateway node and local processes on the
//! gateway and on a node reach VIPs; traffic that is not to a VIP is untouched; a VIP port that
//! does not exist and a service with no backend are dropped, counted, and reach no cluster.
//! The checks run one after the other on one lab, to build it once. Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use isthmus_lab::vip::{
    backends, exports, gw_agent, node_agent, programmed_vip, vip_lab, vip_of, VipLabOptions,
    PROGRAM_DEADLINE, VIP_PORT,
};
use isthmus_lab::{plan, Lab, Probe, ProbeReport};
use isthmus_route_agent::status::Status;

fn probe(lab: &Lab, ns: &str, p: &Probe) -> ProbeReport {
    lab.probe(ns, p)
        .unwrap_or_else(|e| panic!("probe from {ns}: {e:#}"))
}

/// `n` TCP connections from `ns` to `target`, all of which must succeed.
fn connect_all(lab: &Lab, ns: &str, target: SocketAddr, n: u64) -> ProbeReport {
    let r = probe(lab, ns, &Probe::tcp(target).count(n));
    let failures: Vec<_> = r.failures().collect();
    assert!(
        failures.is_empty(),
        "{} of {n} connections from {ns} to {target} failed: {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
    r
}

fn service<'a>(status: &'a Status, name: &str) -> &'a isthmus_route_agent::status::ServiceStatus {
    status
        .services
        .iter()
        .find(|s| s.namespace == "demo" && s.name == name)
        .unwrap_or_else(|| panic!("demo/{name} not programmed: {status:?}"))
}

fn counter(status: &Status, name: &str, reason: &str) -> u64 {
    service(status, name)
        .counters
        .get(reason)
        .map_or(0, |c| c.packets)
}

fn status(lab: &Lab, agent: &str) -> Status {
    lab.agent_status(agent)
        .unwrap_or_else(|e| panic!("status of agent {agent}: {e:#}"))
}

/// Packets from `src` that the c1 gateway forwarded since the counting rule was (re)set.
struct ForwardCount<'a> {
    lab: &'a Lab,
    ns: String,
    src: Ipv4Addr,
}

impl<'a> ForwardCount<'a> {
    fn install(lab: &'a Lab, src: Ipv4Addr) -> Self {
        let ns = lab.gw_ns(1);
        lab.run(
            &ns,
            &["iptables", "-I", "FORWARD", "-s", &format!("{src}/32")],
        )
        .expect("adding a counting rule");
        ForwardCount { lab, ns, src }
    }

    fn zero(&self) {
        self.lab
            .run(&self.ns, &["iptables", "-Z", "FORWARD"])
            .expect("zeroing counters");
    }

    fn packets(&self) -> u64 {
        let out = self
            .lab
            .run(&self.ns, &["iptables", "-L", "FORWARD", "-v", "-n", "-x"])
            .expect("reading counters");
        out.lines()
            .find(|l| l.contains(&format!("{}", self.src)))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no counting rule for {} in:\n{out}", self.src))
    }
}

#[test]
fn clusterset_vips_carry_traffic_by_policy() {
    let lab = vip_lab(&VipLabOptions::default());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checks(&lab)));
    if let Err(e) = result {
        for agent in ["node1", "gw1"] {
            if let Ok(t) = lab.agent_status_text(agent) {
                eprintln!("--- agent {agent}\n{t}");
            }
        }
        lab.dump_gateway_logs();
        lab.dump_agent_logs();
        std::panic::resume_unwind(e);
    }
}

fn checks(lab: &Lab) {
    let client = lab.pod_ns(1);
    let node1 = node_agent(1);

    // DNS from the pod (its node has no default route: the agent's route to the gateway's
    // mesh address carries the query) gives the VIP the agents programmed.
    let rr = vip_of(lab, "rr").expect("dig demo/rr");
    assert_eq!(rr, programmed_vip(lab, &node1, "rr").unwrap());
    assert_eq!(
        rr.octets()[..2],
        [241, 0],
        "VIP {rr} outside the default range 241.0.0.0/16"
    );
    let node_routes = status(lab, &node1).routes;
    for want in [
        plan::cluster_cidr(2),
        plan::cluster_cidr(3),
        format!("{}/32", plan::mesh_addr(1)),
    ] {
        assert!(
            node_routes
                .iter()
                .any(|r| r.starts_with(&format!("{want} via {}", plan::gw_lan_addr(1)))),
            "node 1's agent did not install {want}: {node_routes:?}"
        );
    }
    eprintln!("{}", lab.agent_status_text(&node1).unwrap());

    // Round-robin: 200 connections, all succeed, split between c2 and c3 (two endpoints each)
    // within ±15 % of half, every backend used.
    let target = SocketAddr::from((rr, VIP_PORT));
    let r = connect_all(lab, &client, target, 200);
    let (c2, c3) = (r.count("c2"), r.count("c3"));
    eprintln!(
        "round-robin over 200: c2 {c2}, c3 {c3}, by backend {:?}",
        r.summary.by_answer
    );
    assert_eq!(
        c2 + c3,
        200,
        "answers from elsewhere: {:?}",
        r.summary.by_name
    );
    for (name, n) in [("c2", c2), ("c3", c3)] {
        assert!(
            (85..=115).contains(&n),
            "round-robin gave {name} {n} of 200"
        );
    }
    for i in [2, 3] {
        for addr in backends(i) {
            let used = r
                .summary
                .by_answer
                .keys()
                .any(|a| a.ends_with(&format!("{addr}:{VIP_PORT}")));
            assert!(
                used,
                "backend {addr} never chosen: {:?}",
                r.summary.by_answer
            );
        }
    }
    let s = status(lab, &node1);
    assert!(
        counter(&s, "rr", "new_flow") >= 200,
        "{:?}",
        service(&s, "rr").counters
    );

    // Weighted 3:1 (c2 weight 3 over two endpoints, c3 weight 1 over one): c2 gets 75 % ± 10 %.
    let wt = vip_of(lab, "wt").expect("dig demo/wt");
    let r = connect_all(lab, &client, SocketAddr::from((wt, VIP_PORT)), 200);
    let c2 = r.count("c2");
    eprintln!("weighted over 200: c2 {c2}, c3 {}", r.count("c3"));
    assert_eq!(c2 + r.count("c3"), 200);
    assert!(
        (135..=165).contains(&c2),
        "weighted 3:1 gave c2 {c2} of 200"
    );

    // UDP through the VIP: the answer comes back from the VIP (the probe's socket is
    // connected to it, so the kernel drops anything from another source).
    let r = probe(lab, &client, &Probe::udp(target).count(40));
    assert_eq!(
        r.summary.ok,
        40,
        "UDP through the VIP: {:?}",
        r.failures().take(3).collect::<Vec<_>>()
    );
    assert_eq!(r.count("c2") + r.count("c3"), 40);
    assert!(
        r.count("c2") > 0 && r.count("c3") > 0,
        "{:?}",
        r.summary.by_name
    );

    // Local-first: all to c1 while it has a ready endpoint; all to c2/c3 once it has none.
    let lf = vip_of(lab, "lf").expect("dig demo/lf");
    let lf_target = SocketAddr::from((lf, VIP_PORT));
    let r = connect_all(lab, &client, lf_target, 50);
    assert_eq!(
        r.count("c1"),
        50,
        "local-first with a local endpoint: {:?}",
        r.summary.by_name
    );

    // Meanwhile a long transfer through the rr VIP must keep its backend (and every byte)
    // while the lf service's maps change under it.
    let changed_during_transfer = std::thread::scope(|scope| {
        let transfer = scope.spawn(|| lab.transfer(&client, target, 256 << 20));
        std::thread::sleep(Duration::from_millis(300));
        let before = status(lab, &node1).revision;
        lab.write_exports(1, &exports(1, false)).unwrap();
        let (ok, last) = lab.wait_agent(&node1, PROGRAM_DEADLINE, |s| {
            service(s, "lf").backends.iter().all(|b| b.cluster != "c1")
        });
        assert!(ok, "c1's endpoint not withdrawn from demo/lf: {last:?}");
        let still_running = !transfer.is_finished();
        let report = transfer.join().unwrap().expect("transfer through the VIP");
        assert!(
            report.ok,
            "the transfer through the VIP lost or changed bytes: {report:?}"
        );
        let name = report
            .answer
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            name == "c2" || name == "c3",
            "transfer answered by {:?}",
            report.answer
        );
        eprintln!(
            "transfer of {} MiB through the VIP in {:.1} s, answered by {}; maps changed while it ran: {still_running} (revision {:?} -> {:?})",
            report.bytes >> 20,
            report.secs,
            report.answer,
            before,
            last.map(|s| s.revision)
        );
        still_running
    });
    assert!(
        changed_during_transfer,
        "the transfer finished before the maps changed: it proved nothing"
    );
    let r = connect_all(lab, &client, lf_target, 50);
    assert_eq!(
        r.count("c1"),
        0,
        "local-first without a local endpoint: {:?}",
        r.summary.by_name
    );
    assert_eq!(r.count("c2") + r.count("c3"), 50);
    lab.write_exports(1, &exports(1, true)).unwrap();
    let (ok, last) = lab.wait_agent(&node1, PROGRAM_DEADLINE, |s| {
        service(s, "lf").backends.iter().all(|b| b.cluster == "c1")
    });
    assert!(ok, "c1's endpoint did not come back to demo/lf: {last:?}");
    let r = connect_all(lab, &client, lf_target, 20);
    assert_eq!(r.count("c1"), 20, "{:?}", r.summary.by_name);

    // A pod on the gateway node, a local process on the gateway and one on the node.
    let gwpod = lab.id().gw_pod_ns(1);
    for (who, ns) in [
        ("gateway pod", gwpod.as_str()),
        ("gateway process", &lab.gw_ns(1)),
        ("node process", &lab.node_ns(1)),
    ] {
        let r = connect_all(lab, ns, target, 20);
        assert_eq!(
            r.count("c2") + r.count("c3"),
            20,
            "{who}: {:?}",
            r.summary.by_name
        );
        let u = probe(lab, ns, &Probe::udp(target).count(10));
        assert_eq!(
            u.summary.ok,
            10,
            "{who} over UDP: {:?}",
            u.failures().take(3).collect::<Vec<_>>()
        );
    }
    let gw = status(lab, &gw_agent(1));
    assert!(
        gw.interfaces.iter().any(|i| i == plan::GW_POD_IF),
        "{:?}",
        gw.interfaces
    );
    assert!(
        counter(&gw, "rr", "new_flow") >= 20,
        "the gateway pod's flows: {:?}",
        service(&gw, "rr").counters
    );
    assert!(
        counter(&gw, "rr", "sock_connect") >= 20,
        "the gateway's own connections: {:?}",
        service(&gw, "rr").counters
    );

    // Traffic not to a VIP is untouched: pings and a direct transfer to a remote pod work,
    // and the programs translate none of it.
    let before = status(lab, &node1).totals;
    assert_eq!(
        lab.ping(&client, plan::pod_addr(2), 3).unwrap(),
        3,
        "pod-to-pod ping"
    );
    let direct = SocketAddr::from((plan::pod_addr(2), VIP_PORT));
    let r = connect_all(lab, &client, direct, 5);
    assert_eq!(
        r.summary.by_answer.keys().collect::<Vec<_>>(),
        vec![&format!("c2 {direct}")]
    );
    let t = lab.transfer(&client, direct, 8 << 20).unwrap();
    assert!(t.ok, "direct transfer: {t:?}");
    let after = status(lab, &node1).totals;
    for reason in ["forward", "reverse", "new_flow"] {
        assert_eq!(
            before.get(reason),
            after.get(reason),
            "non-VIP traffic was counted as {reason}"
        );
    }

    // A VIP port that does not exist, and a service with no ready endpoint: dropped at the
    // node, counted for the service, and nothing reaches the gateway (every path to any
    // cluster goes through it) nor any backend.
    let forwarded = ForwardCount::install(lab, plan::pod_addr(1));
    assert_eq!(lab.ping(&client, plan::pod_addr(3), 1).unwrap(), 1);
    assert!(
        forwarded.packets() > 0,
        "the counting rule does not see the pod's traffic"
    );
    forwarded.zero();
    let arrivals = || -> usize {
        (2..=3)
            .flat_map(|i| ["pod", "b"].map(|p| format!("c{i}-srv-{p}")))
            .map(|name| lab.app_arrivals(&name).len())
            .sum()
    };
    let arrivals_before = arrivals();
    let before = status(lab, &node1);
    let wrong_port = SocketAddr::from((rr, VIP_PORT + 1));
    let dead = programmed_vip(lab, &node1, "dead").expect("demo/dead programmed");
    assert_eq!(
        lab.dig_status(&client, 1, "dead.demo.svc.clusterset.local", "A")
            .unwrap(),
        "NXDOMAIN"
    );
    let dead_target = SocketAddr::from((dead, VIP_PORT));
    for t in [wrong_port, dead_target] {
        let r = probe(
            lab,
            &client,
            &Probe::tcp(t).count(3).timeout(Duration::from_millis(400)),
        );
        assert_eq!(r.summary.ok, 0, "{t} answered: {:?}", r.summary.by_answer);
        let r = probe(
            lab,
            &client,
            &Probe::udp(t).count(3).timeout(Duration::from_millis(400)),
        );
        assert_eq!(
            r.summary.ok, 0,
            "{t} answered over UDP: {:?}",
            r.summary.by_answer
        );
    }
    assert_eq!(
        forwarded.packets(),
        0,
        "dropped traffic reached the gateway"
    );
    assert_eq!(arrivals_before, arrivals(), "a backend saw dropped traffic");
    let after = status(lab, &node1);
    let no_port = counter(&after, "rr", "drop_no_port") - counter(&before, "rr", "drop_no_port");
    let no_backend =
        counter(&after, "dead", "drop_no_backend") - counter(&before, "dead", "drop_no_backend");
    assert!(
        no_port >= 6,
        "drop_no_port counted {no_port} of at least 6 packets"
    );
    assert!(
        no_backend >= 6,
        "drop_no_backend counted {no_backend} of at least 6 packets"
    );
    assert!(service(&after, "dead").backends.is_empty());
    // The same from a local process: connect() fails at once.
    let r = probe(
        lab,
        &lab.node_ns(1),
        &Probe::tcp(dead_target)
            .count(2)
            .timeout(Duration::from_millis(400)),
    );
    assert_eq!(r.summary.ok, 0);
    eprintln!("drops: no_port {no_port}, no_backend {no_backend}");
    eprintln!("{}", lab.agent_status_text(&node1).unwrap());
}
