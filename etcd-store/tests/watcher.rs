//! `EtcdWatcher` against a real etcd (Debian `etcd-server`); each test starts its own.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{CompactionOptions, Compare, CompareOp, Txn, TxnOp};
use futures_util::StreamExt;
use isthmus_etcd_store::{
    Backoff, EtcdPublisher, EtcdWatcher, PublisherOptions, WatchEvent, WatcherOptions,
};
use support::{Etcd, Proxy};

const PREFIX: &str = "/isthmus/test/exports";
const WAIT: Duration = Duration::from_secs(15);

async fn watcher(endpoints: Vec<String>) -> EtcdWatcher {
    let mut options = WatcherOptions::default();
    options.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    options.connection.connect_timeout = Duration::from_secs(1);
    options.connection.request_timeout = Duration::from_secs(2);
    EtcdWatcher::watch(endpoints, PREFIX, options)
        .await
        .expect("start watcher")
}

fn key(relative: &str) -> String {
    format!("{PREFIX}/{relative}")
}

fn put(key: &str, value: &str) -> WatchEvent {
    WatchEvent::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(key: &str) -> WatchEvent {
    WatchEvent::Delete {
        key: key.to_owned(),
    }
}

fn snapshot(pairs: &[(&str, &str)]) -> WatchEvent {
    WatchEvent::Snapshot(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    )
}

/// The next item, which must be an event.
async fn next_event(watcher: &mut EtcdWatcher) -> WatchEvent {
    match tokio::time::timeout(WAIT, watcher.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The next event after any number of errors; returns how many errors came first.
async fn next_event_after_errors(watcher: &mut EtcdWatcher) -> (usize, WatchEvent) {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, watcher.next()).await {
            Ok(Some(Ok(event))) => return (errors.len(), event),
            Ok(Some(Err(error))) => errors.push(error.to_string()),
            other => panic!("expected an event, got {other:?} after errors {errors:?}"),
        }
    }
}

/// Nothing arrives for a while (used after the last expected event).
async fn assert_quiet(watcher: &mut EtcdWatcher) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(500), watcher.next()).await {
        panic!("unexpected item {item:?}");
    }
}

#[tokio::test]
async fn snapshot_then_changes_in_order() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client.put(key("a"), "1", None).await.unwrap();
    client.put(key("b"), "2", None).await.unwrap();
    client.put(key("_meta/owner"), "gw-a", None).await.unwrap();
    client
        .put(format!("{PREFIX}2/x"), "neighbour", None)
        .await
        .unwrap();

    let mut watcher = watcher(etcd.endpoints()).await;
    assert_eq!(
        next_event(&mut watcher).await,
        snapshot(&[("a", "1"), ("b", "2")])
    );

    client.put(key("c"), "3", None).await.unwrap();
    client.delete(key("a"), None).await.unwrap();
    client
        .put(format!("{PREFIX}2/y"), "outside", None)
        .await
        .unwrap();
    client.put(key("_meta/owner"), "gw-b", None).await.unwrap();
    // Several changes in one revision arrive in the transaction's order.
    let txn = Txn::new()
        .when(vec![Compare::version(key("b"), CompareOp::Greater, 0)])
        .and_then(vec![
            TxnOp::put(key("b"), "20", None),
            TxnOp::put(key("d"), "4", None),
            TxnOp::delete(key("c"), None),
        ]);
    assert!(client.txn(txn).await.unwrap().succeeded());
    client.put(key("a"), "again", None).await.unwrap();

    let expected = [
        put("c", "3"),
        delete("a"),
        put("b", "20"),
        put("d", "4"),
        delete("c"),
        put("a", "again"),
    ];
    for want in expected {
        assert_eq!(next_event(&mut watcher).await, want);
    }
    assert_quiet(&mut watcher).await;
}

