//! Routes to the catalog's prefixes via the gateway node, on nodes that are not the gateway.
//! Each is installed with the agent's route protocol number, which is how a restarted agent
//! finds the routes a killed one left, and how shutdown removes exactly its own.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

pub struct Routes {
    handle: rtnetlink::Handle,
    protocol: u8,
    via: IpAddr,
    installed: BTreeSet<IpNet>,
}

fn message(net: IpNet, via: IpAddr, protocol: u8) -> anyhow::Result<RouteMessage> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .map_err(|e| anyhow::anyhow!("route {net}: {e}"))?
        .gateway(via)
        .map_err(|e| anyhow::anyhow!("route {net} via {via}: {e}"))?
        .protocol(RouteProtocol::Other(protocol))
        .build())
}

fn destination(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    let addr: IpAddr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => match d {
            rtnetlink::packet_route::route::RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            rtnetlink::packet_route::route::RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        },
        _ => None,
    })?;
    IpNet::new(addr, len).ok()
}

impl Routes {
    /// Connects to rtnetlink and adopts the routes a previous run of the agent left.
    pub async fn start(protocol: u8, via: IpAddr) -> anyhow::Result<Routes> {
        use anyhow::Context as _;
        let (conn, handle, _) = rtnetlink::new_connection().context("failed to open rtnetlink")?;
        tokio::spawn(conn);
        let mut routes = Routes {
            handle,
            protocol,
            via,
            installed: BTreeSet::new(),
        };
        routes.installed = routes.ours().await?;
        if !routes.installed.is_empty() {
            tracing::info!(
                routes = routes.installed.len(),
                "adopted routes a previous run left"
            );
        }
        Ok(routes)
    }

    /// The routes with our protocol number, as the kernel has them.
    pub async fn ours(&self) -> anyhow::Result<BTreeSet<IpNet>> {
        let mut out = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let mut dump = self.handle.route().get(msg).execute();
            while let Some(r) = dump
                .try_next()
                .await
                .map_err(|e| anyhow::anyhow!("listing routes: {e}"))?
            {
                if r.header.protocol == RouteProtocol::Other(self.protocol) {
                    if let Some(net) = destination(&r) {
                        out.insert(net);
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn installed(&self) -> impl Iterator<Item = String> + '_ {
        self.installed
            .iter()
            .map(move |n| format!("{n} via {}", self.via))
    }

    /// Makes the installed set `desired` (prefixes of the gateway's family; a default route
    /// is never taken over). Returns the first error; what succeeded stays recorded.
    pub async fn sync(&mut self, desired: &[IpNet]) -> anyhow::Result<()> {
        let want: BTreeSet<IpNet> = desired
            .iter()
            .filter(|n| n.prefix_len() != 0)
            .filter(|n| {
                matches!(
                    (n, self.via),
                    (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
                )
            })
            .copied()
            .collect();
        let mut first_error = None;
        for net in want.difference(&self.installed.clone()) {
            let result = async {
                let msg = message(*net, self.via, self.protocol)?;
                self.handle
                    .route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| anyhow::anyhow!("adding route {net} via {}: {e}", self.via))
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::debug!(%net, via = %self.via, "route added");
                    self.installed.insert(*net);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for net in self.installed.clone().difference(&want) {
            match self.delete(*net).await {
                Ok(()) => {
                    self.installed.remove(net);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes our route to `net`, whatever its next hop (a previous run may have had another).
    async fn delete(&self, net: IpNet) -> anyhow::Result<()> {
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .map_err(|e| anyhow::anyhow!("route {net}: {e}"))?
            .protocol(RouteProtocol::Other(self.protocol))
            .build();
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            // Already gone: the goal is met.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(anyhow::anyhow!("deleting route {net}: {e}")),
        }
    }

    /// Removes every route with our protocol number (also ones this run did not add).
    pub async fn remove_all(&mut self) -> anyhow::Result<()> {
        let mut all = self.ours().await.unwrap_or_default();
        all.extend(self.installed.iter().copied());
        let mut first_error = None;
        for net in all {
            if let Err(e) = self.delete(net).await {
                first_error.get_or_insert(e);
            }
        }
        self.installed.clear();
        first_error.map_or(Ok(()), Err)
    }
}
