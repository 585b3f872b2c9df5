//! Partition and heal: the WAN between gateways 1 and 2 is cut while both change their exports
//! (gateway 3 still reaches both); after the heal every gateway holds exactly each cluster's
//! final exports — each service once, each exporting cluster once, nothing lost. The pure
//! tier states the same over many random orders (isthmus-catalog's convergence proptest).
//! Needs root and iptables.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use isthmus_lab::control::{control_lab, exports_toml, wait_synced};
use isthmus_lab::{plan, wait_for, Lab};

/// `namespace/name` → (clusters offering it, endpoints healthy/total), as gateway `i` sees it.
/// Panics on a service listed twice.
fn view(lab: &Lab, i: usize) -> BTreeMap<String, (Vec<String>, u64, u64)> {
    let mut out = BTreeMap::new();
    for s in lab.services_json(i) {
        let key = format!(
            "{}/{}",
            s["namespace"].as_str().unwrap_or_default(),
            s["name"].as_str().unwrap_or_default()
        );
        let clusters: Vec<String> = s["clusters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut dedup = clusters.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(
            dedup.len(),
            clusters.len(),
            "gateway {i}: {key} lists a cluster twice: {s}"
        );
        let row = (
            dedup,
            s["endpoints_healthy"].as_u64().unwrap_or(u64::MAX),
            s["endpoints_total"].as_u64().unwrap_or(u64::MAX),
        );
        assert!(
            out.insert(key.clone(), row).is_none(),
            "gateway {i} lists {key} twice"
        );
    }
    out
}

fn expect(rows: &[(&str, &[&str], u64)]) -> BTreeMap<String, (Vec<String>, u64, u64)> {
    rows.iter()
        .map(|(name, clusters, eps)| {
            (
                name.to_string(),
                (clusters.iter().map(|c| c.to_string()).collect(), *eps, *eps),
            )
        })
        .collect()
}

fn wait_view(lab: &Lab, i: usize, want: &BTreeMap<String, (Vec<String>, u64, u64)>, when: &str) {
    let ok = wait_for(|| &view(lab, i) == want, Duration::from_secs(30));
    if !ok {
        lab.dump_gateway_logs();
    }
    assert!(
        ok,
        "gateway {i} {when}: {:?}\nwanted {want:?}",
        view(lab, i)
    );
}

/// Drops everything between gateway 1 and gateway 2's WAN address (both directions), or
/// removes that rule again.
fn partition(lab: &Lab, cut: bool) {
    let peer = plan::wan_addr(2).to_string();
    let op = if cut { "-I" } else { "-D" };
    for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
        lab.run(
            &lab.gw_ns(1),
            &["iptables", op, chain, dir, &peer, "-j", "DROP"],
        )
        .unwrap_or_else(|e| panic!("iptables {op} {chain}: {e:#}"));
    }
}

#[test]
fn partition_and_heal_converge_with_no_duplicates_and_no_lost_updates() {
    let lab = control_lab(3);
    let (p1, p2, p3): (Ipv4Addr, Ipv4Addr, Ipv4Addr) =
        (plan::pod_addr(1), plan::pod_addr(2), plan::pod_addr(3));
    lab.write_exports(
        1,
        &exports_toml(&[("a/one", true, &[p1]), ("s/shared", true, &[p1])]),
    )
    .unwrap();
    lab.write_exports(
        2,
        &exports_toml(&[("b/two", true, &[p2]), ("s/shared", true, &[p2])]),
    )
    .unwrap();
    lab.write_exports(3, &exports_toml(&[("c/three", true, &[p3])]))
        .unwrap();
    let before = expect(&[
        ("a/one", &["c1"], 1),
        ("b/two", &["c2"], 1),
        ("c/three", &["c3"], 1),
        ("s/shared", &["c1", "c2"], 2),
    ]);
    for i in 1..=3 {
        wait_view(&lab, i, &before, "before the partition");
    }

    partition(&lab, true);
    // Both sides change while they cannot reach each other; gateway 3 sees both.
    lab.write_exports(
        1,
        &exports_toml(&[("a/uno", true, &[p1]), ("s/shared", true, &[p1])]),
    )
    .unwrap();
    lab.write_exports(
        2,
        &exports_toml(&[("b/two", true, &[p2]), ("b/dos", true, &[p2, p1])]),
    )
    .unwrap();
    let after = expect(&[
        ("a/uno", &["c1"], 1),
        ("b/dos", &["c2"], 2),
        ("b/two", &["c2"], 1),
        ("c/three", &["c3"], 1),
        ("s/shared", &["c1"], 1),
    ]);
    wait_view(&lab, 3, &after, "during the partition");
    // Long enough for gateway 1 to declare c2 down and drop the session: the heal must then
    // resync from scratch, not just let TCP retransmit.
    let down = wait_for(
        || {
            !lab.control_synced(1)
                && view(&lab, 1)
                    .get("b/two")
                    .is_none_or(|(clusters, _, _)| clusters.is_empty())
        },
        Duration::from_secs(20),
    );
    assert!(
        down,
        "gateway 1 still offers c2 during the partition: {:?} {}",
        view(&lab, 1),
        lab.control_status(1)
    );
    let cut_off = view(&lab, 1);
    assert!(
        !cut_off.contains_key("b/dos"),
        "gateway 1 learned c2's change through the cut: {cut_off:?}"
    );

    partition(&lab, false);
    wait_synced(&lab, "heal");
    for i in 1..=3 {
        wait_view(&lab, i, &after, "after the heal");
    }
}
