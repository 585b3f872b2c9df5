//! SPIFFE ID rules (SPIFFE-ID spec §2), one table: every string is either accepted or refused
//! with the error naming its rule. What we accept, the stock `spiffe` crate accepts too.

use isthmus_pki::{IdError, SpiffeId, TrustDomain};

fn long(n: usize) -> String {
    "a".repeat(n)
}

fn cases() -> Vec<(String, Result<(), IdError>)> {
    let ok = |s: &str| (s.to_owned(), Ok(()));
    let bad = |s: &str, e: IdError| (s.to_owned(), Err(e));
    vec![
        ok("spiffe://isthmus.local"),
        ok("spiffe://isthmus.local/cluster/east/gateway/gw-1"),
        ok("spiffe://isthmus.local/edge/pi-7"),
        ok("spiffe://td_1-x.y/Path.With-Mixed_Case/09"),
        ok("spiffe://td/..a/a.."),
        bad("", IdError::Empty),
        bad("http://isthmus.local/x", IdError::WrongScheme),
        bad("SPIFFE://isthmus.local/x", IdError::WrongScheme),
        bad("spiffe:/isthmus.local/x", IdError::WrongScheme),
        bad("isthmus.local/x", IdError::WrongScheme),
        bad("spiffe://", IdError::MissingTrustDomain),
        bad("spiffe:///path", IdError::MissingTrustDomain),
        bad(
            "spiffe://user@isthmus.local/x",
            IdError::TrustDomainUserinfo,
        ),
        bad("spiffe://isthmus.local:8443/x", IdError::TrustDomainPort),
        bad("spiffe://Isthmus.local/x", IdError::TrustDomainUppercase),
        bad("spiffe://isthmus%2elocal/x", IdError::TrustDomainChar('%')),
        bad("spiffe://isth mus/x", IdError::TrustDomainChar(' ')),
        bad("spiffe://isthmus.local/x?y=1", IdError::Query),
        bad("spiffe://isthmus.local/x#frag", IdError::Fragment),
        bad("spiffe://isthmus.local//x", IdError::EmptySegment),
        bad("spiffe://isthmus.local/a//b", IdError::EmptySegment),
        bad("spiffe://isthmus.local/a/./b", IdError::DotSegment),
        bad("spiffe://isthmus.local/a/..", IdError::DotSegment),
        bad("spiffe://isthmus.local/", IdError::TrailingSlash),
        bad("spiffe://isthmus.local/a/", IdError::TrailingSlash),
        bad("spiffe://isthmus.local/a%20b", IdError::PathChar('%')),
        bad(
            "spiffe://isthmus.local/caf\u{e9}",
            IdError::PathChar('\u{e9}'),
        ),
        bad("spiffe://isthmus.local/a b", IdError::PathChar(' ')),
        (format!("spiffe://{}", long(255)), Ok(())),
        (
            format!("spiffe://{}/x", long(256)),
            Err(IdError::TrustDomainTooLong(256)),
        ),
        (format!("spiffe://td/{}", long(2048 - 12)), Ok(())),
        (
            format!("spiffe://td/{}", long(2048 - 11)),
            Err(IdError::TooLong(2049)),
        ),
    ]
}

#[test]
fn spiffe_id_table() {
    let mut wrong = Vec::new();
    for (input, want) in cases() {
        let got = SpiffeId::new(&input).map(|id| {
            assert_eq!(id.as_str(), input, "an accepted ID is kept verbatim");
        });
        if got != want {
            wrong.push(format!("{input:.60}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn errors_name_their_rule() {
    let message = SpiffeId::new("spiffe://isthmus.local:8443/x")
        .unwrap_err()
        .to_string();
    assert!(message.contains("port"), "{message}");
    let message = SpiffeId::new("spiffe://isthmus.local/a/./b")
        .unwrap_err()
        .to_string();
    assert!(message.contains("`.`"), "{message}");
}

#[test]
fn trust_domain_names() {
    assert_eq!(
        TrustDomain::new("isthmus.local").unwrap().as_str(),
        "isthmus.local"
    );
    assert_eq!(
        TrustDomain::new("spiffe://isthmus.local").unwrap().as_str(),
        "isthmus.local"
    );
    assert_eq!(TrustDomain::new(""), Err(IdError::MissingTrustDomain));
    assert_eq!(
        TrustDomain::new("Upper"),
        Err(IdError::TrustDomainUppercase)
    );
    assert_eq!(TrustDomain::new("a:1"), Err(IdError::TrustDomainPort));
    assert_eq!(TrustDomain::new("a/b"), Err(IdError::TrustDomainChar('/')));
    assert_eq!(
        TrustDomain::new(&long(256)),
        Err(IdError::TrustDomainTooLong(256))
    );
}

/// Cross-check against the `spiffe` crate: every ID we accept it accepts unchanged, and every
/// ID it refuses we refuse. It is laxer in places (it lowercases `SPIFFE://` and an uppercase
/// trust domain, RFC 3986 §3.1/§3.2.2, and caps the length only when building an ID); we accept
/// only the canonical form, as go-spiffe does, because identities are compared as strings.
#[test]
fn the_spiffe_crate_agrees_where_it_matters() {
    for (input, want) in cases() {
        let theirs = spiffe::SpiffeId::new(&input);
        match (&want, &theirs) {
            (Ok(()), Ok(id)) => assert_eq!(id.to_string(), input),
            (Ok(()), Err(e)) => panic!("{input:.60}: we accept, the spiffe crate refuses: {e}"),
            (Err(_), _) => {}
        }
    }
}
