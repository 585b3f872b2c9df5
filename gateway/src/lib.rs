//! Isthmus gateway: a WireGuard-protocol tunnel endpoint that meshes cluster gateways.
//!
//! `dataplane` holds the packet path (sans-IO engine plus the tokio shell around TUN and UDP),
//! `config` the validated configuration, `admin` the operator interfaces (admin socket, UAPI,
//! metrics), `netlink` the kernel link/address/route programming, `daemon` the process shell,
//! `control` the control plane (catalog sync through the tunnel, health, DNS, catalog store),
//! `mesh` the peer set, `clock` the phase of the periodic timers.

#![forbid(unsafe_code)]

pub mod admin;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod identity;
pub mod keys;
pub mod mesh;
pub mod netlink;
pub(crate) mod unix_socket;
