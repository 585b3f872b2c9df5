//! The sync wire format: round trips, truncation, hostile lengths and random bytes.

mod common;

use common::*;
use isthmus_catalog::limits::MAX_FRAME_LEN;
use isthmus_catalog::{
    decode, decode_frame, encode, Change, DecodeError, Error, FrameDecoder, SyncMessage, Violation,
    Watermark, PROTOCOL_VERSION,
};
use proptest::prelude::*;

fn sample() -> SyncMessage {
    SyncMessage::Snapshot(state(
        "east",
        3,
        7,
        vec![
            export("shop/api", &[("10.1.0.1", true), ("10.1.0.2", false)]),
            export("shop/web", &[("fd00::1", true)]),
        ],
    ))
}

/// The frame of `body` as written on the stream.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn body(version: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = version.to_be_bytes().to_vec();
    b.extend_from_slice(payload);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(msg in arb_message()) {
        let frame = encode(&msg).unwrap();
        prop_assert_eq!(decode_frame(&frame), Ok(msg.clone()));
        prop_assert_eq!(decode(&frame[4..]), Ok(msg.clone()));
        let mut stream = FrameDecoder::new();
        // Byte by byte, as a slow TCP stream would deliver it.
        for b in &frame {
            stream.push(std::slice::from_ref(b)).unwrap();
        }
        prop_assert_eq!(stream.pop(), Ok(Some(msg)));
        prop_assert_eq!(stream.pop(), Ok(None));
        prop_assert_eq!(stream.buffered(), 0);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = decode_frame(&bytes);
        isthmus_catalog::fuzzing::sync_decode(&bytes);
    }

    #[test]
    fn random_bodies_with_a_valid_version_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let b = body(PROTOCOL_VERSION, &bytes);
        let _ = decode(&b);
        isthmus_catalog::fuzzing::sync_decode(&framed(&b));
    }

    #[test]
    fn flipping_any_byte_never_panics(msg in arb_message(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let mut frame = encode(&msg).unwrap();
        let i = at.index(frame.len());
        frame[i] ^= x;
        let _ = decode_frame(&frame);
    }
}

#[test]
fn every_truncation_of_a_valid_frame_is_an_error() {
    for msg in [
        sample(),
        SyncMessage::Bye,
        SyncMessage::Heartbeat(Watermark::default()),
    ] {
        let frame = encode(&msg).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode_frame(&frame[..cut]).is_err(),
                "{} cut at {cut}",
                msg.kind()
            );
            // A truncated body with a length prefix that matches it.
            if cut > 4 {
                assert!(
                    decode(&frame[4..cut]).is_err(),
                    "{} body cut at {cut}",
                    msg.kind()
                );
            }
            let mut stream = FrameDecoder::new();
            stream.push(&frame[..cut]).unwrap();
            assert_eq!(stream.pop(), Ok(None), "a partial frame waits for more");
        }
    }
}

#[test]
fn oversized_length_is_refused_from_the_prefix_alone() {
    let mut stream = FrameDecoder::new();
    let too_big = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert_eq!(stream.push(&too_big[..3]), Ok(()));
    assert_eq!(
        stream.push(&too_big[3..]),
        Err(DecodeError::FrameTooLarge(MAX_FRAME_LEN + 1))
    );
    assert_eq!(stream.buffered(), 0, "nothing kept");
    // The error is final.
    assert_eq!(
        stream.push(&[0; 16]),
        Err(DecodeError::FrameTooLarge(MAX_FRAME_LEN + 1))
    );
    assert!(stream.pop().is_err());
    assert_eq!(
        decode_frame(&u32::MAX.to_be_bytes()),
        Err(DecodeError::FrameTooLarge(u32::MAX as usize))
    );
}

#[test]
fn an_oversized_prefix_after_a_good_frame_is_refused_on_pop() {
    let mut bytes = encode(&SyncMessage::Bye).unwrap();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut stream = FrameDecoder::new();
    stream.push(&bytes).unwrap();
    assert_eq!(stream.pop(), Ok(Some(SyncMessage::Bye)));
    assert_eq!(
        stream.pop(),
        Err(DecodeError::FrameTooLarge(u32::MAX as usize))
    );
}

