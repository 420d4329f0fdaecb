//! The test in the role of the gateway: it writes Devices' status as real devices would report
//! through it (architecture, online, update progress, current revision), and watches what the
//! controller does to check the rollout's invariants from the outside.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgevisor_crds::Device;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// Whether `device` fails `revision`.
pub type FailureRule = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// How simulated devices behave.
#[derive(Clone)]
pub struct Behaviour {
    /// Devices that fail any revision for which this returns true.
    pub fails: FailureRule,
    /// Polls a device stays downloading before it finishes.
    pub polls_to_finish: u32,
}

impl Behaviour {
    /// Devices that never fail; each update takes `polls` polls.
    pub fn healthy(polls: u32) -> Self {
        Behaviour {
            fails: Arc::new(|_: &str, _: &str| false),
            polls_to_finish: polls,
        }
    }
}

/// Simulated devices running in the background.
pub struct Simulation {
    stop: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<anyhow::Result<Observed>>,
}

impl Simulation {
    /// Starts playing every Device of `api`'s namespace.
    pub fn start(api: Api<Device>, behaviour: Behaviour) -> Self {
        let stop = Arc::new(Mutex::new(false));
        let task = tokio::spawn(simulate(api, behaviour, stop.clone()));
        Simulation { stop, task }
    }

    /// Lets the devices see the last targets, stops them, and returns what they saw.
    pub async fn finish(self) -> Observed {
        tokio::time::sleep(Duration::from_millis(600)).await;
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        match self.task.await {
            Ok(Ok(observed)) => observed,
            Ok(Err(e)) => panic!("the simulated devices failed: {e:#}"),
            Err(e) => panic!("the simulated devices panicked: {e}"),
        }
    }
}

/// What the simulator saw.
#[derive(Default, Debug, Clone)]
pub struct Observed {
    /// Most devices in flight at once (target set, not yet running it, not failed).
    pub max_in_flight: usize,
    /// Every (device, revision) the controller targeted, in order seen.
    pub assignments: Vec<(String, String)>,
    /// Assignments seen twice.
    pub repeated: Vec<(String, String)>,
    /// Devices in the order they were first given `revision`.
    pub order: BTreeMap<String, Vec<String>>,
}

/// Creates `n` Devices `prefix-000…` labelled `labels`, each reporting the given architecture
/// (cycled) and online.
pub async fn create_devices(
    api: &Api<Device>,
    prefix: &str,
    n: usize,
    labels: &BTreeMap<String, String>,
    arches: &[&str],
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i:03}");
        let device = json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
            "metadata": {"name": name, "labels": labels}, "spec": {}
        });
        api.patch(
            &name,
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(device),
        )
        .await?;
        report_online(api, &name, arches[i % arches.len()]).await?;
        names.push(name);
    }
    Ok(names)
}

/// What a device reports when it enrolls: its architecture, and that it is online.
pub async fn report_online(api: &Api<Device>, name: &str, arch: &str) -> anyhow::Result<()> {
    let status = json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
        "status": {"architecture": arch, "conditions": [
            {"type": "Online", "status": "True", "reason": "Heartbeat", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]}
    });
    api.patch_status(
        name,
        &PatchParams::apply("e2e-gateway").force(),
        &Patch::Apply(status),
    )
    .await?;
    Ok(())
}

/// Runs the simulated devices until `stop` is set; returns what it observed.
pub async fn simulate(
    api: Api<Device>,
    behaviour: Behaviour,
    stop: Arc<Mutex<bool>>,
) -> anyhow::Result<Observed> {
    let mut observed = Observed::default();
    let mut last_target: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut polls: BTreeMap<(String, String), u32> = BTreeMap::new();
    let params = PatchParams::apply("e2e-gateway").force();
    loop {
        if *stop.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(observed);
        }
        let devices = api.list(&ListParams::default()).await?;
        let mut in_flight = 0;
        for device in &devices.items {
            let name = device.name_any();
            let target = device.spec.revision.clone();
            if last_target.get(&name) != Some(&target) {
                if let Some(t) = &target {
                    let key = (name.clone(), t.clone());
                    if !seen.insert(key.clone()) {
                        observed.repeated.push(key.clone());
                    }
                    observed.assignments.push(key);
                    observed
                        .order
                        .entry(t.clone())
                        .or_default()
                        .push(name.clone());
                }
                last_target.insert(name.clone(), target.clone());
            }
            let Some(target) = target else { continue };
            let status = device.status.clone().unwrap_or_default();
            if status.current_revision.as_ref() == Some(&target) {
                continue;
            }
            let failed = status
                .update
                .as_ref()
                .is_some_and(|u| u.revision == target && u.status.is_failure());
            if failed {
                continue;
            }
            in_flight += 1;
            let n = polls.entry((name.clone(), target.clone())).or_default();
            *n += 1;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            // Server-side apply drops fields its manager stops sending: always send all of ours.
            let online = json!({"type": "Online", "status": "True", "reason": "Heartbeat", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"});
            let mut current = status.current_revision.clone();
            let mut conditions = vec![online];
            let update = if *n <= behaviour.polls_to_finish {
                json!({"revision": target, "status": "DOWNLOADING", "progress": 30, "startedAt": now})
            } else if (behaviour.fails)(&name, &target) {
                json!({"revision": target, "status": "ERROR", "progress": 100, "reason": "ContainerExited",
                       "message": "container web exited with code 1; rolled back", "finishedAt": now})
            } else {
                current = Some(target.clone());
                conditions.push(json!({"type": "Ready", "status": "True", "reason": "ContainersReady", "message": "", "lastTransitionTime": now}));
                json!({"revision": target, "status": "DONE", "progress": 100, "finishedAt": now})
            };
            let mut patch = json!({"architecture": status.architecture, "update": update, "conditions": conditions});
            if let Some(current) = current {
                patch["currentRevision"] = json!(current);
            }
            let body =
                json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device", "status": patch});
            api.patch_status(&name, &params, &Patch::Apply(body))
                .await?;
        }
        observed.max_in_flight = observed.max_in_flight.max(in_flight);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
