//! Two engines wired back to back in memory: handshakes, data both ways, and every drop rule.

use super::*;
use crate::dataplane::peer::ConnectionState;
use crate::dataplane::queue::{RxQueue, TxQueue};

const A_ADDR: ([u8; 4], u16) = ([192, 0, 2, 1], 51820);
const B_ADDR: ([u8; 4], u16) = ([192, 0, 2, 2], 51820);

struct Side {
    engine: Engine,
    addr: SocketAddr,
    tx: TxQueue,
    rx: RxQueue,
}

fn peer_cfg(key: &PrivateKey, endpoint: Option<SocketAddr>, allowed: &[&str]) -> PeerConfig {
    PeerConfig {
        name: None,
        public_key: key.public_key(),
        preshared_key: None,
        endpoint,
        allowed_ips: allowed.iter().map(|s| s.parse().unwrap()).collect(),
        persistent_keepalive: None,
    }
}

fn pair() -> (Side, Side) {
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let a_addr = SocketAddr::from(A_ADDR);
    let b_addr = SocketAddr::from(B_ADDR);
    let a = Engine::new(
        ka.clone(),
        1420,
        &[peer_cfg(&kb, Some(b_addr), &["10.2.0.0/16"])],
    );
    let b = Engine::new(kb, 1420, &[peer_cfg(&ka, Some(a_addr), &["10.1.0.0/16"])]);
    let side = |engine, addr| Side {
        engine,
        addr,
        tx: TxQueue::new(64, 2048, 64),
        rx: RxQueue::new(64, 2048, 0),
    };
    (side(a, a_addr), side(b, b_addr))
}

/// An IPv4/UDP packet with a correct total length (what boringtun validates).
fn ipv4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
    let total = 20 + 8 + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// What the TUN reader does: the packet in a buffer with room for padding.
fn encap(engine: &Engine, packet: &[u8], tx: &mut TxQueue) {
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + 64, 0xee);
    engine.encapsulate(&mut buf, packet.len(), tx);
}

fn datagrams(tx: &TxQueue) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    for (run, bytes) in tx.runs() {
        for seg in bytes.chunks(run.segment_size) {
            out.push((run.dest, seg.to_vec()));
        }
    }
    out
}

/// Moves everything `from` queued for the network into `to`, returning how many datagrams.
fn deliver(from: &mut Side, to: &mut Side) -> usize {
    let grams = datagrams(&from.tx);
    from.tx.clear();
    for (dest, g) in &grams {
        assert_eq!(*dest, to.addr, "sent to the peer's endpoint");
        to.engine
            .decapsulate(from.addr, g, Instant::now(), &mut to.rx, &mut to.tx);
    }
    grams.len()
}

fn received(side: &mut Side) -> Vec<Vec<u8>> {
    let out = (0..side.rx.len())
        .map(|i| side.rx.packet(i).to_vec())
        .collect();
    side.rx.clear();
    out
}

fn handshake(a: &mut Side, b: &mut Side) {
    let first = ipv4([10, 1, 1, 2], [10, 2, 1, 2], 10);
    encap(&a.engine, &first, &mut a.tx);
    assert_eq!(deliver(a, b), 1, "handshake initiation");
    assert_eq!(deliver(b, a), 1, "handshake response");
    // keepalive confirming the session, then the packet queued during the handshake
    assert_eq!(deliver(a, b), 2);
    assert_eq!(received(b), vec![first]);
}

fn peer_of(side: &Side) -> Arc<Peer> {
    side.engine.peers().list[0].clone()
}

#[test]
fn handshake_then_data_both_ways_with_exact_counters() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    let mut sent = 10 + 28;
    for len in [0, 1, 100, 1300] {
        let p = ipv4([10, 1, 1, 2], [10, 2, 1, 2], len);
        encap(&a.engine, &p, &mut a.tx);
        deliver(&mut a, &mut b);
        assert_eq!(received(&mut b), vec![p.clone()]);
        sent += p.len();
        let back = ipv4([10, 2, 1, 2], [10, 1, 1, 2], len);
        encap(&b.engine, &back, &mut b.tx);
        deliver(&mut b, &mut a);
        assert_eq!(received(&mut a), vec![back]);
    }
    let now = Instant::now();
    let pa = peer_of(&a).snapshot(now);
    let pb = peer_of(&b).snapshot(now);
    assert_eq!(pa.counters.tx_bytes as usize, sent);
    assert_eq!(pb.counters.rx_bytes as usize, sent);
    assert_eq!(pb.counters.tx_bytes, pa.counters.rx_bytes);
    assert_eq!(pb.counters.rx_packets, 5);
    assert_eq!(pa.counters.handshakes, 1);
    assert_eq!(pa.state, ConnectionState::Connected);
}

