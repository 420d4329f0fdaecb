//! The update manager's state while it runs: the store, the OCI runtime, the
//! containers of the running revision and the one update that may be in flight.
//! The verbs live one per file (`install`, `run`, `commit`, `rollback`, `gc`,
//! `recover`) as `impl Daemon` blocks, the way youki splits container verbs.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::lifecycle::{Progress, Status};
use crate::oci::{OciRuntime, RuncCli};
use crate::state::Container;
use crate::store::{Store, StoreError};
use crate::supervisor::{Handle, LogConfig, Spec};

#[derive(Debug, Clone)]
pub struct Config {
    pub oci_runtime: String,
    pub socket: PathBuf,
    /// Bytes that must stay free on the storage filesystem after any accepted write.
    pub reserve_bytes: u64,
    /// Revisions kept by garbage collection (besides committed, trying, factory).
    pub retention: usize,
    pub log_max_bytes: u64,
    pub stop_grace: Duration,
    pub reboot_command: Option<String>,
    /// Group whose members may manage the device (root always may).
    pub manager_gid: Option<u32>,
    /// What the device lets a revision do ([`crate::policy`]).
    pub policy: crate::policy::Policy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            oci_runtime: "runc".into(),
            socket: PathBuf::from("control.sock"),
            reserve_bytes: 16 << 20,
            retention: 3,
            log_max_bytes: 1 << 20,
            stop_grace: Duration::from_secs(3),
            reboot_command: None,
            manager_gid: None,
            policy: crate::policy::Policy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("objects missing: {}", .0.join(", "))]
    Missing(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Layer(#[from] crate::layers::LayerError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error("{0}")]
    Other(String),
}

/// What is running now. `specs` stays even for a container stopped by hand, so it
/// can be started again.
#[derive(Default)]
pub struct Running {
    pub rev: Option<String>,
    pub handles: BTreeMap<String, Handle>,
    pub specs: BTreeMap<String, PreparedContainer>,
}

#[derive(Debug, Clone)]
pub struct PreparedContainer {
    pub container: Container,
    pub bundle: PathBuf,
}

pub struct Daemon {
    pub store: Store,
    pub oci: Arc<dyn OciRuntime>,
    pub cfg: Config,
    /// Per-storage prefix of container ids and cgroups.
    pub prefix: String,
    pub running: tokio::sync::Mutex<Running>,
    /// The containers' own sockets.
    pub sockets: crate::sockets::ContainerSockets,
    pub(crate) busy: Mutex<Option<String>>,
    pub(crate) uploads: Mutex<HashSet<String>>,
}

// === impl Daemon ===

impl Daemon {
    pub fn new(store: Store, cfg: Config) -> Arc<Daemon> {
        let oci = Arc::new(RuncCli::new(cfg.oci_runtime.clone(), &store.path("runc")));
        Daemon::with_oci(store, cfg, oci)
    }

    /// With any OCI runtime (the recording fake in unit tests).
    pub fn with_oci(store: Store, cfg: Config, oci: Arc<dyn OciRuntime>) -> Arc<Daemon> {
        let prefix = format!(
            "ev{}",
            &hex::encode(Sha256::digest(store.root().as_os_str().as_encoded_bytes()))[..8]
        );
        let sockets = crate::sockets::ContainerSockets::new(store.path("sockets"));
        Arc::new(Daemon {
            store,
            oci,
            cfg,
            prefix,
            running: tokio::sync::Mutex::new(Running::default()),
            sockets,
            busy: Mutex::new(None),
            uploads: Mutex::new(HashSet::new()),
        })
    }

    pub fn container_id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn cgroups_path(&self, name: &str) -> String {
        format!("/edgevisor/{}", self.container_id(name))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.store.path("logs").join(format!("{name}.log"))
    }

    /// The revision being tried, if any.
    pub fn busy_with(&self) -> Option<String> {
        self.busy.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// Claims the single update slot; `Err` names who holds it.
    pub(crate) fn claim(&self, rev: &str) -> Result<(), String> {
        let mut g = self.busy.lock().map_err(|_| "poisoned".to_string())?;
        match &*g {
            Some(other) => Err(other.clone()),
            None => {
                *g = Some(rev.to_owned());
                Ok(())
            }
        }
    }

    pub(crate) fn release(&self) {
        if let Ok(mut g) = self.busy.lock() {
            *g = None;
        }
    }

    /// Records a status change. An impossible transition is refused, not written: a
    /// bug elsewhere must never record a history the lifecycle does not allow.
    pub(crate) fn set_progress(&self, rev: &str, p: Progress) {
        let from = self.store.read_progress(rev).map(|p| p.status).ok();
        if let Err(e) = crate::lifecycle::check_transition(from, p.status) {
            tracing::error!(rev, error = %e, msg = %p.status_msg, "progress not recorded");
            return;
        }
        tracing::info!(rev, status = %p.status, msg = %p.status_msg, "progress");
        if let Err(e) = self.store.write_progress(rev, &p) {
            tracing::error!(rev, error = %e, "cannot write progress");
        }
    }

    /// The running revision's containers, as `GET /containers` shows them.
    pub async fn containers(&self) -> Vec<crate::control::Container> {
        let r = self.running.lock().await;
        let mut out: Vec<_> = r.handles.values().map(|h| h.snapshot().wire).collect();
        for (name, p) in r.specs.iter().filter(|(n, _)| !r.handles.contains_key(*n)) {
            out.push(crate::control::Container::new(
                name,
                r.rev.as_deref().unwrap_or_default(),
                &self.container_id(name),
                crate::control::RunState::Stopped,
                crate::supervisor::goal_of(&p.container),
            ));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn spec_for(&self, rev: &str, p: &PreparedContainer) -> Spec {
        Spec {
            container: p.container.clone(),
            revision: rev.to_owned(),
            id: self.container_id(&p.container.name),
            bundle: p.bundle.clone(),
            log: self.log_path(&p.container.name),
            log_cfg: LogConfig {
                max_bytes: self.cfg.log_max_bytes,
            },
            stop_grace: self.cfg.stop_grace,
        }
    }

    /// Starts every container of a prepared revision and makes it the running one.
    pub(crate) async fn start_all(&self, rev: &str, prepared: Vec<PreparedContainer>) {
        let mut r = self.running.lock().await;
        r.rev = Some(rev.to_owned());
        r.specs.clear();
        for p in prepared {
            let h = Handle::start(self.oci.clone(), self.spec_for(rev, &p));
            r.handles.insert(p.container.name.clone(), h);
            r.specs.insert(p.container.name.clone(), p);
        }
    }

    /// Stops every running container, in parallel.
    pub async fn stop_all(&self) {
        let handles: Vec<Handle> = {
            let mut r = self.running.lock().await;
            r.rev = None;
            r.specs.clear();
            std::mem::take(&mut r.handles).into_values().collect()
        };
        futures::future::join_all(handles.into_iter().map(Handle::stop)).await;
    }

    /// Starts the committed revision, if there is one, without a test period: it
    /// already proved itself. Falls back to the factory revision if it cannot.
    pub(crate) async fn start_committed(self: &Arc<Self>) {
        let Some(rev) = self.store.pointer(crate::store::Pointer::Committed) else {
            return;
        };
        let e = match self.prepare(&rev).await {
            Ok(p) => return self.start_all(&rev, p).await,
            Err(e) => e,
        };
        tracing::error!(rev, error = %e, "cannot start the committed revision");
        // Last resort, so that a damaged store never leaves the device with nothing:
        // the factory revision. The pointers stay as they are for the operator to see.
        if let Some(factory) = self.store.pointer(crate::store::Pointer::Factory)
            && factory != rev
        {
            match self.prepare(&factory).await {
                Ok(p) => {
                    tracing::warn!(rev = %factory, "running the factory revision instead");
                    self.start_all(&factory, p).await;
                }
                Err(e) => {
                    tracing::error!(rev = %factory, error = %e, "cannot start the factory revision")
                }
            }
        }
    }

    pub(crate) fn mark_error(&self, rev: &str, reason: &str, logs: Vec<String>) {
        self.set_progress(rev, Progress::failed(Status::Error, reason, logs));
    }
}
