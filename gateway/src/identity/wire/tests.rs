use super::*;
use proptest::prelude::*;

fn hello() -> JoinHello {
    JoinHello {
        chain: vec![vec![0x30; 700], vec![0x31; 900]],
        endpoint_hint: Some("192.0.2.7:51820".parse().unwrap()),
        mesh_addr: Some("100.96.0.7".parse().unwrap()),
    }
}

#[test]
fn request_layout_is_the_documented_one() {
    let bytes = JoinRequest {
        expected: "spiffe://a/b".into(),
    }
    .encode()
    .unwrap();
    assert_eq!(&bytes[..4], &[0, 1, 0, 12]);
    assert_eq!(&bytes[4..], b"spiffe://a/b");
}

#[test]
fn hello_layout_is_the_documented_one() {
    let bytes = Answer::Hello(JoinHello {
        chain: vec![vec![0xAA, 0xBB]],
        endpoint_hint: Some("[2001:db8::1]:7".parse().unwrap()),
        mesh_addr: Some("fd00::7".parse().unwrap()),
    })
    .encode()
    .unwrap();
    let mut want = vec![0, 1, TAG_HELLO, 0, 1, 0, 2, 0xAA, 0xBB, ADDR_V6];
    want.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    want.extend_from_slice(&[0, 7, ADDR_V6]);
    want.extend_from_slice(&"fd00::7".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(bytes, want);
}

#[test]
fn round_trips() {
    let a = Answer::Hello(hello());
    assert_eq!(Answer::decode(&a.encode().unwrap()).unwrap(), a);
    let r = Answer::Refuse {
        reason: "expired".into(),
    };
    assert_eq!(Answer::decode(&r.encode().unwrap()).unwrap(), r);
    for v in [
        Verdict::Accept,
        Verdict::Refuse {
            reason: "nope".into(),
        },
    ] {
        assert_eq!(Verdict::decode(&v.encode()).unwrap(), v);
    }
}

#[test]
fn limits_are_enforced_both_ways() {
    let mut h = hello();
    h.chain = vec![vec![1; 10]; MAX_CERTS + 1];
    assert_eq!(
        Answer::Hello(h.clone()).encode(),
        Err(WireError::TooManyCerts(5))
    );
    h.chain = vec![vec![1; MAX_CERT_LEN + 1]];
    assert_eq!(
        Answer::Hello(h.clone()).encode(),
        Err(WireError::CertLength(MAX_CERT_LEN + 1))
    );
    h.chain = vec![];
    assert_eq!(Answer::Hello(h).encode(), Err(WireError::EmptyChain));

    // A count of 5 on the wire is refused before any certificate is read.
    assert_eq!(
        Answer::decode(&[0, 1, TAG_HELLO, 0, 5]),
        Err(WireError::TooManyCerts(5))
    );
    assert_eq!(
        Answer::decode(&[0, 1, TAG_HELLO, 0, 1, 0x10, 0x01]),
        Err(WireError::CertLength(0x1001))
    );
    assert_eq!(
        Answer::decode(&vec![0; MAX_PAYLOAD_LEN + 1]),
        Err(WireError::TooLarge(MAX_PAYLOAD_LEN + 1))
    );
    let long = "x".repeat(MAX_SPIFFE_ID_LEN + 1);
    assert_eq!(
        JoinRequest { expected: long }.encode(),
        Err(WireError::IdLength(MAX_SPIFFE_ID_LEN + 1))
    );
}

#[test]
fn four_certificates_fit_within_the_message_limit() {
    // 4 × 4 KiB of DER alone would exceed the 16 KiB message limit; the total is what binds.
    let h = JoinHello {
        chain: vec![vec![7; 4000]; MAX_CERTS],
        endpoint_hint: Some("[::1]:1".parse().unwrap()),
        mesh_addr: None,
    };
    let bytes = Answer::Hello(h.clone()).encode().unwrap();
    assert!(bytes.len() <= MAX_PAYLOAD_LEN);
    assert_eq!(Answer::decode(&bytes).unwrap(), Answer::Hello(h));
    let full = JoinHello {
        chain: vec![vec![7; MAX_CERT_LEN]; MAX_CERTS],
        endpoint_hint: None,
        mesh_addr: None,
    };
    assert!(matches!(
        Answer::Hello(full).encode(),
        Err(WireError::TooLarge(_))
    ));
}

#[test]
fn long_reasons_are_cut_at_a_char_boundary() {
    let reason = "é".repeat(MAX_REASON_LEN);
    let Verdict::Refuse { reason: got } = Verdict::decode(
        &Verdict::Refuse {
            reason: reason.clone(),
        }
        .encode(),
    )
    .unwrap() else {
        panic!("not a refusal")
    };
    assert!(got.len() <= MAX_REASON_LEN && reason.starts_with(&got) && !got.is_empty());
}

#[test]
fn rejects_trailing_bytes_versions_tags_and_truncation() {
    let mut bytes = Answer::Hello(hello()).encode().unwrap();
    bytes.push(0);
    assert_eq!(Answer::decode(&bytes), Err(WireError::TrailingBytes(1)));
    bytes.pop();
    for cut in 0..bytes.len() {
        assert_eq!(
            Answer::decode(&bytes[..cut]),
            Err(WireError::Truncated),
            "{cut}"
        );
    }
    assert_eq!(
        Answer::decode(&[0, 2, TAG_HELLO]),
        Err(WireError::UnsupportedVersion(2))
    );
    assert_eq!(Verdict::decode(&[0, 1, 9]), Err(WireError::UnknownTag(9)));
    assert_eq!(
        JoinRequest::decode(&[0, 1, 0, 2, 0xff, 0xfe]),
        Err(WireError::NotUtf8)
    );
    assert_eq!(
        Answer::decode(&[0, 1, TAG_HELLO, 0, 1, 0, 1, 0x30, 9]),
        Err(WireError::UnknownAddressFamily(9))
    );
}

#[test]
fn frame_decoder_reassembles_and_refuses_oversized_prefixes() {
    let a = encode_frame(b"hello").unwrap();
    let b = encode_frame(&[]).unwrap();
    let stream: Vec<u8> = a.iter().chain(&b).copied().collect();
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    for byte in stream {
        d.extend(&[byte]);
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, vec![b"hello".to_vec(), vec![]]);
    assert_eq!(d.pending(), 0);

    let mut d = FrameDecoder::new();
    d.extend(&[0xff, 0xff]);
    assert_eq!(d.next_frame(), Err(FrameTooLarge(0xffff)));
    assert!(encode_frame(&vec![0; MAX_FRAME_LEN + 1]).is_err());
}

fn arb_hello() -> impl Strategy<Value = JoinHello> {
    let cert = proptest::collection::vec(any::<u8>(), 1..=300);
    (
        proptest::collection::vec(cert, 1..=MAX_CERTS),
        proptest::option::of(
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)),
        ),
    )
        .prop_map(|(chain, endpoint_hint)| JoinHello {
            chain,
            endpoint_hint,
            mesh_addr: None,
        })
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = JoinRequest::decode(&bytes);
        let _ = Answer::decode(&bytes);
        let _ = Verdict::decode(&bytes);
        // The same bytes behind a valid version exercise the layouts, not just the version.
        let mut v1 = vec![0, 1];
        v1.extend_from_slice(&bytes);
        let _ = JoinRequest::decode(&v1);
        let _ = Answer::decode(&v1);
        let _ = Verdict::decode(&v1);
        let mut d = FrameDecoder::new();
        d.extend(&bytes);
        while let Ok(Some(_)) = d.next_frame() {}
    }

    #[test]
    fn answers_round_trip(hello in arb_hello(), reason in ".{0,200}") {
        let a = Answer::Hello(hello);
        prop_assert_eq!(Answer::decode(&a.encode().unwrap()).unwrap(), a);
        let r = Answer::Refuse { reason };
        prop_assert_eq!(Answer::decode(&r.encode().unwrap()).unwrap(), r);
    }

    #[test]
    fn requests_round_trip(expected in "spiffe://[a-z0-9.]{1,40}(/[a-zA-Z0-9._-]{1,20}){0,6}") {
        let q = JoinRequest { expected };
        prop_assert_eq!(JoinRequest::decode(&q.encode().unwrap()).unwrap(), q);
    }
}