#[test]
fn equal_packets_coalesce_into_one_gso_run() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    for _ in 0..10 {
        encap(
            &a.engine,
            &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 1000),
            &mut a.tx,
        );
    }
    let runs: Vec<_> = a.tx.runs().map(|(r, _)| r.segments).collect();
    assert_eq!(runs, vec![10]);
    deliver(&mut a, &mut b);
    assert_eq!(received(&mut b).len(), 10);
}

#[test]
fn inner_source_outside_allowed_ips_is_dropped_and_counted() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    // b's engine routes by destination only; a must refuse the forged inner source.
    let forged = ipv4([10, 9, 9, 9], [10, 1, 1, 2], 20);
    encap(&b.engine, &forged, &mut b.tx);
    deliver(&mut b, &mut a);
    assert!(received(&mut a).is_empty());
    assert_eq!(peer_of(&a).drops.get(DropReason::SourceNotAllowed), 1);
    assert_eq!(a.engine.drops.get(DropReason::SourceNotAllowed), 1);
    assert_eq!(peer_of(&a).snapshot(Instant::now()).counters.rx_bytes, 0);
}

#[test]
fn replayed_datagram_is_dropped() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    encap(
        &a.engine,
        &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 50),
        &mut a.tx,
    );
    let grams = datagrams(&a.tx);
    a.tx.clear();
    for _ in 0..3 {
        b.engine
            .decapsulate(a.addr, &grams[0].1, Instant::now(), &mut b.rx, &mut b.tx);
    }
    assert_eq!(received(&mut b).len(), 1);
    assert_eq!(peer_of(&b).drops.get(DropReason::Replay), 2);
}

#[test]
fn garbage_and_truncation_change_nothing() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    encap(
        &a.engine,
        &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 200),
        &mut a.tx,
    );
    let good = datagrams(&a.tx).remove(0).1;
    a.tx.clear();
    let heard_before = peer_of(&b).last_heard();
    assert!(heard_before.is_some(), "heard in the handshake");
    let mut seed = 0x1234_5678_u64;
    let mut rand = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..2000 {
        let mut g = match i % 4 {
            0 => good[..(rand() as usize % good.len())].to_vec(),
            1 => {
                let mut g = good.clone();
                let at = rand() as usize % g.len();
                g[at] ^= 1 << (rand() % 8);
                g
            }
            2 => (0..(rand() % 300)).map(|_| rand() as u8).collect(),
            _ => {
                let mut g: Vec<u8> = (0..148).map(|_| rand() as u8).collect();
                g[0] = (rand() % 5) as u8;
                g[1..4].fill(0);
                g
            }
        };
        if g == good {
            g.push(0);
        }
        b.engine.decapsulate(
            SocketAddr::from(([198, 51, 100, 7], 9)),
            &g,
            Instant::now(),
            &mut b.rx,
            &mut b.tx,
        );
    }
    assert!(
        received(&mut b).is_empty(),
        "nothing forged reaches the TUN device"
    );
    assert_eq!(
        peer_of(&b).endpoint(),
        Some(a.addr),
        "forgeries do not move the endpoint"
    );
    assert_eq!(
        peer_of(&b).last_heard(),
        heard_before,
        "forgeries do not make the peer look alive"
    );
    // The genuine datagram still decrypts: the session survived.
    b.engine
        .decapsulate(a.addr, &good, Instant::now(), &mut b.rx, &mut b.tx);
    assert_eq!(received(&mut b).len(), 1);
}

#[test]
fn handshake_from_unknown_key_is_refused() {
    let (mut a, mut b) = pair();
    let stranger_key = PrivateKey::generate();
    let mut stranger = Side {
        engine: Engine::new(
            stranger_key,
            1420,
            &[peer_cfg(
                &b.engine.private_key().clone(),
                Some(b.addr),
                &["10.2.0.0/16"],
            )],
        ),
        addr: SocketAddr::from(([192, 0, 2, 66], 51820)),
        tx: TxQueue::new(8, 2048, 1),
        rx: RxQueue::new(8, 2048, 0),
    };
    encap(
        &stranger.engine,
        &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 1),
        &mut stranger.tx,
    );
    deliver(&mut stranger, &mut b);
    assert!(b.tx.is_empty(), "no response to an unknown key");
    assert_eq!(b.engine.drops.get(DropReason::UnknownPeer), 1);
    let _ = &mut a;
}

