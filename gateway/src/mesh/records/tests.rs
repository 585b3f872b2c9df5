//! Members: signing and the verification rules against a PKI made in the test, the merge rules
//! of the table on a virtual clock, gossip convergence of ten gateways, and the decoder against
//! hostile bytes.

use super::*;
use isthmus_pki::signing::{Context, SvidSigner};
use isthmus_pki::{Authority, Bundle, SpiffeId, TrustDomain};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);
const SEC: Duration = Duration::from_secs(1);

/// 2030-03-17T17:46:40Z, whatever the machine's clock says.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

fn td() -> TrustDomain {
    TrustDomain::new("isthmus.local").unwrap()
}

/// A root, east and west intermediates; gateways of other clusters are root-signed.
struct Pki {
    root: Authority,
    intermediates: BTreeMap<&'static str, Authority>,
    bundle: Bundle,
}

impl Pki {
    fn new() -> Self {
        let root = Authority::root(&td(), t0() - YEAR, 10 * YEAR).unwrap();
        let intermediates = ["east", "west"]
            .into_iter()
            .map(|c| (c, root.intermediate(c, t0() - 30 * DAY, YEAR).unwrap()))
            .collect();
        let bundle = Bundle::new(td(), vec![root.cert_der().to_vec()]).unwrap();
        Self {
            root,
            intermediates,
            bundle,
        }
    }

    fn issuer(&self, cluster: &str) -> &Authority {
        self.intermediates.get(cluster).unwrap_or(&self.root)
    }

    fn gateway(&self, cluster: &str, node: &str, n: u8) -> Gw {
        self.gateway_for(SpiffeId::gateway(&td(), cluster, node).unwrap(), n, DAY)
    }

    fn gateway_for(&self, id: SpiffeId, n: u8, lifetime: Duration) -> Gw {
        let wg = [n; 32];
        let issuer = id.cluster().map_or(&self.root, |c| self.issuer(c));
        let svid = issuer.issue(&id, &wg, t0(), lifetime).unwrap();
        Gw {
            id,
            n,
            wg,
            signer: SvidSigner::from_pem(&svid.key_pem()).unwrap(),
            chain: svid.chain_der().to_vec(),
            not_after: svid.not_after(),
        }
    }
}

struct Gw {
    id: SpiffeId,
    n: u8,
    wg: [u8; 32],
    signer: SvidSigner,
    chain: Vec<Vec<u8>>,
    not_after: SystemTime,
}

impl Gw {
    fn record(&self, generation: u64) -> MemberRecord {
        let n = self.n;
        MemberRecord {
            spiffe_id: self.id.clone(),
            wg_public_key: self.wg,
            endpoint: Some(SocketAddr::new(Ipv4Addr::new(192, 0, 2, n).into(), 51820)),
            join_endpoint: Some(SocketAddr::new(Ipv4Addr::new(192, 0, 2, n).into(), 51821)),
            mesh_addr: Ipv4Addr::new(100, 64, 0, n).into(),
            prefixes: vec![format!("10.{n}.0.0/16").parse().unwrap()],
            generation,
            leaving: false,
        }
    }

    fn sign(&self, record: &MemberRecord) -> OpaqueMember {
        sign_record(record, &self.signer, &self.chain).unwrap()
    }

    /// A signed record of `generation`, signed at that time.
    fn at(&self, pki: &Pki, generation: u64) -> VerifiedMember {
        self.verified(pki, &self.record(generation))
    }

    fn verified(&self, pki: &Pki, record: &MemberRecord) -> VerifiedMember {
        verify_member(&self.sign(record), &pki.bundle, t0()).unwrap()
    }
}

fn ms(t: SystemTime) -> u64 {
    unix_ms(t)
}

#[test]
fn signed_records_verify_with_their_cluster_and_expiry() {
    let pki = Pki::new();
    // East is intermediate-signed, north root-signed.
    for (cluster, node) in [("east", "gw-1"), ("north", "gw-9")] {
        let gw = pki.gateway(cluster, node, 1);
        let record = gw.record(ms(t0()));
        let opaque = gw.sign(&record);
        assert_eq!(opaque.chain, gw.chain);
        let member = verify_member(&opaque, &pki.bundle, t0()).unwrap();
        assert_eq!(*member.record(), record, "{cluster}");
        assert_eq!(member.cluster(), cluster);
        assert_eq!(member.not_after(), gw.not_after);
        assert_eq!(*member.opaque(), opaque);
    }
}

