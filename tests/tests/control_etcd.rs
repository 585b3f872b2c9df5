//! The etcd-backed mode against a real etcd (Debian `etcd-server`), run in gateway 1's
//! namespace: gateway 1 takes its exports from an etcd prefix and mirrors the merged catalog
//! (and its gateway record with the routes nodes need) under another; the mirror follows export changes from both clusters, and cluster 2 resolves
//! what cluster 1 exported through etcd. Needs root and `etcd`/`etcdctl`.

use std::process::Command;
use std::time::Duration;

use isthmus_lab::agent::{AgentSource, AgentSpec};
use isthmus_lab::control::{fqdn, wait_synced};
use isthmus_lab::{plan, wait_for, Lab};

const CLIENT: &str = "http://127.0.0.1:23790";
const EXPORTS: &str = "/isthmus/exports/c1";
const STORE: &str = "/isthmus/clusterset";

fn etcdctl(lab: &Lab, args: &[&str]) -> String {
    let mut all = vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", CLIENT];
    all.extend_from_slice(args);
    lab.run(&lab.gw_ns(1), &all)
        .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e:#}"))
}

/// The keys under the store prefix's `services/`, relative to it.
fn stored(lab: &Lab) -> Vec<String> {
    let prefix = format!("{STORE}/services/");
    etcdctl(lab, &["get", "--prefix", "--keys-only", &prefix])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches(&prefix).to_owned())
        .collect()
}

fn export_json(ns: &str, name: &str, addr: std::net::Ipv4Addr) -> String {
    format!(
        r#"{{"namespace":"{ns}","name":"{name}","headless":true,"ports":[{{"name":"tcp","port":7000}}],"endpoints":[{{"address":"{addr}","port":7000}}]}}"#
    )
}