#[test]
fn endpoint_roams_to_latest_authenticated_source() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    a.addr = SocketAddr::from(([203, 0, 113, 5], 40000));
    encap(&a.engine, &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 5), &mut a.tx);
    deliver(&mut a, &mut b);
    assert_eq!(peer_of(&b).endpoint(), Some(a.addr));
    // Replies now go to the new address (deliver asserts the destination).
    encap(&b.engine, &ipv4([10, 2, 1, 2], [10, 1, 1, 2], 5), &mut b.tx);
    deliver(&mut b, &mut a);
    assert_eq!(received(&mut a).len(), 1);
}

#[test]
fn reload_keeps_sessions_of_unchanged_peers() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    let before = peer_of(&a);
    let kb = b.engine.private_key().clone();
    let diff =
        a.engine
            .apply_peers(&[peer_cfg(&kb, Some(b.addr), &["10.2.0.0/16", "10.3.0.0/16"])]);
    assert_eq!(diff.kept, vec![kb.public_key()]);
    assert!(Arc::ptr_eq(&before, &peer_of(&a)));
    // No new handshake needed: one datagram, straight to data.
    encap(&a.engine, &ipv4([10, 1, 1, 2], [10, 3, 0, 1], 5), &mut a.tx);
    assert_eq!(deliver(&mut a, &mut b), 1);
    // b does not allow 10.1 -> 10.3? it does (dst is not checked), and the src is allowed.
    assert_eq!(received(&mut b).len(), 1);

    let diff = a.engine.apply_peers(&[]);
    assert_eq!(diff.removed, vec![kb.public_key()]);
    encap(&a.engine, &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 5), &mut a.tx);
    assert!(a.tx.is_empty());
    assert_eq!(a.engine.drops.get(DropReason::NoRoute), 1);
}

#[test]
fn no_endpoint_is_counted() {
    let ka = PrivateKey::generate();
    let kb = PrivateKey::generate();
    let a = Engine::new(ka, 1420, &[peer_cfg(&kb, None, &["10.2.0.0/16"])]);
    let mut tx = TxQueue::new(4, 2048, 1);
    encap(&a, &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 5), &mut tx);
    assert!(tx.is_empty());
    assert_eq!(a.drops.get(DropReason::NoEndpoint), 1);
    assert_eq!(
        a.peers().list[0].state(Instant::now()),
        ConnectionState::AwaitingPeer
    );
}

#[test]
fn plaintext_is_padded_to_16_but_not_past_the_mtu() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    // (inner length, expected datagram length): 16-byte padding plus the 32-byte overhead.
    for (inner, wire) in [
        (28 + 972, 1008 + 32),
        (1415, 1420 + 32),
        (1420, 1420 + 32),
        (48, 48 + 32),
    ] {
        let p = ipv4([10, 1, 1, 2], [10, 2, 1, 2], inner - 28);
        encap(&a.engine, &p, &mut a.tx);
        let grams = datagrams(&a.tx);
        assert_eq!(grams[0].1.len(), wire, "inner {inner}");
        deliver(&mut a, &mut b);
        assert_eq!(received(&mut b), vec![p], "the receiver trims the padding");
    }
}

