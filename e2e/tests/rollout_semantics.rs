//! Rollouts that always end, against the real apiserver and controller, ten devices per case
//! whose status the test writes as the gateway would: a failure below the threshold, an offline
//! device, a device joining while the fleet waits, a rollout without progress, and the operator
//! verbs driven through `kubectl edgevisor` (found by kubectl on the PATH, as users run it).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgevisor_crds::{Device, Fleet};
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{Controller, Options};
use edgevisor_e2e::gateway_role::{Behaviour, Simulation, create_devices};
use edgevisor_e2e::images::{Registry, tiny_image};
use edgevisor_e2e::kstatus::kstatus;
use edgevisor_e2e::plugin::kubectl_edgevisor;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const DEVICES: usize = 10;

struct Case {
    env: &'static Env,
    ns: String,
    fleets: Api<Fleet>,
    devices: Api<Device>,
    controller: Controller,
    repo: String,
    names: Vec<String>,
}

impl Case {
    /// A namespace with images v1..v3, ten amd64 devices labelled role=kiosk and a controller.
    async fn new(name: &str) -> Case {
        let env = Env::get();
        let ns = env.namespace(name);
        let client = env.client().await.unwrap();
        let registry = Registry::new(&env.registry);
        let repo = format!("e2e/{ns}/app");
        for tag in ["v1", "v2", "v3"] {
            registry
                .push_index(&repo, tag, &[tiny_image("amd64", None, tag).unwrap()])
                .await
                .unwrap();
        }
        let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
        let labels: BTreeMap<String, String> = [("role".into(), "kiosk".into())].into();
        let names = create_devices(&devices, "kiosk", DEVICES, &labels, &["amd64"])
            .await
            .unwrap();
        let controller = Controller::start(
            env,
            &Options {
                namespace: &ns,
                identity: name,
                lease_seconds: 15,
                args: &[],
            },
        )
        .unwrap();
        Case {
            env,
            fleets: Api::namespaced(client, &ns),
            devices,
            controller,
            repo,
            names,
            ns,
        }
    }

    async fn apply(&self, tag: &str, strategy: serde_json::Value) {
        let fleet = json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "kiosks"},
            "spec": {
                "selector": {"matchLabels": {"role": "kiosk"}},
                "template": {"containers": [{"name": "app", "image": format!("{}/{}:{tag}", self.env.registry, self.repo)}]},
                "strategy": strategy
            }
        });
        self.fleets
            .patch(
                "kiosks",
                &PatchParams::apply("e2e-user"),
                &Patch::Apply(fleet),
            )
            .await
            .unwrap();
    }

    async fn wait(&self, what: &str, seconds: u64, done: impl Fn(&Fleet) -> bool) -> Fleet {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Ok(f) = self.fleets.get("kiosks").await
                && f.status.as_ref().and_then(|s| s.observed_generation) == f.metadata.generation
                && done(&f)
            {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}\ncontroller:\n{}",
                self.fleets.get("kiosks").await.ok().and_then(|f| f.status),
                self.controller.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for a Ready reason; returns the fleet.
    async fn reason(&self, reason: &str) -> Fleet {
        self.wait(reason, 60, |f| condition(f, "Ready").0 == reason)
            .await
    }

    async fn update_revision(&self) -> String {
        self.fleets
            .get("kiosks")
            .await
            .unwrap()
            .status
            .and_then(|s| s.update_revision)
            .unwrap_or_default()
    }

    async fn targets(&self) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        for name in &self.names {
            out.insert(
                name.clone(),
                self.devices.get(name).await.unwrap().spec.revision,
            );
        }
        out
    }

    fn plugin(&self, args: &[&str]) -> edgevisor_e2e::Run {
        kubectl_edgevisor(self.env, &self.ns, args).run()
    }

    /// Writes what the gateway's liveness would for a device: online or not. (A manager of its
    /// own: under the simulation's, this apply would drop the revision fields it wrote.)
    async fn set_online(&self, name: &str, online: bool) {
        let status = json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
            "status": {"conditions": [{"type": "Online",
                "status": if online { "True" } else { "False" }, "reason": "Heartbeat", "message": "",
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}
        });
        self.devices
            .patch_status(
                name,
                &PatchParams::apply("e2e-liveness").force(),
                &Patch::Apply(status),
            )
            .await
            .unwrap();
    }
}