#[track_caller]
fn refused(opaque: &OpaqueMember, bundle: &Bundle, now: SystemTime, rule: &str) {
    match verify_member(opaque, bundle, now) {
        Ok(_) => panic!("accepted, expected {rule}"),
        Err(e) => assert_eq!(e.rule(), rule, "{e}"),
    }
}

#[test]
fn refusals_name_their_rule() {
    let pki = Pki::new();
    let a = pki.gateway("east", "gw-a", 1);
    let b = pki.gateway("west", "gw-b", 2);
    let edge = pki.gateway_for(SpiffeId::edge(&td(), "pi-7").unwrap(), 3, DAY);
    let other_pki = Pki::new();
    let gen = ms(t0());
    let good = a.sign(&a.record(gen));

    let mut forged = good.clone();
    let last = forged.signature.len() - 1;
    forged.signature[last] ^= 1;
    let mut altered = good.clone();
    altered.record[10] ^= 1; // a generation byte: still a well-formed record
                             // A's record signed by B with B's chain: B claims to be A.
    let impersonation = OpaqueMember {
        signature: b.signer.sign(MEMBER_CONTEXT, &good.record).unwrap(),
        chain: b.chain.clone(),
        ..good.clone()
    };
    // A's record and chain, signed by B's key.
    let wrong_key = OpaqueMember {
        signature: b.signer.sign(MEMBER_CONTEXT, &good.record).unwrap(),
        ..good.clone()
    };
    let wrong_context = OpaqueMember {
        signature: a
            .signer
            .sign(Context::new("isthmus-member-v0"), &good.record)
            .unwrap(),
        ..good.clone()
    };
    let unbound = a.sign(&MemberRecord {
        wg_public_key: [0xee; 32],
        ..a.record(gen)
    });
    let not_gateway = edge.sign(&edge.record(gen));
    let garbage = OpaqueMember {
        record: b"not a record".to_vec(),
        ..good.clone()
    };
    let no_chain = OpaqueMember {
        chain: Vec::new(),
        ..good.clone()
    };

    let (bundle, now) = (&pki.bundle, t0());
    refused(&forged, bundle, now, "bad-record-signature");
    refused(&altered, bundle, now, "bad-record-signature");
    refused(&impersonation, bundle, now, "identity-mismatch");
    refused(&wrong_key, bundle, now, "bad-record-signature");
    refused(&wrong_context, bundle, now, "bad-record-signature");
    refused(&unbound, bundle, now, "wg-key-not-bound");
    refused(&good, bundle, now + 2 * DAY, "expired");
    refused(&good, bundle, now - 2 * DAY, "not-yet-valid");
    refused(&good, &other_pki.bundle, now, "unknown-root");
    refused(&not_gateway, bundle, now, "not-a-gateway");
    refused(&garbage, bundle, now, "malformed-record");
    refused(&no_chain, bundle, now, "empty-chain");
    // Positive control: the record every case was derived from is accepted.
    verify_member(&good, &pki.bundle, t0()).unwrap();
}

#[test]
fn signing_refuses_a_key_that_is_not_the_leafs_and_oversized_chains() {
    let pki = Pki::new();
    let a = pki.gateway("east", "gw-a", 1);
    let b = pki.gateway("east", "gw-b", 2);
    let record = a.record(ms(t0()));
    assert!(matches!(
        sign_record(&record, &b.signer, &a.chain),
        Err(MemberError::Signature(
            isthmus_pki::SignatureError::KeyMismatch
        ))
    ));
    assert_eq!(
        sign_record(&record, &a.signer, &[]).unwrap_err().rule(),
        "empty-chain"
    );
    let long: Vec<Vec<u8>> = std::iter::repeat_n(a.chain[0].clone(), 5).collect();
    assert!(matches!(
        sign_record(&record, &a.signer, &long),
        Err(MemberError::ChainTooLarge)
    ));
    let too_many = MemberRecord {
        prefixes: (0..=64u8)
            .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
            .collect(),
        ..record
    };
    assert!(matches!(
        sign_record(&too_many, &a.signer, &a.chain),
        Err(MemberError::Record(RecordError::TooManyPrefixes(65)))
    ));
}

