//! What the control plane refuses: a cluster publishing another cluster's records, bytes that
//! are no sync message, and connections from addresses that are no peer's mesh address. Each
//! is closed and counted, and the catalog stays as it was. Needs root.

use std::time::Duration;

use isthmus_lab::control::{control_lab, exports_toml, fqdn};
use isthmus_lab::{plan, wait_for, Lab};

const FORGE_BIN: &str = "isthmus-sync-forge";

/// Runs the forge tool in `ns` from `from` to gateway 1's control port; returns its verdict.
fn forge(lab: &Lab, ns: &str, from: &str, what: &[&str]) -> String {
    let bin = lab.binary(FORGE_BIN).unwrap_or_else(|e| panic!("{e:#}"));
    let to = format!("{}:51822", plan::mesh_addr(1));
    let mut args = vec![bin.to_str().unwrap(), "--from", from, "--to", &to];
    args.extend_from_slice(what);
    lab.run(ns, &args)
        .unwrap_or_else(|e| panic!("{FORGE_BIN} {what:?}: {e:#}"))
        .trim()
        .to_owned()
}

fn refusals(lab: &Lab, reason: &str) -> u64 {
    lab.control_status(1)["refusals"][reason]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn forged_malformed_and_stranger_sync_is_refused_counted_and_harmless() {
    let lab = control_lab(3);
    let pod1 = lab.pod_ns(1);
    let pod2 = plan::pod_addr(2);
    lab.write_exports(2, &exports_toml(&[("demo/only2", true, &[pod2])]))
        .unwrap();
    lab.write_exports(
        3,
        &exports_toml(&[("demo/svc3", true, &[plan::pod_addr(3)])]),
    )
    .unwrap();
    let ready = wait_for(
        || {
            lab.dig(&pod1, 1, &fqdn("demo/only2"), "A").ok() == Some(vec![pod2.to_string()])
                && !lab
                    .dig(&pod1, 1, &fqdn("demo/svc3"), "A")
                    .unwrap_or_default()
                    .is_empty()
        },
        Duration::from_secs(5),
    );
    assert!(
        ready,
        "exports did not reach gateway 1: {:?}",
        lab.services_json(1)
    );
    let before = lab.services_json(1);

    // (c) Cluster 3's gateway, from its own mesh address through its tunnel, publishes a
    // snapshot claiming cluster 2's records (with a newer generation than c2's own).
    let mesh3 = plan::mesh_addr(3).to_string();
    let verdict = forge(
        &lab,
        &lab.gw_ns(3),
        &mesh3,
        &[
            "snapshot",
            "--origin",
            "c2",
            "--service",
            "demo/only2",
            "--endpoint",
            "10.3.1.2",
        ],
    );
    assert_eq!(
        verdict, "closed",
        "gateway 1 kept a session that published c2's records as c3"
    );
    assert!(
        refusals(&lab, "wrong_origin") >= 1,
        "{}",
        lab.control_status(1)
    );
    assert_eq!(
        lab.services_json(1),
        before,
        "the forged snapshot changed gateway 1's catalog"
    );
    assert_eq!(
        lab.dig(&pod1, 1, &fqdn("demo/only2"), "A").unwrap(),
        vec![pod2.to_string()]
    );

    // (d) Bytes that are no sync message, from cluster 2's mesh address.
    let mesh2 = plan::mesh_addr(2).to_string();
    let verdict = forge(&lab, &lab.gw_ns(2), &mesh2, &["garbage"]);
    assert_eq!(
        verdict, "closed",
        "gateway 1 kept a connection that sent garbage"
    );
    assert!(refusals(&lab, "decode") >= 1, "{}", lab.control_status(1));
    assert_eq!(
        lab.services_json(1),
        before,
        "garbage changed gateway 1's catalog"
    );

    // From inside cluster 3 but not from a mesh address (the node): no session at all.
    let node3 = plan::node_addr(3).to_string();
    let verdict = forge(&lab, &lab.node_ns(3), &node3, &["garbage"]);
    assert_eq!(verdict, "closed");
    assert!(
        refusals(&lab, "unknown_source") >= 1,
        "{}",
        lab.control_status(1)
    );

    // The real sessions were not disturbed, and the metric shows the refusals too.
    assert!(lab.control_synced(1), "{}", lab.control_status(1));
    assert_eq!(lab.services_json(1), before);
    let status = lab.control_status(1);
    eprintln!("gateway 1 refusals: {}", status["refusals"]);
}
