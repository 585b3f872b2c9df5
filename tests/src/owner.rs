//! Who owns a lab: one file per live lab under [`RUN_DIR`], claimed before the first namespace
//! exists and released after the last one is gone. A lab whose owner process is dead (or whose
//! pid now belongs to a newer process) is stale, and [`sweep_stale`] removes what it left.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::netns;
use crate::plan::LabId;

/// Owner files live here; a tmpfs, cleared on reboot together with [`netns::NETNS_DIR`].
pub const RUN_DIR: &str = "/run/isthmus-lab";
/// Where userspace WireGuard implementations put their UAPI sockets (`<ifname>.sock`).
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";

/// What an owner file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`), so a
    /// recycled pid is not mistaken for the owner.
    pub start_time: u64,
    /// The lab's temporary directory.
    pub dir: PathBuf,
}

impl Owner {
    /// The owner record for this process.
    pub fn current(dir: &Path) -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            dir: dir.to_owned(),
        }
    }

    pub fn render(&self) -> String {
        format!("{} {}\n{}\n", self.pid, self.start_time, self.dir.display())
    }

    pub fn parse(text: &str) -> Option<Owner> {
        let mut lines = text.lines();
        let (pid, start) = lines.next()?.split_once(' ')?;
        Some(Owner {
            pid: pid.parse().ok()?,
            start_time: start.parse().ok()?,
            dir: PathBuf::from(lines.next()?),
        })
    }

    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

pub fn owner_path(id: &LabId) -> PathBuf {
    Path::new(RUN_DIR).join(id.as_str())
}

/// Claims `id` for this process. Fails with `AlreadyExists` when another lab holds the id.
pub fn claim(id: &LabId, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(RUN_DIR)?;
    let path = owner_path(id);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    file.write_all(Owner::current(dir).render().as_bytes())?;
    Ok(path)
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`; `None` when there is no such process or it
/// is a zombie (a SIGKILLed owner whose parent has not reaped it yet is dead all the same).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    // Field 3, the state: Z is a zombie, X (or x) dead.
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    // starttime is field 22, 19 fields after the state.
    fields.nth(18)?.parse().ok()
}

/// Fails with a clear message unless this process runs with effective uid 0. Read from
/// `/proc/self/status` because `geteuid` needs `unsafe`.
pub fn require_root() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    anyhow::ensure!(
        euid == "0",
        "the namespace lab needs root (network namespaces, veth, bridges, TUN): \
         this process runs as uid {euid}; rerun as root, e.g. `sudo bash scripts/test.sh` \
         (CI runs as root, so this test is not skipped there)"
    );
    Ok(())
}

/// Removes what crashed runs left behind: for each lab id with this prefix whose owner is dead
/// or unknown, kills the processes in its namespaces, deletes the namespaces, its WireGuard
/// sockets, its temporary directory and its owner file. Labs of live processes, this one
/// included, are left alone. Returns the namespaces deleted.
pub fn sweep_stale(prefix: &str) -> Result<Vec<String>> {
    require_root()?;
    let mut ids: Vec<LabId> = netns::list_namespaces()
        .iter()
        .filter_map(|ns| LabId::of_namespace(prefix, ns))
        .collect();
    if let Ok(dir) = std::fs::read_dir(RUN_DIR) {
        ids.extend(
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|name| LabId::parse(prefix, &name)),
        );
    }
    ids.sort();
    ids.dedup();

    let mut removed = Vec::new();
    for id in ids {
        let owner_file = owner_path(&id);
        let owner = std::fs::read_to_string(&owner_file)
            .ok()
            .and_then(|t| Owner::parse(&t));
        if owner.as_ref().is_some_and(Owner::is_alive) {
            continue;
        }
        tracing::info!(lab = %id, "sweeping stale lab");
        removed.extend(remove_namespaces(&id, prefix));
        remove_wg_sockets(&id);
        if let Some(dir) = owner.map(|o| o.dir) {
            // Only a directory this crate named: never follow a corrupted owner file elsewhere.
            let ours = dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("isthmus-{id}-")));
            if ours {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        match std::fs::remove_file(&owner_file) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                tracing::warn!(path = %owner_file.display(), error = %e, "failed to remove owner file");
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// Kills the processes of every namespace of lab `id`, then deletes the namespaces. Returns the
/// names deleted; failures are logged, since this runs from `Drop` and from the sweeper.
pub fn remove_namespaces(id: &LabId, prefix: &str) -> Vec<String> {
    let names: Vec<String> = netns::list_namespaces()
        .into_iter()
        .filter(|ns| LabId::of_namespace(prefix, ns).as_ref() == Some(id))
        .collect();
    for ns in &names {
        netns::kill_namespace_processes(ns);
    }
    names
        .into_iter()
        .filter(|ns| match netns::delete_namespace(ns) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("isthmus-lab: failed to delete namespace {ns}: {e:#}");
                false
            }
        })
        .collect()
}

/// Removes `/var/run/wireguard/<ID>-*.sock`, which a SIGKILLed gateway cannot clean up.
pub fn remove_wg_sockets(id: &LabId) {
    let Ok(dir) = std::fs::read_dir(WG_SOCKET_DIR) else {
        return;
    };
    let prefix = format!("{id}-");
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_records_round_trip() {
        let owner = Owner {
            pid: 4242,
            start_time: 123_456,
            dir: PathBuf::from("/tmp/isthmus-i0a1b2-XyZ"),
        };
        assert_eq!(owner.render(), "4242 123456\n/tmp/isthmus-i0a1b2-XyZ\n");
        assert_eq!(Owner::parse(&owner.render()), Some(owner));
        assert_eq!(Owner::parse("4242\n/tmp/x\n"), None);
        assert_eq!(Owner::parse(""), None);
    }

    #[test]
    fn start_time_survives_odd_process_names() {
        let stat = "77 (a) b (c)) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time(&stat.replace(") S ", ") Z ")), None);
        assert_eq!(parse_start_time("77 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = Owner::current(Path::new("/tmp"));
        assert!(me.is_alive());
        let recycled = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
    }
}
