//! The record decoder against hostile bytes, and the encoding's limits and canonical form.

use crate::mesh::records::{MemberRecord, RecordError, MAX_PREFIXES, MAX_RECORD_LEN};
use ipnet::IpNet;
use isthmus_pki::{SpiffeId, TrustDomain, MAX_ID_LEN};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::from(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::from(Ipv6Addr::from(b))),
    ]
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    (ip(), 1..=u16::MAX)
        .prop_filter("specified", |(ip, _)| !ip.is_unspecified())
        .prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn prefix() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(ip, len)| {
        let max = if ip.is_ipv4() { 33 } else { 129 };
        IpNet::new(ip, len % max).unwrap().trunc()
    })
}

fn record() -> impl Strategy<Value = MemberRecord> {
    // Segments `.` and `..` are not SPIFFE IDs; the filter drops them.
    let id = ("[a-z][a-z0-9-]{0,30}", "[a-zA-Z0-9._-]{1,40}").prop_filter_map(
        "a valid SPIFFE ID",
        |(c, n)| {
            let td = TrustDomain::new("isthmus.local").unwrap();
            SpiffeId::gateway(&td, &c, &n).ok()
        },
    );
    (
        id,
        any::<[u8; 32]>(),
        proptest::option::of(endpoint()),
        proptest::option::of(endpoint()),
        ip(),
        proptest::collection::vec(prefix(), 0..=MAX_PREFIXES),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(spiffe_id, wg, endpoint, join_endpoint, mesh_addr, prefixes, generation, leaving)| {
                MemberRecord {
                    spiffe_id,
                    wg_public_key: wg,
                    endpoint,
                    join_endpoint,
                    mesh_addr,
                    prefixes,
                    generation,
                    leaving,
                }
            },
        )
}

proptest! {
    #[test]
    fn records_round_trip(r in record()) {
        let bytes = r.encode().unwrap();
        prop_assert!(bytes.len() <= MAX_RECORD_LEN);
        prop_assert_eq!(MemberRecord::decode(&bytes).unwrap(), r);
    }

    /// Whatever decodes re-encodes to exactly the same bytes: the encoding is canonical.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(r) = MemberRecord::decode(&bytes) {
            prop_assert_eq!(r.encode().unwrap(), bytes);
        }
    }

    /// The same with a valid header, so the fuzzing reaches past the version and flags.
    #[test]
    fn random_bodies_never_panic(
        flags in 0u8..8,
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = vec![0, 1, flags];
        bytes.extend(body);
        if let Ok(r) = MemberRecord::decode(&bytes) {
            prop_assert_eq!(r.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn truncations_and_bit_flips_of_records_never_panic(
        r in record(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let bytes = r.encode().unwrap();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(MemberRecord::decode(&bytes[..cut]), Err(RecordError::Truncated));
        let mut flipped = bytes.clone();
        flipped[flip.index(bytes.len())] ^= 1 << bit;
        if let Ok(r) = MemberRecord::decode(&flipped) {
            prop_assert_eq!(r.encode().unwrap(), flipped);
        }
    }
}

fn sample() -> (MemberRecord, Vec<u8>) {
    let td = TrustDomain::new("isthmus.local").unwrap();
    let r = MemberRecord {
        spiffe_id: SpiffeId::gateway(&td, "east", "gw-1").unwrap(),
        wg_public_key: [1; 32],
        endpoint: None,
        join_endpoint: None,
        mesh_addr: Ipv4Addr::new(100, 64, 0, 1).into(),
        prefixes: vec!["10.1.0.0/16".parse().unwrap()],
        generation: 7,
        leaving: false,
    };
    let bytes = r.encode().unwrap();
    (r, bytes)
}

#[test]
fn every_truncation_is_refused() {
    let (_, bytes) = sample();
    for cut in 0..bytes.len() {
        assert_eq!(
            MemberRecord::decode(&bytes[..cut]),
            Err(RecordError::Truncated),
            "{cut}"
        );
    }
}

#[test]
fn limits_and_non_canonical_forms_are_refused() {
    let (r, bytes) = sample();
    let id_len = r.spiffe_id.as_str().len();
    let count_at = bytes.len() - 7; // count, then one IPv4 prefix (1 + 4 + 1)
    let mesh_at = count_at - 5;
    let edit = |at: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b.splice(at..at + value.len(), value.iter().copied());
        b
    };
    let mut trailing = bytes.clone();
    trailing.push(0);
    let mut host_bits = bytes.clone();
    let last = host_bits.len() - 3; // 10.1.0.0/16 -> 10.1.1.0/16
    host_bits[last] = 1;
    let cases: [(&str, Vec<u8>, RecordError); 9] = [
        ("version", edit(0, &[0, 2]), RecordError::Version(2)),
        ("flags", edit(2, &[0x08]), RecordError::Flags(0x08)),
        ("empty id", edit(43, &[0, 0]), RecordError::IdLength(0)),
        (
            "long id",
            edit(43, &[0x08, 0x01]),
            RecordError::IdLength(2049),
        ),
        ("id not utf-8", edit(45, &[0xff]), RecordError::IdNotUtf8),
        ("family", edit(mesh_at, &[5]), RecordError::Family(5)),
        (
            "prefix count",
            edit(count_at, &[65]),
            RecordError::TooManyPrefixes(65),
        ),
        (
            "prefix length",
            edit(bytes.len() - 1, &[33]),
            RecordError::PrefixLength(33),
        ),
        ("trailing", trailing, RecordError::TrailingBytes(1)),
    ];
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[43], bytes[44]])),
        id_len
    );
    assert_eq!(MemberRecord::decode(&bytes).unwrap(), r);
    for (name, bad, error) in cases {
        assert_eq!(MemberRecord::decode(&bad), Err(error), "{name}");
    }
    assert!(matches!(
        MemberRecord::decode(&host_bits),
        Err(RecordError::HostBits(_))
    ));
    assert!(matches!(
        MemberRecord::decode(&edit(45, b"SPIFFE")),
        Err(RecordError::Id(_))
    ));

    // The encoder refuses what the decoder would.
    let many = MemberRecord {
        prefixes: vec!["10.0.0.0/8".parse().unwrap(); MAX_PREFIXES + 1],
        ..r.clone()
    };
    assert_eq!(many.encode(), Err(RecordError::TooManyPrefixes(65)));
    let unaligned = MemberRecord {
        prefixes: vec!["10.1.1.0/16".parse().unwrap()],
        ..r.clone()
    };
    assert!(matches!(unaligned.encode(), Err(RecordError::HostBits(_))));
    let no_port = MemberRecord {
        endpoint: Some("192.0.2.1:0".parse().unwrap()),
        ..r.clone()
    };
    assert!(matches!(no_port.encode(), Err(RecordError::Endpoint(_))));

    // The longest record fits its bound.
    let td = TrustDomain::new("isthmus.local").unwrap();
    let node = "n".repeat(MAX_ID_LEN - "spiffe://isthmus.local/cluster/c/gateway/".len());
    let v6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
    let longest = MemberRecord {
        spiffe_id: SpiffeId::gateway(&td, "c", &node).unwrap(),
        endpoint: Some(v6),
        join_endpoint: Some(v6),
        mesh_addr: "fd00::1".parse().unwrap(),
        prefixes: vec!["2001:db8::/32".parse().unwrap(); MAX_PREFIXES],
        ..r
    };
    assert_eq!(longest.encode().unwrap().len(), MAX_RECORD_LEN);
}
