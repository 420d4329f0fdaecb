//! Running the workspace's own binaries as test processes: building them once with cargo,
//! logging to files, reading log tails for failure messages, free ports.
use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::Env;

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The path of binary `bin` of package `package`, built with cargo (a no-op when up to date)
/// once per test binary; or, when the environment variable `override_var` is set, the binary it
/// names (the benchmarks' optimised builds).
pub fn cargo_binary(env: &Env, package: &str, bin: &str, override_var: &str) -> PathBuf {
    if let Ok(given) = std::env::var(override_var) {
        return PathBuf::from(given);
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(bin) {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(&env.repo)
        .status()
        .expect("running cargo build");
    assert!(
        status.success(),
        "building {bin} of {package} failed (or set {override_var} to a built binary)"
    );
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| env.repo.join("target"));
    let path = target.join("debug").join(bin);
    built.insert(bin.to_string(), path.clone());
    path
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free TCP port on a local address.
pub fn free_port_on(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Opens (creating, appending) a log file, creating its directory.
pub fn open_log(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?)
}

/// The last `lines` lines of a log file ("" when it does not exist).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process with its log file, killed when dropped. The controller and the gateway
/// harnesses hold one and dereference to it.
pub struct Managed {
    child: std::process::Child,
    /// Its log file.
    pub log: std::path::PathBuf,
    tail: usize,
}

impl Managed {
    pub fn new(child: std::process::Child, log: std::path::PathBuf, tail: usize) -> Managed {
        Managed { child, log, tail }
    }

    /// SIGKILL: no cleanup, as a crash or a node loss.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            anyhow::bail!("kill -TERM failed");
        }
        self.child.wait()?;
        Ok(())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, self.tail)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `command` with its output appended to `log` and no input; without backtraces, since
/// the panic message says where and whole backtraces would push it out of log tails.
pub fn spawn_logged(
    command: &mut std::process::Command,
    log: &Path,
) -> anyhow::Result<std::process::Child> {
    use anyhow::Context as _;
    let out = open_log(log)?;
    command
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))
}