#[test]
fn header_errors() {
    assert_eq!(decode(&[]), Err(DecodeError::FrameTooShort(0)));
    assert_eq!(decode(&[0]), Err(DecodeError::FrameTooShort(1)));
    assert_eq!(
        decode(&body(2, &[6])),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(
        DecodeError::UnsupportedVersion(2).to_string(),
        "sync protocol version 2, this build speaks 1"
    );
    let mut frame = encode(&SyncMessage::Bye).unwrap();
    frame.push(0);
    assert_eq!(decode_frame(&frame), Err(DecodeError::TrailingBytes(1)));
    assert_eq!(decode(&frame[4..]), Err(DecodeError::TrailingBytes(1)));
    // Variant 7 is MembersDigest, the last one.
    assert_eq!(
        decode(&body(1, &[8])),
        Err(DecodeError::Malformed(
            "unknown variant, invalid name, duplicate service or too many elements"
        ))
    );
}

#[test]
fn hostile_counts_are_refused_before_allocating() {
    // Members (tag 5) claiming 2^63 - 1 records: more than the bytes left, so postcard gives no
    // size hint, nothing is reserved, and the body runs out.
    let mut payload = vec![5];
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert_eq!(decode(&body(1, &payload)), Err(DecodeError::Truncated));
    // Snapshot (tag 1) of cluster "a", generation 0, version 0, claiming 1e9 services.
    let payload = [1, 1, b'a', 0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03];
    assert_eq!(decode(&body(1, &payload)), Err(DecodeError::Truncated));
    // 1025 empty members, all present: over MAX_MEMBERS, refused from the count.
    let mut payload = vec![5, 0x81, 0x08];
    payload.extend(std::iter::repeat_n(0u8, 3 * 1025));
    assert!(matches!(
        decode(&body(1, &payload)),
        Err(DecodeError::Malformed(_))
    ));
    payload[1..3].copy_from_slice(&[0x80, 0x08]);
    payload.truncate(3 + 3 * 1024);
    assert!(matches!(decode(&body(1, &payload)), Ok(SyncMessage::Members(m)) if m.len() == 1024));
    // A record longer than 4096 bytes.
    let mut payload = vec![5, 1, 0x81, 0x20];
    payload.extend(std::iter::repeat_n(0u8, 4097 + 2));
    assert!(matches!(
        decode(&body(1, &payload)),
        Err(DecodeError::Malformed(_))
    ));
    // A string longer than the body.
    let payload = [1, 0x7f, b'a'];
    assert_eq!(decode(&body(1, &payload)), Err(DecodeError::Truncated));
}

#[test]
fn names_are_validated_while_decoding() {
    // Snapshot of cluster "A" (not a DNS label).
    let payload = [1, 1, b'A', 0, 0, 0];
    assert!(matches!(
        decode(&body(1, &payload)),
        Err(DecodeError::Malformed(_))
    ));
    let payload = [1, 1, b'a', 0, 0, 0];
    assert!(decode(&body(1, &payload)).is_ok());
}

#[test]
fn limits_are_checked_after_decoding() {
    // A delta going backwards encodes fine but does not decode.
    let backwards = delta("east", 1, 5, 5, vec![]);
    let frame = encode(&backwards).unwrap();
    assert_eq!(
        decode_frame(&frame),
        Err(DecodeError::Invalid(Violation {
            field: "to_version",
            reason: "must be greater than from_version"
        }))
    );
    let twice = delta(
        "east",
        1,
        1,
        2,
        vec![
            Change::Remove(svc("shop/api")),
            Change::Remove(svc("shop/api")),
        ],
    );
    let err = decode_frame(&encode(&twice).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "invalid name: changed twice");
    let mut bad = export("shop/api", &[("10.0.0.1", true)]);
    bad.endpoints[0].address = "127.0.0.1".parse().unwrap();
    let snapshot = SyncMessage::Snapshot(state("east", 1, 1, vec![bad]));
    let err = decode_frame(&encode(&snapshot).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid endpoints[].address: not a unicast address"
    );
    // validate() on the same message names the service, index and value.
    assert_eq!(
        snapshot.validate().unwrap_err().to_string(),
        "shop/api: endpoints[0].address = 127.0.0.1: not a unicast address"
    );
}

#[test]
fn validate_names_the_member_change_or_field() {
    let member = |chain: usize| isthmus_catalog::OpaqueMember {
        record: vec![1],
        chain: vec![vec![0x30]; chain],
        signature: vec![],
    };
    let msg = SyncMessage::Members(vec![member(1), member(5)]);
    assert_eq!(
        msg.validate().unwrap_err().to_string(),
        "members: members[1].chain = 5: more than 4 certificates"
    );
    let hello = SyncMessage::Hello(isthmus_catalog::Hello {
        protocol_version: 0,
        cluster: cluster("east"),
        generation: 1,
        version: 1,
        have: None,
    });
    assert_eq!(
        hello.validate().unwrap_err().to_string(),
        "hello: protocol_version = 0: must be at least 1"
    );
    let mut bad = export("shop/web", &[("10.0.0.1", true)]);
    bad.ports[0].name = Some("Web".into());
    let d = delta(
        "east",
        1,
        1,
        2,
        vec![Change::Remove(svc("shop/api")), Change::Upsert(bad)],
    );
    assert_eq!(
        d.validate().unwrap_err().to_string(),
        "changes[1] shop/web: ports[0].name = \"Web\": only lowercase letters, digits and '-' are allowed"
    );
}

#[test]
fn a_frame_over_the_limit_is_not_encoded() {
    let big = SyncMessage::Members(
        (0..1024)
            .map(|_| isthmus_catalog::OpaqueMember {
                record: vec![7; 4096],
                chain: vec![vec![1; 4096]; 1],
                signature: vec![],
            })
            .collect(),
    );
    match encode(&big) {
        Err(Error::TooLarge {
            what: "frame body",
            len,
            max,
        }) => {
            assert!(len > max && max == MAX_FRAME_LEN)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn several_frames_in_one_push_and_split_across_pushes() {
    let msgs = [
        sample(),
        SyncMessage::Bye,
        SyncMessage::SnapshotRequest,
        sample(),
    ];
    let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
    for chunk in [1, 3, 7, 64, bytes.len()] {
        let mut stream = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            stream.push(piece).unwrap();
            while let Some(m) = stream.pop().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs, "chunks of {chunk}");
    }
}

#[test]
fn a_bad_frame_poisons_the_stream() {
    let mut bytes = framed(&body(9, &[6]));
    bytes.extend(encode(&SyncMessage::Bye).unwrap());
    let mut stream = FrameDecoder::new();
    stream.push(&bytes).unwrap();
    assert_eq!(stream.pop(), Err(DecodeError::UnsupportedVersion(9)));
    assert_eq!(stream.pop(), Err(DecodeError::UnsupportedVersion(9)));
}

#[test]
fn snapshot_size_per_endpoint() {
    // 9 to 10 bytes per IPv4 endpoint: the figure the codec docs give.
    let eps: Vec<(String, bool)> = (0..1000)
        .map(|i| (format!("10.1.{}.{}", i / 250, i % 250 + 1), true))
        .collect();
    let eps: Vec<(&str, bool)> = eps.iter().map(|(a, r)| (a.as_str(), *r)).collect();
    let frame = encode(&SyncMessage::Snapshot(state(
        "east",
        1,
        1,
        vec![export("shop/api", &eps)],
    )))
    .unwrap();
    assert!(
        (9_000..10_100).contains(&frame.len()),
        "{} bytes",
        frame.len()
    );
}

#[test]
fn a_members_digest_round_trips_and_its_limits_are_named() {
    use isthmus_catalog::{DigestEntry, MembersDigest};
    let entry = |id: &str, generation| DigestEntry {
        id: id.as_bytes().to_vec(),
        generation,
    };
    let msg = SyncMessage::MembersDigest(MembersDigest {
        reply: true,
        entries: vec![
            entry(
                "spiffe://isthmus.local/cluster/c1/gateway/gw",
                1_900_000_000_000,
            ),
            entry("spiffe://isthmus.local/cluster/c2/gateway/gw", 7),
        ],
    });
    let frame = encode(&msg).unwrap();
    assert_eq!(decode_frame(&frame), Ok(msg.clone()));
    assert_eq!(msg.kind(), "members_digest");
    msg.validate().unwrap();
    let too_many = SyncMessage::MembersDigest(MembersDigest {
        reply: false,
        entries: vec![entry("x", 1); 1025],
    });
    assert_eq!(
        too_many.validate().unwrap_err().to_string(),
        "members_digest: entries = 1025: more than 1024 members"
    );
    let too_long = SyncMessage::MembersDigest(MembersDigest {
        reply: false,
        entries: vec![entry(&"a".repeat(2049), 1)],
    });
    assert_eq!(
        too_long.validate().unwrap_err().to_string(),
        "members_digest: entries[].id = 2049: identity longer than 2048 bytes"
    );
}
