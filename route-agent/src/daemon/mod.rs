//! The running agent: one task owns the maps (through [`Agent`]), the attached interfaces and
//! the routes; the catalog source, the link watcher and the admin socket send it events.

pub mod admin;
pub mod links;
mod metrics;
pub mod routes;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use isthmus_ebpf::layout::{Reason, StatKey, StatValue};
use isthmus_ebpf::{maps, Datapath};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::agent::{Agent, RETRY};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::status::{self, Status};
use links::LinkEvent;
use routes::Routes;
use source::SourceState;

struct Owner {
    config: Config,
    agent: Agent<Datapath>,
    routes: Option<Routes>,
    source: SourceState,
    catalog: Option<Arc<Catalog>>,
    generation: u64,
    /// Attached interfaces by name, with the index they had.
    attached: BTreeMap<String, u32>,
    /// Matching interfaces the programs cannot serve (no Ethernet header), warned once.
    refused_links: BTreeSet<String>,
    last_reconcile_us: Option<u64>,
    reconcile_error: Option<String>,
    retry_at: Option<tokio::time::Instant>,
    unprogrammed_logged: Vec<String>,
}

/// Runs the agent until SIGTERM or SIGINT, then removes everything it created.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let datapath = Datapath::load(config.capacity)
        .context("failed to load the eBPF programs (the agent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON or root)")?;
    let mut agent = Agent::new(datapath, config.capacity);
    if let Some(cgroup) = &config.cgroup {
        agent
            .dataplane_mut()
            .attach_sockets(cgroup)
            .with_context(|| {
                format!(
                    "failed to attach the socket programs to {}",
                    cgroup.display()
                )
            })?;
    }
    let routes = match config.gateway {
        Some(via) => Some(Routes::start(config.route_protocol, via).await?),
        None => None,
    };
    let (admin_tx, mut admin_rx) = mpsc::channel(16);
    let admin = admin::serve(&config.admin_socket, admin_tx.clone()).await?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(metrics::serve(addr, admin_tx.clone()).await?),
        None => None,
    };
    let mut term = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let (mut source_rx, source_task) = source::spawn(config.source.clone());
    let (link_tx, mut link_rx) = mpsc::channel(256);
    let mut link_task = tokio::spawn(links::watch(config.interfaces.clone(), link_tx));
    let mut links_running = true;
    tracing::info!(
        source = %config.source,
        interfaces = ?config.interfaces,
        sockets = ?config.cgroup,
        gateway = ?config.gateway,
        admin = %config.admin_socket.display(),
        "route agent running"
    );

    let mut owner = Owner {
        config,
        agent,
        routes,
        source: SourceState::default(),
        catalog: None,
        generation: 0,
        attached: BTreeMap::new(),
        refused_links: BTreeSet::new(),
        last_reconcile_us: None,
        reconcile_error: None,
        retry_at: None,
        unprogrammed_logged: Vec::new(),
    };
    loop {
        let retry = owner.retry_at;
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = source_rx.changed() => {
                if changed.is_err() {
                    tracing::error!("the catalog source task ended");
                    break;
                }
                let state = source_rx.borrow_and_update().clone();
                owner.on_source(state).await;
            }
            Some(event) = link_rx.recv() => owner.on_link(event),
            Some(reply) = admin_rx.recv() => {
                let _ = reply.send(owner.status());
            }
            _ = async { tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)).await }, if retry.is_some() => {
                owner.retry_at = None;
                owner.reconcile().await;
            }
            ended = &mut link_task, if links_running => {
                links_running = false;
                match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "watching links failed; interfaces that appear from now on are not attached"),
                    Err(e) => tracing::error!(error = %e, "the link watcher ended"),
                }
            }
        }
    }
    source_task.abort();
    link_task.abort();
    drop(metrics);
    drop(admin);
    owner.shutdown().await
}

impl Owner {
    async fn on_source(&mut self, state: SourceState) {
        let fresh = state.generation != self.generation;
        self.generation = state.generation;
        self.catalog = state.catalog.clone();
        self.source = state;
        if fresh {
            self.reconcile().await;
        }
    }

