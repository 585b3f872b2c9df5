//! The Prometheus endpoint: `GET /metrics` in the OpenMetrics text format, anything else 404.
//!
//! Every scrape builds a fresh registry from one [`AdminSource`] snapshot, so a removed peer
//! disappears from the next scrape instead of lingering with its last values, and the daemon
//! keeps no metric state of its own. Per-peer series carry `interface`, `remote_node` (the
//! peer's configured name, else the first 8 characters of its key) and `public_key`.
//!
//! Byte counters count inner IP packet bytes (what went into and came out of the tunnel);
//! `*_wire_bytes_total` count UDP payload bytes, as `wg show` does. A peer that never completed
//! a handshake has no `isthmus_peer_last_handshake_timestamp_seconds` series.

use super::proto::PeerState;
use super::render::peer_label;
use super::AdminSource;
use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// `Content-Type` of the OpenMetrics text exposition `prometheus-client` writes.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    interface: String,
    remote_node: String,
    public_key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerDropLabels {
    interface: String,
    remote_node: String,
    public_key: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    interface: String,
    reason: String,
}

type CounterFamily<L> = Family<L, Counter>;
type GaugeFamily<L> = Family<L, Gauge>;
type FloatGaugeFamily<L> = Family<L, Gauge<f64, AtomicU64>>;

