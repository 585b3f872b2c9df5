//! Every verification rule, with certificates generated in the test: the positive paths, then
//! one table of negatives, each refused with its own `VerifyError` variant.

mod common;

use common::{gateway, now, td, wg_keypair, Pki, Raw, DAY, YEAR};
use isthmus_pki::{
    verify, Authority, Bundle, CertPosition, SpiffeId, TrustDomain, VerifyError,
    DEFAULT_SVID_LIFETIME,
};
use rcgen::{CustomExtension, IsCa, KeyUsagePurpose};

#[test]
fn root_signed_gateway_verifies_with_identity_and_key() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-1");
    let svid = pki
        .root
        .issue(&id, &wg, now(), DEFAULT_SVID_LIFETIME)
        .unwrap();
    assert_eq!(
        svid.chain_der().len(),
        1,
        "a root-signed chain is the leaf alone"
    );

    let ok = verify(svid.chain_der(), &pki.bundle, now(), Some(&id), Some(&wg)).unwrap();
    assert_eq!(ok.id(), &id);
    assert_eq!(ok.wg_public_key(), &wg);
    assert_eq!(ok.intermediate_scope(), None);
    assert_eq!(ok.not_after(), svid.not_after());
    // Nothing pinned: the verifier still reports what is bound.
    let loose = verify(svid.chain_der(), &pki.bundle, now(), None, None).unwrap();
    assert_eq!(loose.wg_public_key(), &wg);
}

#[test]
fn intermediate_signed_gateway_verifies() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-2");
    let svid = pki
        .east
        .issue(&id, &wg, now(), DEFAULT_SVID_LIFETIME)
        .unwrap();
    assert_eq!(svid.chain_der().len(), 2);
    assert_eq!(svid.chain_der()[1], pki.east.cert_der());

    let ok = verify(svid.chain_der(), &pki.bundle, now(), Some(&id), Some(&wg)).unwrap();
    assert_eq!(ok.intermediate_scope(), Some(pki.east.id()));
    // A chain that also carries its root verifies the same.
    let mut with_root = svid.chain_der().to_vec();
    with_root.push(pki.root.cert_der().to_vec());
    assert_eq!(
        verify(&with_root, &pki.bundle, now(), Some(&id), Some(&wg)).unwrap(),
        ok
    );
}

#[test]
fn edge_svid_verifies() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = SpiffeId::edge(&td(), "pi-7").unwrap();
    let svid = pki
        .root
        .issue(&id, &wg, now(), DEFAULT_SVID_LIFETIME)
        .unwrap();
    let ok = verify(svid.chain_der(), &pki.bundle, now(), Some(&id), Some(&wg)).unwrap();
    assert_eq!(ok.id().as_str(), "spiffe://isthmus.local/edge/pi-7");
}

#[test]
fn validity_edges_and_earliest_expiry() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-1");
    let svid = pki.east.issue(&id, &wg, now(), DAY).unwrap();
    let verified = verify(svid.chain_der(), &pki.bundle, now(), None, None).unwrap();
    assert_eq!(verified.not_after(), now() + DAY);
    // notAfter itself is still valid (RFC 5280 §4.1.2.5), one second later is not.
    assert!(verify(svid.chain_der(), &pki.bundle, now() + DAY, None, None).is_ok());
    let late = verify(
        svid.chain_der(),
        &pki.bundle,
        now() + DAY + std::time::Duration::from_secs(1),
        None,
        None,
    );
    assert!(matches!(
        late,
        Err(VerifyError::Expired {
            cert: CertPosition::Leaf,
            ..
        })
    ));
}

#[test]
fn a_second_root_in_the_bundle_verifies_both_generations() {
    let pki = Pki::new(&td());
    let next = Authority::root(&td(), now(), 10 * YEAR).unwrap();
    let bundle = Bundle::new(
        td(),
        vec![pki.root.cert_der().to_vec(), next.cert_der().to_vec()],
    )
    .unwrap();
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-1");
    for ca in [&pki.root, &pki.east, &next] {
        let svid = ca.issue(&id, &wg, now(), DAY).unwrap();
        verify(svid.chain_der(), &bundle, now(), Some(&id), Some(&wg)).unwrap();
    }
}