    async fn reconcile(&mut self) {
        let Some(catalog) = self.catalog.clone() else {
            return;
        };
        let started = Instant::now();
        let report = self.agent.reconcile(&catalog);
        let mut error = report.error.clone();
        if let (Some(routes), true) = (&mut self.routes, error.is_none()) {
            if let Err(e) = routes.sync(&catalog.routes).await {
                error = Some(format!("{e:#}"));
            }
        }
        let took = started.elapsed();
        self.last_reconcile_us = Some(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        let unprogrammed: Vec<String> = report
            .unprogrammed
            .iter()
            .map(|u| format!("{}: {}", u.name, u.reason))
            .collect();
        if unprogrammed != self.unprogrammed_logged {
            if !unprogrammed.is_empty() {
                tracing::error!(services = ?unprogrammed, "services not programmed: the maps are too small (raise --max-services/--max-backends/--max-slots)");
            }
            self.unprogrammed_logged = unprogrammed;
        }
        match &error {
            Some(e) => {
                tracing::error!(error = %e, "programming the maps failed; what is programmed is consistent; retrying");
                self.retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
            None if report.ops > 0 => tracing::info!(
                revision = catalog.revision,
                ops = report.ops,
                services = self.agent.state().names.len(),
                took_us = self.last_reconcile_us,
                "maps programmed"
            ),
            None => {}
        }
        self.reconcile_error = error;
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Present {
                name,
                index,
                ethernet,
            } => {
                if !ethernet {
                    if self.refused_links.insert(name.clone()) {
                        tracing::warn!(interface = %name, "matches --interfaces but has no Ethernet header; not attached");
                    }
                    return;
                }
                if self.attached.get(&name) == Some(&index) {
                    return;
                }
                if self.attached.remove(&name).is_some() {
                    let _ = self.agent.dataplane_mut().detach_veth(&name);
                }
                match self.agent.dataplane_mut().attach_veth(&name) {
                    Ok(()) => {
                        tracing::info!(interface = %name, "attached");
                        self.attached.insert(name, index);
                    }
                    Err(e) => {
                        tracing::warn!(interface = %name, error = %crate::error_chain(&e), "attaching failed")
                    }
                }
            }
            LinkEvent::Gone { name, index } => {
                if self.attached.get(&name) == Some(&index) {
                    self.attached.remove(&name);
                    let _ = self.agent.dataplane_mut().detach_veth(&name);
                    tracing::info!(interface = %name, "interface gone; detached");
                }
            }
        }
    }

    fn status(&self) -> Status {
        let state = self.agent.state();
        let desired = self.agent.desired();
        let capacity = self.agent.capacity();
        let stats = self.agent.dataplane().stats().unwrap_or_else(|e| {
            tracing::warn!(error = %crate::error_chain(&e), "reading counters failed");
            Default::default()
        });
        let mut services = Vec::new();
        for (id, name) in &state.names {
            let keys: Vec<_> = state
                .services
                .iter()
                .filter(|(_, v)| v.service_id == *id)
                .collect();
            let mut vips: Vec<String> = state
                .vips
                .iter()
                .filter(|(_, s)| **s == *id)
                .map(|(v, _)| v.to_string())
                .collect();
            vips.sort();
            let mut ports: Vec<String> = keys
                .iter()
                .map(|(k, _)| format!("{}/{}", k.port, k.proto))
                .collect();
            ports.sort();
            ports.dedup();
            let mut slots: BTreeMap<u32, usize> = BTreeMap::new();
            let selections: BTreeSet<u32> = keys
                .iter()
                .filter(|(_, v)| v.count > 0)
                .map(|(_, v)| v.selection)
                .collect();
            for sel in selections {
                for b in state.slots.get(&sel).into_iter().flatten() {
                    *slots.entry(*b).or_default() += 1;
                }
            }
            let clusters = desired.services.get(name).map(|d| &d.backends);
            let backends = state
                .backends_of(*id)
                .into_iter()
                .map(|(addr, bid)| status::BackendStatus {
                    cluster: clusters
                        .and_then(|c| c.get(&addr))
                        .cloned()
                        .unwrap_or_default(),
                    address: addr.addr.to_string(),
                    port: addr.port,
                    slots: slots.get(&bid).copied().unwrap_or(0),
                })
                .collect();
            let counters = Reason::ALL
                .iter()
                .filter_map(|r| {
                    let v = stats.get(&StatKey {
                        service_id: *id,
                        reason: r.number(),
                    })?;
                    Some((r.label().to_owned(), counter(v)))
                })
                .collect();
            services.push(status::ServiceStatus {
                namespace: name.namespace.clone(),
                name: name.name.clone(),
                id: *id,
                policy: desired
                    .services
                    .get(name)
                    .map(|d| d.policy.as_str().to_owned())
                    .unwrap_or_default(),
                vips,
                ports,
                backends,
                counters,
            });
        }
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for (k, v) in &stats {
            if let Some(r) = Reason::from_number(k.reason) {
                *totals.entry(r.label().to_owned()).or_default() += v.packets;
            }
        }
        let fill = |entries: usize, cap: u32| status::MapFill {
            entries: entries as u64,
            capacity: u64::from(cap),
        };
        let mut map_fill = BTreeMap::new();
        map_fill.insert(
            "services".to_owned(),
            fill(state.services.len(), capacity.services),
        );
        map_fill.insert("vips".to_owned(), fill(state.vips.len(), capacity.services));
        map_fill.insert(
            "backends".to_owned(),
            fill(state.backends.len(), capacity.backends),
        );
        map_fill.insert(
            "slots".to_owned(),
            fill(state.slots.values().map(Vec::len).sum(), capacity.slots),
        );
        if let Ok(n) = self.agent.dataplane().count_entries(maps::FLOWS) {
            map_fill.insert("flows".to_owned(), fill(n, capacity.flows));
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            source: self.config.source.to_string(),
            connected: self.source.connected,
            source_error: self.source.error.clone(),
            cluster: self
                .catalog
                .as_ref()
                .map(|c| c.cluster.clone())
                .unwrap_or_default(),
            revision: self.catalog.as_ref().map(|c| c.revision),
            catalogs_refused: self.source.refused,
            last_refusal: self.source.last_refusal.clone(),
            last_reconcile_us: self.last_reconcile_us,
            reconcile_error: self.reconcile_error.clone(),
            interfaces: self.attached.keys().cloned().collect(),
            sockets: self
                .agent
                .dataplane()
                .sockets()
                .map(|p| p.display().to_string()),
            routes: self
                .routes
                .as_ref()
                .map(|r| r.installed().collect())
                .unwrap_or_default(),
            services,
            unprogrammed: desired
                .unprogrammed
                .iter()
                .map(|u| status::Unprogrammed {
                    service: u.name.to_string(),
                    reason: u.reason.clone(),
                })
                .collect(),
            maps: map_fill,
            totals,
        }
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        let interfaces = self.attached.len();
        let mut result = Ok(());
        if let Err(e) = self.agent.dataplane_mut().detach_all() {
            tracing::error!(error = %crate::error_chain(&e), "detaching failed");
            result = Err(anyhow::anyhow!(
                "detaching failed: {}",
                crate::error_chain(&e)
            ));
        }
        let mut removed = 0;
        if let Some(routes) = &mut self.routes {
            removed = routes.installed().count();
            if let Err(e) = routes.remove_all().await {
                tracing::error!(error = format!("{e:#}"), "removing routes failed");
                result = Err(e.context("removing routes failed"));
            }
        }
        // Dropping the datapath closes every program, link and map.
        drop(self.agent);
        tracing::info!(
            interfaces,
            routes = removed,
            "route agent stopped; programs, links, maps and routes removed"
        );
        result
    }
}

fn counter(v: &StatValue) -> status::Counter {
    status::Counter {
        packets: v.packets,
        bytes: v.bytes,
    }
}
