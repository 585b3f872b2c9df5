//! Which name inside the zone a query asks about.
//!
//! The zone's names (MCS DNS spec §2.2–§2.4), relative to `<zone>`:
//!
//! | name                                   | what it is                                   |
//! |----------------------------------------|----------------------------------------------|
//! | (apex)                                 | SOA, NS                                      |
//! | `dns-version`                          | TXT schema version (§2.2)                    |
//! | `dns`, `ns.dns`                        | the server's own name (NS target)            |
//! | `svc`, `<ns>.svc`                      | empty non-terminals                          |
//! | `<svc>.<ns>.svc`                       | the service: A/AAAA                          |
//! | `_<proto>.<svc>.<ns>.svc`              | empty non-terminal above SRV names           |
//! | `_<port>._<proto>.<svc>.<ns>.svc`      | SRV                                          |
//! | `<cluster>.<svc>.<ns>.svc`             | empty non-terminal above endpoint names      |
//! | `<hostname>.<cluster>.<svc>.<ns>.svc`  | one headless endpoint: A/AAAA                |

/// A classified name inside the zone. Labels are lowercase and borrowed from the query name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    Apex,
    DnsVersion,
    Nameserver,
    /// A name that exists only because names below it do. It answers NODATA, never NXDOMAIN,
    /// since an NXDOMAIN would deny everything below it (RFC 8020 §2).
    EmptyNonTerminal,
    Service {
        ns: &'a str,
        svc: &'a str,
    },
    SrvProtocol {
        ns: &'a str,
        svc: &'a str,
        proto: &'a str,
    },
    Srv {
        ns: &'a str,
        svc: &'a str,
        proto: &'a str,
        port: &'a str,
    },
    Cluster {
        ns: &'a str,
        svc: &'a str,
        cluster: &'a str,
    },
    Endpoint {
        ns: &'a str,
        svc: &'a str,
        cluster: &'a str,
        host: &'a str,
    },
    Nonexistent,
}

/// Classifies a name given its labels left of the zone, leftmost first (`["web", "prod", "svc"]`).
pub(crate) fn classify<'a>(relative: &[&'a str]) -> Target<'a> {
    let underscored = |label: &'a str| label.strip_prefix('_');
    match relative {
        [] => Target::Apex,
        ["dns-version"] => Target::DnsVersion,
        ["dns"] | ["svc"] | [_, "svc"] => Target::EmptyNonTerminal,
        ["ns", "dns"] => Target::Nameserver,
        [svc, ns, "svc"] => Target::Service { ns, svc },
        [label, svc, ns, "svc"] => match underscored(label) {
            Some(proto) => Target::SrvProtocol { ns, svc, proto },
            None => Target::Cluster {
                ns,
                svc,
                cluster: label,
            },
        },
        [first, second, svc, ns, "svc"] => match (underscored(first), underscored(second)) {
            (Some(port), Some(proto)) => Target::Srv {
                ns,
                svc,
                proto,
                port,
            },
            (None, None) => Target::Endpoint {
                ns,
                svc,
                cluster: second,
                host: first,
            },
            _ => Target::Nonexistent,
        },
        _ => Target::Nonexistent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(name: &str) -> Target<'_> {
        let labels: Vec<&str> = if name.is_empty() {
            Vec::new()
        } else {
            name.split('.').collect()
        };
        classify(&labels)
    }

    #[test]
    fn classifies_every_kind_of_name() {
        assert_eq!(of(""), Target::Apex);
        assert_eq!(of("dns-version"), Target::DnsVersion);
        assert_eq!(of("ns.dns"), Target::Nameserver);
        assert_eq!(of("svc"), Target::EmptyNonTerminal);
        assert_eq!(of("prod.svc"), Target::EmptyNonTerminal);
        assert_eq!(
            of("web.prod.svc"),
            Target::Service {
                ns: "prod",
                svc: "web"
            }
        );
        assert_eq!(
            of("_tcp.web.prod.svc"),
            Target::SrvProtocol {
                ns: "prod",
                svc: "web",
                proto: "tcp"
            }
        );
        assert_eq!(
            of("_http._tcp.web.prod.svc"),
            Target::Srv {
                ns: "prod",
                svc: "web",
                proto: "tcp",
                port: "http"
            }
        );
        assert_eq!(
            of("east.web.prod.svc"),
            Target::Cluster {
                ns: "prod",
                svc: "web",
                cluster: "east"
            }
        );
        assert_eq!(
            of("web-0.east.web.prod.svc"),
            Target::Endpoint {
                ns: "prod",
                svc: "web",
                cluster: "east",
                host: "web-0"
            }
        );
    }

    #[test]
    fn everything_else_does_not_exist() {
        for name in [
            "pod",
            "web.prod.pod",
            "_http.east.web.prod.svc",
            "web-0._tcp.web.prod.svc",
            "x.web-0.east.web.prod.svc",
            "web.prod.svc.extra",
            "ns.dns.extra",
        ] {
            assert_eq!(of(name), Target::Nonexistent, "{name}");
        }
    }
}
