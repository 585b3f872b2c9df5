//! Finding pod veths: the links that exist at start and those that appear or go later
//! (rtnetlink link events), filtered by the configured patterns.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

use crate::config::Pattern;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A matching link exists (again): attach to it. `ethernet` is false for a link that has
    /// no Ethernet header (the programs could not parse its packets).
    Present {
        name: String,
        index: u32,
        ethernet: bool,
    },
    Gone {
        name: String,
        index: u32,
    },
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn event(msg: &LinkMessage, present: bool, patterns: &[Pattern]) -> Option<LinkEvent> {
    let name = name_of(msg)?;
    if !patterns.iter().any(|p| p.matches(&name)) {
        return None;
    }
    let index = msg.header.index;
    Some(if present {
        LinkEvent::Present {
            name,
            index,
            ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
        }
    } else {
        LinkEvent::Gone { name, index }
    })
}

/// Subscribes to link events, then lists the links already there, and sends every matching
/// one to `tx` until it closes.
pub async fn watch(patterns: Vec<Pattern>, tx: mpsc::Sender<LinkEvent>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if patterns.is_empty() {
        return Ok(());
    }
    // Subscribe first: a link created while we list is then seen at least once.
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("failed to subscribe to link events")?;
    tokio::spawn(conn);
    let (conn, handle, _) = rtnetlink::new_connection().context("failed to open rtnetlink")?;
    tokio::spawn(conn);
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("failed to list links")? {
        if let Some(e) = event(&msg, true, &patterns) {
            if tx.send(e).await.is_err() {
                return Ok(());
            }
        }
    }
    while let Some((msg, _)) = messages.next().await {
        let e = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                event(&m, true, &patterns)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                event(&m, false, &patterns)
            }
            _ => None,
        };
        if let Some(e) = e {
            if tx.send(e).await.is_err() {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the link event subscription ended")
}
