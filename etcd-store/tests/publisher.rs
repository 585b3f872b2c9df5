//! `EtcdPublisher` against a real etcd (Debian `etcd-server`); each test starts its own.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use isthmus_etcd_store::{Backoff, Error, EtcdPublisher, PublishStats, PublisherOptions};
use support::Etcd;

const PREFIX: &str = "/isthmus/test/services";

fn options(owner: &str) -> PublisherOptions {
    let mut options = PublisherOptions::new(owner);
    options.attempts = 3;
    options.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    options.connection.connect_timeout = Duration::from_secs(1);
    options.connection.request_timeout = Duration::from_secs(2);
    options
}

async fn publisher(etcd: &Etcd, owner: &str) -> EtcdPublisher {
    EtcdPublisher::connect(etcd.endpoints(), PREFIX, options(owner))
        .await
        .expect("connect publisher")
}

fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Everything under `prefix/`, relative keys to (value, mod revision), and the store revision.
async fn stored(client: &mut Client, prefix: &str) -> (BTreeMap<String, (String, i64)>, i64) {
    let root = format!("{prefix}/");
    let read = client
        .get(root.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("read prefix");
    let keys = read
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv
                .key_str()
                .unwrap()
                .strip_prefix(&root)
                .unwrap()
                .to_owned();
            let value = kv.value_str().unwrap().to_owned();
            (key, (value, kv.mod_revision()))
        })
        .collect();
    (keys, read.header().unwrap().revision())
}

async fn values(client: &mut Client, prefix: &str) -> BTreeMap<String, String> {
    let (keys, _) = stored(client, prefix).await;
    keys.into_iter().map(|(k, (v, _))| (k, v)).collect()
}

fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn publish_creates_exactly_the_entries() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    // Neighbours that share the prefix as a string but are not under it.
    client
        .put("/isthmus/test/services2/x", "keep", None)
        .await
        .unwrap();
    client
        .put("/isthmus/test/service", "keep", None)
        .await
        .unwrap();

    let mut publisher = publisher(&etcd, "gw-a").await;
    let published = [
        ("shop/api", r#"{"port":8080}"#),
        ("shop/db", r#"{"port":5432}"#),
        ("web/front", r#"{"port":80}"#),
    ];
    let stats = publisher.publish(entries(&published)).await.unwrap();
    assert_eq!(
        (
            stats.put,
            stats.deleted,
            stats.unchanged,
            stats.transactions
        ),
        (3, 0, 0, 1)
    );

    let mut want = expected(&published);
    want.insert("_meta/owner".into(), "gw-a".into());
    assert_eq!(values(&mut client, PREFIX).await, want);
    assert_eq!(
        values(&mut client, "/isthmus/test/services2").await.len(),
        1
    );
    assert_eq!(
        client
            .get("/isthmus/test/service", None)
            .await
            .unwrap()
            .count(),
        1
    );

    // The stock CLI sees the same keys: the layout is plain etcd, nothing client-specific.
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .args(["get", "--prefix", &format!("{PREFIX}/")])
        .output()
        .expect("run etcdctl (Debian package etcd-client)");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let from_cli: BTreeMap<String, String> = lines
        .chunks(2)
        .map(|pair| {
            let key = pair[0].strip_prefix(&format!("{PREFIX}/")).unwrap();
            (key.to_owned(), pair[1].to_owned())
        })
        .collect();
    assert_eq!(from_cli, want);
}

#[tokio::test]
async fn second_publish_writes_only_the_difference() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut publisher = publisher(&etcd, "gw-a").await;
    let first = publisher
        .publish(entries(&[("a", "1"), ("b", "2"), ("c", "3")]))
        .await
        .unwrap();
    let (before, _) = stored(&mut client, PREFIX).await;

    let second = publisher
        .publish(entries(&[("a", "1"), ("b", "20"), ("d", "4")]))
        .await
        .unwrap();
    assert_eq!(
        (
            second.put,
            second.deleted,
            second.unchanged,
            second.transactions
        ),
        (2, 1, 1, 1)
    );
    // One transaction: exactly one new revision, and it is the one the stats report.
    assert_eq!(second.revision, first.revision + 1);
    let (after, revision) = stored(&mut client, PREFIX).await;
    assert_eq!(revision, second.revision);
    assert_eq!(after["a"], before["a"], "unchanged key was rewritten");
    assert_eq!(after["b"], ("20".to_owned(), second.revision));
    assert_eq!(after["d"], ("4".to_owned(), second.revision));
    assert!(!after.contains_key("c"));
    assert_eq!(after["_meta/owner"], before["_meta/owner"]);

    // Same set again: nothing is written at all.
    let third = publisher
        .publish(entries(&[("a", "1"), ("b", "20"), ("d", "4")]))
        .await
        .unwrap();
    assert_eq!(
        third,
        PublishStats {
            put: 0,
            deleted: 0,
            unchanged: 3,
            transactions: 0,
            revision: second.revision
        }
    );
    assert_eq!(stored(&mut client, PREFIX).await.1, second.revision);

    // A restarted gateway (new publisher, same owner) reads first and rewrites no entry; only
    // the owner key moves to its new lease.
    drop(publisher);
    let mut restarted = self::publisher(&etcd, "gw-a").await;
    let stats = restarted
        .publish(entries(&[("a", "1"), ("b", "20"), ("d", "4")]))
        .await
        .unwrap();
    assert_eq!((stats.put, stats.deleted, stats.transactions), (0, 0, 0));
    let (again, _) = stored(&mut client, PREFIX).await;
    for key in ["a", "b", "d"] {
        assert_eq!(again[key], after[key], "{key} rewritten after restart");
    }
    assert_ne!(again["_meta/owner"].1, after["_meta/owner"].1);
}

#[tokio::test]
async fn foreign_keys_under_the_prefix_are_removed() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut publisher = publisher(&etcd, "gw-a").await;
    publisher.publish(entries(&[("a", "1")])).await.unwrap();

    client
        .put(format!("{PREFIX}/stray/x"), "junk", None)
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}/a"), "tampered", None)
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}2/x"), "neighbour", None)
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}/_meta/note"), "ours", None)
        .await
        .unwrap();

    let stats = publisher.publish(entries(&[("a", "1")])).await.unwrap();
    assert_eq!((stats.put, stats.deleted, stats.unchanged), (1, 1, 0));
    assert_eq!(
        values(&mut client, PREFIX).await,
        expected(&[("a", "1"), ("_meta/note", "ours"), ("_meta/owner", "gw-a")])
    );
    assert_eq!(
        values(&mut client, &format!("{PREFIX}2")).await,
        expected(&[("x", "neighbour")])
    );
}

#[tokio::test]
async fn large_sets_are_split_under_the_txn_ops_limit() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut publisher = publisher(&etcd, "gw-a").await;
    let many: BTreeMap<String, Vec<u8>> = (0..300)
        .map(|i| {
            (
                format!("ns/svc-{i:03}"),
                format!("{{\"i\":{i}}}").into_bytes(),
            )
        })
        .collect();

    // etcd's default --max-txn-ops is 128; one slot per transaction is the owner guard.
    let stats = publisher.publish(many.clone()).await.unwrap();
    assert_eq!((stats.put, stats.transactions), (300, 3));
    let (keys, _) = stored(&mut client, PREFIX).await;
    assert_eq!(keys.len(), 301);

    let stats = publisher.publish(BTreeMap::new()).await.unwrap();
    assert_eq!((stats.deleted, stats.transactions), (300, 3));
    assert_eq!(
        values(&mut client, PREFIX).await,
        expected(&[("_meta/owner", "gw-a")])
    );
}

