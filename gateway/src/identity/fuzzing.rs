//! The body of the `join_decode` fuzz target (`fuzz/fuzz_targets/join_decode.rs`), here so the
//! fuzz corpus is replayed by an ordinary test with exactly the same code.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::join::Responder;
use super::wire::{Answer, FrameDecoder, JoinRequest, Verdict};
use super::{PeerVerifier, VerifiedPeer, VerifyError};
use crate::keys::PrivateKey;

struct AcceptAll;

impl PeerVerifier for AcceptAll {
    fn verify(
        &self,
        _chain: &[Vec<u8>],
        _remote_static: &[u8; 32],
        _expected: Option<&str>,
        _now: SystemTime,
    ) -> Result<VerifiedPeer, VerifyError> {
        Ok(VerifiedPeer {
            id: isthmus_pki::SpiffeId::new("spiffe://fuzz.test/edge/any").expect("constant ID"),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000),
        })
    }
}

fn responder() -> Responder {
    let key = PrivateKey::try_from_base64("YAnm5P3Lzzi3kZ5xmJ+0y2ibs8dNvk7UfXCeptvBbVk=")
        .expect("constant key");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Responder::new(&key, vec![vec![0x30, 0x00]], Arc::new(AcceptAll), now)
        .expect("constant chain fits")
}

/// Feeds `data` to every payload decoder, to a responder as one message 1, and, split into
/// frames by the stream decoder, to a responder frame after frame. Must never panic.
pub fn join_decode(data: &[u8]) {
    let _ = JoinRequest::decode(data);
    let _ = Answer::decode(data);
    let _ = Verdict::decode(data);

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001);
    let mut r = responder();
    let _ = r.handle_frame(data, now);
    while r.poll_frame().is_some() {}

    let mut frames = FrameDecoder::new();
    frames.extend(data);
    let mut r = responder();
    while let Ok(Some(frame)) = frames.next_frame() {
        let result = r.handle_frame(&frame, now);
        while r.poll_frame().is_some() {}
        if result.is_err() {
            break;
        }
    }
}