#[tokio::test]
async fn watcher_state_follows_a_publisher() {
    let etcd = Etcd::start().await;
    let mut publisher =
        EtcdPublisher::connect(etcd.endpoints(), PREFIX, PublisherOptions::new("gw-a"))
            .await
            .unwrap();
    let first: BTreeMap<String, Vec<u8>> = [("shop/api", "v1"), ("shop/db", "v1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    publisher.publish(first.clone()).await.unwrap();

    let mut watcher = watcher(etcd.endpoints()).await;
    let WatchEvent::Snapshot(mut state) = next_event(&mut watcher).await else {
        panic!("first item is not a snapshot");
    };
    assert_eq!(state, first);

    let second: BTreeMap<String, Vec<u8>> = (0..200)
        .map(|i| (format!("ns/svc-{i}"), format!("{i}").into_bytes()))
        .chain([("shop/api".to_owned(), b"v2".to_vec())])
        .collect();
    let stats = publisher.publish(second.clone()).await.unwrap();
    let changes = stats.put + stats.deleted;
    for _ in 0..changes {
        match next_event(&mut watcher).await {
            WatchEvent::Put { key, value } => {
                state.insert(key, value);
            }
            WatchEvent::Delete { key } => {
                state.remove(&key);
            }
            WatchEvent::Snapshot(_) => panic!("unexpected snapshot"),
        }
    }
    assert_eq!(state, second);
    assert_quiet(&mut watcher).await;
}

#[tokio::test]
async fn resumes_after_etcd_restart_without_losing_an_update() {
    let mut etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client.put(key("a"), "1", None).await.unwrap();
    let proxy = Proxy::start(etcd.addr()).await;
    let mut watcher = watcher(proxy.endpoints()).await;
    assert_eq!(next_event(&mut watcher).await, snapshot(&[("a", "1")]));
    client.put(key("b"), "2", None).await.unwrap();
    assert_eq!(next_event(&mut watcher).await, put("b", "2"));

    // The watcher is cut off across the restart, so the write below happens while it is
    // certainly disconnected.
    proxy.cut();
    etcd.restart().await;
    let mut client = etcd.client().await;
    client.put(key("c"), "3", None).await.unwrap();
    client.delete(key("a"), None).await.unwrap();
    proxy.restore();

    // Resumed from its revision: the missed changes, not a snapshot.
    let (errors, event) = next_event_after_errors(&mut watcher).await;
    assert!(errors >= 1, "the disconnect was not reported");
    assert_eq!(event, put("c", "3"));
    assert_eq!(next_event(&mut watcher).await, delete("a"));
    client.put(key("d"), "4", None).await.unwrap();
    assert_eq!(next_event(&mut watcher).await, put("d", "4"));
    assert_quiet(&mut watcher).await;
}

#[tokio::test]
async fn compacted_history_gives_a_new_snapshot() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client.put(key("a"), "1", None).await.unwrap();
    client.put(key("b"), "2", None).await.unwrap();
    let proxy = Proxy::start(etcd.addr()).await;
    let mut watcher = watcher(proxy.endpoints()).await;
    assert_eq!(
        next_event(&mut watcher).await,
        snapshot(&[("a", "1"), ("b", "2")])
    );

    proxy.cut();
    client.put(key("a"), "10", None).await.unwrap();
    client.delete(key("b"), None).await.unwrap();
    let revision = client
        .put(key("c"), "3", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    proxy.restore();

    let (errors, event) = next_event_after_errors(&mut watcher).await;
    assert!(errors >= 1, "the disconnect was not reported");
    assert_eq!(event, snapshot(&[("a", "10"), ("c", "3")]));
    client.put(key("d"), "4", None).await.unwrap();
    assert_eq!(next_event(&mut watcher).await, put("d", "4"));
    assert_quiet(&mut watcher).await;
}

#[tokio::test]
async fn starts_before_etcd_is_reachable() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    client.put(key("a"), "1", None).await.unwrap();
    let proxy = Proxy::start(etcd.addr()).await;
    proxy.cut();
    let mut watcher = watcher(proxy.endpoints()).await;
    match tokio::time::timeout(WAIT, watcher.next()).await {
        Ok(Some(Err(_))) => {}
        other => panic!("expected an error while etcd is unreachable, got {other:?}"),
    }
    proxy.restore();
    let (_, event) = next_event_after_errors(&mut watcher).await;
    assert_eq!(event, snapshot(&[("a", "1")]));
}
