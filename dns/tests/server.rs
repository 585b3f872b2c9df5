//! The server against hickory's own client over real UDP and TCP sockets on loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{RData, RecordType};
use isthmus_dns::{DnsConfig, PortProtocol, QueryCounts, ServiceAnswer, ServiceKind};

const WEB: &str = "web.prod.svc.clusterset.local.";
const DB: &str = "db.prod.svc.clusterset.local.";

fn assert_soa_authority(response: &hickory_server::proto::op::DnsResponse, minimum: u32) {
    let soa = response.soa().expect("SOA in the authority section");
    assert_eq!(soa.name().to_string(), ZONE);
    assert_eq!(soa.data().minimum, minimum);
    assert_eq!(soa.data().mname.to_string(), "ns.dns.clusterset.local.");
}

#[tokio::test]
async fn a_and_aaaa_answer_the_clusterset_vips() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let a = query(&mut client, WEB, RecordType::A).await;
    assert_eq!(a.response_code, ResponseCode::NoError);
    assert!(a.authoritative, "answers are authoritative");
    assert!(!a.recursion_available, "no recursion is offered");
    assert_eq!(addresses(&a), ips(&[WEB_V4]));
    assert_eq!(a.answers[0].name.to_string(), WEB);
    assert_eq!(a.answers[0].ttl, 5, "default TTL");

    let aaaa = query(&mut client, WEB, RecordType::AAAA).await;
    assert_eq!(addresses(&aaaa), ips(&[WEB_V6]));
    assert!(aaaa.authoritative);

    let any = query(&mut client, WEB, RecordType::ANY).await;
    assert_eq!(addresses(&any), ips(&[WEB_V4, WEB_V6]));
}

#[tokio::test]
async fn headless_service_answers_every_endpoint_address() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let a = query(&mut client, DB, RecordType::A).await;
    assert_eq!(a.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&a), ips(&["10.1.0.5", "10.2.0.7", "10.3.0.9"]));
    let aaaa = query(&mut client, DB, RecordType::AAAA).await;
    assert_eq!(addresses(&aaaa), ips(&["fd00:2::7"]));
}

#[tokio::test]
async fn srv_of_a_clusterset_ip_service_targets_the_service_name() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let http = query(
        &mut client,
        "_http._tcp.web.prod.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(http.response_code, ResponseCode::NoError);
    assert!(http.authoritative);
    assert_eq!(srvs(&http), vec![(0, 100, 80, WEB.to_owned())]);
    // The target's addresses ride along in the additional section.
    let mut additionals: Vec<(String, IpAddr)> = http
        .additionals
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some((record.name.to_string(), IpAddr::V4(a.0))),
            RData::AAAA(aaaa) => Some((record.name.to_string(), IpAddr::V6(aaaa.0))),
            _ => None,
        })
        .collect();
    additionals.sort();
    assert_eq!(
        additionals,
        vec![
            (WEB.to_owned(), WEB_V4.parse().unwrap()),
            (WEB.to_owned(), WEB_V6.parse().unwrap())
        ]
    );

    let dns = query(
        &mut client,
        "_dns._udp.web.prod.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srvs(&dns), vec![(0, 100, 53, WEB.to_owned())]);

    // Wrong protocol for the port name, and no such port: the name does not exist.
    for missing in [
        "_http._udp.web.prod.svc.clusterset.local.",
        "_https._tcp.web.prod.svc.clusterset.local.",
    ] {
        let response = query(&mut client, missing, RecordType::SRV).await;
        assert_eq!(response.response_code, ResponseCode::NXDomain, "{missing}");
    }
}