#[test]
fn higher_generation_wins_and_equal_generations_conflict() {
    let pki = Pki::new();
    let own = pki.gateway("east", "self", 9);
    let a = pki.gateway("west", "gw-a", 1);
    let mut table = MemberTable::new(own.id.clone(), TableConfig::default());
    let g = ms(t0());

    assert_eq!(table.insert(a.at(&pki, g), t0()), Change::New);
    assert_eq!(table.insert(a.at(&pki, g), t0()), Change::Unchanged);
    assert_eq!(table.insert(a.at(&pki, g + 5), t0()), Change::Updated);
    assert_eq!(table.insert(a.at(&pki, g + 1), t0()), Change::Stale);
    let moved = MemberRecord {
        endpoint: Some("198.51.100.1:51820".parse().unwrap()),
        ..a.record(g + 5)
    };
    assert_eq!(
        table.insert(a.verified(&pki, &moved), t0()),
        Change::Conflict
    );
    assert_eq!(table.conflicts(), 1);
    // The held record stays, whatever order the two arrived in.
    let peers = table.peers(t0());
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].generation, g + 5);
    assert_eq!(peers[0].endpoint, a.record(0).endpoint);
    assert_eq!(peers[0].cluster, "west");
    assert_eq!(peers[0].wg_public_key, a.wg);
    assert_eq!(peers[0].not_after, a.not_after);

    // Order does not matter: the same records in reverse give the same table.
    let mut reversed = MemberTable::new(own.id.clone(), TableConfig::default());
    for gen in [g + 5, g + 1, g] {
        reversed.insert(a.at(&pki, gen), t0());
    }
    assert_eq!(reversed.peers(t0()), table.peers(t0()));
}

#[test]
fn our_own_identity_is_never_a_peer() {
    let pki = Pki::new();
    let own = pki.gateway("east", "self", 9);
    let a = pki.gateway("west", "gw-a", 1);
    let mut table = MemberTable::new(own.id.clone(), TableConfig::default());
    assert!(table.needs_refresh(t0()));
    let g = table.next_generation(t0());
    assert_eq!(g, ms(t0()));
    assert_eq!(table.set_own(own.at(&pki, g)).unwrap(), Change::New);
    assert!(matches!(
        table.set_own(a.at(&pki, g)),
        Err(MemberError::NotOwnRecord(_))
    ));
    assert_eq!(table.set_own(own.at(&pki, g)).unwrap(), Change::Stale);

    // A previous run's record, gossiped back with a later generation, is not taken as a
    // peer, and our next generation goes past it.
    let previous_run = own.at(&pki, g + 60_000);
    assert_eq!(table.insert(previous_run, t0()), Change::Stale);
    assert!(table.peers(t0()).is_empty());
    assert_eq!(table.next_generation(t0()), g + 60_001);

    table.insert(a.at(&pki, g), t0());
    let gossip = table.gossip();
    assert_eq!(gossip.len(), 2);
    assert_eq!(gossip[0], *table.own().unwrap().opaque(), "ours first");
    assert!(table.holds(&gossip[0]) && table.holds(&gossip[1]));
    assert_eq!(table.get(&own.id).unwrap().record().generation, g);
}

#[test]
fn leaving_members_are_tombstoned_and_older_records_do_not_resurrect_them() {
    let pki = Pki::new();
    let own = pki.gateway("east", "self", 9);
    let a = pki.gateway("west", "gw-a", 1);
    let config = TableConfig::default();
    let mut table = MemberTable::new(own.id.clone(), config);
    let g = ms(t0());
    let live = a.at(&pki, g);
    table.insert(live.clone(), t0());
    let leaving = a.verified(
        &pki,
        &MemberRecord {
            leaving: true,
            ..a.record(g + 10)
        },
    );
    assert_eq!(table.insert(leaving.clone(), t0()), Change::Left);
    assert!(table.peers(t0()).is_empty());
    assert_eq!(table.gossip(), vec![leaving.opaque().clone()]);
    // The late older record is refused, now and until the tombstone goes.
    assert_eq!(table.insert(live.clone(), t0()), Change::Stale);
    let before_expiry = t0() + config.member_ttl - SEC;
    assert_eq!(table.insert(live.clone(), before_expiry), Change::Stale);
    assert!(!table.expire(before_expiry));
    assert!(table.get(&a.id).unwrap().record().leaving);

    // Once the tombstone is gone, the older record is too old to be accepted.
    let later = t0() + config.tombstone_ttl + SEC;
    table.expire(later);
    assert!(table.get(&a.id).is_none() && table.gossip().is_empty());
    assert_eq!(table.insert(live, later), Change::Stale);
    // The member coming back with a newer record is a new peer.
    assert_eq!(table.insert(a.at(&pki, ms(later)), later), Change::New);
}