#[test]
fn retiring_peer_keeps_its_session_inbound_but_gets_no_routes() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    // b "rotated": b's old key (the session a holds) retires; a new key owns b's prefixes.
    let kb_old = b.engine.private_key().clone();
    let kb_new = PrivateKey::generate();
    let old_cfg = peer_cfg(&kb_old, Some(b.addr), &["10.2.0.0/16"]);
    let new_cfg = peer_cfg(&kb_new, Some(b.addr), &["10.2.0.0/16"]);
    let before = peer_of(&a);
    let diff = a.engine.apply_peer_set(
        std::slice::from_ref(&new_cfg),
        std::slice::from_ref(&old_cfg),
    );
    assert_eq!(diff.added, vec![kb_new.public_key()]);
    assert_eq!(diff.kept, vec![kb_old.public_key()]);
    let old = a
        .engine
        .peers()
        .by_key(&kb_old.public_key())
        .cloned()
        .unwrap();
    assert!(Arc::ptr_eq(&before, &old), "the old session is kept");
    assert!(old.is_retiring());
    // Routed to the new key only.
    let routed = a.engine.peers().route("10.2.1.2".parse().unwrap()).cloned();
    assert_eq!(routed.map(|p| p.public_key), Some(kb_new.public_key()));
    assert_eq!(
        a.engine.routed_prefixes(),
        vec!["10.2.0.0/16".parse::<IpNet>().unwrap()]
    );
    // Packets b still sends on the old session arrive and pass the source check.
    let p = ipv4([10, 2, 1, 2], [10, 1, 1, 2], 20);
    encap(&b.engine, &p, &mut b.tx);
    assert_eq!(deliver(&mut b, &mut a), 1);
    assert_eq!(received(&mut a), vec![p]);
    assert_eq!(a.engine.drops.get(DropReason::SourceNotAllowed), 0);
    // ...but not from outside the old key's prefixes.
    encap(
        &b.engine,
        &ipv4([10, 9, 1, 2], [10, 1, 1, 2], 20),
        &mut b.tx,
    );
    deliver(&mut b, &mut a);
    assert!(received(&mut a).is_empty());
    assert_eq!(a.engine.drops.get(DropReason::SourceNotAllowed), 1);

    // Grace over: the old key is gone and its session with it.
    let diff = a.engine.apply_peer_set(&[new_cfg], &[]);
    assert_eq!(diff.removed, vec![kb_old.public_key()]);
    encap(
        &b.engine,
        &ipv4([10, 2, 1, 2], [10, 1, 1, 2], 20),
        &mut b.tx,
    );
    deliver(&mut b, &mut a);
    assert!(received(&mut a).is_empty());
    assert_eq!(a.engine.drops.get(DropReason::UnknownPeer), 1);
}

/// More peers than the timer queue (as `io.rs` sizes it) has slots, each with an endpoint, so
/// each wants a handshake initiation at its first tick.
fn crowd(peers: u16) -> (Engine, Vec<SocketAddr>) {
    let endpoints: Vec<SocketAddr> = (0..peers)
        .map(|i| SocketAddr::from(([192, 0, 2, 9], 20_000 + i)))
        .collect();
    let configs: Vec<PeerConfig> = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let prefix = format!("10.{}.{}.0/24", 100 + i / 256, i % 256);
            peer_cfg(&PrivateKey::generate(), Some(*ep), &[prefix.as_str()])
        })
        .collect();
    (
        Engine::new(PrivateKey::generate(), 1420, &configs),
        endpoints,
    )
}

/// Runs one tick round to its end the way `io.rs` does, returning what each call queued.
fn tick_round(engine: &Engine, tx: &mut TxQueue) -> Vec<Vec<(SocketAddr, Vec<u8>)>> {
    let mut round = engine.tick(Instant::now());
    let mut batches = Vec::new();
    loop {
        let done = round.run(tx);
        batches.push(datagrams(tx));
        tx.clear();
        if done {
            return batches;
        }
    }
}

#[test]
fn every_peer_is_ticked_when_peers_outnumber_the_queue() {
    // The queue holds 16 KiB: 109 handshake initiations.
    const PEERS: u16 = 250;
    let (engine, endpoints) = crowd(PEERS);
    let mut tx = TxQueue::new(64, 256, 1);
    let batches = tick_round(&engine, &mut tx);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|n| *n > 0),
        "the round stops at a full queue and resumes after it was sent: {sizes:?}"
    );
    let sent: Vec<_> = batches.into_iter().flatten().collect();
    for (_, g) in &sent {
        assert_eq!((g[0], g.len()), (1, 148), "a handshake initiation");
    }
    let dests: std::collections::BTreeSet<_> = sent.iter().map(|(d, _)| *d).collect();
    assert_eq!(
        dests,
        endpoints.iter().copied().collect(),
        "one to every peer"
    );
    for peer in &engine.peers().list {
        assert_eq!(
            peer.snapshot(Instant::now()).counters.tx_wire_bytes,
            148,
            "counted against its own peer"
        );
    }
    // The initiations were sent; the next round has nothing new to say.
    assert!(tick_round(&engine, &mut tx).concat().is_empty());
}

#[test]
fn a_tick_round_finishes_the_peer_set_it_started_with() {
    let (engine, endpoints) = crowd(10);
    let mut tx = TxQueue::new(4, 256, 1);
    let mut round = engine.tick(Instant::now());
    assert!(!round.run(&mut tx));
    let mut sent = datagrams(&tx).len();
    tx.clear();
    // A reload in the middle of the round does not shift or skip anyone in it.
    let diff = engine.apply_peers(&[]);
    assert_eq!(diff.removed.len(), endpoints.len());
    while !round.run(&mut tx) {
        sent += datagrams(&tx).len();
        tx.clear();
    }
    sent += datagrams(&tx).len();
    assert_eq!(sent, endpoints.len());
}