#[tokio::test]
async fn publish_reconnects_after_etcd_restarts() {
    let mut etcd = Etcd::start().await;
    let mut publisher = publisher(&etcd, "gw-a").await;
    publisher
        .publish(entries(&[("a", "1"), ("b", "2")]))
        .await
        .unwrap();

    etcd.restart().await;
    let stats = publisher
        .publish(entries(&[("a", "1"), ("b", "3")]))
        .await
        .expect("publish after restart");
    assert_eq!((stats.put, stats.unchanged), (1, 1));

    // While etcd is down the call gives up with the cause, and the next call re-diffs.
    etcd.kill();
    let error = publisher
        .publish(entries(&[("a", "1"), ("c", "4")]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Exhausted { attempts: 3, .. }),
        "{error:?}"
    );
    let message = error_chain(&error);
    assert!(
        message.starts_with("publish failed after 3 attempts: "),
        "{message}"
    );

    etcd.restart().await;
    let stats = publisher
        .publish(entries(&[("a", "1"), ("c", "4")]))
        .await
        .unwrap();
    assert_eq!((stats.put, stats.deleted, stats.unchanged), (1, 1, 1));
    let mut client = etcd.client().await;
    assert_eq!(
        values(&mut client, PREFIX).await,
        expected(&[("a", "1"), ("c", "4"), ("_meta/owner", "gw-a")])
    );
}

#[tokio::test]
async fn a_second_owner_is_refused_until_release() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut a = publisher(&etcd, "gw-a").await;
    let mut b = publisher(&etcd, "gw-b").await;
    a.publish(entries(&[("from-a", "1")])).await.unwrap();

    let error = b.publish(entries(&[("from-b", "1")])).await.unwrap_err();
    assert!(
        matches!(&error, Error::NotOwner { holder } if holder == "gw-a"),
        "{error:?}"
    );
    assert_eq!(
        values(&mut client, PREFIX).await,
        expected(&[("from-a", "1"), ("_meta/owner", "gw-a")])
    );

    a.release().await.unwrap();
    assert_eq!(
        values(&mut client, PREFIX).await,
        expected(&[("from-a", "1")]),
        "release keeps the published keys"
    );
    let stats = b.publish(entries(&[("from-b", "1")])).await.unwrap();
    assert_eq!((stats.put, stats.deleted), (1, 1));

    let mut a_again = publisher(&etcd, "gw-a").await;
    let error = a_again.publish(entries(&[("x", "1")])).await.unwrap_err();
    assert!(
        matches!(&error, Error::NotOwner { holder } if holder == "gw-b"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_dead_owner_blocks_only_until_its_lease_expires() {
    let etcd = Etcd::start().await;
    let mut a_options = options("gw-a");
    a_options.lease_ttl = Duration::from_secs(2);
    let mut a = EtcdPublisher::connect(etcd.endpoints(), PREFIX, a_options)
        .await
        .unwrap();
    let mut b = publisher(&etcd, "gw-b").await;
    a.publish(entries(&[("from-a", "1")])).await.unwrap();

    // Twice the TTL: only the keep-alive task can have kept the owner key.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(matches!(
        b.publish(entries(&[("from-b", "1")])).await,
        Err(Error::NotOwner { .. })
    ));

    drop(a);
    let dropped = Instant::now();
    loop {
        match b.publish(entries(&[("from-b", "1")])).await {
            Ok(stats) => {
                assert_eq!((stats.put, stats.deleted), (1, 1));
                break;
            }
            Err(Error::NotOwner { .. }) if dropped.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("standby never took over: {error:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_input_is_refused_before_any_request() {
    // Nothing listens on port 9: any request would fail with a transport error instead.
    let endpoints = vec!["http://127.0.0.1:9".to_owned()];
    let error = EtcdPublisher::connect(endpoints.clone(), "/", options("gw-a"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidPrefix { .. }), "{error:?}");
    let error = EtcdPublisher::connect(endpoints.clone(), PREFIX, options(""))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidOption { name: "owner", .. }),
        "{error:?}"
    );

    let mut publisher = EtcdPublisher::connect(endpoints, PREFIX, options("gw-a"))
        .await
        .unwrap();
    for key in ["", "_meta/owner", "_meta"] {
        let error = publisher.publish(entries(&[(key, "x")])).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidKey { .. }),
            "{key:?}: {error:?}"
        );
    }
}

/// `{:#}`-style rendering of an error and its sources, as the gateway's anyhow would print it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
