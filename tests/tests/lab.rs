//! The lab itself, without gateways: the topology routes what it should (and nothing more),
//! the helpers do what they say, and teardown leaves nothing behind. Needs root; fails loudly
//! without it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use isthmus_lab::{netns, plan, wait_for, Lab};

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
