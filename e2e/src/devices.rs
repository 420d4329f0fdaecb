//! Real devices for end-to-end tests: on each, the device runtime (`runtime`, containers run by
//! runc) and the cloud agent (`agent`, which enrolls with the gateway and applies its targets
//! through the runtime's control socket), both started in the device's own network namespace
//! (see [`crate::netns`]), each device with a directory of its own:
//!
//! ```text
//! <dir>/storage/              the runtime's storage (objects, revisions, rootfs, runc state)
//! <dir>/storage/control.sock  its control socket
//! <dir>/agent/                the agent's state (credential.json)
//! <dir>/bootstrap-token       the bootstrap token the agent enrolls with
//! <dir>/runtime.log, agent.log
//! ```
//!
//! Both processes lead their own process group and are killed with it on drop; containers a
//! killed runtime left behind are deleted with runc. The directory is removed on drop unless the
//! test is failing, so its logs and store can be read afterwards.
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use device_runtime::client::Client;
use serde::Deserialize;

use crate::Env;
use crate::netns::in_netns;
use crate::process::{cargo_binary, log_tail, spawn_logged};

/// The `runtime` binary (built once), or `EDGEVISOR_RUNTIME_BIN`.
pub fn runtime_binary(env: &Env) -> PathBuf {
    cargo_binary(
        env,
        "edgevisor-device-runtime",
        "runtime",
        "EDGEVISOR_RUNTIME_BIN",
    )
}

/// The `agent` binary (built once), or `EDGEVISOR_AGENT_BIN`.
pub fn agent_binary(env: &Env) -> PathBuf {
    cargo_binary(env, "edgevisor-agent", "agent", "EDGEVISOR_AGENT_BIN")
}

/// The `evctl` binary (built once), or `EDGEVISOR_EVCTL_BIN`.
pub fn evctl_binary(env: &Env) -> PathBuf {
    cargo_binary(
        env,
        "edgevisor-device-runtime",
        "evctl",
        "EDGEVISOR_EVCTL_BIN",
    )
}

/// Fails with what to install unless this machine can run real devices: root, runc, nsenter,
/// ip and a static busybox for the images.
pub fn require_tools() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("real devices need root (network namespaces, runc)");
    }
    for (tool, arg) in [
        ("runc", "--version"),
        ("nsenter", "--version"),
        ("ip", "-V"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!("{tool} is required (e2e/lib/tools.sh installs it)");
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        bail!("/bin/busybox is required (apt-get install busybox-static)");
    }
    Ok(())
}

/// What the agent stores after enrolling (`<state-dir>/credential.json`).
#[derive(Clone, Debug, Deserialize)]
pub struct Credential {
    /// The Device's namespace.
    pub namespace: String,
    /// The Device's name.
    pub name: String,
    /// The per-device credential (`Authorization: Bearer`).
    pub credential: String,
    /// The gateway it enrolled with.
    #[serde(default)]
    pub gateway: String,
}

/// How to start one device.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The name it enrolls as (a DNS label).
    pub name: String,
    /// The network namespace it runs in.
    pub netns: String,
    /// Its own directory (wiped first). Keep it short: the control socket's path must fit in
    /// 108 bytes.
    pub dir: PathBuf,
    /// The gateway's URL as the device reaches it: `https://host:port`.
    pub gateway: String,
    /// The CA certificate the gateway's certificate is checked against.
    pub ca_cert: PathBuf,
    /// The bootstrap token it enrolls with.
    pub bootstrap_token: String,
    /// `amd64`, `arm64`, `arm/v7` or `riscv64`.
    pub architecture: String,
    /// `--info k=v` of the agent.
    pub info: Vec<(String, String)>,
    /// More flags of the runtime.
    pub runtime_args: Vec<String>,
    /// More flags of the agent.
    pub agent_args: Vec<String>,
    /// The controller's revision-signing public key (`--revision-key`); without it the agent
    /// installs unsigned targets (`--allow-unsigned-revisions`).
    pub revision_key: Option<String>,
}

