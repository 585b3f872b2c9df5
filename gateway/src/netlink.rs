//! Kernel link, address and route programming over rtnetlink, behind the [`LinkControl`]
//! seam so the daemon's reconcile can be tested without a kernel.

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use std::future::Future;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("no interface named {0}")]
    NoSuchLink(String),
    #[error("{op} failed")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// The kernel operations the daemon needs on its own interface.
pub trait LinkControl: Send + Sync {
    fn link_index(&self, name: &str) -> impl Future<Output = Result<u32, NetlinkError>> + Send;
    fn set_mtu(
        &self,
        index: u32,
        mtu: u32,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_up(&self, index: u32) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn add_address(
        &self,
        index: u32,
        net: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Adds or replaces the route for `net` through the interface.
    fn replace_route(
        &self,
        index: u32,
        net: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn delete_route(
        &self,
        index: u32,
        net: IpNet,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
}

/// The real kernel, through an rtnetlink connection driven on the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }
}

fn req(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

fn route_message(
    index: u32,
    net: IpNet,
) -> Result<rtnetlink::packet_route::route::RouteMessage, NetlinkError> {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .map_err(|e| NetlinkError::Request {
            op: format!("route {net}"),
            source: rtnetlink::Error::InvalidNla(e.to_string()),
        })?;
    Ok(builder.output_interface(index).build())
}

impl LinkControl for Netlink {
    async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                Err(NetlinkError::NoSuchLink(name.to_string()))
            }
            Err(e) => Err(req(format!("looking up link {name}"))(e)),
        }
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(format!("setting MTU {mtu}")))
    }

    async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req("setting link up"))
    }

    async fn add_address(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding address {net}")))
    }

    async fn replace_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let msg = route_message(index, net)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding route {net}")))
    }

    async fn delete_route(&self, index: u32, net: IpNet) -> Result<(), NetlinkError> {
        let msg = route_message(index, net)?;
        match self.handle.route().del(msg).execute().await {
            // Already gone (e.g. the link went down): the goal is met.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            r => r.map_err(req(format!("deleting route {net}"))),
        }
    }
}

/// Which prefixes get a kernel route through the tunnel. Default routes are left to the
/// operator: taking them over needs policy routing to keep the tunnel's own traffic out.
pub fn routable(prefixes: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    prefixes.iter().partition(|n| n.prefix_len() != 0)
}
