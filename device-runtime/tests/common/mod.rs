//! Shared harness: a real `runtime` process on a temp storage directory, real runc,
//! images built here from the host's static busybox.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use device_runtime::client::Client;
use device_runtime::testkit;
use serde_json::{Value, json};

/// Fails loudly (never skips) when the machine cannot run containers.
/// The `runtime` binary: Cargo names it for this crate's own tests; the agent's tests,
/// which share this module, find it beside their own executable (`cargo test
/// --workspace` builds it).
pub fn runtime_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_runtime") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("runtime");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p edgevisor-device-runtime)",
        bin.display()
    );
    bin
}

pub fn require_tools() {
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        matches!(runc, Ok(ref o) if o.status.success()),
        "runc is required for these tests (install it with e2e/lib/tools.sh or apt-get install runc)"
    );
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is required (apt-get install busybox-static)"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests run containers and need root"
    );
}

pub struct Device {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
}

impl Device {
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
    pub fn socket(&self) -> PathBuf {
        self.storage().join("control.sock")
    }
    pub fn client(&self) -> Client {
        Client::new(&self.socket())
    }

    pub fn new(extra: &[&str]) -> Device {
        Device::with_policy(extra, None)
    }

    /// With a device policy (`policy.json` in its directory) besides `extra` flags.
    pub fn with_policy(extra: &[&str], policy: Option<&str>) -> Device {
        require_tools();
        let mut d = Device {
            dir: tempfile::Builder::new()
                .prefix("evrt")
                .tempdir_in("/tmp")
                .unwrap(),
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(p) = policy {
            let path = d.dir.path().join("policy.json");
            std::fs::write(&path, p).unwrap();
            d.extra_args
                .extend(["--policy".into(), path.display().to_string()]);
        }
        d.start();
        d
    }

    pub fn start(&mut self) {
        self.spawn();
        let t = Instant::now();
        // Until it accepts a connection, not only until its socket file appears.
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "runtime did not come up:\n{}",
                self.log()
            );
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("runtime exited with {st}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the runtime without waiting for its socket (it may still be recovering).
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("runtime.log"))
            .unwrap();
        let child = Command::new(runtime_bin())
            .arg("--storage")
            .arg(self.storage())
            .args(["--stop-grace-seconds", "1", "--log", "debug"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start runtime");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runtime.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the runtime gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
        // Containers left by a killed runtime: remove them so cgroups do not leak.
        let root = self.storage().join("runc");
        if let Ok(o) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "-f", id])
                    .output();
            }
        }
    }
}

/// Uploads the busybox image (layer + config) and returns its `image` JSON.
pub async fn busybox_image(c: &Client, dir: &Path) -> Value {
    let layer = testkit::busybox_layer().unwrap();
    let config = testkit::image_config(&["/bin/sh"]);
    for (name, data) in [("layer", &layer), ("config", &config)] {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        c.put_object_file(&p).await.unwrap();
    }
    json!({"config": testkit::descriptor(&config), "layers": [testkit::descriptor(&layer)]})
}

pub fn container(name: &str, image: &Value, script: &str) -> Value {
    json!({"name": name, "image": image, "command": ["/bin/sh", "-c", script]})
}

pub fn state(containers: Vec<Value>, goal: u64, test: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "#spec": "edgevisor-state@1",
        "goalTimeoutSeconds": goal,
        "testPeriodSeconds": test,
        "containers": containers,
    }))
    .unwrap()
}

/// Polls progress until it rests (DONE, ERROR, WONTGO).
pub async fn wait_rest(c: &Client, rev: &str, timeout: Duration) -> Value {
    let t = Instant::now();
    loop {
        if let Ok(p) = c.progress(rev).await
            && !p.status.is_active()
            && p.status != device_runtime::lifecycle::Status::Queued
        {
            return serde_json::to_value(p).unwrap();
        }
        assert!(t.elapsed() < timeout, "{rev} did not finish in {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn install_and_run(c: &Client, rev: &str, st: Vec<u8>) -> Value {
    c.put_step(rev, st).await.unwrap();
    c.run(rev).await.unwrap();
    wait_rest(c, rev, Duration::from_secs(60)).await
}

pub async fn steps_by_rev(c: &Client) -> std::collections::BTreeMap<String, Value> {
    c.steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.rev.clone(), serde_json::to_value(s).unwrap()))
        .collect()
}

pub async fn containers(c: &Client) -> Vec<Value> {
    c.get::<Vec<Value>>("/containers").await.unwrap()
}

/// Names and revisions of running containers.
pub async fn running(c: &Client) -> Vec<(String, String)> {
    containers(c)
        .await
        .into_iter()
        .filter(|x| x["state"] == "running")
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["revision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Serves `handler` over HTTP/1.1 on a free loopback port (the port is returned) until the
/// test ends: the stand-in gateways and registries of the agent tests.
#[allow(dead_code)]
pub async fn serve_loopback<S, F, B>(
    state: std::sync::Arc<S>,
    handler: fn(std::sync::Arc<S>, hyper::Request<hyper::body::Incoming>) -> F,
) -> u16
where
    S: Send + Sync + 'static,
    F: std::future::Future<Output = Result<hyper::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handler(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

/// The sha256 of `bytes`, hex.
#[allow(dead_code)]
pub fn hex_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
