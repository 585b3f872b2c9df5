//! The issuing API refuses to make what the verifier would refuse, keeps lifetimes inside the
//! issuer's, and its PEM output loads back into working authorities and bundles.

mod common;

use common::{gateway, now, td, wg_keypair, Pki, DAY, YEAR};
use isthmus_pki::{
    inspect, pem_io, verify, Authority, Bundle, Error, SpiffeId, TrustDomain, BACKDATE,
};
use std::time::Duration;

#[test]
fn issuing_refuses_what_verification_would_refuse() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let other_td = TrustDomain::new("other.local").unwrap();

    let outside = pki.east.issue(&gateway("west", "gw-1"), &wg, now(), DAY);
    assert!(
        matches!(outside, Err(Error::OutsideScope { .. })),
        "{outside:?}"
    );
    let edge = SpiffeId::edge(&td(), "pi-7").unwrap();
    let edge_by_intermediate = pki.east.issue(&edge, &wg, now(), DAY);
    assert!(matches!(
        edge_by_intermediate,
        Err(Error::OutsideScope { .. })
    ));
    let foreign = SpiffeId::gateway(&other_td, "east", "gw-1").unwrap();
    let foreign = pki.root.issue(&foreign, &wg, now(), DAY);
    assert!(matches!(foreign, Err(Error::WrongTrustDomain { .. })));
    let bare = pki.root.issue(&td().id(), &wg, now(), DAY);
    assert!(matches!(bare, Err(Error::NoPath(_))));
    let nested = pki.east.intermediate("east", now(), YEAR);
    assert!(matches!(nested, Err(Error::NotRoot(_))));
    let zero = pki
        .root
        .issue(&gateway("east", "gw-1"), &wg, now(), Duration::ZERO);
    assert!(matches!(zero, Err(Error::BadLifetime)));
    let late = pki
        .east
        .issue(&gateway("east", "gw-1"), &wg, now() + 2 * YEAR, DAY);
    assert!(matches!(late, Err(Error::AuthorityNotValid { .. })));
    let bad_cluster = pki.root.intermediate("a/b", now(), YEAR);
    assert!(matches!(bad_cluster, Err(Error::Id { .. })));
}

#[test]
fn lifetimes_are_backdated_and_cut_at_the_issuer() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-1");
    let svid = pki.east.issue(&id, &wg, now(), 10 * YEAR).unwrap();
    assert_eq!(svid.not_after(), pki.east.not_after());
    let info = &inspect(svid.chain_der()).unwrap()[0];
    assert_eq!(info.not_before, now() - BACKDATE);
    assert_eq!(info.not_after, pki.east.not_after());
    // A peer whose clock runs a little behind still accepts a fresh SVID.
    verify(
        svid.chain_der(),
        &pki.bundle,
        now() - BACKDATE,
        Some(&id),
        Some(&wg),
    )
    .unwrap();
}

#[test]
fn every_certificate_gets_a_fresh_serial_and_key() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-1");
    let a = pki.east.issue(&id, &wg, now(), DAY).unwrap();
    let b = pki.east.issue(&id, &wg, now(), DAY).unwrap();
    let (a_info, b_info) = (
        inspect(a.chain_der()).unwrap(),
        inspect(b.chain_der()).unwrap(),
    );
    assert_ne!(a_info[0].serial, b_info[0].serial);
    assert_ne!(a.key_der(), b.key_der());
}

#[test]
fn authorities_and_bundles_round_trip_through_pem() {
    let pki = Pki::new(&td());
    let root = Authority::from_pem(&pki.root.cert_pem(), &pki.root.key_pem()).unwrap();
    assert!(root.is_root());
    assert_eq!(root.id(), pki.root.id());
    let east = Authority::from_pem(&pki.east.cert_pem(), &pki.east.key_pem()).unwrap();
    assert_eq!(east.cluster(), Some("east"));
    assert_eq!(east.not_after(), pki.east.not_after());

    // The reloaded intermediate issues SVIDs that verify against the reloaded bundle.
    let bundle = Bundle::from_pem(&pki.bundle.to_pem()).unwrap();
    assert_eq!(bundle.trust_domain(), &td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-3");
    let svid = east.issue(&id, &wg, now(), DAY).unwrap();
    let chain = pem_io::certs_from_pem(&svid.chain_pem()).unwrap();
    verify(&chain, &bundle, now(), Some(&id), Some(&wg)).unwrap();
    // And the reloaded root signs new intermediates.
    root.intermediate("south", now(), YEAR).unwrap();
}

#[test]
fn loading_refuses_mismatched_or_unfit_material() {
    let pki = Pki::new(&td());
    let swapped = Authority::from_pem(&pki.root.cert_pem(), &pki.east.key_pem());
    assert!(matches!(swapped, Err(Error::KeyMismatch)), "{swapped:?}");
    let (_, wg) = wg_keypair();
    let svid = pki
        .root
        .issue(&gateway("east", "gw-1"), &wg, now(), DAY)
        .unwrap();
    let leaf_as_ca = Authority::from_pem(&svid.chain_pem(), &svid.key_pem());
    assert!(matches!(leaf_as_ca, Err(Error::NotAnAuthority(_))));
    let key_as_cert = Authority::from_pem(&pki.root.key_pem(), &pki.root.key_pem());
    assert!(matches!(key_as_cert, Err(Error::UnexpectedPemBlock { .. })));
    let leaf_bundle = Bundle::new(td(), svid.chain_der().to_vec());
    assert!(matches!(leaf_bundle, Err(Error::BundleNotCa(0))));
    let other = Pki::new(&TrustDomain::new("other.local").unwrap());
    let mixed = Bundle::from_roots(vec![
        pki.root.cert_der().to_vec(),
        other.root.cert_der().to_vec(),
    ]);
    assert!(matches!(mixed, Err(Error::BundleMixedTrustDomains(..))));
}

#[test]
fn inspect_reports_identity_expiry_key_and_issuers() {
    let pki = Pki::new(&td());
    let (_, wg) = wg_keypair();
    let id = gateway("east", "gw-1");
    let svid = pki.east.issue(&id, &wg, now(), DAY).unwrap();
    let info = inspect(svid.chain_der()).unwrap();
    assert_eq!(info.len(), 2);
    assert_eq!(info[0].spiffe_id.as_ref(), Some(&id));
    assert_eq!(info[0].wg_public_key, Some(wg));
    assert_eq!(info[0].not_after, now() + DAY);
    assert!(!info[0].is_ca && info[1].is_ca);
    assert_eq!(info[0].issuer, info[1].subject);
    assert_eq!(info[1].spiffe_id.as_ref(), Some(pki.east.id()));
    assert_eq!(info[1].wg_public_key, None);
    assert!(info[0].subject.contains("CN=gw-1"), "{}", info[0].subject);
}
