//! The body of the `sync_decode` fuzz target (`fuzz/fuzz_targets/sync_decode.rs`), here so the
//! fuzz corpus is replayed by an ordinary test with exactly the same code.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::codec::{decode, decode_frame, encode, FrameDecoder};
use crate::health::HealthConfig;
use crate::merged::MergedCatalog;
use crate::names::ClusterName;
use crate::origin::LocalCatalog;
use crate::vip::VipAllocator;

fn catalog() -> MergedCatalog {
    let local = LocalCatalog::new(ClusterName::new("fuzz-local").expect("constant name"), 1);
    let range: Ipv4Net = "10.96.0.0/28".parse().expect("constant range");
    MergedCatalog::new(
        local,
        HealthConfig::default(),
        VipAllocator::new(range, None),
    )
    .expect("default config is valid")
}

/// Feeds `data` to the body decoder, the whole-frame decoder and, in chunks whose sizes come
/// from the data, to a stream decoder; every message that decodes must encode back to a message
/// that decodes to itself, and is applied to a catalog as if sent by the cluster it names (or
/// by a fixed one). Must never panic.
pub fn sync_decode(data: &[u8]) {
    for msg in [decode(data), decode_frame(data)].into_iter().flatten() {
        let again = encode(&msg).map(|frame| decode_frame(&frame));
        if let Ok(again) = again {
            assert_eq!(again.as_ref(), Ok(&msg), "re-encoded message differs");
        }
    }

    let mut frames = FrameDecoder::new();
    let mut catalog = catalog();
    let fallback = ClusterName::new("fuzz-peer").expect("constant name");
    let mut now = Instant::now();
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for piece in data.chunks(chunk) {
        if frames.push(piece).is_err() {
            break;
        }
        loop {
            match frames.pop() {
                Ok(Some(msg)) => {
                    let sender = msg.origin().cloned().unwrap_or_else(|| fallback.clone());
                    let _ = catalog.apply(&sender, msg, now);
                    now += Duration::from_millis(700);
                    let _ = catalog.handle_timeout(now);
                    let _ = catalog.view(now);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
