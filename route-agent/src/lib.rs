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
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod desired;
pub mod reconcile;
pub mod status;

/// An error and its sources, `: `-separated (for log fields).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
