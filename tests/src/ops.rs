//! What a test does to a running lab: run commands and processes in its namespaces, ping, and
//! disturb the WAN (roaming, outages).

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, Result};

use crate::lab::{Lab, GW_WAN_IF};
use crate::netns::{self, PortState};
use crate::plan;
use crate::process::ChildGuard;

impl Lab {
    /// Runs `args` inside namespace `ns` to completion, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Result<Output> {
        netns::exec(ns, args)
    }

    /// Runs `args` inside namespace `ns`; a non-zero exit is an error quoting stderr.
    pub fn run<S: AsRef<OsStr>>(&self, ns: &str, args: &[S]) -> Result<String> {
        netns::run(ns, args)
    }

    /// Starts `cmd` inside `ns`, logging to the lab directory under the program's file name.
    pub fn spawn(&self, ns: &str, cmd: &Command) -> Result<ChildGuard> {
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".to_owned());
        self.spawn_named(ns, &program, cmd)
    }

    /// Starts `cmd` inside `ns`; its output goes to `<dir>/NNN-<name>.stdout` / `.stderr`.
    pub fn spawn_named(&self, ns: &str, name: &str, cmd: &Command) -> Result<ChildGuard> {
        ChildGuard::spawn(ns, &self.next_log_name(name), cmd, self.dir())
    }

    /// Sends `count` echo requests from `ns` to `addr`, 0.2 s apart, each waiting at most 1 s
    /// for its reply; returns how many replies came back.
    pub fn ping(&self, ns: &str, addr: impl Into<IpAddr>, count: u32) -> Result<u32> {
        let addr = addr.into().to_string();
        let count = count.max(1).to_string();
        let out = netns::exec(
            ns,
            &[
                "ping", "-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", &addr,
            ],
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match parse_ping_received(&stdout) {
            Some(received) => Ok(received),
            None => bail!(
                "ping {addr} in {ns} failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Replaces the address of cluster `i`'s gateway on the WAN (the gateway roams).
    pub fn set_wan_addr(&self, i: usize, addr: Ipv4Addr) -> Result<()> {
        let gw = self.gw_ns(i);
        netns::flush_addrs(&gw, GW_WAN_IF)?;
        netns::add_addr(&gw, GW_WAN_IF, &plan::with_prefix(addr))
    }

    /// Blackholes cluster `i`'s gateway on the WAN: its bridge port drops every frame both
    /// ways while both ends of the link keep carrier, so the gateway sees no local change.
    pub fn cut_wan(&self, i: usize) -> Result<()> {
        netns::set_port_state(
            &self.wan_ns(),
            &wan_port(self.cluster(i)),
            PortState::Disabled,
        )
    }

    /// Undoes [`Lab::cut_wan`].
    pub fn restore_wan(&self, i: usize) -> Result<()> {
        netns::set_port_state(
            &self.wan_ns(),
            &wan_port(self.cluster(i)),
            PortState::Forwarding,
        )
    }

    /// `ip link set wan0 up|down` in cluster `i`'s gateway namespace: the gateway sees its link
    /// (and the addresses' routes) go away.
    pub fn set_wan_link(&self, i: usize, up: bool) -> Result<()> {
        let gw = self.gw_ns(i);
        if up {
            netns::set_up(&gw, GW_WAN_IF)
        } else {
            netns::set_down(&gw, GW_WAN_IF)
        }
    }
}

/// The WAN bridge port of cluster `i`.
fn wan_port(i: usize) -> String {
    format!("c{i}")
}

/// The `N received` count from ping's summary line.
fn parse_ping_received(stdout: &str) -> Option<u32> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let field = line.split(',').find(|f| f.trim().ends_with("received"))?;
    field.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_is_parsed() {
        let ok =
            "PING 10.1.1.2 (10.1.1.2) 56(84) bytes of data.\n\n--- 10.1.1.2 ping statistics ---\n\
                  3 packets transmitted, 3 received, 0% packet loss, time 402ms\n\
                  rtt min/avg/max/mdev = 0.030/0.041/0.050/0.008 ms\n";
        assert_eq!(parse_ping_received(ok), Some(3));
        let lost = "--- 10.9.1.2 ping statistics ---\n\
                    2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1001ms\n";
        assert_eq!(parse_ping_received(lost), Some(0));
        assert_eq!(
            parse_ping_received("ping: connect: Network is unreachable\n"),
            None
        );
    }
}