#[test]
fn etcd_exports_and_store_follow_changes() {
    let lab = Lab::builder()
        .clusters(2)
        .build()
        .unwrap_or_else(|e| panic!("failed to build the lab: {e:#}"));
    let data = lab.dir().join("etcd-data");
    let mut etcd = Command::new("etcd");
    etcd.args([
        "--name=lab",
        &format!("--data-dir={}", data.display()),
        &format!("--listen-client-urls={CLIENT}"),
        &format!("--advertise-client-urls={CLIENT}"),
        "--listen-peer-urls=http://127.0.0.1:23800",
        "--initial-advertise-peer-urls=http://127.0.0.1:23800",
        "--initial-cluster=lab=http://127.0.0.1:23800",
    ]);
    let _etcd = lab.spawn(&lab.gw_ns(1), &etcd).expect("etcd");
    let healthy = wait_for(
        || {
            lab.run(
                &lab.gw_ns(1),
                &[
                    "env",
                    "ETCDCTL_API=3",
                    "etcdctl",
                    "--endpoints",
                    CLIENT,
                    "endpoint",
                    "health",
                ],
            )
            .is_ok()
        },
        Duration::from_secs(20),
    );
    assert!(healthy, "etcd did not become healthy");
    etcdctl(
        &lab,
        &[
            "put",
            &format!("{EXPORTS}/demo/from-etcd"),
            &export_json("demo", "from-etcd", plan::pod_addr(1)),
        ],
    );

    let svids = lab.issue_gateway_svids().expect("issuing SVIDs");
    lab.write_control_configs(&svids, |i, extra| {
        if i != 1 {
            return;
        }
        let endpoints = toml::Value::Array(vec![CLIENT.into()]);
        let mut exports = toml::Table::new();
        exports.insert("source".into(), "etcd".into());
        exports.insert("etcd_endpoints".into(), endpoints.clone());
        exports.insert("etcd_prefix".into(), EXPORTS.into());
        extra.insert("exports".into(), toml::Value::Table(exports));
        let mut store = toml::Table::new();
        store.insert("etcd_endpoints".into(), endpoints);
        store.insert("etcd_prefix".into(), STORE.into());
        extra.insert("store".into(), toml::Value::Table(store));
    })
    .expect("writing configs");
    lab.write_exports(
        2,
        &isthmus_lab::control::exports_toml(&[
            ("demo/two", true, &[plan::pod_addr(2)]),
            ("demo/api", false, &[plan::pod_addr(2)]),
        ]),
    )
    .unwrap();
    for i in 1..=2 {
        lab.start_gateway(i)
            .unwrap_or_else(|e| panic!("starting gateway {i}: {e:#}"));
    }
    wait_synced(&lab, "start");

    // The merged catalog (both clusters) appears under the store prefix.
    let want = vec![
        "demo/api".to_owned(),
        "demo/from-etcd".to_owned(),
        "demo/two".to_owned(),
    ];
    let mirrored = wait_for(|| stored(&lab) == want, Duration::from_secs(10));
    if !mirrored {
        lab.dump_gateway_logs();
    }
    assert!(
        mirrored,
        "store prefix holds {:?}, want {want:?}",
        stored(&lab)
    );
    let value = etcdctl(
        &lab,
        &[
            "get",
            "--print-value-only",
            &format!("{STORE}/services/demo/two"),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(value.trim())
        .unwrap_or_else(|e| panic!("stored value is not JSON ({e}): {value}"));
    assert!(
        value.contains("c2"),
        "stored demo/two does not name cluster c2: {json}"
    );

    // Beside the services, the gateway's own record: what nodes route via the gateway node.
    let key = format!("{STORE}/{}", isthmus_catalog_view::GATEWAY_KEY);
    let value = etcdctl(&lab, &["get", "--print-value-only", &key]);
    let gateway: isthmus_catalog_view::GatewayInfo = serde_json::from_str(value.trim())
        .unwrap_or_else(|e| panic!("{key} is no GatewayInfo ({e}): {value:?}"));
    isthmus_catalog_view::check_schema(gateway.schema).unwrap();
    assert_eq!(gateway.cluster, "c1", "{value}");
    for want in [
        plan::cluster_cidr(2),
        format!("{}/32", plan::mesh_addr(2)),
        format!("{}/32", plan::mesh_addr(1)),
    ] {
        assert!(
            gateway.routes.contains(&want),
            "{key} routes lack {want}: {value}"
        );
    }

    // A route agent following the store (rather than the watch stream) programs the service
    // with a VIP, backed by c2's pod, and knows the gateway's cluster from its record.
    let agent = "etcd";
    lab.start_agent(
        &lab.gw_ns(1),
        agent,
        &AgentSpec::new(AgentSource::Etcd(CLIENT.to_owned(), STORE.to_owned())).sockets(false),
    )
    .unwrap_or_else(|e| panic!("starting the agent: {e:#}"));
    let backend = plan::pod_addr(2).to_string();
    let (ok, last) = lab.wait_agent(agent, Duration::from_secs(10), |s| {
        s.cluster == "c1"
            && s.services.len() == 1
            && s.services[0].name == "api"
            && s.services[0]
                .backends
                .iter()
                .map(|b| &b.address)
                .eq([&backend])
    });
    assert!(
        ok,
        "the etcd-following agent did not program demo/api: {last:?}"
    );

    // Cluster 2 resolves what cluster 1 exported through etcd.
    let answer = vec![plan::pod_addr(1).to_string()];
    assert!(
        wait_for(
            || lab
                .dig(&lab.pod_ns(2), 2, &fqdn("demo/from-etcd"), "A")
                .ok()
                == Some(answer.clone()),
            Duration::from_secs(5)
        ),
        "c2 does not resolve demo/from-etcd: {:?}",
        lab.dig(&lab.pod_ns(2), 2, &fqdn("demo/from-etcd"), "A")
    );

    // Changes follow: the etcd export is withdrawn, cluster 2 adds a service.
    etcdctl(&lab, &["del", &format!("{EXPORTS}/demo/from-etcd")]);
    lab.write_exports(
        2,
        &isthmus_lab::control::exports_toml(&[
            ("demo/two", true, &[plan::pod_addr(2)]),
            ("demo/three", true, &[plan::pod_addr(2)]),
        ]),
    )
    .unwrap();
    let want = vec!["demo/three".to_owned(), "demo/two".to_owned()];
    assert!(
        wait_for(|| stored(&lab) == want, Duration::from_secs(10)),
        "after the changes the store prefix holds {:?}, want {want:?}",
        stored(&lab)
    );
    // The agent follows: demo/api is gone from the store, so from its maps.
    let (ok, last) = lab.wait_agent(agent, Duration::from_secs(10), |s| s.services.is_empty());
    assert!(ok, "the agent still programs a withdrawn service: {last:?}");
}
