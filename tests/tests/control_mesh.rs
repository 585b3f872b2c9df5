//! Mesh membership from one seed: every gateway is given a single peer and learns the rest
//! from member records signed by their owners, gossiped over the catalog sync sessions; it
//! then opens a direct tunnel to each (a full mesh, no broker). A member that leaves, or dies
//! and stops re-signing its record, disappears from every peer. Needs root.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use isthmus_lab::control::{gateway_id, seeded_lab, wait_synced, MEMBER_TTL_SECS};
use isthmus_lab::{plan, wait_for, Lab, Signal};

/// How long a fresh mesh gets to form from the seeds.
const FORM_DEADLINE: Duration = Duration::from_secs(30);

fn others(lab: &Lab, i: usize) -> BTreeSet<String> {
    (1..=lab.clusters())
        .filter(|&j| j != i)
        .map(gateway_id)
        .collect()
}

/// Whether gateway `i` knows exactly `want` as members and has a peer row with a completed
/// handshake for each.
fn knows(lab: &Lab, i: usize, want: &BTreeSet<String>) -> bool {
    let members: BTreeSet<String> = lab.members_of(i).into_iter().collect();
    if members != *want {
        return false;
    }
    let Ok(serde_json::Value::Array(rows)) = lab.tunctl(i, &["-o", "json", "peers"]) else {
        return false;
    };
    want.iter().all(|id| {
        rows.iter().any(|r| {
            r["spiffe_id"] == id.as_str()
                && r["verified"] == true
                && !r["last_handshake_unix_ms"].is_null()
        })
    })
}

/// No peer row of gateway `i` names `id`, and `id` is no member of it.
fn forgot(lab: &Lab, i: usize, id: &str) -> bool {
    let Ok(serde_json::Value::Array(rows)) = lab.tunctl(i, &["-o", "json", "peers"]) else {
        return false;
    };
    !lab.members_of(i).iter().any(|m| m == id) && !rows.iter().any(|r| r["spiffe_id"] == id)
}

fn routes(lab: &Lab, i: usize) -> String {
    lab.run(&lab.gw_ns(i), &["ip", "route", "show"])
        .unwrap_or_default()
}

#[test]
fn three_clusters_with_one_seed_each_form_a_full_mesh_and_drop_members_that_go() {
    // gw1's seed is gw2; gw2's and gw3's is gw1: gw2 and gw3 are never told of each other.
    let lab = seeded_lab(3, |i| if i == 1 { 2 } else { 1 });
    let start = Instant::now();
    let formed = wait_for(
        || (1..=3).all(|i| knows(&lab, i, &others(&lab, i))),
        FORM_DEADLINE,
    );
    if !formed {
        lab.dump_gateway_logs();
    }
    assert!(
        formed,
        "no full mesh within {FORM_DEADLINE:?}: members {:?}",
        (1..=3).map(|i| lab.members_of(i)).collect::<Vec<_>>()
    );
    eprintln!(
        "full mesh (records, keys, handshakes) after {:?}",
        start.elapsed()
    );
    wait_synced(&lab, "mesh formed");
    let status = lab.tunctl_text(1, &["status"]).unwrap();
    assert!(
        status.contains("members:        c2/gw, c3/gw"),
        "tunctl status names the members:\n{status}"
    );

    // The learned tunnel carries traffic directly: c2's pod reaches c3's pod, and the bytes
    // are counted on gw2's peer row for gw3 (no relay through the seed).
    assert_eq!(
        lab.ping(&lab.pod_ns(2), plan::pod_addr(3), 3).unwrap(),
        3,
        "c2 pod to c3 pod over the learned tunnel"
    );
    let row = lab
        .peers_json(2)
        .into_iter()
        .find(|r| r["spiffe_id"] == gateway_id(3).as_str())
        .expect("gw2 has a row for gw3");
    assert!(row["rx_bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    assert!(
        row["allowed_ips"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == plan::cluster_cidr(3).as_str()),
        "gw3's prefix learned from its record: {row}"
    );
    assert!(routes(&lab, 2).contains(&plan::cluster_cidr(3)));

    // Leaving: gw3 stops cleanly, signs a leaving record and sends it first.
    lab.stop_gateway(3, Signal::Term).unwrap();
    let stopped = Instant::now();
    let id3 = gateway_id(3);
    let gone = wait_for(
        || forgot(&lab, 1, &id3) && forgot(&lab, 2, &id3),
        Duration::from_secs(5),
    );
    if !gone {
        lab.dump_gateway_logs();
    }
    assert!(gone, "gw3 left but is still a peer of gw1 or gw2");
    eprintln!(
        "left member dropped by both peers after {:?}",
        stopped.elapsed()
    );
    assert!(
        wait_for(
            || !routes(&lab, 2).contains(&plan::cluster_cidr(3)),
            Duration::from_secs(2)
        ),
        "gw2 still routes gw3's prefix: {}",
        routes(&lab, 2)
    );

    // Back: it joins its seed again and everyone learns it again.
    lab.start_gateway(3).unwrap();
    assert!(
        wait_for(
            || (1..=3).all(|i| knows(&lab, i, &others(&lab, i))),
            FORM_DEADLINE
        ),
        "gw3 did not rejoin the mesh: {:?}",
        (1..=3).map(|i| lab.members_of(i)).collect::<Vec<_>>()
    );

    // Dying without leaving: its record is no longer re-signed and lapses everywhere after
    // the member TTL (signed at most a third of it before the kill).
    lab.stop_gateway(3, Signal::Kill).unwrap();
    let killed = Instant::now();
    let ttl = Duration::from_secs(MEMBER_TTL_SECS);
    let lapsed = wait_for(
        || forgot(&lab, 1, &id3) && forgot(&lab, 2, &id3),
        ttl + Duration::from_secs(4),
    );
    assert!(lapsed, "a killed member's record did not lapse");
    let after = killed.elapsed();
    eprintln!("killed member dropped after {after:?} (ttl {ttl:?})");
    assert!(
        after >= ttl / 3,
        "dropped after {after:?}: before its record could have lapsed"
    );
    // The two that remain still see each other.
    assert!(knows(&lab, 1, &BTreeSet::from([gateway_id(2)])));
    assert!(knows(&lab, 2, &BTreeSet::from([gateway_id(1)])));
}
