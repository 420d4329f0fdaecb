//! The OCI runtime CLI (`runc`, or `crun`, which takes the same verbs).
//!
//! Containers run with `<runtime> run` in the foreground, as a child of ours: its exit
//! status is the container's, and its stdout/stderr are the container's, so
//! supervision and logging need no reaper or console socket. The state directory is
//! `--root <storage>/runc`, private to one storage directory, and container ids carry
//! a per-storage prefix so that several runtimes (or parallel tests) never collide.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

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

/// What the supervisor and health checks need from an OCI runtime.
#[derive(Debug, Clone)]
pub struct Oci {
    pub bin: String,
    pub root: PathBuf,
}

impl Oci {
    pub fn new(bin: impl Into<String>, root: &Path) -> Oci {
        Oci {
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
            .map_err(|source| OciError::Spawn {
                bin: self.bin.clone(),
                source,
            })
    }

    async fn simple(&self, verb: &'static str, args: &[&str], id: &str) -> Result<(), OciError> {
        let out = self
            .cmd()
            .arg(verb)
            .args(args)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| OciError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
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
        let out = self
            .cmd()
            .args(["kill", "--all", id, signal])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| OciError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(OciError::Failed {
                bin: self.bin.clone(),
                verb: "kill",
                id: id.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    pub async fn delete_force(&self, id: &str) -> Result<(), OciError> {
        self.simple("delete", &["--force"], id).await
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
            .map_err(|source| OciError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
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
            .map_err(|source| OciError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }
}