#[tokio::test]
async fn srv_of_a_headless_service_has_one_record_per_endpoint_name() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let pg = query(
        &mut client,
        "_pg._tcp.db.prod.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(pg.response_code, ResponseCode::NoError);
    // db-1 has two addresses and one name, so one SRV; equal weights share 100.
    assert_eq!(
        srvs(&pg),
        vec![
            (
                0,
                33,
                5432,
                "10-3-0-9.north.db.prod.svc.clusterset.local.".to_owned()
            ),
            (
                0,
                33,
                5432,
                "db-0.east.db.prod.svc.clusterset.local.".to_owned()
            ),
            (
                0,
                33,
                5432,
                "db-1.west.db.prod.svc.clusterset.local.".to_owned()
            ),
        ]
    );
    let db1_addrs: Vec<IpAddr> = pg
        .additionals
        .iter()
        .filter(|record| record.name.to_string() == "db-1.west.db.prod.svc.clusterset.local.")
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    assert_eq!(db1_addrs, ips(&["10.2.0.7", "fd00:2::7"]));
}

#[tokio::test]
async fn headless_endpoint_names_resolve_and_nothing_else_below_the_service() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let cases: [(&str, RecordType, ResponseCode, &[&str]); 9] = [
        (
            "db-1.west.db.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["10.2.0.7"],
        ),
        (
            "db-1.west.db.prod.svc.clusterset.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
            &["fd00:2::7"],
        ),
        (
            "db-0.east.db.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["10.1.0.5"],
        ),
        // No hostname: the label is the address with dashes.
        (
            "10-3-0-9.north.db.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NoError,
            &["10.3.0.9"],
        ),
        // Right hostname, wrong cluster.
        (
            "db-0.west.db.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
        ),
        // A cluster with endpoints is an empty non-terminal: NODATA, not NXDOMAIN.
        (
            "east.db.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NoError,
            &[],
        ),
        (
            "south.db.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
        ),
        // ClusterSetIP services have no per-cluster names (MCS DNS spec 2.3.4).
        (
            "east.web.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
        ),
        (
            "x.east.web.prod.svc.clusterset.local.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
        ),
    ];
    for (qname, qtype, rcode, expected) in cases {
        let response = query(&mut client, qname, qtype).await;
        assert_eq!(response.response_code, rcode, "{qname} {qtype}");
        assert!(response.authoritative, "{qname} {qtype}");
        assert_eq!(addresses(&response), ips(expected), "{qname} {qtype}");
    }
}

#[tokio::test]
async fn unknown_names_in_the_zone_are_nxdomain_with_the_soa() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    for qname in [
        "missing.prod.svc.clusterset.local.",
        "web.staging.svc.clusterset.local.",
        "web.prod.pod.clusterset.local.",
        "something.clusterset.local.",
    ] {
        let response = query(&mut client, qname, RecordType::A).await;
        assert_eq!(response.response_code, ResponseCode::NXDomain, "{qname}");
        assert!(response.authoritative, "{qname}");
        assert!(response.answers.is_empty(), "{qname}");
        assert_soa_authority(&response, 5);
    }
}

#[tokio::test]
async fn names_outside_the_zone_are_refused() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    for qname in ["example.com.", "local.", "web.prod.svc.cluster.local.", "."] {
        let response = query(&mut client, qname, RecordType::A).await;
        assert_eq!(response.response_code, ResponseCode::Refused, "{qname}");
        assert!(!response.authoritative, "{qname}");
        assert!(
            response.answers.is_empty() && response.authorities.is_empty(),
            "{qname}"
        );
    }
    // Zone transfers are not offered.
    let axfr = query(
        &mut tcp_client(server.local_addr()).await,
        ZONE,
        RecordType::AXFR,
    )
    .await;
    assert_eq!(axfr.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn known_names_without_the_asked_type_are_nodata() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let cases = [
        ("v4only.prod.svc.clusterset.local.", RecordType::AAAA),
        ("empty.prod.svc.clusterset.local.", RecordType::A),
        ("empty.prod.svc.clusterset.local.", RecordType::AAAA),
        ("_pg._tcp.empty.prod.svc.clusterset.local.", RecordType::SRV),
        (WEB, RecordType::TXT),
        (WEB, RecordType::SRV),
        ("_tcp.web.prod.svc.clusterset.local.", RecordType::SRV),
        ("prod.svc.clusterset.local.", RecordType::A),
        ("svc.clusterset.local.", RecordType::A),
    ];
    for (qname, qtype) in cases {
        let response = query(&mut client, qname, qtype).await;
        assert_eq!(
            response.response_code,
            ResponseCode::NoError,
            "{qname} {qtype}"
        );
        assert!(response.authoritative, "{qname} {qtype}");
        assert!(response.answers.is_empty(), "{qname} {qtype}");
        assert_soa_authority(&response, 5);
    }
}