impl DeviceOptions {
    /// An amd64 device `name` in `netns`, in `<base>/<name>`.
    pub fn new(
        name: &str,
        netns: &str,
        base: &Path,
        gateway: &str,
        ca_cert: &Path,
        bootstrap_token: &str,
    ) -> DeviceOptions {
        DeviceOptions {
            name: name.to_string(),
            netns: netns.to_string(),
            dir: base.join(name),
            gateway: gateway.to_string(),
            ca_cert: ca_cert.to_path_buf(),
            bootstrap_token: bootstrap_token.to_string(),
            architecture: "amd64".to_string(),
            info: Vec::new(),
            runtime_args: Vec::new(),
            agent_args: Vec::new(),
            revision_key: None,
        }
    }
}

/// One device: its runtime and its agent; both killed on drop.
pub struct RealDevice {
    options: DeviceOptions,
    agent_bin: PathBuf,
    runtime: Option<Child>,
    agent: Option<Child>,
    /// Keep the directory on drop (see [`RealDevice::keep_dir`]).
    keep: bool,
}

// === impl RealDevice ===

impl RealDevice {
    /// Wipes the device's directory, starts its runtime in its namespace, waits for the control
    /// socket, then starts its agent (which enrolls by itself).
    pub fn start(env: &Env, options: &DeviceOptions) -> anyhow::Result<RealDevice> {
        let runtime_bin = runtime_binary(env);
        let agent_bin = agent_binary(env);
        let socket = options.dir.join("storage/control.sock");
        if socket.as_os_str().len() >= 100 {
            bail!(
                "{}: too long for a UNIX socket; give the device a shorter directory",
                socket.display()
            );
        }
        delete_containers(&options.dir.join("storage/runc"));
        match std::fs::remove_dir_all(&options.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context(format!("wiping {}", options.dir.display())),
        }
        std::fs::create_dir_all(options.dir.join("storage"))?;
        std::fs::create_dir_all(options.dir.join("agent"))?;
        let token = options.dir.join("bootstrap-token");
        std::fs::write(&token, &options.bootstrap_token)?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
        if let Some(key) = &options.revision_key {
            std::fs::write(options.dir.join("revision.pub"), key)?;
        }

        let runtime = spawn_logged(
            in_netns(&options.netns, &runtime_bin)
                .arg("--storage")
                .arg(options.dir.join("storage"))
                .args(["--stop-grace-seconds", "1", "--log", "info"])
                .args(&options.runtime_args)
                .process_group(0),
            &options.dir.join("runtime.log"), // RealDevice::runtime_log
        )?;
        let mut device = RealDevice {
            options: options.clone(),
            agent_bin,
            runtime: Some(runtime),
            agent: None,
            keep: false,
        };
        let started = Instant::now();
        while !device.socket().exists() {
            if let Some(Ok(Some(status))) = device.runtime.as_mut().map(Child::try_wait) {
                bail!(
                    "{}: the runtime exited ({status}):\n{}",
                    options.name,
                    device.runtime_log_tail(30)
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{}: the runtime's control socket did not appear:\n{}",
                    options.name,
                    device.runtime_log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        device.start_agent()?;
        Ok(device)
    }

    /// Starts the agent (again, after [`RealDevice::stop_agent`]); it finds its credential in
    /// its state directory, or enrolls.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        if self.agent.is_some() {
            bail!("{}: the agent runs already", self.options.name);
        }
        let o = &self.options;
        let mut command = in_netns(&o.netns, &self.agent_bin);
        command
            .args(["--gateway", &o.gateway])
            .arg("--ca-cert")
            .arg(&o.ca_cert)
            .arg("--runtime-socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--name", &o.name, "--architecture", &o.architecture])
            .arg("--bootstrap-token-file")
            .arg(o.dir.join("bootstrap-token"));
        if o.revision_key.is_some() {
            command
                .arg("--revision-key")
                .arg(o.dir.join("revision.pub"));
        } else {
            command.arg("--allow-unsigned-revisions");
        }
        for (k, v) in &o.info {
            command.args(["--info", &format!("{k}={v}")]);
        }
        let agent = spawn_logged(
            command
                .args(&o.agent_args)
                .env("EDGEVISOR_LOG", "info")
                .process_group(0),
            &self.agent_log(),
        )?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Kills the agent (its process group); the runtime and its containers go on.
    pub fn stop_agent(&mut self) {
        kill_group(self.agent.take());
    }

    /// Resident memory of its runtime and its agent, in bytes (0 for one not running).
    pub fn rss_bytes(&self) -> (u64, u64) {
        let rss = |child: Option<&Child>| {
            child
                .and_then(|c| crate::measure::rss_bytes(c.id()).ok())
                .unwrap_or(0)
        };
        (rss(self.runtime.as_ref()), rss(self.agent.as_ref()))
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The network namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.options.netns
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// The runtime's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.options.dir.join("storage")
    }

    /// The runtime's control socket.
    pub fn socket(&self) -> PathBuf {
        self.storage().join("control.sock")
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.options.dir.join("agent")
    }

    /// A client of the runtime's control socket (from the root namespace: a UNIX socket does
    /// not care about network namespaces).
    pub fn client(&self) -> Client {
        Client::new(&self.socket())
    }

    /// The credential the agent stored, once it enrolled.
    pub fn credential(&self) -> anyhow::Result<Credential> {
        let path = self.state_dir().join("credential.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Waits until the agent stored its credential; fails early if the agent exits.
    pub fn wait_enrolled(&mut self, timeout: Duration) -> anyhow::Result<Credential> {
        let started = Instant::now();
        loop {
            if let Ok(credential) = self.credential() {
                return Ok(credential);
            }
            if !self.agent_running() {
                bail!(
                    "{}: the agent is not running and did not enroll:\n{}",
                    self.options.name,
                    self.agent_log_tail(30)
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "{}: not enrolled within {timeout:?}:\n{}",
                    self.options.name,
                    self.agent_log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keeps the device's directory (logs, store) when it is dropped, as after a panic: for a
    /// caller that fails with an error rather than a panic.
    pub fn keep_dir(&mut self) {
        self.keep = true;
    }

    /// Whether the agent runs.
    pub fn agent_running(&mut self) -> bool {
        matches!(self.agent.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Whether the runtime runs.
    pub fn runtime_running(&mut self) -> bool {
        matches!(self.runtime.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The runtime's log file.
    pub fn runtime_log(&self) -> PathBuf {
        self.options.dir.join("runtime.log")
    }

    /// The agent's log file.
    pub fn agent_log(&self) -> PathBuf {
        self.options.dir.join("agent.log")
    }

    /// The last lines of the runtime's log.
    pub fn runtime_log_tail(&self, lines: usize) -> String {
        log_tail(&self.runtime_log(), lines)
    }

    /// The last lines of the agent's log.
    pub fn agent_log_tail(&self, lines: usize) -> String {
        log_tail(&self.agent_log(), lines)
    }

    /// Both logs' last lines, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {} agent ---\n{}\n--- {} runtime ---\n{}",
            self.options.name,
            self.agent_log_tail(30),
            self.options.name,
            self.runtime_log_tail(20)
        )
    }

    /// Stops everything: the agent (killed), the runtime (SIGTERM, so it stops its containers;
    /// SIGKILL to its group after 15 s), then any container left.
    pub fn shutdown(&mut self) {
        self.stop_agent();
        if let Some(mut runtime) = self.runtime.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(runtime.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = runtime.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_group(Some(runtime));
        }
        delete_containers(&self.storage().join("runc"));
    }
}

impl Drop for RealDevice {
    fn drop(&mut self) {
        self.shutdown();
        if self.keep || std::thread::panicking() {
            eprintln!(
                "device {}: kept {} for inspection",
                self.options.name,
                self.options.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.options.dir);
        }
    }
}

/// SIGKILL to the child's process group (it leads one), then reaps it.
fn kill_group(child: Option<Child>) {
    let Some(mut child) = child else { return };
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Deletes every container of a runc state directory (what a killed runtime left running).
pub fn delete_containers(root: &Path) {
    if !root.is_dir() {
        return;
    }
    let Ok(out) = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", id])
            .output();
    }
}