/// What a negative case presents to `verify`.
struct Case {
    name: &'static str,
    chain: Vec<Vec<u8>>,
    bundle: Bundle,
    expected: Option<SpiffeId>,
    wg_key: Option<[u8; 32]>,
    check: fn(&VerifyError) -> bool,
}

fn negatives() -> Vec<Case> {
    let pki = Pki::new(&td());
    let bundle = || pki.bundle.clone();
    let (_, wg) = wg_keypair();
    let (_, other_wg) = wg_keypair();
    let gw = gateway("east", "gw-1");
    let good = pki.east.issue(&gw, &wg, now(), DAY).unwrap();
    let leaf_by_root = |raw: Raw| vec![raw.signed_by(&pki.root)];
    let uri = gw.as_str();

    let mut two_uris = Raw::leaf(uri);
    two_uris
        .uris
        .push("spiffe://isthmus.local/cluster/east/gateway/gw-2".into());
    let mut ca_leaf = Raw::leaf(uri);
    ca_leaf.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let mut cert_sign_leaf = Raw::leaf(uri);
    cert_sign_leaf.key_usages.push(KeyUsagePurpose::KeyCertSign);
    let mut crl_sign_leaf = Raw::leaf(uri);
    crl_sign_leaf.key_usages.push(KeyUsagePurpose::CrlSign);
    let mut no_digital_signature = Raw::leaf(uri);
    no_digital_signature.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    let mut no_key_usage = Raw::leaf(uri);
    no_key_usage.key_usages.clear();
    let mut no_uri = Raw::leaf(uri);
    no_uri.uris.clear();
    let mut critical = Raw::leaf(uri);
    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
    ext.set_criticality(true);
    critical.extensions.push(ext);

    // An intermediate of the same cluster under the same root: right names, wrong key.
    let east_again = pki.root.intermediate("east", now(), YEAR).unwrap();
    // A root of the same trust domain that the bundle does not hold.
    let stranger = Pki::new(&td());
    let stranger_svid = stranger.east.issue(&gw, &wg, now(), DAY).unwrap();
    // A CA without a cluster scope, and a "CA" that is not one, both signed by the root.
    let (unscoped, unscoped_key) = Raw::ca("spiffe://isthmus.local", 0)
        .signed_by_raw(pki.root.cert_der(), &pki.root.key_pem());
    let mut not_ca = Raw::ca("spiffe://isthmus.local/cluster/east", 0);
    not_ca.is_ca = IsCa::ExplicitNoCa;
    let (not_ca, not_ca_key) = not_ca.signed_by_raw(pki.root.cert_der(), &pki.root.key_pem());
    let mut no_cert_sign = Raw::ca("spiffe://isthmus.local/cluster/east", 0);
    no_cert_sign.key_usages = vec![KeyUsagePurpose::CrlSign];
    let (no_cert_sign, no_cert_sign_key) =
        no_cert_sign.signed_by_raw(pki.root.cert_der(), &pki.root.key_pem());
    // Below the east intermediate (pathLen 0), a second CA.
    let (deep, deep_key) = Raw::ca("spiffe://isthmus.local/cluster/east", 0)
        .signed_by_raw(pki.east.cert_der(), &pki.east.key_pem());
    // An intermediate that expired while its leaf is still within its own window.
    let mut old = Raw::ca("spiffe://isthmus.local/cluster/east", 0);
    old.not_after = now() - DAY;
    old.not_before = now() - YEAR;
    let (old, old_key) = old.signed_by_raw(pki.root.cert_der(), &pki.root.key_pem());
    // A bundle whose only root has expired.
    let old_root = Authority::root(&td(), now() - 3 * YEAR, YEAR).unwrap();
    let old_bundle = Bundle::new(td(), vec![old_root.cert_der().to_vec()]).unwrap();
    let unbound = Raw::leaf(uri).signed_by(&pki.east);

    let by = |raw: &Raw, der: &[u8], key: &str| raw.signed_by_raw(der, key).0;
    let leaf = Raw::leaf(uri);
    vec![
        Case {
            name: "two URI SANs",
            chain: leaf_by_root(two_uris),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::MultipleUriSans(2)),
        },
        Case {
            name: "a CA leaf",
            chain: leaf_by_root(ca_leaf),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::LeafIsCa),
        },
        Case {
            name: "keyCertSign on a leaf",
            chain: leaf_by_root(cert_sign_leaf),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::LeafCanSignCerts),
        },
        Case {
            name: "cRLSign on a leaf",
            chain: leaf_by_root(crl_sign_leaf),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::LeafCanSignCerts),
        },
        Case {
            name: "wrong trust domain",
            chain: leaf_by_root(Raw::leaf("spiffe://other.local/cluster/east/gateway/gw-1")),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(e, VerifyError::WrongTrustDomain { id, .. }
                    if id.trust_domain_name() == "other.local")
            },
        },
        Case {
            name: "expired",
            chain: pki
                .east
                .issue(&gw, &wg, now() - 2 * DAY, DAY)
                .unwrap()
                .chain_der()
                .to_vec(),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::Expired {
                        cert: CertPosition::Leaf,
                        ..
                    }
                )
            },
        },
        Case {
            name: "not yet valid",
            chain: pki
                .east
                .issue(&gw, &wg, now() + DAY, DAY)
                .unwrap()
                .chain_der()
                .to_vec(),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::NotYetValid {
                        cert: CertPosition::Leaf,
                        ..
                    }
                )
            },
        },
        Case {
            name: "an intermediate signing outside its cluster",
            chain: vec![
                Raw::leaf("spiffe://isthmus.local/cluster/west/gateway/gw-9").signed_by(&pki.east),
                pki.east.cert_der().to_vec(),
            ],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(e, VerifyError::IntermediateOutsideCluster { scope, .. }
                    if scope.as_str() == "spiffe://isthmus.local/cluster/east")
            },
        },
        Case {
            name: "an intermediate signing an edge identity",
            chain: vec![
                Raw::leaf("spiffe://isthmus.local/edge/pi-7").signed_by(&pki.west),
                pki.west.cert_der().to_vec(),
            ],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::IntermediateOutsideCluster { .. }),
        },
        Case {
            name: "a chain to an unknown root",
            chain: stranger_svid.chain_der().to_vec(),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::UnknownRoot),
        },
        Case {
            name: "a root-signed SVID from an unknown root",
            chain: stranger
                .root
                .issue(&gw, &wg, now(), DAY)
                .unwrap()
                .chain_der()
                .to_vec(),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::UnknownRoot),
        },
        Case {
            name: "a WireGuard key not bound to the presented SVID",
            chain: good.chain_der().to_vec(),
            bundle: bundle(),
            expected: Some(gw.clone()),
            wg_key: Some(other_wg),
            check: |e| matches!(e, VerifyError::KeyMismatch { .. }),
        },
        Case {
            name: "an SVID that binds no WireGuard key",
            chain: vec![unbound, pki.east.cert_der().to_vec()],
            bundle: bundle(),
            expected: None,
            wg_key: Some(wg),
            check: |e| matches!(e, VerifyError::KeyNotBound),
        },
        Case {
            name: "a valid SVID for the wrong identity",
            chain: good.chain_der().to_vec(),
            bundle: bundle(),
            expected: Some(gateway("east", "gw-2")),
            wg_key: Some(wg),
            check: |e| matches!(e, VerifyError::WrongIdentity { .. }),
        },
        Case {
            name: "an intermediate swapped for another of the same name",
            chain: vec![good.chain_der()[0].clone(), east_again.cert_der().to_vec()],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::BadSignature(CertPosition::Leaf)),
        },
        Case {
            name: "an intermediate without a cluster scope",
            chain: vec![by(&leaf, &unscoped, &unscoped_key), unscoped.clone()],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::IntermediateNotScoped(CertPosition::Intermediate(1))
                )
            },
        },
        Case {
            name: "a signing certificate that is not a CA",
            chain: vec![by(&leaf, &not_ca, &not_ca_key), not_ca.clone()],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::IssuerNotCa(CertPosition::Intermediate(1))),
        },
        Case {
            name: "a signing certificate without keyCertSign",
            chain: vec![
                by(&leaf, &no_cert_sign, &no_cert_sign_key),
                no_cert_sign.clone(),
            ],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::IssuerCannotSignCerts(CertPosition::Intermediate(1))
                )
            },
        },
        Case {
            name: "a CA below a pathLen 0 intermediate",
            chain: vec![
                by(&leaf, &deep, &deep_key),
                deep.clone(),
                pki.east.cert_der().to_vec(),
            ],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::PathLenExceeded(CertPosition::Intermediate(2))
                )
            },
        },
        Case {
            name: "an expired intermediate",
            chain: vec![by(&leaf, &old, &old_key), old.clone()],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::Expired {
                        cert: CertPosition::Intermediate(1),
                        ..
                    }
                )
            },
        },
        Case {
            name: "an expired root",
            chain: vec![leaf.signed_by(&old_root)],
            bundle: old_bundle,
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::Expired {
                        cert: CertPosition::Root,
                        ..
                    }
                )
            },
        },
        Case {
            name: "no URI SAN",
            chain: leaf_by_root(no_uri),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::NoUriSan),
        },
        Case {
            name: "a URI SAN that is not a SPIFFE ID",
            chain: leaf_by_root(Raw::leaf("spiffe://isthmus.local/cluster//gateway/x")),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(
                    e,
                    VerifyError::InvalidSpiffeId {
                        source: isthmus_pki::IdError::EmptySegment,
                        ..
                    }
                )
            },
        },
        Case {
            name: "a leaf named by the bare trust domain",
            chain: leaf_by_root(Raw::leaf("spiffe://isthmus.local")),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::LeafIdWithoutPath(_)),
        },
        Case {
            name: "a leaf without digitalSignature",
            chain: leaf_by_root(no_digital_signature),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::LeafMissingDigitalSignature),
        },
        Case {
            name: "a leaf without key usage",
            chain: leaf_by_root(no_key_usage),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::LeafMissingDigitalSignature),
        },
        Case {
            name: "an unknown critical extension",
            chain: leaf_by_root(critical),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| {
                matches!(e, VerifyError::UnknownCriticalExtension { cert: CertPosition::Leaf, oid }
                    if oid == "1.3.6.1.4.1.99999.1")
            },
        },
        Case {
            name: "garbage",
            chain: vec![b"not a certificate".to_vec()],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::Malformed(CertPosition::Leaf)),
        },
        Case {
            name: "an empty chain",
            chain: Vec::new(),
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::EmptyChain),
        },
        Case {
            name: "an overlong chain",
            chain: vec![good.chain_der()[0].clone(); 9],
            bundle: bundle(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::ChainTooLong(9)),
        },
        Case {
            name: "a bundle for another trust domain holding our root",
            chain: good.chain_der().to_vec(),
            bundle: Bundle::new(
                TrustDomain::new("other.local").unwrap(),
                vec![pki.root.cert_der().to_vec()],
            )
            .unwrap(),
            expected: None,
            wg_key: None,
            check: |e| matches!(e, VerifyError::WrongTrustDomain { .. }),
        },
    ]
}

