//! Keeps one container running according to its restart policy.
//!
//! Each container has a task that runs `<oci> run` in the foreground, pumps its
//! output into a rotating log file, and on exit decides (with the pure
//! [`should_restart`] and [`backoff`]) whether to start it again. A second task runs
//! the health check. Both publish into a shared [`ContainerStatus`] that the try
//! loop, the API and the caller-identification code read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::Container as WireContainer;
use crate::oci::OciRuntime;
use crate::state::{Container, HealthCheck, RestartPolicy};

pub use crate::control::{Goal, RunState};

/// A supervised container: what the control socket shows of it, plus what only the
/// supervisor needs.
#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub wire: WireContainer,
    pub started: Option<Instant>,
    /// Size of the log when this handle started: a failure report shows only what
    /// this revision's container wrote.
    pub log_start: u64,
    pub error: Option<String>,
}

// A supervised container reads as its wire status: `status.state`, `status.at_goal()`.
impl std::ops::Deref for ContainerStatus {
    type Target = WireContainer;
    fn deref(&self) -> &WireContainer {
        &self.wire
    }
}

impl std::ops::DerefMut for ContainerStatus {
    fn deref_mut(&mut self) -> &mut WireContainer {
        &mut self.wire
    }
}

pub fn goal_of(c: &Container) -> Goal {
    match c.health {
        None => Goal::Running,
        Some(HealthCheck::Signal {}) => Goal::Ready,
        Some(_) => Goal::Healthy,
    }
}

/// `on-failure` restarts unless the exit code is one the state calls success.
pub fn should_restart(policy: RestartPolicy, success: &[i32], code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !success.contains(&code),
    }
}

/// 200 ms doubling per consecutive failure, capped at 30 s.
pub fn backoff(consecutive: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << consecutive.min(8));
    Duration::from_millis(ms.min(30_000))
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub max_bytes: u64,
}

/// A running (or restarting) container and the means to stop it.
#[derive(Debug)]
pub struct Handle {
    pub name: String,
    pub id: String,
    pub status: Arc<Mutex<ContainerStatus>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    health: Option<JoinHandle<()>>,
}

pub struct Spec {
    pub container: Container,
    pub revision: String,
    pub id: String,
    pub bundle: PathBuf,
    pub log: PathBuf,
    pub log_cfg: LogConfig,
    pub stop_grace: Duration,
}

pub fn snapshot(s: &Arc<Mutex<ContainerStatus>>) -> ContainerStatus {
    match s.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn update(s: &Arc<Mutex<ContainerStatus>>, f: impl FnOnce(&mut ContainerStatus)) {
    match s.lock() {
        Ok(mut g) => f(&mut g),
        Err(p) => f(&mut p.into_inner()),
    }
}

// === impl Handle ===

impl Handle {
    pub fn start(oci: Arc<dyn OciRuntime>, spec: Spec) -> Handle {
        let status = Arc::new(Mutex::new(ContainerStatus {
            wire: WireContainer::new(
                &spec.container.name,
                &spec.revision,
                &spec.id,
                RunState::Starting,
                goal_of(&spec.container),
            ),
            started: None,
            log_start: std::fs::metadata(&spec.log).map(|m| m.len()).unwrap_or(0),
            error: None,
        }));
        let (stop, stop_rx) = watch::channel(false);
        let health = spec.container.health.clone().and_then(|h| match h {
            HealthCheck::Signal {} => None,
            h => Some(tokio::spawn(health_loop(
                oci.clone(),
                spec.id.clone(),
                h,
                status.clone(),
                stop_rx.clone(),
            ))),
        });
        let task = tokio::spawn(run_loop(oci, spec, status.clone(), stop_rx));
        Handle {
            name: status_name(&status),
            id: snapshot(&status).wire.id,
            status,
            stop,
            task,
            health,
        }
    }

    pub fn snapshot(&self) -> ContainerStatus {
        snapshot(&self.status)
    }

    pub fn signal_ready(&self) {
        update(&self.status, |s| s.ready = true);
    }

    /// Stops the container (TERM, then KILL after the grace period) and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.health {
            h.abort();
        }
        let _ = self.task.await;
    }
}

fn status_name(s: &Arc<Mutex<ContainerStatus>>) -> String {
    snapshot(s).wire.name
}

