//! The test application `isthmus-lab-app` in a lab: servers that answer with their name
//! (started with [`Lab::start_server`], kept by the lab and killed with it like gateways), and
//! clients run to completion whose JSON comes back parsed ([`Lab::probe`], [`Lab::transfer`],
//! [`Lab::rate`]). The binary is found like the gateway, in [`Lab::bin_dir`].
//!
//! Apps are named by the caller; the name keys every later call and names the log files
//! `<dir>/NNN-<name>.stdout|stderr`. A server's stdout holds one line per TCP connection or
//! UDP datagram it received ([`Arrival`]), so a test can count what reached each backend.

pub mod report;
pub mod spec;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::lab::{lock, Lab};
use crate::netns;
use crate::process::{tail, ChildGuard, Signal};
pub use report::{Arrival, Attempt, ProbeReport, Proto, RateReport, Summary, TransferReport};
pub use spec::{Attempts, Probe, Serve};

/// The test application's binary.
pub const APP_BIN: &str = "isthmus-lab-app";
/// How long `serve` may take from exec to printing that its sockets are bound.
pub const APP_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an app may take to exit after SIGTERM.
pub const APP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Lab {
    /// Starts `isthmus-lab-app ARGS…` in namespace `ns` under `name`, without waiting for
    /// anything. The lab keeps the process (killing it when the lab drops); a running app of
    /// the same name is an error, an exited one is replaced (its logs stay on disk).
    pub fn start_app<S: AsRef<OsStr>>(&self, ns: &str, name: &str, args: &[S]) -> Result<()> {
        let bin = self.binary(APP_BIN)?;
        let mut apps = lock(&self.apps);
        if let Some(old) = apps.get_mut(name) {
            if old.is_running() {
                bail!("an app named {name} is already running");
            }
        }
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let child = ChildGuard::spawn(ns, &self.next_log_name(name), &cmd, self.dir())?;
        apps.insert(name.to_owned(), child);
        Ok(())
    }

    /// Starts `serve` in `ns` under `name` and waits until every socket is bound. Fails
    /// quoting the app's stderr when it exits first (a bad address, a port in use).
    pub fn start_server(&self, ns: &str, name: &str, serve: &Serve) -> Result<()> {
        self.start_app(ns, name, &serve.args())?;
        let deadline = Instant::now() + APP_START_TIMEOUT;
        loop {
            let mut apps = lock(&self.apps);
            let child = apps.get_mut(name).expect("inserted by start_app");
            if child.stdout().lines().any(|l| l == report::READY_LINE) {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "server {name} in {ns} exited with {status} before it was ready; its \
                     stderr:\n{}",
                    tail(&child.stderr(), 20)
                );
            }
            if Instant::now() >= deadline {
                child.kill();
                bail!("server {name} in {ns} not ready within {APP_START_TIMEOUT:?}");
            }
            drop(apps);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything app `name` has written to stdout. Panics for a name never started.
    pub fn app_stdout(&self, name: &str) -> String {
        self.with_app(name, |c| c.stdout())
    }

    pub fn app_stderr(&self, name: &str) -> String {
        self.with_app(name, |c| c.stderr())
    }

    /// The connections and datagrams server `name` has logged so far.
    pub fn app_arrivals(&self, name: &str) -> Vec<Arrival> {
        Arrival::parse_log(&self.app_stdout(name))
    }

    pub fn app_running(&self, name: &str) -> bool {
        self.with_app(name, ChildGuard::is_running)
    }

    pub fn app_pid(&self, name: &str) -> u32 {
        self.with_app(name, |c| c.pid())
    }

    /// Sends `sig` to app `name` without waiting.
    pub fn signal_app(&self, name: &str, sig: Signal) -> Result<()> {
        self.with_app(name, |c| c.signal(sig))
    }

    /// Sends `sig` and waits up to [`APP_STOP_TIMEOUT`] for the exit (past that the app is
    /// SIGKILLed and this is an error).
    pub fn stop_app(&self, name: &str, sig: Signal) -> Result<ExitStatus> {
        self.with_app(name, |c| c.stop(sig, APP_STOP_TIMEOUT))
    }

    /// Prints the tails of every app's logs to stderr.
    pub fn dump_app_logs(&self) {
        for child in lock(&self.apps).values() {
            child.dump();
        }
    }

    /// Runs `probe` from `ns` to completion and parses what it printed.
    pub fn probe(&self, ns: &str, probe: &Probe) -> Result<ProbeReport> {
        let out = self.run_app(ns, &probe.args())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure_success("probe", ns, &out)?;
        ProbeReport::parse(&stdout).with_context(|| format!("probe in {ns} printed:\n{stdout}"))
    }

    /// Starts `probe` from `ns` in the background under `name` (to disturb the lab while it
    /// runs); [`Lab::wait_probe`] collects it.
    pub fn start_probe(&self, ns: &str, name: &str, probe: &Probe) -> Result<()> {
        self.start_app(ns, name, &probe.args())
    }

    /// Waits up to `timeout` for the probe started as `name` to finish and parses its output.
    pub fn wait_probe(&self, name: &str, timeout: Duration) -> Result<ProbeReport> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.with_app(name, ChildGuard::try_wait)? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("probe {name} still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.app_stdout(name);
        anyhow::ensure!(
            status.success(),
            "probe {name} exited with {status}: {}",
            tail(&self.app_stderr(name), 20)
        );
        ProbeReport::parse(&stdout).with_context(|| format!("probe {name} printed:\n{stdout}"))
    }

    /// Runs `transfer` of `bytes` from `ns` to `target`. The report comes back also when the
    /// echo differed (`ok` false); an error means the app printed no report at all.
    pub fn transfer(&self, ns: &str, target: SocketAddr, bytes: u64) -> Result<TransferReport> {
        self.run_json(ns, &spec::transfer_args(target, bytes))
    }

    /// Runs `rate` from `ns` against `target` for `seconds` with `concurrency` clients.
    pub fn rate(
        &self,
        ns: &str,
        target: SocketAddr,
        seconds: f64,
        concurrency: u32,
    ) -> Result<RateReport> {
        let args = spec::rate_args(target, seconds, concurrency);
        let out = self.run_app(ns, &args)?;
        ensure_success("rate", ns, &out)?;
        parse_last_line(&out, &args)
    }

    fn run_app(&self, ns: &str, args: &[String]) -> Result<Output> {
        let bin = self.binary(APP_BIN)?;
        let mut argv = vec![bin.into_os_string()];
        argv.extend(args.iter().map(Into::into));
        netns::exec(ns, &argv)
    }

    fn run_json<T: DeserializeOwned>(&self, ns: &str, args: &[String]) -> Result<T> {
        let out = self.run_app(ns, args)?;
        parse_last_line(&out, args)
    }

    fn with_app<T>(&self, name: &str, f: impl FnOnce(&mut ChildGuard) -> T) -> T {
        let mut apps = lock(&self.apps);
        let child = apps
            .get_mut(name)
            .unwrap_or_else(|| panic!("no app named {name} in lab {}", self.id));
        f(child)
    }
}

fn ensure_success(what: &str, ns: &str, out: &Output) -> Result<()> {
    anyhow::ensure!(
        out.status.success(),
        "{what} in {ns} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The app's report: the last line of its stdout as JSON.
fn parse_last_line<T: DeserializeOwned>(out: &Output, args: &[String]) -> Result<T> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| {
        format!(
            "isthmus-lab-app {} ({}) printed no report: {}{}",
            args.join(" "),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
