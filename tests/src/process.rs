//! Processes started inside a namespace: killed and reaped when their guard drops, output kept
//! in files for assertions and dumped when a test panics.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns;

/// Lines of each log printed when a test panics with the process still guarded.
const DUMP_TAIL_LINES: usize = 200;

/// Signals the lab sends, by the names `kill -s` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Int,
    Hup,
    /// Freezes the process: a peer that stops answering without closing anything.
    Stop,
    Cont,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// Sends `sig` to `pid` through kill(1).
pub fn send_signal(pid: u32, sig: Signal) -> Result<()> {
    netns::checked(Command::new("kill").args(["-s", sig.name(), &pid.to_string()])).map(drop)
}

/// `cmd` rewritten as `ip netns exec NS program args…`, keeping its environment changes and
/// working directory. `ip netns exec` execs the program, so the child's pid is the program's.
/// An `env_clear()` on `cmd` cannot be seen through `Command`'s getters and is lost.
pub fn in_namespace(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    copy_env(cmd, &mut wrapped);
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Carries `cmd`'s environment changes over to `wrapped`.
fn copy_env(cmd: &Command, wrapped: &mut Command) {
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
}

/// A child process that is SIGKILLed (with its process group) and reaped when the guard drops.
///
/// Its stdout and stderr go to `<log_dir>/<name>.stdout` / `.stderr`. Drop the guard before the
/// lab that made it (locals drop in reverse order, so `let lab = …; let child = lab.spawn(…)`
/// does this), or the logs are gone with the lab's directory.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
    group_killed: bool,
}

impl ChildGuard {
    /// Starts `cmd` inside namespace `ns`, in a process group of its own so that a Ctrl-C on
    /// the terminal reaches only the lab, which then tears down in order.
    pub fn spawn(ns: &str, name: &str, cmd: &Command, log_dir: &Path) -> Result<ChildGuard> {
        ChildGuard::spawn_wrapped(name, in_namespace(ns, cmd), log_dir)
    }

    /// Like [`ChildGuard::spawn`], but entering only the network namespace (`nsenter --net`):
    /// `ip netns exec` also remounts `/sys`, which hides the cgroup mounts under it.
    pub fn spawn_net_only(
        ns: &str,
        name: &str,
        cmd: &Command,
        log_dir: &Path,
    ) -> Result<ChildGuard> {
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        copy_env(cmd, &mut wrapped);
        ChildGuard::spawn_wrapped(name, wrapped, log_dir)
    }

    fn spawn_wrapped(name: &str, mut wrapped: Command, log_dir: &Path) -> Result<ChildGuard> {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("failed to create {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("failed to create {}", stderr_path.display()))?;
        wrapped
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = wrapped
            .spawn()
            .with_context(|| format!("failed to start `{}`", netns::describe(&wrapped)))?;
        tracing::debug!(name, pid = child.id(), cmd = %netns::describe(&wrapped), "spawned");
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            stdout_path,
            stderr_path,
            exit: None,
            group_killed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.exit.is_some() {
            bail!("{} has already exited", self.name);
        }
        send_signal(self.pid(), sig)
    }

    /// The exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("failed to poll {}", self.name))?;
        }
        Ok(self.exit)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits up to `timeout` for the exit. A process still running then is
    /// SIGKILLed and reported as an error: it did not honour the signal.
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(sig)?;
        if let Some(status) = self.wait_timeout(timeout)? {
            return Ok(status);
        }
        self.kill();
        bail!(
            "{} did not exit within {timeout:?} of SIG{}; killed",
            self.name,
            sig.name()
        )
    }

    /// SIGKILLs the process and everything in its process group (a shell's children, a
    /// daemon's helpers), then reaps it.
    pub fn kill(&mut self) {
        if !self.group_killed {
            self.group_killed = true;
            // The child leads its own group (see `spawn`), so `-pid` names exactly that group.
            // Errors mean the group is already empty.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.pid())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Prints the tail of both logs to stderr (which the test harness shows for a failed test).
    pub fn dump(&self) {
        for (stream, path) in [("stdout", &self.stdout_path), ("stderr", &self.stderr_path)] {
            let text = read_lossy(path);
            if text.trim().is_empty() {
                continue;
            }
            eprintln!("----- {} {stream} ({}) -----", self.name, path.display());
            let tail = tail(&text, DUMP_TAIL_LINES);
            eprint!("{tail}");
            if !tail.ends_with('\n') {
                eprintln!();
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.dump();
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut start = body.len();
    for _ in 0..n {
        match body[..start].rfind('\n') {
            Some(pos) => start = pos,
            None => return text,
        }
    }
    &text[start + 1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_namespace_keeps_args_env_and_dir() {
        let mut cmd = Command::new("/bin/echo");
        cmd.args(["a", "b c"])
            .env("ISTHMUS_X", "1")
            .env_remove("HOME")
            .current_dir("/tmp");
        let wrapped = in_namespace("ns1", &cmd);
        assert_eq!(
            netns::describe(&wrapped),
            "ip netns exec ns1 /bin/echo a b c"
        );
        let envs: Vec<_> = wrapped.get_envs().collect();
        assert!(envs.contains(&("ISTHMUS_X".as_ref(), Some("1".as_ref()))));
        assert!(envs.contains(&("HOME".as_ref(), None)));
        assert_eq!(wrapped.get_current_dir(), Some(Path::new("/tmp")));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }
}