async fn run_loop(
    oci: Arc<dyn OciRuntime>,
    spec: Spec,
    status: Arc<Mutex<ContainerStatus>>,
    mut stop: watch::Receiver<bool>,
) {
    let pid_file = spec.bundle.join("pid");
    let mut consecutive = 0u32;
    let log = Arc::new(Mutex::new(LogFile::open(&spec.log, spec.log_cfg.max_bytes)));
    loop {
        if *stop.borrow() {
            break;
        }
        let _ = std::fs::remove_file(&pid_file);
        update(&status, |s| {
            s.state = RunState::Starting;
            s.pid = None;
            s.ready = false;
            s.healthy = None;
        });
        let mut child = match oci.run(&spec.id, &spec.bundle, &pid_file) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(container = %spec.container.name, error = %e, "cannot start");
                update(&status, |s| {
                    s.state = RunState::Exited;
                    s.error = Some(e.to_string());
                });
                break;
            }
        };
        let pumps: Vec<_> = child
            .take_output()
            .into_iter()
            .map(|o| tokio::spawn(pump(o, log.clone())))
            .collect();
        let started = Instant::now();
        // Running once the OCI runtime wrote the init pid (after `start`).
        let wait_pid = async {
            loop {
                if let Ok(s) = std::fs::read_to_string(&pid_file)
                    && let Ok(pid) = s.trim().parse::<u32>()
                {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        enum First {
            Pid(u32),
            Exit(Option<i32>),
            Stop,
        }
        let first = tokio::select! {
            pid = wait_pid => First::Pid(pid),
            r = child.wait() => First::Exit(r),
            _ = stop.wait_for(|s| *s) => First::Stop,
        };
        let mut stopped = false;
        let exit = match first {
            First::Pid(pid) => {
                update(&status, |s| {
                    s.state = RunState::Running;
                    s.pid = Some(pid);
                    s.started = Some(Instant::now());
                });
                tracing::info!(container = %spec.container.name, pid, "running");
                tokio::select! {
                    r = child.wait() => r,
                    _ = stop.wait_for(|s| *s) => { stopped = true; None }
                }
            }
            First::Exit(r) => r,
            First::Stop => {
                stopped = true;
                None
            }
        };
        if stopped {
            let _ = oci.kill(&spec.id, "TERM").await;
            if tokio::time::timeout(spec.stop_grace, child.wait())
                .await
                .is_err()
            {
                let _ = oci.kill(&spec.id, "KILL").await;
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                child.start_kill();
            }
            let _ = oci.delete_force(&spec.id).await;
            for p in pumps {
                let _ = tokio::time::timeout(Duration::from_millis(200), p).await;
            }
            update(&status, |s| {
                s.state = RunState::Stopped;
                s.pid = None;
            });
            return;
        }
        for p in pumps {
            let _ = tokio::time::timeout(Duration::from_millis(500), p).await;
        }
        let code = exit.unwrap_or(-1);
        // Foreground `run` deletes on exit, but not if it failed half-way; a leftover
        // with our id would make every restart fail.
        let _ = oci.delete_force(&spec.id).await;
        tracing::info!(container = %spec.container.name, code, "exited");
        update(&status, |s| {
            s.state = RunState::Exited;
            s.pid = None;
            s.last_exit = Some(code);
        });
        if !should_restart(
            spec.container.restart_policy,
            &spec.container.success_codes(),
            code,
        ) {
            let ok = spec.container.success_codes().contains(&code);
            update(&status, |s| s.completed = ok);
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            consecutive = 0;
        }
        let wait = backoff(consecutive);
        consecutive = consecutive.saturating_add(1);
        update(&status, |s| s.state = RunState::Backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        update(&status, |s| s.restarts += 1);
    }
    let _ = oci.delete_force(&spec.id).await;
    // Stay "exited" until someone stops us, so the status remains visible.
    let _ = stop.wait_for(|s| *s).await;
    update(&status, |s| {
        if s.state != RunState::Exited {
            s.state = RunState::Stopped;
        }
    });
}

async fn pump(mut r: crate::oci::Output, log: Arc<Mutex<LogFile>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => match log.lock() {
                Ok(mut l) => l.write(&buf[..n]),
                Err(p) => p.into_inner().write(&buf[..n]),
            },
        }
    }
}