#[test]
fn a_full_queue_defers_a_peer_instead_of_losing_its_turn() {
    let (engine, _) = crowd(1);
    let mut tx = TxQueue::new(1, 256, 1);
    tx.push(SocketAddr::from(B_ADDR), &[0; 32], None);
    assert!(tx.is_full());
    let mut round = engine.tick(Instant::now());
    assert!(!round.run(&mut tx), "no room: the peer waits");
    tx.clear();
    assert!(round.run(&mut tx));
    assert_eq!(datagrams(&tx).len(), 1, "and then gets its initiation");
}

/// One tick round at `now` for a side, returning what it sent.
fn tick_at(side: &mut Side, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut round = side.engine.tick(now);
    let mut sent = Vec::new();
    loop {
        let done = round.run(&mut side.tx);
        sent.extend(datagrams(&side.tx));
        side.tx.clear();
        if done {
            return sent;
        }
    }
}

#[test]
fn a_quiet_peer_gets_a_probe_every_period_and_is_heard() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    for side in [&a, &b] {
        peer_of(side).initiate.store(false, Ordering::Relaxed);
    }
    a.engine.set_liveness_probe(Some(Duration::from_secs(1)));
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // The handshake was just sent: nothing is due for a period.
    let mut probes = Vec::new();
    for ms in (0..=4000).step_by(250) {
        for (dest, g) in tick_at(&mut a, at(ms)) {
            assert_eq!(dest, b.addr);
            assert_eq!(
                (g[0], g.len()),
                (4, 32),
                "a keepalive: an empty data packet"
            );
            probes.push(ms);
        }
    }
    assert_eq!(
        probes,
        vec![1000, 2000, 3000, 4000],
        "one per period, on the grid"
    );

    // The peer hears it, dated by the receive time the shell passes in.
    let inner_a: IpAddr = "10.1.1.2".parse().unwrap();
    for ms in [4250, 4500, 4750] {
        assert!(tick_at(&mut a, at(ms)).is_empty());
    }
    let probe = tick_at(&mut a, at(5000));
    assert_eq!(probe.len(), 1);
    let arrived = Instant::now() + Duration::from_secs(5);
    b.engine
        .decapsulate(a.addr, &probe[0].1, arrived, &mut b.rx, &mut b.tx);
    assert_eq!(b.engine.last_heard(inner_a), Some(arrived));
    assert!(
        received(&mut b).is_empty(),
        "a keepalive reaches no TUN device"
    );
    assert_eq!(
        b.engine.last_heard("10.9.9.9".parse().unwrap()),
        None,
        "no such peer"
    );

    // Traffic going out makes probes unnecessary.
    for ms in (5250..=7000).step_by(250) {
        encap(
            &a.engine,
            &ipv4([10, 1, 1, 2], [10, 2, 1, 2], 10),
            &mut a.tx,
        );
        a.tx.clear();
        assert!(tick_at(&mut a, at(ms)).is_empty(), "no probe at {ms} ms");
    }
    // Without a probe period, a quiet peer hears nothing but boringtun's own timers.
    b.engine.set_liveness_probe(None);
    for ms in (7000..=10_000).step_by(250) {
        assert!(tick_at(&mut b, at(ms)).is_empty());
    }
}

#[test]
fn a_resting_peer_runs_its_timers_once_a_period_and_a_kick_wakes_it() {
    let (mut a, mut b) = pair();
    handshake(&mut a, &mut b);
    let peer = peer_of(&a);
    peer.initiate.store(false, Ordering::Relaxed);
    a.engine.set_liveness_probe(Some(Duration::from_secs(1)));
    let t0 = Instant::now();
    let round = |side: &mut Side, ms: u64| tick_at(side, t0 + Duration::from_millis(ms));
    round(&mut a, 0);
    round(&mut a, 250);
    // Nothing sent since the last round and a fresh session: the timers rest until the next
    // probe is due, a period after the last send (at 0 ms): the round at 1000 ms.
    let rounds_now = a.engine.rounds.load(Ordering::Relaxed);
    assert!(!peer.timers_due(rounds_now));
    assert!(!peer.timers_due(rounds_now + 1));
    assert!(peer.timers_due(rounds_now + 2));
    // A kick (a restarted peer, a key rotation) is not kept waiting.
    peer.initiate.store(true, Ordering::Relaxed);
    assert!(peer.timers_due(rounds_now));
    let sent = round(&mut a, 500);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].1[0], sent[0].1.len()),
        (1, 148),
        "a handshake initiation"
    );
}
