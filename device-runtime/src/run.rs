//! Running (trying) a revision: roll forward, roll back, or a first install.
//!
//! `DOWNLOADING` (objects present and sized right, else `WONTGO` and nothing
//! changes) → `INPROGRESS` (unpack, bundles; a failure here leaves the running
//! revision alone) → set the trying pointer, stop the old containers, start the new
//! → `TESTING` (every container must reach its goal within the goal timeout and hold
//! it for the test period) → commit, or roll back to the committed revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bundle::{BundleCtx, build_config, parse_image_config};
use crate::daemon::{Daemon, PreparedContainer, RunError};
use crate::install::{InstallError, check_objects};
use crate::layers::{UnpackOptions, unpack_image};
use crate::lifecycle::{Progress, Status};
use crate::policy::resolve_host_path;
use crate::state::{State, parse_digest};
use crate::store::{Pointer, remove_any};
use crate::supervisor::{RunState, snapshot};

/// Why a try failed, and whose logs explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    pub container: String,
    pub reason: String,
}

/// One look at the containers during `TESTING`. Pure: given what each container
/// reports, decide whether the try goes on, passed its goal, or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Waiting,
    AtGoal,
    Failed(TestFailure),
}

pub fn judge(
    statuses: &[crate::supervisor::ContainerStatus],
    baseline_restarts: &BTreeMap<String, u32>,
    holding: bool,
) -> Verdict {
    for s in statuses {
        let restarted = s.restarts > baseline_restarts.get(&s.name).copied().unwrap_or(0);
        if let Some(e) = &s.error {
            return Verdict::Failed(TestFailure {
                container: s.name.clone(),
                reason: format!("container {} could not start: {e}", s.name),
            });
        }
        if (matches!(s.state, RunState::Exited | RunState::Backoff) && !s.completed) || restarted {
            let code = s
                .last_exit
                .map(|c| format!(" with code {c}"))
                .unwrap_or_default();
            return Verdict::Failed(TestFailure {
                container: s.name.clone(),
                reason: format!("container {} exited{code}", s.name),
            });
        }
        if holding && !s.at_goal() {
            return Verdict::Failed(TestFailure {
                container: s.name.clone(),
                reason: format!(
                    "container {} left its goal ({}) during the test period",
                    s.name, s.goal
                ),
            });
        }
    }
    if statuses.iter().all(|s| s.at_goal()) {
        Verdict::AtGoal
    } else {
        Verdict::Waiting
    }
}

impl Daemon {
    /// Unpacks images and writes bundles; changes nothing that is running. All of it is
    /// blocking filesystem work (an image may take seconds to unpack), so it runs on a
    /// blocking thread: the control socket keeps answering meanwhile.
    pub async fn prepare(self: &Arc<Self>, rev: &str) -> Result<Vec<PreparedContainer>, RunError> {
        let (d, rev) = (self.clone(), rev.to_owned());
        tokio::task::spawn_blocking(move || d.prepare_blocking(&rev))
            .await
            .map_err(|e| RunError::Other(format!("unpacking stopped: {e}")))?
    }