/// One scrape's worth of metrics, in the OpenMetrics text format (ends with `# EOF`).
pub fn render(source: &dyn AdminSource) -> String {
    let status = source.status();
    let peers = source.peers();
    let mut registry = Registry::default();

    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let family = CounterFamily::<PeerLabels>::default();
        // The encoder appends `_total` to counter names.
        registry.register(name, help, family.clone());
        family
    };
    let rx_bytes = counter(
        &mut registry,
        "isthmus_peer_rx_bytes",
        "Inner IP packet bytes received from the peer through the tunnel",
    );
    let tx_bytes = counter(
        &mut registry,
        "isthmus_peer_tx_bytes",
        "Inner IP packet bytes sent to the peer through the tunnel",
    );
    let rx_wire_bytes = counter(
        &mut registry,
        "isthmus_peer_rx_wire_bytes",
        "UDP payload bytes received from the peer, WireGuard overhead and keepalives included",
    );
    let tx_wire_bytes = counter(
        &mut registry,
        "isthmus_peer_tx_wire_bytes",
        "UDP payload bytes sent to the peer, WireGuard overhead and keepalives included",
    );
    let rx_packets = counter(
        &mut registry,
        "isthmus_peer_rx_packets",
        "Inner IP packets received from the peer",
    );
    let tx_packets = counter(
        &mut registry,
        "isthmus_peer_tx_packets",
        "Inner IP packets sent to the peer",
    );
    let handshakes = counter(
        &mut registry,
        "isthmus_peer_handshakes",
        "Completed WireGuard handshakes with the peer",
    );
    let last_handshake = FloatGaugeFamily::<PeerLabels>::default();
    registry.register(
        "isthmus_peer_last_handshake_timestamp_seconds",
        "Unix time of the last completed handshake with the peer",
        last_handshake.clone(),
    );
    let up = GaugeFamily::<PeerLabels>::default();
    registry.register(
        "isthmus_peer_up",
        "1 if the peer has a live session (handshake younger than 180 s), else 0",
        up.clone(),
    );
    let peer_dropped = CounterFamily::<PeerDropLabels>::default();
    registry.register(
        "isthmus_peer_dropped_packets",
        "Packets dropped that are attributable to the peer, by reason",
        peer_dropped.clone(),
    );
    let dropped = CounterFamily::<DropLabels>::default();
    registry.register(
        "isthmus_dropped_packets",
        "Packets dropped on the interface, by reason, attributable to a peer or not",
        dropped.clone(),
    );
    let peer_count = GaugeFamily::<InterfaceLabels>::default();
    registry.register(
        "isthmus_peers",
        "Peers configured on the interface",
        peer_count.clone(),
    );
    let connected_count = GaugeFamily::<InterfaceLabels>::default();
    registry.register(
        "isthmus_peers_connected",
        "Peers with a live session",
        connected_count.clone(),
    );
    let uptime = GaugeFamily::<InterfaceLabels>::default();
    registry.register(
        "isthmus_uptime_seconds",
        "Seconds since the daemon started",
        uptime.clone(),
    );

    let interface = InterfaceLabels {
        interface: status.name.clone(),
    };
    peer_count
        .get_or_create(&interface)
        .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
    connected_count.get_or_create(&interface).set(
        i64::try_from(
            peers
                .iter()
                .filter(|p| p.status == PeerState::Connected)
                .count(),
        )
        .unwrap_or(i64::MAX),
    );
    uptime
        .get_or_create(&interface)
        .set(i64::try_from(status.uptime_secs).unwrap_or(i64::MAX));
    for (reason, count) in &status.dropped {
        dropped
            .get_or_create(&DropLabels {
                interface: status.name.clone(),
                reason: reason.clone(),
            })
            .inc_by(*count);
    }

    for peer in &peers {
        let labels = PeerLabels {
            interface: status.name.clone(),
            remote_node: peer_label(peer),
            public_key: peer.public_key.clone(),
        };
        rx_bytes.get_or_create(&labels).inc_by(peer.rx_bytes);
        tx_bytes.get_or_create(&labels).inc_by(peer.tx_bytes);
        rx_wire_bytes
            .get_or_create(&labels)
            .inc_by(peer.rx_wire_bytes);
        tx_wire_bytes
            .get_or_create(&labels)
            .inc_by(peer.tx_wire_bytes);
        rx_packets.get_or_create(&labels).inc_by(peer.rx_packets);
        tx_packets.get_or_create(&labels).inc_by(peer.tx_packets);
        handshakes.get_or_create(&labels).inc_by(peer.handshakes);
        if let Some(ms) = peer.last_handshake_unix_ms {
            // Exact: Unix ms stay below 2^53 for another 285,000 years.
            last_handshake
                .get_or_create(&labels)
                .set(ms as f64 / 1000.0);
        }
        up.get_or_create(&labels)
            .set(i64::from(peer.status == PeerState::Connected));
        for (reason, count) in &peer.dropped {
            peer_dropped
                .get_or_create(&PeerDropLabels {
                    interface: labels.interface.clone(),
                    remote_node: labels.remote_node.clone(),
                    public_key: labels.public_key.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*count);
        }
    }

    if let Some(control) = source.control() {
        register_control(&mut registry, &status.name, &control);
    }

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterReasonLabels {
    interface: String,
    local_cluster: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    interface: String,
    local_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    interface: String,
    local_cluster: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteLabels {
    interface: String,
    local_cluster: String,
    remote_cluster: String,
}

/// The control plane's series: catalog refusals, sync sessions, DNS answers, remote health.
fn register_control(
    registry: &mut Registry,
    interface: &str,
    control: &super::proto::ControlStatus,
) {
    let base = ClusterLabels {
        interface: interface.to_string(),
        local_cluster: control.cluster.clone(),
    };
    let refusals = CounterFamily::<ClusterReasonLabels>::default();
    registry.register(
        "isthmus_catalog_refusals",
        "Sync messages or connections refused (the session is closed, the catalog unchanged), by reason",
        refusals.clone(),
    );
    for (reason, n) in &control.refusals {
        refusals
            .get_or_create(&ClusterReasonLabels {
                interface: base.interface.clone(),
                local_cluster: base.local_cluster.clone(),
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    let sessions = GaugeFamily::<ClusterLabels>::default();
    registry.register(
        "isthmus_sync_sessions",
        "Catalog sync sessions open",
        sessions.clone(),
    );
    sessions
        .get_or_create(&base)
        .set(i64::try_from(control.sessions).unwrap_or(i64::MAX));
    let synced = GaugeFamily::<ClusterLabels>::default();
    registry.register(
        "isthmus_sync_sessions_synced",
        "Catalog sync sessions whose peer's records are current",
        synced.clone(),
    );
    synced
        .get_or_create(&base)
        .set(i64::try_from(control.synced_sessions).unwrap_or(i64::MAX));
    let services = GaugeFamily::<ClusterLabels>::default();
    registry.register(
        "isthmus_catalog_services",
        "Services in the merged catalog",
        services.clone(),
    );
    services
        .get_or_create(&base)
        .set(i64::try_from(control.services).unwrap_or(i64::MAX));
    let dns = CounterFamily::<RcodeLabels>::default();
    registry.register(
        "isthmus_dns_queries",
        "clusterset DNS queries answered, by response code",
        dns.clone(),
    );
    for (rcode, n) in &control.dns_queries {
        dns.get_or_create(&RcodeLabels {
            interface: base.interface.clone(),
            local_cluster: base.local_cluster.clone(),
            rcode: rcode.clone(),
        })
        .inc_by(*n);
    }
    let offered = GaugeFamily::<RemoteLabels>::default();
    registry.register(
        "isthmus_remote_cluster_offered",
        "1 if the remote cluster's endpoints are offered (healthy), else 0",
        offered.clone(),
    );
    for r in &control.remote_clusters {
        offered
            .get_or_create(&RemoteLabels {
                interface: base.interface.clone(),
                local_cluster: base.local_cluster.clone(),
                remote_cluster: r.cluster.clone(),
            })
            .set(i64::from(r.offered));
    }
}

/// A running metrics endpoint; dropping it (or [`MetricsHandle::shutdown`]) stops it.
#[derive(Debug)]
pub struct MetricsHandle {
    task: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl MetricsHandle {
    /// The bound address (the real port when `0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes connections in flight.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for MetricsHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `/metrics` from a spawned task.
pub async fn serve_metrics(
    addr: SocketAddr,
    source: Arc<dyn AdminSource>,
) -> anyhow::Result<MetricsHandle> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind the metrics endpoint on {addr}"))?;
    let local_addr = listener
        .local_addr()
        .context("failed to read the metrics address")?;
    tracing::info!(%local_addr, "metrics endpoint listening");
    let task = tokio::spawn(accept_loop(listener, source));
    Ok(MetricsHandle { task, local_addr })
}

async fn accept_loop(listener: TcpListener, source: Arc<dyn AdminSource>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owned here so aborting this task aborts every connection in flight.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&request, &*source);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn route(request: &Request<Incoming>, source: &dyn AdminSource) -> Response<Full<Bytes>> {
    // hyper drops the body of a HEAD answer itself.
    if request.uri().path() != "/metrics" {
        plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        )
    } else if request.method() == Method::GET || request.method() == Method::HEAD {
        let mut response = Response::new(Full::new(Bytes::from(render(source))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
        );
        response
    } else {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::testing::{peer_key, FakeSource, HANDSHAKE_MS};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                let Some((series, _)) = l.rsplit_once(' ') else {
                    return false;
                };
                series.starts_with(&format!("{name}{{"))
                    && labels
                        .iter()
                        .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.to_string())
    }

    #[test]
    fn renders_every_metric_with_labels() {
        let text = render(&FakeSource::new());
        let b = peer_key(1);
        let peer_b = [
            ("interface", "isthmus0"),
            ("remote_node", "cluster-b"),
            ("public_key", b.as_str()),
        ];
        let get = |name: &str, labels: &[(&str, &str)]| {
            sample(&text, name, labels).unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        assert_eq!(get("isthmus_peer_rx_bytes_total", &peer_b), "1258291");
        assert_eq!(get("isthmus_peer_tx_bytes_total", &peer_b), "4096");
        assert_eq!(get("isthmus_peer_rx_wire_bytes_total", &peer_b), "1300000");
        assert_eq!(get("isthmus_peer_tx_wire_bytes_total", &peer_b), "5000");
        assert_eq!(get("isthmus_peer_rx_packets_total", &peer_b), "1000");
        assert_eq!(get("isthmus_peer_tx_packets_total", &peer_b), "40");
        assert_eq!(get("isthmus_peer_handshakes_total", &peer_b), "3");
        let ts: f64 = get("isthmus_peer_last_handshake_timestamp_seconds", &peer_b)
            .parse()
            .unwrap();
        assert!((ts - HANDSHAKE_MS as f64 / 1000.0).abs() < 1e-3);
        assert_eq!(get("isthmus_peer_up", &peer_b), "1");
        let mut dropped = peer_b.to_vec();
        dropped.push(("reason", "bad_source"));
        assert_eq!(get("isthmus_peer_dropped_packets_total", &dropped), "2");
        assert_eq!(
            get(
                "isthmus_dropped_packets_total",
                &[("interface", "isthmus0"), ("reason", "no_route")]
            ),
            "5"
        );
        assert_eq!(get("isthmus_peers", &[("interface", "isthmus0")]), "3");
        assert_eq!(
            get("isthmus_peers_connected", &[("interface", "isthmus0")]),
            "1"
        );
        assert_eq!(
            get("isthmus_uptime_seconds", &[("interface", "isthmus0")]),
            "93784"
        );

        // An unnamed peer is labelled with its short key and is not up.
        let short: String = peer_key(2).chars().take(8).collect();
        assert_eq!(
            get("isthmus_peer_up", &[("remote_node", short.as_str())]),
            "0"
        );
        // No handshake yet: no timestamp series rather than a misleading 0.
        assert!(sample(
            &text,
            "isthmus_peer_last_handshake_timestamp_seconds",
            &[("remote_node", short.as_str())]
        )
        .is_none());

        assert!(text.contains("# TYPE isthmus_peer_rx_bytes counter"));
        assert!(text.contains("# TYPE isthmus_peer_up gauge"));
        assert!(text.ends_with("# EOF\n"));
        // Every counter sample ends in _total.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("isthmus_"), "{line}");
            if kind == "counter" {
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(&format!("{name}_total{{"))),
                    "{name}"
                );
                assert!(!text.lines().any(|l| l.starts_with(&format!("{name}{{"))));
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_metrics_and_404_elsewhere() {
        let handle = serve_metrics("127.0.0.1:0".parse().unwrap(), Arc::new(FakeSource::new()))
            .await
            .unwrap();
        let addr = handle.local_addr();
        let answer = get(addr, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("content-type: application/openmetrics-text"));
        assert!(answer.contains("isthmus_peer_rx_bytes_total{"));
        let answer = get(addr, "/").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");

        handle.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
