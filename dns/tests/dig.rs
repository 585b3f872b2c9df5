//! Interop: the stock `dig` (BIND 9) against the server, over UDP and TCP.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;

use common::*;
use isthmus_dns::{ServiceAnswer, ServiceKind};
use tokio::process::Command;

/// Runs `dig @server -p port <args>` and returns its stdout, or `None` (after saying so) when
/// `dig` is not installed.
async fn dig(server: SocketAddr, args: &[&str]) -> Option<String> {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .await;
    match output {
        Ok(output) => {
            assert!(output.status.success(), "dig {args:?} failed: {output:?}");
            Some(String::from_utf8(output.stdout).expect("dig prints UTF-8"))
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {
            eprintln!("skipping: dig is not installed (apt-get install dnsutils)");
            None
        }
        Err(error) => panic!("failed to run dig: {error}"),
    }
}

/// The non-empty lines of `+short` output, sorted.
fn short_lines(output: &str) -> Vec<String> {
    let mut lines: Vec<String> = output
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Resource record lines of a section (`;; ANSWER SECTION:` …) with whitespace normalised.
fn section(output: &str, header: &str) -> Vec<String> {
    output
        .lines()
        .skip_while(|line| !line.starts_with(header))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn dig_short_answers_over_udp_and_tcp() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();

    let cases: [(&str, &str, &[&str]); 8] = [
        ("web.prod.svc.clusterset.local", "A", &[WEB_V4]),
        ("web.prod.svc.clusterset.local", "AAAA", &[WEB_V6]),
        (
            "db.prod.svc.clusterset.local",
            "A",
            &["10.1.0.5", "10.2.0.7", "10.3.0.9"],
        ),
        (
            "_http._tcp.web.prod.svc.clusterset.local",
            "SRV",
            &["0 100 80 web.prod.svc.clusterset.local."],
        ),
        (
            "_pg._tcp.db.prod.svc.clusterset.local",
            "SRV",
            &[
                "0 33 5432 10-3-0-9.north.db.prod.svc.clusterset.local.",
                "0 33 5432 db-0.east.db.prod.svc.clusterset.local.",
                "0 33 5432 db-1.west.db.prod.svc.clusterset.local.",
            ],
        ),
        (
            "db-1.west.db.prod.svc.clusterset.local",
            "AAAA",
            &["fd00:2::7"],
        ),
        ("dns-version.clusterset.local", "TXT", &["\"1.0.0\""]),
        ("missing.prod.svc.clusterset.local", "A", &[]),
    ];
    for transport in ["+notcp", "+tcp"] {
        for (qname, qtype, expected) in cases {
            let Some(output) = dig(addr, &[transport, "+short", qname, qtype]).await else {
                return;
            };
            assert_eq!(
                short_lines(&output),
                expected,
                "{transport} {qname} {qtype}"
            );
        }
    }
}

#[tokio::test]
async fn dig_sees_authoritative_answers_with_the_ttl_and_the_askers_case() {
    let (server, _resolver) = start().await;
    let Some(output) = dig(server.local_addr(), &["WeB.Prod.SVC.clusterset.LOCAL", "A"]).await
    else {
        return;
    };
    assert!(output.contains("status: NOERROR"), "{output}");
    assert!(
        output.contains(";; flags: qr aa rd;"),
        "authoritative, no recursion: {output}"
    );
    assert_eq!(
        section(&output, ";; ANSWER SECTION:"),
        ["WeB.Prod.SVC.clusterset.LOCAL. 5 IN A 10.96.0.10"]
    );
}

#[tokio::test]
async fn dig_sees_nxdomain_nodata_and_refused() {
    let (server, _resolver) = start().await;
    let addr = server.local_addr();
    let soa = "clusterset.local. 5 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 1 7200 1800 86400 5";

    let Some(nx) = dig(addr, &["missing.prod.svc.clusterset.local", "A"]).await else {
        return;
    };
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains(";; flags: qr aa rd;"), "{nx}");
    assert_eq!(section(&nx, ";; AUTHORITY SECTION:"), [soa]);

    let nodata = dig(addr, &["+tcp", "v4only.prod.svc.clusterset.local", "AAAA"])
        .await
        .unwrap();
    assert!(nodata.contains("status: NOERROR"), "{nodata}");
    assert!(nodata.contains("ANSWER: 0,"), "{nodata}");
    assert_eq!(section(&nodata, ";; AUTHORITY SECTION:"), [soa]);

    let refused = dig(addr, &["example.com", "A"]).await.unwrap();
    assert!(refused.contains("status: REFUSED"), "{refused}");
    assert!(
        refused.contains(";; flags: qr rd;"),
        "not authoritative: {refused}"
    );

    let apex = dig(addr, &["+short", "clusterset.local", "NS"])
        .await
        .unwrap();
    assert_eq!(short_lines(&apex), ["ns.dns.clusterset.local."]);
}

#[tokio::test]
async fn dig_falls_back_to_tcp_for_answers_udp_cannot_carry() {
    let (server, resolver) = start().await;
    let addr = server.local_addr();
    let endpoints: Vec<_> = (1..=200u32)
        .map(|i| endpoint(&format!("10.70.0.{i}"), "east", None))
        .collect();
    resolver.set(
        "prod",
        "big",
        ServiceAnswer {
            kind: ServiceKind::Headless { endpoints },
            ports: Vec::new(),
        },
    );
    let qname = "big.prod.svc.clusterset.local";
    let expected: Vec<String> = {
        let mut all: Vec<String> = (1..=200).map(|i| format!("10.70.0.{i}")).collect();
        all.sort();
        all
    };

    // Over UDP alone the answer is cut and flagged TC.
    let Some(udp) = dig(addr, &["+ignore", qname, "A"]).await else {
        return;
    };
    assert!(udp.contains(";; flags: qr aa tc rd;"), "{udp}");
    // dig retries over TCP on TC by default, and +tcp asks over TCP from the start.
    for args in [
        &["+short", qname, "A"][..],
        &["+tcp", "+short", qname, "A"][..],
    ] {
        let output = dig(addr, args).await.unwrap();
        assert_eq!(short_lines(&output), expected, "{args:?}");
    }
}
