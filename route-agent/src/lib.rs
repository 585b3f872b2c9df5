//! The Isthmus route agent: follows the merged service catalog and programs the eBPF maps that
//! carry clusterset VIP traffic on its node.
//!
//! The pure core: [`catalog`] (the watch stream's records, validated), [`desired`] (policy
//! expanded into slot tables, within the map capacity), [`reconcile`] (`(desired, observed) ->
//! Vec<Op>`), [`agent`] (applies a plan through the [`dataplane::Dataplane`] seam). The shell
//! around it (catalog sources, interfaces, routes, status) is in the binary's modules.

#![forbid(unsafe_code)]

pub mod agent;
pub mod catalog;
pub mod dataplane;
pub mod desired;
pub mod reconcile;