/// `(reason, message)` of a condition, empty when absent.
fn condition(f: &Fleet, type_: &str) -> (String, String, String) {
    f.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.reason.clone(), c.message.clone(), c.status.clone()))
        .unwrap_or_default()
}

fn strategy(max_unavailable: i32, threshold: i32) -> serde_json::Value {
    json!({"maxUnavailable": max_unavailable, "failureThreshold": threshold})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_below_the_threshold_completes_naming_the_failed_device() {
    let case = Case::new("sem-fail").await;
    // kiosk-004 fails every revision but the first.
    let first = Arc::new(Mutex::new(None::<String>));
    let behaviour = Behaviour {
        fails: {
            let first = first.clone();
            Arc::new(move |device: &str, revision: &str| {
                device == "kiosk-004"
                    && first
                        .lock()
                        .unwrap()
                        .as_deref()
                        .is_some_and(|f| f != revision)
            })
        },
        polls_to_finish: 1,
    };
    let sim = Simulation::start(case.devices.clone(), behaviour);
    case.apply("v1", strategy(3, 3)).await;
    case.reason("RolloutComplete").await;
    let v1 = case.update_revision().await;
    *first.lock().unwrap() = Some(v1.clone());
    case.apply("v2", strategy(3, 3)).await;
    let v2 = case
        .wait("v2", 30, |f| {
            f.status
                .as_ref()
                .and_then(|s| s.update_revision.as_deref())
                .is_some_and(|r| r != v1)
        })
        .await
        .status
        .and_then(|s| s.update_revision)
        .unwrap();
    let f = case
        .wait("completion with a failure", 90, |f| {
            condition(f, "Ready").0 == "RolloutComplete"
                && f.status.as_ref().and_then(|s| s.update_revision.as_deref()) == Some(v2.as_str())
        })
        .await;
    let (_, message, status) = condition(&f, "Ready");
    assert_eq!(status, "True");
    assert!(
        message.contains("1 failed") && message.contains("kiosk-004"),
        "{message}"
    );
    let s = f.status.clone().unwrap();
    assert_eq!((s.updated, s.failed), (9, 1));
    assert_eq!(s.stable_revision.as_deref(), Some(v2.as_str()));
    // The plugin reads it as kubectl rollout status does: complete, exit 0.
    let status = case.plugin(&["rollout", "status", "kiosks"]);
    assert_eq!(status.code, Some(0), "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("kiosk-004"), "{}", status.stdout);
    let (kstatus_result, _) = kstatus(&serde_json::to_value(&f).unwrap()).unwrap();
    assert_eq!(kstatus_result, "Current");
    sim.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_is_skipped_then_catches_up() {
    let case = Case::new("sem-offline").await;
    let sim = Simulation::start(case.devices.clone(), Behaviour::healthy(1));
    case.apply("v1", strategy(4, 1)).await;
    case.reason("RolloutComplete").await;
    case.set_online("kiosk-007", false).await;
    // Offline a while before the rollout starts (the controller's watch has seen it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    case.apply("v2", strategy(4, 1)).await;
    let f = case
        .wait("completion without the offline device", 90, |f| {
            condition(f, "Ready").0 == "RolloutComplete"
                && condition(f, "Ready").1.contains("offline")
        })
        .await;
    let v2 = f.status.clone().unwrap().update_revision.unwrap();
    assert!(condition(&f, "Ready").1.contains("kiosk-007"));
    assert_eq!(
        f.status.clone().unwrap().stable_revision.as_deref(),
        Some(v2.as_str()),
        "the rest made it stable"
    );
    assert_ne!(
        case.targets().await["kiosk-007"].as_deref(),
        Some(v2.as_str())
    );
    // Back online: it gets the update and the fleet is complete without naming it.
    case.set_online("kiosk-007", true).await;
    case.wait("the device catching up", 60, |f| {
        condition(f, "Ready").0 == "RolloutComplete"
            && !condition(f, "Ready").1.contains("offline")
            && f.status.as_ref().is_some_and(|s| s.updated == 10)
    })
    .await;
    sim.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_joining_while_the_fleet_waits_gets_the_stable_revision() {
    let case = Case::new("sem-join").await;
    let sim = Simulation::start(case.devices.clone(), Behaviour::healthy(1));
    let staged =
        json!({"maxUnavailable": 5, "steps": [{"devices": 2, "pause": {"untilResumed": true}}]});
    case.apply("v1", json!({"maxUnavailable": 10})).await;
    let v1 = case
        .reason("RolloutComplete")
        .await
        .status
        .unwrap()
        .update_revision
        .unwrap();
    case.apply("v2", staged).await;
    case.reason("WaitingForResume").await;
    let labels: BTreeMap<String, String> = [("role".into(), "kiosk".into())].into();
    create_devices(&case.devices, "late", 1, &labels, &["amd64"])
        .await
        .unwrap();
    let joined = Instant::now();
    loop {
        let d = case.devices.get("late-000").await.unwrap();
        if d.spec.revision.as_deref() == Some(v1.as_str()) {
            break;
        }
        assert!(
            joined.elapsed() < Duration::from_secs(15),
            "the joined device got {:?}, not the stable {v1}:\n{}",
            d.spec.revision,
            case.controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_without_progress_is_stalled_until_progress_resumes() {
    let case = Case::new("sem-stall").await;
    // No simulation: the test writes the one device's progress itself.
    let strategy =
        json!({"maxUnavailable": 1, "progressDeadlineSeconds": 10, "deviceTimeoutSeconds": 3600});
    case.apply("v1", strategy.clone()).await;
    let moving = case
        .wait("a first device targeted", 30, |_| true)
        .await
        .status
        .and_then(|s| s.update_revision)
        .unwrap();
    let target = loop {
        let targets = case.targets().await;
        if let Some((name, _)) = targets
            .iter()
            .find(|(_, t)| t.as_deref() == Some(moving.as_str()))
        {
            break name.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = |status: &str, current: Option<&str>| {
        let mut s = json!({"architecture": "amd64",
            "update": {"revision": moving, "status": status, "progress": 30,
                       "startedAt": k8s_openapi::jiff::Timestamp::now().to_string()},
            "conditions": [{"type": "Online", "status": "True", "reason": "Heartbeat", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        if let Some(c) = current {
            s["currentRevision"] = json!(c);
        }
        json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device", "status": s})
    };
    case.devices
        .patch_status(
            &target,
            &PatchParams::apply("e2e-gateway").force(),
            &Patch::Apply(report("DOWNLOADING", None)),
        )
        .await
        .unwrap();
    let f = case
        .wait("Stalled", 60, |f| condition(f, "Stalled").2 == "True")
        .await;
    assert_eq!(condition(&f, "Stalled").0, "ProgressDeadlineExceeded");
    assert_eq!(condition(&f, "Progressing").2, "False");
    assert_eq!(
        condition(&f, "RolloutAborted").2,
        "False",
        "a stall does not abort"
    );
    let (result, _) = kstatus(&serde_json::to_value(&f).unwrap()).unwrap();
    assert_eq!(result, "Failed");
    let status = case.plugin(&["rollout", "status", "kiosks"]);
    assert_eq!(status.code, Some(1), "{}", status.stdout);
    // The device moves on: the stall clears by itself and the next device starts.
    case.devices
        .patch_status(
            &target,
            &PatchParams::apply("e2e-gateway").force(),
            &Patch::Apply(report("DONE", Some(moving.as_str()))),
        )
        .await
        .unwrap();
    let f = case
        .wait("the stall to clear", 30, |f| {
            condition(f, "Stalled").2 == "False"
        })
        .await;
    assert_eq!(condition(&f, "Ready").0, "RollingOut");
    let (result, _) = kstatus(&serde_json::to_value(&f).unwrap()).unwrap();
    assert_eq!(result, "InProgress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_verbs_do_what_they_say_through_the_plugin() {
    let case = Case::new("sem-verbs").await;
    let sim = Simulation::start(case.devices.clone(), Behaviour::healthy(1));
    let staged = json!({"maxUnavailable": 10, "steps": [
        {"devices": 1, "pause": {"untilResumed": true}},
        {"devices": 3, "pause": {"durationSeconds": 3600}}]});
    let help = case.plugin(&["--help"]);
    assert!(
        help.ok() && help.stdout.contains("rollout"),
        "{}",
        help.stderr
    );
    case.apply("v1", json!({"maxUnavailable": 10})).await;
    case.reason("RolloutComplete").await;
    let ok = |r: edgevisor_e2e::Run| {
        assert_eq!(r.code, Some(0), "{}\n{}\n{}", r.command, r.stdout, r.stderr);
        r.stdout
    };

    // promote ends the until-resumed pause; promote again ends the timed one; complete.
    case.apply("v2", staged.clone()).await;
    case.reason("WaitingForResume").await;
    ok(case.plugin(&["rollout", "promote", "kiosks"]));
    case.reason("StepPaused").await;
    ok(case.plugin(&["rollout", "promote", "kiosks"]));
    let f = case.reason("RolloutComplete").await;
    let v2 = f.status.unwrap().update_revision.unwrap();
    ok(case.plugin(&["rollout", "status", "kiosks"]));

    // abort sends the canary back at once; retry starts over; promote --full skips every step.
    case.apply("v3", staged).await;
    case.reason("WaitingForResume").await;
    let v3 = case.update_revision().await;
    ok(case.plugin(&["rollout", "abort", "kiosks"]));
    case.reason("RolloutAborted").await;
    case.wait("the canary back on v2", 30, |f| {
        f.status.as_ref().is_some_and(|s| s.updated == 0)
    })
    .await;
    assert!(
        case.targets()
            .await
            .values()
            .all(|t| t.as_deref() == Some(v2.as_str()))
    );
    let failed = case.plugin(&["rollout", "status", "kiosks"]);
    assert_eq!(failed.code, Some(1), "an aborted rollout exits 1");
    ok(case.plugin(&["rollout", "retry", "kiosks"]));
    case.reason("WaitingForResume").await;
    ok(case.plugin(&["rollout", "promote", "kiosks", "--full"]));
    let f = case.reason("RolloutComplete").await;
    assert_eq!(
        f.status.clone().unwrap().update_revision.as_deref(),
        Some(v3.as_str())
    );
    assert_eq!(f.status.unwrap().updated, 10);

    // undo goes back to v2, which the whole fleet ran: at once, without the canary step.
    let history = ok(case.plugin(&["rollout", "history", "kiosks"]));
    assert!(history.contains(&v2) && history.contains(&v3), "{history}");
    ok(case.plugin(&["rollout", "undo", "kiosks"]));
    let f = case
        .wait("back on v2", 60, |f| {
            f.status.as_ref().and_then(|s| s.update_revision.as_deref()) == Some(v2.as_str())
                && condition(f, "Ready").0 == "RolloutComplete"
        })
        .await;
    assert_eq!(f.spec.rollback_to.as_deref(), Some(v2.as_str()));
    assert_eq!(f.status.unwrap().updated, 10);
    let watched = ok(case.plugin(&["rollout", "status", "kiosks", "-w", "--timeout", "30s"]));
    assert!(watched.contains("Complete"), "{watched}");
    let table = ok(case.plugin(&["get", "devices", "-l", "role=kiosk"]));
    assert_eq!(table.lines().count(), 11, "{table}");
    let described = ok(case.plugin(&["describe", "device", "kiosk-000"]));
    assert!(described.contains(&v2), "{described}");
    let missing = case.plugin(&["describe", "device", "nope"]);
    assert!(
        missing.code == Some(1) && missing.stderr.contains("device nope not found"),
        "{}",
        missing.stderr
    );
    let observed = sim.finish().await;
    // Going back to v2 was fast-tracked: all ten at once, not one canary first.
    let back: Vec<&String> = observed
        .order
        .get(&v2)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    assert!(back.len() >= 10, "{back:?}");
}
