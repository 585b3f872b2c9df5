//! Isthmus eBPF: the tc and socket programs that carry clusterset VIP traffic, and their loader.
//!
//! The programs are C (`bpf/isthmus.bpf.c`, layouts in `bpf/isthmus.h`), built by clang from
//! `build.rs` and embedded here ([`OBJECT`]); [`Datapath`] loads them with aya.
//!
//! - `ist_from_pod` (tc ingress on the host side of a pod's veth) translates a packet to a
//!   VIP:port to a backend chosen from the service's slot table, keeps the flow on it, and
//!   drops (and counts) packets to a VIP port that does not exist or a service with no backend;
//!   `ist_to_pod` (tc egress there) translates replies back. Everything else passes untouched.
//! - `ist_connect4/6`, `ist_sendmsg4/6`, `ist_recvmsg4/6` (cgroup socket hooks) do the same at
//!   the socket for processes of the agent's own network namespace (a gateway or edge node's
//!   local processes).
//!
//! # Contract for the caller (the route agent)
//!
//! The programs choose; the caller decides. It expands each service's policy into a slot
//! table, and must write in this order so a packet never sees a half-made service:
//! backends, then the new slot table, then the service entry naming it (one atomic map
//! update), then delete the old table, then backends no table uses. Backend ids must not be
//! reused while a flow may still name them (a flow whose backend id is gone is re-chosen on
//! its next packet: that is how failover moves pinned flows). Service ids are `1..=`
//! [`Capacity::services`].
//!
//! Nothing is pinned: dropping [`Datapath`] (or the process dying) removes every program,
//! link and map.

#![deny(unsafe_code)]

mod error;
pub mod layout;
mod loader;
#[allow(unsafe_code)]
mod sys;

pub use error::Error;
pub use loader::{maps, Capacity, Datapath, Stats};

/// The compiled eBPF object (ELF with BTF).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/isthmus.bpf.o"));