#[test]
fn every_negative_is_refused_by_its_own_rule() {
    let cases = negatives();
    let mut failures = Vec::new();
    for case in &cases {
        let result = verify(
            &case.chain,
            &case.bundle,
            now(),
            case.expected.as_ref(),
            case.wg_key.as_ref(),
        );
        match result {
            Err(e) if (case.check)(&e) => {
                // Every refusal reads as a sentence and names its rule.
                assert!(!e.to_string().is_empty() && !e.rule().is_empty());
            }
            other => failures.push(format!("{}: got {other:?}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "wrong outcome:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_issue_negatives_have_distinct_variants() {
    // The negatives issue 3 lists, one rule name each.
    let wanted = [
        "two URI SANs",
        "a CA leaf",
        "keyCertSign on a leaf",
        "wrong trust domain",
        "expired",
        "not yet valid",
        "an intermediate signing outside its cluster",
        "a chain to an unknown root",
        "a WireGuard key not bound to the presented SVID",
    ];
    let cases = negatives();
    let rules: Vec<&str> = wanted
        .iter()
        .map(|name| {
            let case = cases.iter().find(|c| c.name == *name).unwrap();
            verify(
                &case.chain,
                &case.bundle,
                now(),
                case.expected.as_ref(),
                case.wg_key.as_ref(),
            )
            .unwrap_err()
            .rule()
        })
        .collect();
    let mut unique = rules.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), wanted.len(), "rules: {rules:?}");
}
