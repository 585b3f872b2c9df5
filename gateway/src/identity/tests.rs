//! Pure tests of the join: two in-memory sides, a fake verifier with the key-binding rule, a
//! virtual clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::join::{Initiator, Joined, Responder, Step, NOISE_PARAMS, PROLOGUE};
use super::wire::{self, Answer, JoinRequest};
use super::{fuzzing, JoinError, PeerVerifier, VerifiedPeer, VerifyError, JOIN_TIMEOUT};
use crate::keys::PrivateKey;
use isthmus_pki::SpiffeId;

pub(crate) const ALPHA: &str = "spiffe://isthmus.test/cluster/alpha/gateway/a1";
pub(crate) const BETA: &str = "spiffe://isthmus.test/cluster/beta/gateway/b1";

/// A stand-in SVID: the leaf "certificate" is `"<spiffe id> <base64 WireGuard key>"`, so the
/// fake can check the same rules the pki verifier will: the proven key is the bound one, and
/// the ID is the expected one.
pub(crate) fn fake_chain(id: &str, key: &PrivateKey) -> Vec<Vec<u8>> {
    vec![
        format!("{id} {}", key.public_key()).into_bytes(),
        b"fake intermediate".to_vec(),
    ]
}

#[derive(Default)]
pub(crate) struct FakeVerifier {
    /// Refuse every chain with this rule.
    pub refuse: Option<String>,
}

impl FakeVerifier {
    pub(crate) fn arc() -> Arc<dyn PeerVerifier> {
        Arc::new(Self::default())
    }
    pub(crate) fn refusing(rule: &str) -> Arc<dyn PeerVerifier> {
        Arc::new(Self {
            refuse: Some(rule.into()),
        })
    }
}

