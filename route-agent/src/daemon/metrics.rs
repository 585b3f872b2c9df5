//! Prometheus metrics at `/metrics`, rendered from a fresh status at every scrape.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::admin::StatusRequest;
use crate::status::Status;

pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(
    addr: SocketAddr,
    requests: mpsc::Sender<StatusRequest>,
) -> anyhow::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind the metrics endpoint on {addr}"))?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let requests = requests.clone();
                    async move { Ok::<_, Infallible>(answer(req, requests).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(MetricsServer { task })
}

async fn answer(
    req: Request<Incoming>,
    requests: mpsc::Sender<StatusRequest>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"metrics are at /metrics\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let (tx, rx) = oneshot::channel();
    let status = match requests.send(tx).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let Some(status) = status else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"agent stopping\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    };
    let mut r = Response::new(Full::new(Bytes::from(render(&status))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReason {
    namespace: String,
    service: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    namespace: String,
    service: String,
}

/// The metrics text for `status`.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("isthmus_route_agent");
    let packets = Family::<ServiceReason, Counter>::default();
    let bytes = Family::<ServiceReason, Counter>::default();
    for s in &status.services {
        for (reason, c) in &s.counters {
            let labels = ServiceReason {
                namespace: s.namespace.clone(),
                service: s.name.clone(),
                reason: reason.clone(),
            };
            packets.get_or_create(&labels).inc_by(c.packets);
            bytes.get_or_create(&labels).inc_by(c.bytes);
        }
    }
    registry.register(
        "packets",
        "Packets by service and reason (forward, reverse, new_flow, reselect, drop_*)",
        packets,
    );
    registry.register("bytes", "Bytes by service and reason", bytes);
    let backends = Family::<ServiceLabel, Gauge>::default();
    for s in &status.services {
        backends
            .get_or_create(&ServiceLabel {
                namespace: s.namespace.clone(),
                service: s.name.clone(),
            })
            .set(s.backends.len() as i64);
    }
    registry.register(
        "service_backends",
        "Backends programmed per service",
        backends,
    );
    let entries = Family::<MapLabel, Gauge>::default();
    let capacity = Family::<MapLabel, Gauge>::default();
    for (map, fill) in &status.maps {
        let l = MapLabel { map: map.clone() };
        entries
            .get_or_create(&l)
            .set(i64::try_from(fill.entries).unwrap_or(i64::MAX));
        capacity
            .get_or_create(&l)
            .set(i64::try_from(fill.capacity).unwrap_or(i64::MAX));
    }
    registry.register("map_entries", "Entries in each eBPF map", entries);
    registry.register("map_capacity", "Capacity of each eBPF map", capacity);
    let gauge = |v: usize| {
        let g = Gauge::<i64>::default();
        g.set(v as i64);
        g
    };
    registry.register(
        "services",
        "Services programmed",
        gauge(status.services.len()),
    );
    registry.register(
        "services_unprogrammed",
        "Services with VIPs left out because the maps are too small",
        gauge(status.unprogrammed.len()),
    );
    registry.register(
        "interfaces",
        "Pod interfaces attached",
        gauge(status.interfaces.len()),
    );
    registry.register(
        "routes",
        "Routes installed via the gateway node",
        gauge(status.routes.len()),
    );
    registry.register(
        "source_connected",
        "1 while the catalog source is connected",
        gauge(usize::from(status.connected)),
    );
    registry.register(
        "reconcile_failing",
        "1 while the last reconcile failed (it is retried)",
        gauge(usize::from(status.reconcile_error.is_some())),
    );
    let refused = Counter::<u64>::default();
    refused.inc_by(status.catalogs_refused);
    registry.register(
        "catalogs_refused",
        "Catalog updates refused as malformed",
        refused,
    );
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}