async fn health_loop(
    oci: Arc<dyn OciRuntime>,
    id: String,
    check: HealthCheck,
    status: Arc<Mutex<ContainerStatus>>,
    stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(check.interval_ms());
    loop {
        if *stop.borrow() {
            return;
        }
        if snapshot(&status).state == RunState::Running {
            let ok = probe(
                oci.as_ref(),
                &id,
                &check,
                interval.max(Duration::from_secs(1)),
            )
            .await;
            update(&status, |s| {
                if s.state == RunState::Running {
                    s.healthy = Some(ok);
                }
            });
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn probe(oci: &dyn OciRuntime, id: &str, check: &HealthCheck, timeout: Duration) -> bool {
    match check {
        HealthCheck::Exec { command, .. } => oci.exec_ok(id, command, timeout).await,
        HealthCheck::Tcp { port, .. } => matches!(
            tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect(("127.0.0.1", *port))
            )
            .await,
            Ok(Ok(_))
        ),
        HealthCheck::Http { port, path, .. } => {
            let path = path.clone().unwrap_or_else(|| "/".into());
            tokio::time::timeout(timeout, http_ok(*port, &path))
                .await
                .unwrap_or(false)
        }
        HealthCheck::Signal {} => false,
    }
}

async fn http_ok(port: u16, path: &str) -> bool {
    use tokio::io::AsyncWriteExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.x 2xx"
    head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

/// Append-only log with one rotated generation (`<name>.log.1`).
struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    max: u64,
}

impl LogFile {
    fn open(path: &Path, max: u64) -> LogFile {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        LogFile {
            path: path.to_owned(),
            file,
            size,
            max,
        }
    }

    fn write(&mut self, b: &[u8]) {
        use std::io::Write;
        if self.size + b.len() as u64 > self.max {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, rotated);
            *self = LogFile::open(&self.path, self.max);
        }
        if let Some(f) = &mut self.file
            && f.write_all(b).is_ok()
        {
            self.size += b.len() as u64;
        }
    }
}

/// The last `n` lines of a container's log (rotated generation included if needed).
pub fn tail(log: &Path, n: usize) -> Vec<String> {
    tail_since(log, 0, n)
}

/// Like [`tail`], but only what was written after byte `since` of the current file
/// (everything, if the log rotated in between).
pub fn tail_since(log: &Path, since: u64, n: usize) -> Vec<String> {
    let current = std::fs::read(log).unwrap_or_default();
    let text = match usize::try_from(since) {
        Ok(s) if s > 0 && s <= current.len() => current[s..].to_vec(),
        _ => {
            let mut rotated = log.to_path_buf().into_os_string();
            rotated.push(".1");
            let mut t = if since > 0 {
                Vec::new()
            } else {
                std::fs::read(&rotated).unwrap_or_default()
            };
            t.extend(current);
            t
        }
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::oci::fake::{Behaviour, Recording};

    fn spec(dir: &Path, extra: serde_json::Value, grace_ms: u64) -> Spec {
        let mut v = serde_json::json!({
            "name": "app",
            "image": {"config": {"digest": format!("sha256:{}", "a".repeat(64)), "size": 1},
                      "layers": [{"digest": format!("sha256:{}", "b".repeat(64)), "size": 1}]},
            "command": ["/bin/app"]
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        Spec {
            container: serde_json::from_value(v).unwrap(),
            revision: "r1".into(),
            id: "ev-app".into(),
            bundle: dir.to_owned(),
            log: dir.join("app.log"),
            log_cfg: LogConfig { max_bytes: 1 << 20 },
            stop_grace: Duration::from_millis(grace_ms),
        }
    }

    async fn until(
        h: &Handle,
        what: &str,
        f: impl Fn(&ContainerStatus) -> bool,
    ) -> ContainerStatus {
        for _ in 0..500 {
            let s = h.snapshot();
            if f(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("container never {what}: {:?}", h.snapshot());
    }

    #[tokio::test]
    async fn on_failure_restarts_with_backoff_until_a_success_code() {
        let d = tempfile::tempdir().unwrap();
        let oci = Arc::new(Recording::new(&[
            Behaviour::ExitAfter(Duration::from_millis(10), 1),
            Behaviour::ExitAfter(Duration::from_millis(10), 1),
            Behaviour::ExitAfter(Duration::from_millis(10), 0),
        ]));
        let t = Instant::now();
        let h = Handle::start(
            oci.clone(),
            spec(
                d.path(),
                serde_json::json!({"restartPolicy": "on-failure"}),
                100,
            ),
        );
        let s = until(&h, "completed", |s| s.completed).await;
        assert_eq!(
            (s.restarts, s.last_exit, s.state),
            (2, Some(0), RunState::Exited)
        );
        // Two backoffs: 200 ms then 400 ms.
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            oci.calls().iter().filter(|c| c.starts_with("run ")).count(),
            3
        );
        h.stop().await;
    }

    #[tokio::test]
    async fn never_leaves_a_failed_container_exited() {
        let d = tempfile::tempdir().unwrap();
        let oci = Arc::new(Recording::new(&[Behaviour::ExitAfter(
            Duration::from_millis(10),
            5,
        )]));
        let h = Handle::start(
            oci.clone(),
            spec(d.path(), serde_json::json!({"restartPolicy": "never"}), 100),
        );
        let s = until(&h, "exited", |s| s.state == RunState::Exited).await;
        assert_eq!((s.restarts, s.last_exit, s.completed), (0, Some(5), false));
        assert!(!s.at_goal());
        h.stop().await;
        assert_eq!(
            oci.calls().iter().filter(|c| c.starts_with("run ")).count(),
            1
        );
    }

    #[tokio::test]
    async fn stop_sends_term_then_kill_after_the_grace_period() {
        let d = tempfile::tempdir().unwrap();
        let oci = Arc::new(Recording::new(&[Behaviour::IgnoreTerm]));
        let h = Handle::start(oci.clone(), spec(d.path(), serde_json::json!({}), 100));
        let s = until(&h, "running", |s| s.state == RunState::Running).await;
        assert_eq!(s.pid, Some(4242));
        assert!(s.at_goal());
        let status = h.status.clone();
        h.stop().await;
        assert_eq!(snapshot(&status).state, RunState::Stopped);
        let calls = oci.calls();
        assert_eq!(
            calls,
            [
                "run ev-app",
                "kill ev-app TERM",
                "kill ev-app KILL",
                "delete ev-app"
            ],
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn a_container_that_honours_term_is_not_killed() {
        let d = tempfile::tempdir().unwrap();
        let oci = Arc::new(Recording::new(&[Behaviour::UntilSignal]));
        let h = Handle::start(oci.clone(), spec(d.path(), serde_json::json!({}), 5000));
        until(&h, "running", |s| s.state == RunState::Running).await;
        let t = Instant::now();
        h.stop().await;
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!oci.calls().contains(&"kill ev-app KILL".to_string()));
    }

    #[tokio::test]
    async fn exec_health_check_marks_the_container_healthy() {
        let d = tempfile::tempdir().unwrap();
        let oci = Arc::new(Recording::new(&[]));
        let extra =
            serde_json::json!({"health": {"type": "exec", "command": ["check"], "intervalMs": 20}});
        let h = Handle::start(oci.clone(), spec(d.path(), extra, 100));
        let s = until(&h, "healthy", |s| s.healthy == Some(true)).await;
        assert_eq!(s.goal, Goal::Healthy);
        assert!(s.at_goal());
        h.stop().await;
        assert!(oci.calls().contains(&"exec ev-app check".to_string()));
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart(RestartPolicy::Always, &[0], 0));
        assert!(!should_restart(RestartPolicy::Never, &[0], 1));
        assert!(should_restart(RestartPolicy::OnFailure, &[0], 1));
        assert!(!should_restart(RestartPolicy::OnFailure, &[0], 0));
        assert!(!should_restart(RestartPolicy::OnFailure, &[0, 3], 3));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(200));
        assert_eq!(backoff(1), Duration::from_millis(400));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }

    #[test]
    fn logs_rotate_and_tail_spans_generations() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = LogFile::open(&p, 20);
        l.write(b"one\ntwo\nthree\n");
        l.write(b"four\nfive\n");
        assert!(d.path().join("c.log.1").exists());
        assert_eq!(tail(&p, 2), ["four", "five"]);
        assert_eq!(tail(&p, 10).len(), 5);
    }
}
