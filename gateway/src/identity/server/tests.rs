//! The join over real TCP on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::super::rate_limit::{JoinRateLimiter, RateLimitConfig};
use super::super::tests::{fake_chain, FakeVerifier, ALPHA, BETA};
use super::super::JoinError;
use super::{join_connect, join_listen};
use crate::keys::PrivateKey;

async fn listen(
    verifier: Arc<dyn super::PeerVerifier>,
    limits: RateLimitConfig,
) -> (
    PrivateKey,
    super::JoinServerHandle,
    tokio::sync::mpsc::Receiver<super::JoinedPeer>,
) {
    let key = PrivateKey::generate();
    let (handle, rx) = join_listen(
        "127.0.0.1:0".parse().unwrap(),
        key.clone(),
        fake_chain(BETA, &key).into(),
        verifier,
        JoinRateLimiter::new(limits),
    )
    .await
    .unwrap();
    (key, handle, rx)
}

#[tokio::test]
async fn join_over_tcp_delivers_the_peer_to_both_sides() {
    let (rkey, server, mut joined) = listen(FakeVerifier::arc(), RateLimitConfig::default()).await;
    let ikey = PrivateKey::generate();
    let client = join_connect(
        server.local_addr(),
        &ikey,
        &fake_chain(ALPHA, &ikey).into(),
        BETA.into(),
        FakeVerifier::arc(),
    )
    .await
    .unwrap();
    assert_eq!(client.joined.peer_id.as_str(), BETA);
    assert_eq!(&client.joined.remote_static, rkey.public_key().as_bytes());
    assert_eq!(client.remote_addr, server.local_addr());

    let seen = tokio::time::timeout(Duration::from_secs(2), joined.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.joined.peer_id.as_str(), ALPHA);
    assert_eq!(&seen.joined.remote_static, ikey.public_key().as_bytes());
    assert_eq!(seen.joined.remote_chain, fake_chain(ALPHA, &ikey));
    assert!(seen.remote_addr.ip().is_loopback());
}

#[tokio::test]
async fn a_refusal_over_tcp_names_the_rule_to_the_client() {
    let (_, server, mut joined) = listen(
        FakeVerifier::refusing("SVID not yet valid"),
        RateLimitConfig::default(),
    )
    .await;
    let ikey = PrivateKey::generate();
    let err = join_connect(
        server.local_addr(),
        &ikey,
        &fake_chain(ALPHA, &ikey).into(),
        BETA.into(),
        FakeVerifier::arc(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, JoinError::RefusedByPeer { reason } if reason == "SVID not yet valid"),
        "{err:?}"
    );
    assert!(joined.try_recv().is_err());
}

/// Reads until the server closes; true if it did within the time.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn garbage_clients_are_disconnected_while_a_real_join_succeeds() {
    let (_, server, mut joined) = listen(FakeVerifier::arc(), RateLimitConfig::default()).await;
    let addr = server.local_addr();

    // An oversized length prefix; a well-framed message 1 of garbage; a frame cut short by a
    // half-close. All are open while the real join runs.
    let mut oversized = TcpStream::connect(addr).await.unwrap();
    oversized.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    let mut frame = vec![0, 64];
    frame.extend((0..64u8).map(|i| i.wrapping_mul(151)));
    garbage.write_all(&frame).await.unwrap();
    let mut truncated = TcpStream::connect(addr).await.unwrap();
    truncated.write_all(&[0, 100, 1, 2, 3]).await.unwrap();
    truncated.shutdown().await.unwrap();

    let ikey = PrivateKey::generate();
    let client = join_connect(
        addr,
        &ikey,
        &fake_chain(ALPHA, &ikey).into(),
        BETA.into(),
        FakeVerifier::arc(),
    )
    .await
    .unwrap();
    assert_eq!(client.joined.peer_id.as_str(), BETA);

    assert!(closed_by_server(&mut oversized).await, "oversized");
    assert!(closed_by_server(&mut garbage).await, "garbage");
    assert!(closed_by_server(&mut truncated).await, "truncated");

    // Only the real join came through, and the listener still serves.
    let seen = joined.recv().await.unwrap();
    assert_eq!(seen.joined.peer_id.as_str(), ALPHA);
    assert!(joined.try_recv().is_err());
    let again = join_connect(
        addr,
        &ikey,
        &fake_chain(ALPHA, &ikey).into(),
        BETA.into(),
        FakeVerifier::arc(),
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test]
async fn a_source_over_its_rate_is_turned_away() {
    let limits = RateLimitConfig {
        per_source_burst: 1.0,
        per_source_rate: 0.001,
        ..RateLimitConfig::default()
    };
    let (_, server, _joined) = listen(FakeVerifier::arc(), limits).await;
    let ikey = PrivateKey::generate();
    let me: super::Presenting = fake_chain(ALPHA, &ikey).into();
    let attempt = || {
        join_connect(
            server.local_addr(),
            &ikey,
            &me,
            BETA.into(),
            FakeVerifier::arc(),
        )
    };
    assert!(attempt().await.is_ok());
    let err = attempt().await.unwrap_err();
    assert!(
        matches!(err, JoinError::ConnectionClosed | JoinError::Io(_)),
        "{err:?}"
    );
}
