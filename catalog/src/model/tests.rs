use std::net::IpAddr;

use super::*;

fn export() -> ServiceExport {
    let mut e = ServiceExport::new("shop/api".parse().unwrap());
    e.ports = vec![
        ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
        },
        ServicePort {
            name: Some("dns".into()),
            port: 53,
            protocol: Protocol::Udp,
        },
    ];
    e.endpoints = vec![endpoint("10.1.0.1", 8080), endpoint("10.1.0.2", 8080)];
    e
}

fn endpoint(addr: &str, port: u16) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        port,
        ready: true,
        zone: Some("zone-a".into()),
    }
}

/// The message of the validation error after `change` is applied to a valid export.
fn error_after(change: impl FnOnce(&mut ServiceExport)) -> String {
    let mut e = export();
    e.validate().expect("the base export is valid");
    change(&mut e);
    e.validate()
        .expect_err("the change makes it invalid")
        .to_string()
}

#[test]
fn port_rules() {
    assert_eq!(
        error_after(|e| e.ports[1].port = 0),
        "shop/api: ports[1].port = 0: must be 1 to 65535"
    );
    assert_eq!(
        error_after(|e| e.ports[0].name = Some("HTTP".into())),
        "shop/api: ports[0].name = \"HTTP\": only lowercase letters, digits and '-' are allowed"
    );
    assert_eq!(
        error_after(|e| e.ports[1].name = Some(String::new())),
        "shop/api: ports[1].name = \"\": must not be empty"
    );
    assert_eq!(
        error_after(|e| {
            e.ports[1].port = 80;
            e.ports[1].protocol = Protocol::Tcp;
        }),
        "shop/api: ports[1].port = 80: listed twice for one protocol"
    );
    assert_eq!(
        error_after(|e| e.ports[1].name = Some("http".into())),
        "shop/api: ports[1].name = \"http\": used by two ports"
    );
    assert_eq!(
        error_after(|e| {
            e.ports = (1..=129)
                .map(|port| ServicePort {
                    name: None,
                    port,
                    protocol: Protocol::Tcp,
                })
                .collect();
        }),
        "shop/api: ports = 129: more than 128 ports"
    );
}

#[test]
fn same_port_on_two_protocols_is_fine() {
    let mut e = export();
    e.ports[1].port = 80;
    e.validate().unwrap();
}

#[test]
fn endpoint_rules() {
    assert_eq!(
        error_after(|e| e.endpoints[1].port = 0),
        "shop/api: endpoints[1].port = 0: must be 1 to 65535"
    );
    for addr in [
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "ff02::1",
    ] {
        let message = error_after(|e| e.endpoints[0].address = addr.parse().unwrap());
        assert_eq!(
            message,
            format!("shop/api: endpoints[0].address = {addr}: not a unicast address")
        );
    }
    assert_eq!(
        error_after(|e| e.endpoints[0].zone = Some(String::new())),
        "shop/api: endpoints[0].zone = \"\": must be 1 to 63 bytes"
    );
    assert_eq!(
        error_after(|e| e.endpoints[0].zone = Some("z".repeat(64))),
        format!(
            "shop/api: endpoints[0].zone = \"{}\": must be 1 to 63 bytes",
            "z".repeat(64)
        )
    );
    assert_eq!(
        error_after(|e| e.endpoints[1].zone = Some("eu west".into())),
        "shop/api: endpoints[1].zone = \"eu west\": only letters, digits, '-', '_' and '.' are allowed"
    );
    assert_eq!(
        error_after(|e| e.endpoints[1].zone = Some("-a".into())),
        "shop/api: endpoints[1].zone = \"-a\": must start and end with a letter or digit"
    );
    assert_eq!(
        error_after(|e| e.endpoints[1].address = "10.1.0.1".parse().unwrap()),
        "shop/api: endpoints[1] = 10.1.0.1:8080: listed twice"
    );
    assert_eq!(
        error_after(|e| {
            e.endpoints.push(endpoint("10.0.0.9", 1));
            e.endpoints.push(endpoint("10.1.0.1", 8080));
        }),
        "shop/api: endpoints[3] = 10.1.0.1:8080: listed twice",
        "duplicates are found in unsorted lists too"
    );
    assert_eq!(
        error_after(|e| {
            e.endpoints = (0..10_001u32)
                .map(|i| Endpoint {
                    address: IpAddr::from([10, 2, (i >> 8) as u8, i as u8]),
                    port: 1 + (i >> 16) as u16,
                    ready: true,
                    zone: None,
                })
                .collect();
        }),
        "shop/api: endpoints = 10001: more than 10000 endpoints"
    );
}

#[test]
fn zones_follow_the_label_value_rule() {
    for zone in ["a", "us-east-1a", "Europe_West.1", &"z".repeat(63)] {
        assert_eq!(zone_problem(zone), None, "{zone}");
    }
}

#[test]
fn same_address_on_two_ports_is_fine() {
    let mut e = export();
    e.endpoints[1].address = e.endpoints[0].address;
    e.endpoints[1].port = 9090;
    e.validate().unwrap();
}

#[test]
fn normalize_sorts_so_that_order_does_not_count() {
    let mut a = export();
    let mut b = export();
    b.ports.reverse();
    b.endpoints.reverse();
    assert_ne!(a, b);
    a.normalize();
    b.normalize();
    assert_eq!(a, b);
    assert_eq!(a.ports[0].port, 53);
}

#[test]
fn json_defaults_for_sources() {
    let e: ServiceExport = serde_json::from_str(
        r#"{"name":{"namespace":"shop","name":"api"},
            "ports":[{"port":80}],
            "endpoints":[{"address":"10.0.0.1","port":80,"ready":true}]}"#,
    )
    .unwrap();
    assert_eq!(e.weight, DEFAULT_WEIGHT);
    assert_eq!(e.policy, Policy::LocalFirst);
    assert_eq!(e.ports[0].protocol, Protocol::Tcp);
    assert!(!e.headless);
    let json = serde_json::to_string(&Policy::RoundRobin).unwrap();
    assert_eq!(json, "\"round_robin\"");
    assert_eq!(serde_json::to_string(&Protocol::Sctp).unwrap(), "\"SCTP\"");
}
