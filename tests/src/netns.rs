//! Thin wrappers over iproute2 (`ip`, `bridge`) and friends, one call per kernel operation.
//!
//! Every function takes the namespace by name and shells out, so nothing here needs `unsafe`
//! and every failure carries the exact command line and its stderr.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Where `ip netns add` mounts namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `cmd` to completion, stdin closed, capturing stdout and stderr.
pub fn output(cmd: &mut Command) -> Result<Output> {
    tracing::debug!(cmd = %describe(cmd), "run");
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{}`", describe(cmd)))
}

/// Runs `cmd`; a non-zero exit is an error that quotes the command and its stderr.
pub fn checked(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS args…`, whatever its exit status.
pub fn exec<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<Output> {
    anyhow::ensure!(!args.is_empty(), "nothing to run in namespace {ns}");
    output(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// `ip netns exec NS args…`, failing on a non-zero exit; returns stdout.
pub fn run<S: AsRef<OsStr>>(ns: &str, args: &[S]) -> Result<String> {
    anyhow::ensure!(!args.is_empty(), "nothing to run in namespace {ns}");
    checked(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// `ip -n NS args…`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    checked(Command::new("ip").args(["-n", ns]).args(args))
}

/// Creates namespace `name` with `lo` up.
pub fn add_namespace(name: &str) -> Result<()> {
    checked(Command::new("ip").args(["netns", "add", name]))?;
    set_up(name, "lo")
}

/// Deletes namespace `name`. Its interfaces go with it once no process is left inside.
pub fn delete_namespace(name: &str) -> Result<()> {
    checked(Command::new("ip").args(["netns", "delete", name]))?;
    Ok(())
}

/// Names of all namespaces mounted under [`NETNS_DIR`].
pub fn list_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Whether namespace `name` exists.
pub fn namespace_exists(name: &str) -> bool {
    std::path::Path::new(NETNS_DIR).join(name).exists()
}

/// Pids of the processes whose network namespace is `name`.
pub fn namespace_pids(name: &str) -> Vec<u32> {
    let Ok(out) = output(Command::new("ip").args(["netns", "pids", name])) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs every process inside namespace `name`. A namespace's interfaces and sockets outlive
/// `ip netns delete` for as long as a process still holds the namespace.
pub fn kill_namespace_processes(name: &str) {
    let pids = namespace_pids(name);
    if pids.is_empty() {
        return;
    }
    let mut kill = Command::new("kill");
    kill.arg("-KILL").args(pids.iter().map(u32::to_string));
    // A process may have exited since `ip netns pids`: that is the outcome we wanted anyway.
    let _ = output(&mut kill);
}

/// A veth pair created directly in its two target namespaces, both ends up.
pub fn add_veth(a_ns: &str, a_name: &str, b_ns: &str, b_name: &str) -> Result<()> {
    checked(Command::new("ip").args([
        "link", "add", a_name, "netns", a_ns, "type", "veth", "peer", "name", b_name, "netns", b_ns,
    ]))?;
    set_up(a_ns, a_name)?;
    set_up(b_ns, b_name)
}

pub fn set_up(ns: &str, ifname: &str) -> Result<()> {
    ip(ns, &["link", "set", "dev", ifname, "up"]).map(drop)
}

pub fn set_down(ns: &str, ifname: &str) -> Result<()> {
    ip(ns, &["link", "set", "dev", ifname, "down"]).map(drop)
}

pub fn set_mtu(ns: &str, ifname: &str, mtu: u32) -> Result<()> {
    ip(ns, &["link", "set", "dev", ifname, "mtu", &mtu.to_string()]).map(drop)
}

/// Adds `cidr` (e.g. `10.1.0.1/24`) to `ifname`.
pub fn add_addr(ns: &str, ifname: &str, cidr: &str) -> Result<()> {
    ip(ns, &["addr", "add", cidr, "dev", ifname]).map(drop)
}

/// Removes every IPv4 address from `ifname`.
pub fn flush_addrs(ns: &str, ifname: &str) -> Result<()> {
    ip(ns, &["-4", "addr", "flush", "dev", ifname]).map(drop)
}

/// `ip route replace DEST via VIA`; `dest` may be `default`.
pub fn add_route(ns: &str, dest: &str, via: &str) -> Result<()> {
    ip(ns, &["route", "replace", dest, "via", via]).map(drop)
}

/// `ip route replace DEST dev DEV scope link`: `dest` is directly on the link.
pub fn add_link_route(ns: &str, dest: &str, dev: &str) -> Result<()> {
    ip(ns, &["route", "replace", dest, "dev", dev, "scope", "link"]).map(drop)
}

/// `ip route replace DEST via VIA dev DEV onlink`: `via` is on the link though no subnet of
/// `dev` covers it (how Calico gives a pod with a /32 its default route).
pub fn add_onlink_route(ns: &str, dest: &str, via: &str, dev: &str) -> Result<()> {
    ip(
        ns,
        &["route", "replace", dest, "via", via, "dev", dev, "onlink"],
    )
    .map(drop)
}

/// The link-layer address of `ifname`, e.g. `4a:1c:02:9e:31:07`.
pub fn mac_address(ns: &str, ifname: &str) -> Result<String> {
    let out = ip(ns, &["-j", "link", "show", "dev", ifname])?;
    let links: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -n {ns} -j link show dev {ifname}` printed no JSON"))?;
    links[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no address for {ifname} in {ns}: {out}"))
}

/// Runs `commands` (one `ip` command per line, without the `ip`) with `ip -n NS -batch -`:
/// one process for many changes.
pub fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!(cmd = %describe(&cmd), lines = commands.lines().count(), "run");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{}`", describe(&cmd)))?;
    let mut stdin = child.stdin.take().context("no stdin for ip -batch")?;
    std::io::Write::write_all(&mut stdin, commands.as_bytes())
        .with_context(|| format!("failed to feed `{}`", describe(&cmd)))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .with_context(|| format!("failed to wait for `{}`", describe(&cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Sets an `net.*` sysctl inside `ns` (they are per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run(ns, &["sysctl", "-qw", &format!("{key}={value}")]).map(drop)
}

/// A bridge with STP off, so ports forward as soon as they are up.
pub fn add_bridge(ns: &str, name: &str) -> Result<()> {
    ip(
        ns,
        &["link", "add", name, "type", "bridge", "stp_state", "0"],
    )?;
    set_up(ns, name)
}

pub fn enslave(ns: &str, port: &str, bridge: &str) -> Result<()> {
    ip(ns, &["link", "set", "dev", port, "master", bridge]).map(drop)
}

/// Bridge port states settable by hand while STP is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Drops every frame in both directions; both ends keep carrier.
    Disabled,
    Forwarding,
}

pub fn set_port_state(ns: &str, port: &str, state: PortState) -> Result<()> {
    // Numbers from the kernel's BR_STATE_* (include/uapi/linux/if_bridge.h).
    let state = match state {
        PortState::Disabled => "0",
        PortState::Forwarding => "3",
    };
    run(ns, &["bridge", "link", "set", "dev", port, "state", state]).map(drop)
}

/// The command line as a shell would show it, for errors and logs.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
