//! The OCI runtime CLI (`runc`, or `crun`, which takes the same verbs).
//!
//! Containers run with `<runtime> run` in the foreground, as a child of ours: its exit
//! status is the container's, and its stdout/stderr are the container's, so
//! supervision and logging need no reaper or console socket. The state directory is
//! `--root <storage>/runc`, private to one storage directory, and container ids carry
//! a per-storage prefix so that several runtimes (or parallel tests) never collide.
//!
//! The supervisor only sees the [`OciRuntime`] and [`Process`] traits: [`RuncCli`]
//! is the real one, and unit tests use the recording fake in `oci::fake`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bin} {verb} {id} failed: {stderr}")]
    Failed {
        bin: String,
        verb: &'static str,
        id: String,
        stderr: String,
    },
}

/// A container's output stream (stdout or stderr).
pub type Output = Box<dyn AsyncRead + Send + Unpin>;

/// A started foreground `run`: the container's init as seen from outside.
pub trait Process: Send {
    /// stdout and stderr, once.
    fn take_output(&mut self) -> Vec<Output>;
    /// The exit code (128 + signal when killed); `None` if it cannot be known.
    /// Cancel-safe: it may be polled again after a timeout.
    fn wait(&mut self) -> BoxFuture<'_, Option<i32>>;
    fn start_kill(&mut self);
}

/// What the supervisor, health checks and recovery need from an OCI runtime.
pub trait OciRuntime: Send + Sync + std::fmt::Debug {
    fn run(&self, id: &str, bundle: &Path, pid_file: &Path) -> Result<Box<dyn Process>, OciError>;
    fn kill<'a>(&'a self, id: &'a str, signal: &'a str) -> BoxFuture<'a, Result<(), OciError>>;
    fn delete_force<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, OciError>>;
    fn exec_ok<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, bool>;
}

struct ChildProcess(Child);

impl Process for ChildProcess {
    fn take_output(&mut self) -> Vec<Output> {
        let mut out: Vec<Output> = Vec::new();
        if let Some(o) = self.0.stdout.take() {
            out.push(Box::new(o));
        }
        if let Some(e) = self.0.stderr.take() {
            out.push(Box::new(e));
        }
        out
    }

    fn wait(&mut self) -> BoxFuture<'_, Option<i32>> {
        Box::pin(async move {
            use std::os::unix::process::ExitStatusExt;
            let st = self.0.wait().await.ok()?;
            st.code().or_else(|| st.signal().map(|s| 128 + s))
        })
    }

    fn start_kill(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// The real thing: `runc` (or `crun`) as a CLI.
#[derive(Debug, Clone)]
pub struct RuncCli {
    pub bin: String,
    pub root: PathBuf,
}

impl OciRuntime for RuncCli {
    fn run(&self, id: &str, bundle: &Path, pid_file: &Path) -> Result<Box<dyn Process>, OciError> {
        RuncCli::run(self, id, bundle, pid_file)
            .map(|c| Box::new(ChildProcess(c)) as Box<dyn Process>)
    }
    fn kill<'a>(&'a self, id: &'a str, signal: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
        Box::pin(RuncCli::kill(self, id, signal))
    }
    fn delete_force<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
        Box::pin(RuncCli::delete_force(self, id))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, OciError>> {
        Box::pin(RuncCli::list(self))
    }
    fn exec_ok<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(RuncCli::exec_ok(self, id, args, timeout))
    }
}

impl RuncCli {
    pub fn new(bin: impl Into<String>, root: &Path) -> RuncCli {
        RuncCli {
            bin: bin.into(),
            root: root.to_owned(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c.kill_on_drop(false);
        c
    }

    /// `run` in the foreground; the caller owns the child and its piped output.
    pub fn run(&self, id: &str, bundle: &Path, pid_file: &Path) -> Result<Child, OciError> {
        self.cmd()
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))
    }

    fn spawn_error(&self, source: std::io::Error) -> OciError {
        OciError::Spawn {
            bin: self.bin.clone(),
            source,
        }
    }