#[test]
fn members_expire_when_not_refreshed_or_their_svid_ends() {
    let pki = Pki::new();
    let own = pki.gateway("east", "self", 9);
    let a = pki.gateway("west", "gw-a", 1);
    let short_id = SpiffeId::gateway(&td(), "west", "gw-short").unwrap();
    let short = pki.gateway_for(short_id, 2, Duration::from_secs(300));
    let config = TableConfig::default();
    let mut table = MemberTable::new(own.id.clone(), config);
    let g = ms(t0());
    table.set_own(own.at(&pki, g)).unwrap();
    table.insert(a.at(&pki, g), t0());
    table.insert(short.at(&pki, g), t0());
    assert_eq!(table.peers(t0()).len(), 2);

    // Our own refresh falls due first (a third of member_ttl), then the short SVID's end.
    let refresh = t0() + config.refresh_interval();
    assert_eq!(table.poll_timeout(), Some(refresh));
    assert!(!table.needs_refresh(refresh - SEC));
    assert!(table.needs_refresh(refresh));
    table.set_own(own.at(&pki, ms(refresh))).unwrap();
    assert!(!table.needs_refresh(refresh));
    assert_eq!(table.poll_timeout(), Some(short.not_after));
    let after_svid = short.not_after + SEC;
    assert_eq!(table.peers(after_svid).len(), 1, "peers() hides it at once");
    assert!(table.expire(after_svid));
    assert!(table.get(&short.id).is_none());

    // a refreshes before its TTL and stays; then stops refreshing and goes.
    assert_eq!(
        table.insert(a.at(&pki, ms(refresh)), refresh),
        Change::Updated
    );
    let at_ttl = t0() + config.member_ttl + SEC;
    assert!(!table.expire(at_ttl));
    let past = refresh + config.member_ttl + SEC;
    assert!(table.expire(past));
    assert!(table.peers(past).is_empty());
    // Our own record is ours to refresh, never expired by the table.
    assert!(table.own().is_some());
}

#[test]
fn stale_and_future_records_are_refused() {
    let pki = Pki::new();
    let own = pki.gateway("east", "self", 9);
    let a = pki.gateway("west", "gw-a", 1);
    let config = TableConfig::default();
    let mut table = MemberTable::new(own.id.clone(), config);
    let old = ms(t0() - config.member_ttl - SEC);
    assert_eq!(table.insert(a.at(&pki, old), t0()), Change::Stale);
    let ahead = ms(t0() + config.max_clock_skew + SEC);
    assert_eq!(table.insert(a.at(&pki, ahead), t0()), Change::Stale);
    let slightly_ahead = ms(t0() + config.max_clock_skew);
    assert_eq!(table.insert(a.at(&pki, slightly_ahead), t0()), Change::New);
}

#[test]
fn an_operator_removal_refuses_records_signed_before_it() {
    let pki = Pki::new();
    let own = pki.gateway("east", "self", 9);
    let a = pki.gateway("west", "gw-a", 1);
    let config = TableConfig::default();
    let mut table = MemberTable::new(own.id.clone(), config);
    let g = ms(t0());
    let live = a.at(&pki, g);
    table.insert(live.clone(), t0());
    let removed_at = t0() + 10 * SEC;
    assert!(table.remove(&a.id, removed_at));
    assert!(table.peers(removed_at).is_empty());
    assert!(
        table.gossip().is_empty(),
        "a removal is local, never gossiped"
    );
    assert_eq!(table.insert(live, removed_at), Change::Stale);
    let before = a.at(&pki, ms(removed_at));
    assert_eq!(table.insert(before, removed_at), Change::Stale);
    // A record signed after the removal (the gateway was set up again) is accepted.
    let after = a.at(&pki, ms(removed_at) + 1);
    assert_eq!(table.insert(after, removed_at), Change::New);
    assert!(!table.remove(&SpiffeId::gateway(&td(), "x", "y").unwrap(), t0()));
}

mod codec;
mod mesh;
