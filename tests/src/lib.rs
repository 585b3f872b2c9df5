//! Network-namespace lab for Isthmus end-to-end tests and benches.
//!
//! [`Lab::builder`]`().clusters(n).build()` makes, for lab id `ID` (unique per lab, so tests
//! run in parallel) and clusters `i = 1..=n`:
//!
//! ```text
//!  ID-c{i}-pod            ID-c{i}-node                 ID-c{i}-gw                  ID-wan
//!  eth0 10.i.1.2 ──── pod0 10.i.1.1                   wan0 10.255.0.(10+i) ──── c{i} ─ br0
//!                     eth0 10.i.0.2 ──────────────── lan0 10.i.0.1
//!  default via 10.i.1.1   default via 10.i.0.1        10.i.1.0/24 via 10.i.0.2
//! ```
//!
//! On demand: further pods on a node ([`Lab::add_pod`], Calico-style /32s behind `pod1`,
//! `pod2`, …), a pod on the gateway node ([`Lab::add_gateway_pod`], behind `gpod0`), extra
//! addresses in a pod ([`Lab::add_pod_addr`]), and nodes without their default route
//! ([`LabBuilder::node_default_route`]). The test application `isthmus-lab-app` serves and
//! probes TCP and UDP in any namespace ([`app`]).
//!
//! Gateway and node forward IPv4. Nothing routes between clusters until gateways run:
//! [`Lab::start_gateway`] starts the real `isthmus-gateway` with a config from
//! [`Lab::gateway_config`] ([`Lab::start_gateways_together`] starts many at one instant), and
//! [`Lab::tunctl`] queries it. Addresses come from [`plan`]. A lab of many clusters is watched
//! through [`mesh`], which runs its `tunctl`s and pings in a bounded [`Pool`].
//!
//! Contract:
//! - Building needs root and fails with a clear error without it; root-only tests must not
//!   skip, since CI runs as root.
//! - Dropping the [`Lab`] kills every process it started and every process left in its
//!   namespaces, then deletes the namespaces, the gateways' WireGuard sockets and its
//!   temporary directory. This also runs while a test panics, after the logs of guarded
//!   processes are printed. Drop [`ChildGuard`]s before their lab (declare them after it).
//! - A run killed before `Drop` leaves its lab behind; the next build with the same prefix (or
//!   [`Lab::sweep_stale`]) removes labs whose owner process is gone.

#![forbid(unsafe_code)]

pub mod agent;
pub mod app;
mod config;
pub mod control;
mod gateway;
mod lab;
pub mod mesh;
pub mod netns;
mod ops;
mod owner;
pub mod plan;
mod pods;
pub mod pool;
mod process;
pub mod vip;

use std::time::{Duration, Instant};

pub use app::{Probe, ProbeReport, Serve, APP_BIN};
pub use config::{
    key_path, AdminConfig, GatewayConfig, InterfaceConfig, KeyPair, PeerConfig,
    PERSISTENT_KEEPALIVE, TUNNEL_MTU,
};
pub use gateway::{GATEWAY_BIN, START_TIMEOUT, STOP_TIMEOUT, TUNCTL_BIN};
pub use lab::{
    default_bin_dir, Lab, LabBuilder, ETH_IF, GW_LAN_IF, GW_WAN_IF, NODE_POD_IF,
    STATIC_WAN_NEIGHBOURS_ABOVE, WAN_BRIDGE,
};
pub use owner::{require_root, sweep_stale, RUN_DIR, WG_SOCKET_DIR};
pub use plan::LabId;
pub use pool::Pool;
pub use process::{send_signal, ChildGuard, Signal};

/// How often [`wait_for`] re-evaluates its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Logs of a lab binary to stderr, filtered by `ISTHMUS_LOG` (default `warn`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The `main` of a bench binary: logging, then `run`; an error is printed as `name: error`
/// (with its causes) and exits 1.
pub fn bench_main(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    init_logging();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Polls `cond` every 100 ms until it holds (true) or `timeout` passes (false). `cond` is
/// always evaluated at least once, and once more at the deadline.
pub fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// [`wait_for`] as a `Result`: the error names `what` was awaited and for how long.
pub fn try_wait_for(
    what: &str,
    cond: impl FnMut() -> bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        wait_for(cond, timeout),
        "timed out after {timeout:?} waiting for {what}"
    );
    Ok(())
}

/// A non-negative integer field of a tunctl JSON object; panics naming the field and the
/// object when it is missing, so a renamed counter cannot make a test pass vacuously.
pub fn json_u64(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric {field:?} in {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_sees_a_condition_turn_true() {
        let mut calls = 0;
        assert!(wait_for(
            || {
                calls += 1;
                calls == 3
            },
            Duration::from_secs(5)
        ));
        assert_eq!(calls, 3);
    }

    #[test]
    fn wait_for_gives_up_at_the_deadline() {
        let start = Instant::now();
        let mut calls = 0;
        assert!(!wait_for(
            || {
                calls += 1;
                false
            },
            Duration::from_millis(250)
        ));
        assert!(start.elapsed() >= Duration::from_millis(250));
        assert!(calls >= 3, "only {calls} evaluations");
        let err = try_wait_for("nothing", || false, Duration::ZERO).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 0ns waiting for nothing");
    }
}