    fn prepare_blocking(&self, rev: &str) -> Result<Vec<PreparedContainer>, RunError> {
        // Again at run time (the policy may have been tightened since the install), and
        // what runs is the state as the policy admits it.
        let state = self
            .cfg
            .policy
            .admit(
                State::parse(&self.store.read_state(rev)?)?,
                resolve_host_path,
            )
            .map_err(|e| RunError::Other(e.to_string()))?;
        match check_objects(self, &state) {
            Ok(()) => {}
            Err(InstallError::Missing(m)) => return Err(RunError::Missing(m)),
            Err(e) => return Err(RunError::Other(e.to_string())),
        }
        let files_dir = self.materialize_files(rev, &state)?;
        let mut out = Vec::new();
        for c in &state.containers {
            let cfg_hex = parse_digest(&c.image.config.digest)
                .ok_or_else(|| RunError::Other("bad config digest".into()))?;
            let cfg_bytes = std::fs::read(self.store.object_path(cfg_hex))
                .map_err(|e| RunError::Other(format!("image config: {e}")))?;
            let img = parse_image_config(&cfg_bytes)?;
            let free = self.store.free_bytes()?;
            let opts = UnpackOptions {
                allow_setuid: c.allow_setuid,
                max_bytes: Some(free.saturating_sub(self.cfg.reserve_bytes)),
                max_entries: None,
            };
            let rootfs = unpack_image(&self.store, &c.image.layers, opts)?;
            let mut volumes = BTreeMap::new();
            for v in &c.volumes {
                let dir = self.store.path("volumes").join(&c.name).join(&v.name);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| RunError::Other(format!("{}: {e}", dir.display())))?;
                volumes.insert(v.name.clone(), dir);
            }
            let ctx = BundleCtx {
                rootfs,
                cgroups_path: self.cgroups_path(&c.name),
                socket: Some(
                    self.sockets
                        .ensure(&c.name)
                        .map_err(|e| RunError::Other(format!("container socket: {e}")))?,
                ),
                files_dir: files_dir.clone(),
                volumes,
                devices: c
                    .devices
                    .iter()
                    .map(crate::bundle::HostDevice::stat)
                    .collect::<Result<_, _>>()
                    .map_err(|e| RunError::Other(format!("container {}: {e}", c.name)))?,
            };
            let config = build_config(c, &img, &ctx)?;
            let bundle = self.store.path("bundles").join(rev).join(&c.name);
            std::fs::create_dir_all(&bundle)
                .map_err(|e| RunError::Other(format!("{}: {e}", bundle.display())))?;
            let bytes = serde_json::to_vec_pretty(&config).unwrap_or_default();
            // Bundles are derived and rebuilt on every run: no fsync needed.
            let path = bundle.join("config.json");
            std::fs::write(&path, &bytes)
                .map_err(|e| RunError::Other(format!("{}: {e}", path.display())))?;
            out.push(PreparedContainer {
                container: c.clone(),
                bundle,
            });
        }
        Ok(out)
    }

    fn materialize_files(
        &self,
        rev: &str,
        state: &State,
    ) -> Result<Option<std::path::PathBuf>, RunError> {
        if state.files.is_empty() {
            return Ok(None);
        }
        let dir = self.store.rev_dir(rev).join("files");
        if dir.is_dir() {
            return Ok(Some(dir));
        }
        let tmp = self.store.rev_dir(rev).join(".tmp-files");
        remove_any(&tmp)?;
        for f in &state.files {
            let rel = crate::paths::clean_relative(&f.path)
                .map_err(|e| RunError::Other(e.to_string()))?;
            let dest = tmp.join(rel);
            let hex = parse_digest(&f.digest).unwrap_or_default();
            let io = |e: std::io::Error| RunError::Other(format!("{}: {e}", dest.display()));
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(io)?;
            }
            std::fs::copy(self.store.object_path(hex), &dest).map_err(io)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode)).map_err(io)?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| RunError::Other(e.to_string()))?;
        Ok(Some(dir))
    }

    /// Starts a try in the background. `Err` carries the revision already in flight.
    pub fn start_run(self: &Arc<Self>, rev: &str) -> Result<(), String> {
        self.claim(rev)?;
        let d = self.clone();
        let rev = rev.to_owned();
        tokio::spawn(async move {
            d.try_revision(&rev).await;
            d.release();
        });
        Ok(())
    }

    /// The whole try; the caller holds the update slot.
    pub async fn try_revision(self: &Arc<Self>, rev: &str) {
        let started = Instant::now();
        let state = match self.store.read_state(rev).map(|b| State::parse(&b)) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.wontgo(rev, e.to_string(), Vec::new()),
            Err(e) => return self.wontgo(rev, e.to_string(), Vec::new()),
        };
        let mut p = Progress::new(Status::Downloading, "checking objects");
        p.downloads = Some(self.downloads(&state));
        self.set_progress(rev, p);
        match check_objects(self, &state) {
            Ok(()) => {}
            Err(InstallError::Missing(m)) => {
                return self.wontgo(rev, format!("{} objects missing", m.len()), m);
            }
            Err(e) => return self.wontgo(rev, e.to_string(), Vec::new()),
        }
        self.set_progress(
            rev,
            Progress::new(Status::Inprogress, "unpacking images, writing bundles"),
        );
        let prepared = match self.prepare(rev).await {
            Ok(p) => p,
            Err(e) => {
                // Nothing running was touched: the committed revision keeps running.
                self.mark_error(rev, &format!("install failed: {e}"), Vec::new());
                return;
            }
        };
        if let Err(e) = self.store.set_pointer(Pointer::Trying, Some(rev)) {
            self.mark_error(rev, &format!("cannot set trying pointer: {e}"), Vec::new());
            return;
        }
        self.stop_all().await;
        self.start_all(rev, prepared).await;
        self.set_progress(
            rev,
            Progress::new(
                Status::Testing,
                "waiting for containers to reach their goal",
            ),
        );
        let outcome = self
            .test(
                Duration::from_secs(state.goal_timeout_secs()),
                Duration::from_secs(state.test_period_secs()),
            )
            .await;
        match outcome {
            Ok(()) => {
                self.commit(rev).await;
                tracing::info!(rev, seconds = started.elapsed().as_secs_f64(), "committed");
            }
            Err(f) => {
                let since = {
                    let r = self.running.lock().await;
                    r.handles
                        .get(&f.container)
                        .map(|h| h.snapshot().log_start)
                        .unwrap_or(0)
                };
                let logs = crate::supervisor::tail_since(&self.log_path(&f.container), since, 20);
                self.rollback(rev, &f.reason, logs).await;
            }
        }
    }

    /// How much of what the state needs is in the store.
    pub fn downloads(&self, state: &State) -> crate::lifecycle::Downloads {
        let objects = state.objects();
        let present_bytes = objects
            .iter()
            .filter_map(|h| self.store.object_size(h))
            .sum();
        crate::lifecycle::Downloads {
            total_bytes: state.total_size(),
            present_bytes,
            objects: objects.len(),
        }
    }

    fn wontgo(&self, rev: &str, reason: String, missing: Vec<String>) {
        let mut p = Progress::failed(Status::Wontgo, reason, Vec::new());
        p.missing = missing;
        self.set_progress(rev, p);
    }

    async fn test(&self, goal_timeout: Duration, period: Duration) -> Result<(), TestFailure> {
        let tick = Duration::from_millis(10);
        let statuses = || async {
            let r = self.running.lock().await;
            r.handles
                .values()
                .map(|h| snapshot(&h.status))
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + goal_timeout;
        let base = BTreeMap::new();
        loop {
            let s = statuses().await;
            match judge(&s, &base, false) {
                Verdict::AtGoal => break,
                Verdict::Failed(f) => return Err(f),
                Verdict::Waiting if Instant::now() >= deadline => {
                    let laggard = s.iter().find(|c| !c.at_goal());
                    let (name, goal) = laggard
                        .map(|c| (c.name.clone(), c.goal.to_string()))
                        .unwrap_or_default();
                    return Err(TestFailure {
                        reason: format!(
                            "container {name} did not become {goal} within {}s",
                            goal_timeout.as_secs()
                        ),
                        container: name,
                    });
                }
                Verdict::Waiting => tokio::time::sleep(tick).await,
            }
        }
        let baseline: BTreeMap<String, u32> = statuses()
            .await
            .into_iter()
            .map(|s| (s.wire.name, s.wire.restarts))
            .collect();
        let end = Instant::now() + period;
        while Instant::now() < end {
            if let Verdict::Failed(f) = judge(&statuses().await, &baseline, true) {
                return Err(f);
            }
            tokio::time::sleep(tick).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::ContainerStatus;

    fn st(name: &str, state: RunState, goal: &str) -> ContainerStatus {
        let goal = serde_json::from_value(serde_json::json!(goal)).unwrap();
        ContainerStatus {
            wire: crate::control::Container::new(name, "r", "x", state, goal),
            started: None,
            log_start: 0,
            error: None,
        }
    }

    #[test]
    fn all_running_is_at_goal() {
        let s = [
            st("a", RunState::Running, "running"),
            st("b", RunState::Running, "running"),
        ];
        assert_eq!(judge(&s, &BTreeMap::new(), false), Verdict::AtGoal);
    }

    #[test]
    fn health_and_ready_goals_wait() {
        let mut h = st("a", RunState::Running, "healthy");
        assert_eq!(
            judge(&[h.clone()], &BTreeMap::new(), false),
            Verdict::Waiting
        );
        h.healthy = Some(true);
        assert_eq!(judge(&[h], &BTreeMap::new(), false), Verdict::AtGoal);
        let mut r = st("a", RunState::Running, "ready");
        assert_eq!(
            judge(&[r.clone()], &BTreeMap::new(), false),
            Verdict::Waiting
        );
        r.ready = true;
        assert_eq!(judge(&[r], &BTreeMap::new(), false), Verdict::AtGoal);
    }

    #[test]
    fn exit_or_restart_fails_and_losing_goal_fails_while_holding() {
        let mut e = st("a", RunState::Exited, "running");
        e.last_exit = Some(3);
        assert!(
            matches!(judge(&[e], &BTreeMap::new(), false), Verdict::Failed(f) if f.reason.contains("code 3"))
        );
        let mut r = st("a", RunState::Running, "running");
        r.restarts = 1;
        let base = [("a".to_string(), 0)].into();
        assert!(matches!(judge(&[r], &base, true), Verdict::Failed(_)));
        let mut h = st("a", RunState::Running, "healthy");
        h.healthy = Some(false);
        assert!(matches!(
            judge(&[h.clone()], &BTreeMap::new(), true),
            Verdict::Failed(_)
        ));
        assert_eq!(judge(&[h], &BTreeMap::new(), false), Verdict::Waiting);
    }
}