#[tokio::test]
async fn apex_answers_soa_and_ns_and_the_schema_version() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let soa = query(&mut client, ZONE, RecordType::SOA).await;
    assert_eq!(soa.response_code, ResponseCode::NoError);
    assert!(soa.authoritative);
    let RData::SOA(record) = &soa.answers[0].data else {
        panic!("expected SOA, got {:?}", soa.answers);
    };
    assert_eq!(record.mname.to_string(), "ns.dns.clusterset.local.");
    assert_eq!(record.rname.to_string(), "hostmaster.clusterset.local.");
    assert_eq!(record.minimum, 5);

    let ns = query(&mut client, ZONE, RecordType::NS).await;
    let targets: Vec<String> = ns
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::NS(ns) => Some(ns.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(targets, ["ns.dns.clusterset.local."]);

    // The nameserver's own name answers the address the server is bound to.
    let ns_a = query(&mut client, "ns.dns.clusterset.local.", RecordType::A).await;
    assert_eq!(addresses(&ns_a), ips(&["127.0.0.1"]));

    let version = query(
        &mut client,
        "dns-version.clusterset.local.",
        RecordType::TXT,
    )
    .await;
    let RData::TXT(txt) = &version.answers[0].data else {
        panic!("expected TXT, got {:?}", version.answers);
    };
    assert_eq!(&*txt.txt_data, [b"1.0.0".to_vec().into_boxed_slice()]);
}