    /// Runs `<bin> <verb> <args…>` about container `id` to its end; its stderr is the error.
    async fn checked(&self, verb: &'static str, args: &[&str], id: &str) -> Result<(), OciError> {
        let out = self
            .cmd()
            .arg(verb)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(OciError::Failed {
                bin: self.bin.clone(),
                verb,
                id: id.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), OciError> {
        self.checked("kill", &["--all", id, signal], id).await
    }

    pub async fn delete_force(&self, id: &str) -> Result<(), OciError> {
        self.checked("delete", &["--force", id], id).await
    }

    /// Ids of every container in our state directory.
    pub async fn list(&self) -> Result<Vec<String>, OciError> {
        let out = self
            .cmd()
            .args(["list", "--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Runs a command inside the container; `Ok(true)` when it exits 0 in time.
    pub async fn exec_ok(&self, id: &str, args: &[String], timeout: Duration) -> bool {
        let child = self
            .cmd()
            .arg("exec")
            .arg(id)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        matches!(tokio::time::timeout(timeout, child).await, Ok(Ok(s)) if s.success())
    }

    pub async fn version(&self) -> Result<String, OciError> {
        let out = Command::new(&self.bin)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| self.spawn_error(source))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }
}

#[cfg(test)]
pub mod fake {
    //! A recording OCI runtime for unit tests: every call is logged, and each `run`
    //! plays the next scripted behaviour instead of starting a container.

    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;

    #[derive(Debug, Clone, Copy)]
    pub enum Behaviour {
        /// Exits by itself with this code after the delay (or on a signal).
        ExitAfter(Duration, i32),
        /// Runs until TERM or KILL.
        UntilSignal,
        /// Ignores TERM: only KILL ends it.
        IgnoreTerm,
    }

    #[derive(Debug, Default)]
    pub struct Recording {
        pub calls: Mutex<Vec<String>>,
        script: Mutex<VecDeque<Behaviour>>,
        live: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    }

    impl Recording {
        pub fn new(script: &[Behaviour]) -> Recording {
            Recording {
                script: Mutex::new(script.iter().copied().collect()),
                ..Recording::default()
            }
        }
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
        fn record(&self, call: String) {
            if let Ok(mut c) = self.calls.lock() {
                c.push(call);
            }
        }
    }

    struct FakeProcess {
        behaviour: Behaviour,
        deadline: tokio::time::Instant,
        signals: mpsc::UnboundedReceiver<String>,
        exited: Option<i32>,
    }

    impl Process for FakeProcess {
        fn take_output(&mut self) -> Vec<Output> {
            Vec::new()
        }
        fn wait(&mut self) -> BoxFuture<'_, Option<i32>> {
            Box::pin(async move {
                if let Some(c) = self.exited {
                    return Some(c);
                }
                let code = loop {
                    let timed = matches!(self.behaviour, Behaviour::ExitAfter(..));
                    tokio::select! {
                        _ = tokio::time::sleep_until(self.deadline), if timed => {
                            if let Behaviour::ExitAfter(_, c) = self.behaviour { break c; }
                        }
                        sig = self.signals.recv() => match (sig.as_deref(), self.behaviour) {
                            (Some("KILL"), _) | (None, _) => break 137,
                            (Some("TERM"), Behaviour::IgnoreTerm) => continue,
                            (Some(_), _) => break 143,
                        }
                    }
                };
                self.exited = Some(code);
                Some(code)
            })
        }
        fn start_kill(&mut self) {
            self.exited.get_or_insert(137);
        }
    }

    impl OciRuntime for Recording {
        fn run(
            &self,
            id: &str,
            _bundle: &Path,
            pid_file: &Path,
        ) -> Result<Box<dyn Process>, OciError> {
            self.record(format!("run {id}"));
            let behaviour = self
                .script
                .lock()
                .ok()
                .and_then(|mut s| s.pop_front())
                .unwrap_or(Behaviour::UntilSignal);
            let _ = std::fs::write(pid_file, "4242");
            let (tx, rx) = mpsc::unbounded_channel();
            if let Ok(mut l) = self.live.lock() {
                l.insert(id.to_owned(), tx);
            }
            let delay = match behaviour {
                Behaviour::ExitAfter(d, _) => d,
                _ => Duration::from_secs(3600),
            };
            Ok(Box::new(FakeProcess {
                behaviour,
                deadline: tokio::time::Instant::now() + delay,
                signals: rx,
                exited: None,
            }))
        }
        fn kill<'a>(&'a self, id: &'a str, signal: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
            self.record(format!("kill {id} {signal}"));
            if let Ok(l) = self.live.lock()
                && let Some(tx) = l.get(id)
            {
                let _ = tx.send(signal.to_owned());
            }
            Box::pin(async { Ok(()) })
        }
        fn delete_force<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
            self.record(format!("delete {id}"));
            Box::pin(async { Ok(()) })
        }
        fn list(&self) -> BoxFuture<'_, Result<Vec<String>, OciError>> {
            self.record("list".into());
            Box::pin(async { Ok(Vec::new()) })
        }
        fn exec_ok<'a>(
            &'a self,
            id: &'a str,
            args: &'a [String],
            _t: Duration,
        ) -> BoxFuture<'a, bool> {
            self.record(format!("exec {id} {}", args.join(" ")));
            Box::pin(async { true })
        }
    }
}