impl PeerVerifier for FakeVerifier {
    fn verify(
        &self,
        chain: &[Vec<u8>],
        remote_static: &[u8; 32],
        expected: Option<&str>,
        _now: SystemTime,
    ) -> Result<VerifiedPeer, VerifyError> {
        let refuse = |why: &str| VerifyError::Other(why.to_string());
        if let Some(rule) = &self.refuse {
            return Err(refuse(rule));
        }
        let leaf = std::str::from_utf8(&chain[0]).map_err(|_| refuse("leaf is not a fake SVID"))?;
        let (id, key) = leaf
            .split_once(' ')
            .ok_or_else(|| refuse("leaf is not a fake SVID"))?;
        let bound =
            crate::keys::PublicKey::try_from_base64(key).map_err(|e| refuse(&e.to_string()))?;
        if bound.as_bytes() != remote_static {
            return Err(refuse("WireGuard key not bound to the presented SVID"));
        }
        if let Some(expected) = expected.filter(|e| *e != id) {
            return Err(refuse(&format!("SVID names {id}, expected {expected}")));
        }
        Ok(VerifiedPeer {
            id: SpiffeId::new(id).map_err(|e| refuse(&e.to_string()))?,
            not_after: t0() + Duration::from_secs(3600),
        })
    }
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

struct Pair {
    ikey: PrivateKey,
    rkey: PrivateKey,
    i: Initiator,
    r: Responder,
}

fn pair_with(iv: Arc<dyn PeerVerifier>, rv: Arc<dyn PeerVerifier>, expected: &str) -> Pair {
    let ikey = PrivateKey::generate();
    let rkey = PrivateKey::generate();
    let i = Initiator::new(&ikey, expected.into(), fake_chain(ALPHA, &ikey), iv, t0()).unwrap();
    let r = Responder::new(&rkey, fake_chain(BETA, &rkey), rv, t0()).unwrap();
    Pair { ikey, rkey, i, r }
}

fn pair() -> Pair {
    pair_with(FakeVerifier::arc(), FakeVerifier::arc(), BETA)
}

type Outcome = Option<Result<Joined, JoinError>>;

fn record(slot: &mut Outcome, result: Result<Step, JoinError>) {
    match result {
        Ok(Step::Continue) => {}
        Ok(Step::Joined(j)) => *slot = Some(Ok(j)),
        Err(e) => *slot = Some(Err(e)),
    }
}

/// Carries frames both ways until none is left, passing each through `tamper` with its index
/// in the transcript (0 m1, 1 m2, 2 m3, 3 initiator verdict, 4 responder verdict). Frames for
/// a side that has ended are dropped, as a closed connection would.
fn pump_with(
    p: &mut Pair,
    now: SystemTime,
    mut tamper: impl FnMut(usize, Vec<u8>) -> Vec<u8>,
) -> (Outcome, Outcome) {
    let (mut io, mut ro) = (None, None);
    let mut index = 0;
    loop {
        let mut moved = false;
        while let Some(f) = p.i.poll_frame() {
            moved = true;
            let f = tamper(index, f);
            index += 1;
            if ro.is_none() {
                record(&mut ro, p.r.handle_frame(&f, now));
            }
        }
        while let Some(f) = p.r.poll_frame() {
            moved = true;
            let f = tamper(index, f);
            index += 1;
            if io.is_none() {
                record(&mut io, p.i.handle_frame(&f, now));
            }
        }
        if !moved {
            return (io, ro);
        }
    }
}

fn pump(p: &mut Pair) -> (Outcome, Outcome) {
    pump_with(p, t0() + Duration::from_millis(10), |_, f| f)
}

#[track_caller]
fn joined(o: Outcome) -> Joined {
    match o {
        Some(Ok(j)) => j,
        other => panic!("expected a join, got {other:?}"),
    }
}

#[track_caller]
fn failed(o: Outcome) -> JoinError {
    match o {
        Some(Err(e)) => e,
        other => panic!("expected a failed join, got {other:?}"),
    }
}

#[test]
fn both_sides_learn_each_others_key_chain_and_identity() {
    let mut p = pair();
    let hint: std::net::SocketAddr = "198.51.100.4:51820".parse().unwrap();
    p.r = Responder::new(
        &p.rkey,
        fake_chain(BETA, &p.rkey),
        FakeVerifier::arc(),
        t0(),
    )
    .unwrap()
    .with_endpoint_hint(hint);
    let (io, ro) = pump(&mut p);
    let (ij, rj) = (joined(io), joined(ro));

    assert_eq!(&ij.remote_static, p.rkey.public_key().as_bytes());
    assert_eq!(&rj.remote_static, p.ikey.public_key().as_bytes());
    assert_eq!(ij.remote_chain, fake_chain(BETA, &p.rkey));
    assert_eq!(rj.remote_chain, fake_chain(ALPHA, &p.ikey));
    assert_eq!((ij.peer_id.as_str(), rj.peer_id.as_str()), (BETA, ALPHA));
    assert_eq!((ij.endpoint_hint, rj.endpoint_hint), (Some(hint), None));
    assert_eq!(ij.handshake_hash, rj.handshake_hash);
    assert_eq!(ij.handshake_hash.len(), 32);
    // Both are finished: nothing to send, no timer, no more frames taken.
    assert!(p.i.poll_frame().is_none() && p.r.poll_frame().is_none());
    assert_eq!((p.i.poll_timeout(), p.r.poll_timeout()), (None, None));
    assert!(matches!(
        p.r.handle_frame(&[0; 48], t0()),
        Err(JoinError::Ended)
    ));
}

#[test]
fn responder_refusal_reaches_the_initiator() {
    let mut p = pair_with(
        FakeVerifier::arc(),
        FakeVerifier::refusing("SVID expired at 2026-01-01T00:00:00Z"),
        BETA,
    );
    let (io, ro) = pump(&mut p);
    assert!(matches!(failed(ro),
        JoinError::VerificationFailed { rule } if rule == "SVID expired at 2026-01-01T00:00:00Z"));
    assert!(matches!(failed(io),
        JoinError::RefusedByPeer { reason } if reason == "SVID expired at 2026-01-01T00:00:00Z"));
}

#[test]
fn initiator_refusal_reaches_the_responder() {
    let mut p = pair_with(
        FakeVerifier::refusing("chain ends at an unknown root"),
        FakeVerifier::arc(),
        BETA,
    );
    let (io, ro) = pump(&mut p);
    assert!(matches!(failed(io),
        JoinError::VerificationFailed { rule } if rule == "chain ends at an unknown root"));
    assert!(matches!(failed(ro),
        JoinError::RefusedByPeer { reason } if reason == "chain ends at an unknown root"));
}

#[test]
fn a_chain_bound_to_another_key_is_refused() {
    let mut p = pair();
    let stranger = PrivateKey::generate();
    // A valid-looking SVID, but for a key the initiator does not hold.
    p.i = Initiator::new(
        &p.ikey,
        BETA.into(),
        fake_chain(ALPHA, &stranger),
        FakeVerifier::arc(),
        t0(),
    )
    .unwrap();
    let (io, ro) = pump(&mut p);
    assert!(
        matches!(failed(ro), JoinError::VerificationFailed { rule } if rule.contains("not bound"))
    );
    assert!(
        matches!(failed(io), JoinError::RefusedByPeer { reason } if reason.contains("not bound"))
    );
}

#[test]
fn wrong_expected_identity_is_caught_by_the_initiators_verifier() {
    let other = "spiffe://isthmus.test/cluster/gamma/gateway/g1";
    let mut p = pair_with(FakeVerifier::arc(), FakeVerifier::arc(), other);
    let (io, ro) = pump(&mut p);
    let want = format!("SVID names {BETA}, expected {other}");
    assert!(matches!(failed(io), JoinError::VerificationFailed { rule } if rule == want));
    assert!(matches!(failed(ro), JoinError::RefusedByPeer { reason } if reason == want));
}

#[test]
fn a_responder_that_knows_its_id_refuses_the_wrong_expectation_in_message_2() {
    let other = "spiffe://isthmus.test/cluster/gamma/gateway/g1";
    let mut p = pair_with(FakeVerifier::arc(), FakeVerifier::arc(), other);
    p.r = Responder::new(
        &p.rkey,
        fake_chain(BETA, &p.rkey),
        FakeVerifier::arc(),
        t0(),
    )
    .unwrap()
    .with_spiffe_id(BETA.into());
    let mut frames = 0;
    let (io, ro) = pump_with(&mut p, t0(), |_, f| {
        frames += 1;
        f
    });
    assert!(matches!(failed(ro),
        JoinError::NotExpectedIdentity { expected, local } if expected == other && local == BETA));
    assert!(matches!(failed(io),
        JoinError::RefusedByPeer { reason } if reason == format!("this gateway is {BETA}, not {other} [wrong-identity]")));
    assert_eq!(frames, 2, "the initiator never sends its chain");
}

fn raw(key: &PrivateKey, initiator: bool) -> snow::HandshakeState {
    let secret = key.secret().to_bytes();
    let b = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(&secret)
        .unwrap()
        .prologue(PROLOGUE)
        .unwrap();
    if initiator {
        b.build_initiator().unwrap()
    } else {
        b.build_responder().unwrap()
    }
}

fn write(h: &mut snow::HandshakeState, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; 65535];
    let n = h.write_message(payload, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn read(h: &mut snow::HandshakeState, msg: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; 65535];
    let n = h.read_message(msg, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn an_initiator_of_another_version_is_refused_with_both_versions_named() {
    let mut p = pair();
    let mut future = raw(&PrivateKey::generate(), true);
    // Version 2 with a layout we do not know: only the leading version is readable.
    let m1 = write(&mut future, &[0, 2, 0xde, 0xad, 0xbe, 0xef]);
    let err = p.r.handle_frame(&m1, t0()).unwrap_err();
    assert!(
        matches!(err, JoinError::VersionMismatch { peer: 2 }),
        "{err:?}"
    );
    let m2 = p.r.poll_frame().expect("the refusal is queued");
    let Answer::Refuse { reason } = Answer::decode(&read(&mut future, &m2)).unwrap() else {
        panic!("not a refusal")
    };
    assert_eq!(
        reason,
        "join protocol version 2 is not supported, this gateway speaks 1"
    );
}

#[test]
fn a_responder_of_another_version_is_refused_in_message_3() {
    let mut p = pair();
    let mut future = raw(&PrivateKey::generate(), false);
    let m1 = p.i.poll_frame().unwrap();
    let req = JoinRequest::decode(&read(&mut future, &m1)).unwrap();
    assert_eq!(req.expected, BETA);
    let m2 = write(&mut future, &[0, 7, 1, 2, 3]);
    let err = p.i.handle_frame(&m2, t0()).unwrap_err();
    assert!(
        matches!(err, JoinError::VersionMismatch { peer: 7 }),
        "{err:?}"
    );
    let m3 = p.i.poll_frame().expect("the refusal is queued");
    assert!(p.i.poll_frame().is_none(), "no verdict after a refusal");
    let Answer::Refuse { reason } = Answer::decode(&read(&mut future, &m3)).unwrap() else {
        panic!("not a refusal")
    };
    assert!(reason.contains("version 7"), "{reason}");
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Garbage,
    Truncated,
    Empty,
    Oversized,
    BitFlip,
    Trailing,
}

fn damage(d: Damage, f: Vec<u8>) -> Vec<u8> {
    match d {
        Damage::Garbage => (0..f.len()).map(|i| (i * 37 + 11) as u8).collect(),
        Damage::Truncated => f[..f.len() / 2].to_vec(),
        Damage::Empty => vec![],
        Damage::Oversized => vec![0x55; wire::MAX_FRAME_LEN + 1],
        Damage::BitFlip => {
            let mut f = f;
            let last = f.len() - 1;
            f[last / 2] ^= 0x10;
            f
        }
        Damage::Trailing => {
            let mut f = f;
            f.push(0);
            f
        }
    }
}

#[test]
fn damaged_frames_at_every_step_fail_the_join_without_panicking() {
    use Damage::*;
    for step in 0..5 {
        for d in [Garbage, Truncated, Empty, Oversized, BitFlip, Trailing] {
            let mut p = pair();
            let (io, ro) = pump_with(
                &mut p,
                t0(),
                |i, f| if i == step { damage(d, f) } else { f },
            );
            let ctx = format!("step {step}, {d:?}");
            let to_initiator = step == 1 || step == 4;
            let receiver = if to_initiator { &io } else { &ro };
            // A flipped bit in message 1 is only noticed when the transcripts disagree at m2.
            let late = step == 0 && matches!(d, BitFlip);
            let noticed = if late { &io } else { receiver };
            assert!(matches!(noticed, Some(Err(_))), "{ctx}: {noticed:?}");
            // Up to message 3 nobody joins. The verdicts cross: a side whose own verdict was
            // damaged on the way has already joined, as after any lost final message.
            if step < 3 {
                assert!(!matches!(io, Some(Ok(_))), "{ctx}: initiator joined");
                assert!(!matches!(ro, Some(Ok(_))), "{ctx}: responder joined");
            }
            if matches!(d, Oversized) {
                assert!(
                    matches!(receiver, Some(Err(JoinError::FrameTooLarge { .. }))),
                    "{ctx}"
                );
            }
            // The side that failed takes no more frames.
            let again = if to_initiator || late {
                p.i.handle_frame(&[1, 2, 3], t0())
            } else {
                p.r.handle_frame(&[1, 2, 3], t0())
            };
            assert!(matches!(again, Err(JoinError::Ended)), "{ctx}");
        }
    }
}

#[test]
fn a_join_is_abandoned_at_its_deadline() {
    let mut p = pair();
    assert_eq!(p.i.poll_timeout(), Some(t0() + JOIN_TIMEOUT));
    assert!(p.i.handle_timeout(t0() + Duration::from_secs(4)).is_ok());
    assert!(matches!(
        p.i.handle_timeout(t0() + JOIN_TIMEOUT),
        Err(JoinError::Timeout)
    ));
    assert_eq!(p.i.poll_timeout(), None);
    assert!(
        p.i.handle_timeout(t0() + JOIN_TIMEOUT * 2).is_ok(),
        "reported once"
    );

    // A frame arriving after the deadline ends the join rather than advancing it.
    let m1 = p.i.poll_frame().unwrap();
    let late = t0() + JOIN_TIMEOUT + Duration::from_millis(1);
    assert!(matches!(
        p.r.handle_frame(&m1, late),
        Err(JoinError::Timeout)
    ));
    assert!(p.r.poll_frame().is_none());
    assert!(matches!(p.r.handle_frame(&m1, late), Err(JoinError::Ended)));
}

#[test]
fn a_local_chain_over_the_limits_is_refused_at_setup() {
    let key = PrivateKey::generate();
    let big = vec![vec![0x30; wire::MAX_CERT_LEN + 1]];
    assert!(matches!(
        Initiator::new(&key, BETA.into(), big.clone(), FakeVerifier::arc(), t0()),
        Err(JoinError::LocalChain(wire::WireError::CertLength(_)))
    ));
    assert!(matches!(
        Responder::new(&key, vec![], FakeVerifier::arc(), t0()),
        Err(JoinError::LocalChain(wire::WireError::EmptyChain))
    ));
}

#[test]
fn fuzz_corpus_replays_without_panicking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/join_decode");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        fuzzing::join_decode(&data);
        files += 1;
    }
    assert!(files >= 3, "corpus at {} has {files} inputs", dir.display());
}

#[test]
fn random_frames_to_a_fresh_responder_never_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 256,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..600), |data| {
            fuzzing::join_decode(&data);
            Ok(())
        })
        .unwrap();
}

#[test]
fn join_request_patterns_match_one_segment_per_star() {
    use super::id_matches;
    let id = "spiffe://td/cluster/c2/gateway/gw";
    assert!(id_matches(id, id));
    assert!(id_matches("spiffe://td/cluster/c2/gateway/*", id));
    assert!(id_matches("spiffe://td/cluster/*/gateway/*", id));
    assert!(!id_matches("spiffe://td/cluster/c3/gateway/*", id));
    assert!(!id_matches("spiffe://other/cluster/c2/gateway/*", id));
    assert!(!id_matches("spiffe://td/cluster/c2/*", id));
    assert!(!id_matches("spiffe://td/cluster/c2/gateway/gw/*", id));
    assert!(!id_matches(
        "spiffe://td/cluster/c2/gateway/*",
        "spiffe://td/cluster/c2/gateway/"
    ));
    assert!(!id_matches("spiffe://td/cluster/c2/gateway/g", id));
}