#[tokio::test]
async fn ttl_and_zone_are_configurable() {
    let mut config = DnsConfig::new(loopback());
    config.ttl_secs = 30;
    config.zone = "mesh.example".parse().unwrap();
    let server = start_with(config, fixture()).await;
    let mut client = udp_client(server.local_addr());

    let a = query(&mut client, "web.prod.svc.mesh.example.", RecordType::A).await;
    assert_eq!(addresses(&a), ips(&[WEB_V4]));
    assert_eq!(a.answers[0].ttl, 30);
    let srv = query(
        &mut client,
        "_http._tcp.web.prod.svc.mesh.example.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srvs(&srv),
        vec![(0, 100, 80, "web.prod.svc.mesh.example.".to_owned())]
    );
    assert!(srv.additionals.iter().all(|record| record.ttl == 30));

    let missing = query(&mut client, "nope.prod.svc.mesh.example.", RecordType::A).await;
    assert_eq!(missing.response_code, ResponseCode::NXDomain);
    let soa = missing.soa().unwrap();
    assert_eq!((soa.ttl(), soa.data().minimum), (30, 30));

    // The default zone is now outside.
    let other = query(&mut client, WEB, RecordType::A).await;
    assert_eq!(other.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn names_compare_case_insensitively() {
    let (server, _resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    let a = query(&mut client, "WeB.PROD.Svc.ClusterSet.LOCAL.", RecordType::A).await;
    assert_eq!(a.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&a), ips(&[WEB_V4]));

    let srv = query(
        &mut client,
        "_HTTP._Tcp.WEB.prod.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srvs(&srv), vec![(0, 100, 80, WEB.to_owned())]);

    let endpoint = query(
        &mut client,
        "DB-1.West.DB.prod.svc.CLUSTERSET.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(addresses(&endpoint), ips(&["10.2.0.7"]));
}

#[tokio::test]
async fn tcp_answers_what_udp_answers_and_what_udp_cannot_fit() {
    let (server, resolver) = start().await;
    let mut udp = udp_client(server.local_addr());
    let mut tcp = tcp_client(server.local_addr()).await;

    for (qname, qtype) in [
        (WEB, RecordType::A),
        (DB, RecordType::A),
        ("_pg._tcp.db.prod.svc.clusterset.local.", RecordType::SRV),
        ("missing.prod.svc.clusterset.local.", RecordType::A),
    ] {
        let over_udp = query(&mut udp, qname, qtype).await;
        let over_tcp = query(&mut tcp, qname, qtype).await;
        assert_eq!(over_tcp.response_code, over_udp.response_code, "{qname}");
        assert_eq!(over_tcp.authoritative, over_udp.authoritative, "{qname}");
        assert_eq!(addresses(&over_tcp), addresses(&over_udp), "{qname}");
        assert_eq!(srvs(&over_tcp), srvs(&over_udp), "{qname}");
    }

    // 300 endpoints do not fit a UDP answer: TC over UDP, all of them over TCP.
    let endpoints: Vec<_> = (0..300u32)
        .map(|i| endpoint(&format!("10.50.{}.{}", i / 250, i % 250 + 1), "east", None))
        .collect();
    resolver.set(
        "prod",
        "big",
        ServiceAnswer {
            kind: ServiceKind::Headless { endpoints },
            ports: Vec::new(),
        },
    );
    let big = "big.prod.svc.clusterset.local.";
    let over_udp = query(&mut udp, big, RecordType::A).await;
    assert!(over_udp.truncation, "UDP answer must be truncated");
    assert!(over_udp.answers.len() < 300);
    let over_tcp = query(&mut tcp, big, RecordType::A).await;
    assert!(!over_tcp.truncation);
    assert_eq!(over_tcp.answers.len(), 300);
}

#[tokio::test]
async fn srv_additionals_are_dropped_rather_than_truncating_udp() {
    let (server, resolver) = start().await;
    // 16 SRV records fit in 1232 bytes (their targets are never compressed, RFC 2782), their
    // 16 addresses on top do not.
    let endpoints: Vec<_> = (1..=16u32)
        .map(|i| endpoint(&format!("10.60.0.{i}"), "east", Some(&format!("pod-{i}"))))
        .collect();
    resolver.set(
        "prod",
        "wide",
        ServiceAnswer {
            kind: ServiceKind::Headless { endpoints },
            ports: vec![port("http", PortProtocol::Tcp, 80)],
        },
    );
    let qname = "_http._tcp.wide.prod.svc.clusterset.local.";
    let over_udp = query(&mut udp_client(server.local_addr()), qname, RecordType::SRV).await;
    assert!(!over_udp.truncation);
    assert_eq!(srvs(&over_udp).len(), 16);
    assert!(over_udp
        .additionals
        .iter()
        .all(|r| r.record_type() == RecordType::OPT));
    let over_tcp = query(
        &mut tcp_client(server.local_addr()).await,
        qname,
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        addresses(&over_tcp).len(),
        0,
        "SRV answers carry no address records"
    );
    let tcp_additional_addrs = over_tcp
        .additionals
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .count();
    assert_eq!(tcp_additional_addrs, 16);
}

#[tokio::test]
async fn answers_follow_the_resolver_at_once() {
    let (server, resolver) = start().await;
    let mut client = udp_client(server.local_addr());

    assert_eq!(
        addresses(&query(&mut client, WEB, RecordType::A).await),
        ips(&[WEB_V4])
    );
    resolver.set(
        "prod",
        "web",
        ServiceAnswer {
            kind: ServiceKind::ClusterSetIp {
                v4: Some("10.96.0.99".parse().unwrap()),
                v6: None,
            },
            ports: Vec::new(),
        },
    );
    assert_eq!(
        addresses(&query(&mut client, WEB, RecordType::A).await),
        ips(&["10.96.0.99"])
    );
    let srv = query(
        &mut client,
        "_http._tcp.web.prod.svc.clusterset.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        srv.response_code,
        ResponseCode::NXDomain,
        "the port is gone"
    );

    // The gateway withdraws a service with no healthy endpoint: NXDOMAIN.
    resolver.remove("prod", "web");
    let gone = query(&mut client, WEB, RecordType::A).await;
    assert_eq!(gone.response_code, ResponseCode::NXDomain);

    // A headless service gains and loses endpoints.
    resolver.set(
        "prod",
        "empty",
        ServiceAnswer {
            kind: ServiceKind::Headless {
                endpoints: vec![endpoint("10.9.9.9", "east", Some("e-0"))],
            },
            ports: Vec::new(),
        },
    );
    let empty = "empty.prod.svc.clusterset.local.";
    assert_eq!(
        addresses(&query(&mut client, empty, RecordType::A).await),
        ips(&["10.9.9.9"])
    );
    let by_name = query(
        &mut client,
        "e-0.east.empty.prod.svc.clusterset.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(addresses(&by_name), ips(&["10.9.9.9"]));
}

#[tokio::test]
async fn counters_count_answered_queries_by_rcode() {
    let (server, _resolver) = start().await;
    let stats = server.stats();
    assert_eq!(stats.snapshot(), QueryCounts::default());
    let mut client = udp_client(server.local_addr());

    query(&mut client, WEB, RecordType::A).await;
    query(&mut client, WEB, RecordType::TXT).await; // NODATA is NOERROR
    query(
        &mut client,
        "missing.prod.svc.clusterset.local.",
        RecordType::A,
    )
    .await;
    query(&mut client, "example.com.", RecordType::A).await;
    query(
        &mut tcp_client(server.local_addr()).await,
        WEB,
        RecordType::AAAA,
    )
    .await;

    let counts = stats.snapshot();
    assert_eq!(
        counts,
        QueryCounts {
            no_error: 3,
            nx_domain: 1,
            refused: 1,
            ..QueryCounts::default()
        }
    );
    assert_eq!(counts.total(), 5);
    assert!(counts.by_rcode().contains(&("NXDOMAIN", 1)));
}

/// Nothing is listening on `addr` any more: both UDP and TCP can bind it again.
async fn assert_sockets_closed(addr: SocketAddr) {
    tokio::net::UdpSocket::bind(addr)
        .await
        .expect("UDP port is free after shutdown");
    tokio::net::TcpListener::bind(addr)
        .await
        .expect("TCP port is free after shutdown");
}

#[tokio::test]
async fn shutdown_closes_both_sockets() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    // Leave a TCP connection open across the shutdown.
    let mut tcp = tcp_client(addr).await;
    query(&mut tcp, WEB, RecordType::A).await;
    // While it runs, the port is taken.
    assert!(tokio::net::UdpSocket::bind(addr).await.is_err());
    assert!(tokio::net::TcpListener::bind(addr).await.is_err());

    server.shutdown().await.expect("clean shutdown");
    assert_sockets_closed(addr).await;
}

#[tokio::test]
async fn run_returns_when_the_shutdown_handle_fires() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    let handle = server.shutdown_handle();
    let stats = server.stats();
    let running = tokio::spawn(server.run());

    query(&mut udp_client(addr), WEB, RecordType::A).await;
    assert_eq!(stats.snapshot().no_error, 1);

    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run returns promptly")
        .expect("run task")
        .expect("clean shutdown");
    assert_sockets_closed(addr).await;
}

#[tokio::test]
async fn binding_a_taken_port_fails_with_the_address() {
    let (server, _resolver) = start().await;
    let taken = server.local_addr();
    let error = isthmus_dns::DnsServer::bind(DnsConfig::new(taken), fixture())
        .await
        .err()
        .expect("the port is taken");
    assert!(error.to_string().contains(&taken.to_string()), "{error}");
}
