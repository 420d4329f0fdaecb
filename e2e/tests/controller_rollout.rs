//! The controller against the real apiserver and registry: a staged rollout to 20 Devices
//! (their status written by the test in the role of the gateway) pauses, resumes, completes;
//! a failing canary aborts it and sends the canaries back; a multi-arch image gives a state per
//! architecture and an `unsupported` count; kstatus and `kubectl wait` read the Fleet's status.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgevisor_crds::{Device, Fleet, FleetRevision};
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{Controller, Options};
use edgevisor_e2e::gateway_role::{Behaviour, Simulation, create_devices};
use edgevisor_e2e::images::{Registry, tiny_image};
use edgevisor_e2e::kstatus::kstatus;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

async fn wait_for<F: Fn(&Fleet) -> bool>(
    api: &Api<Fleet>,
    name: &str,
    what: &str,
    controller: &Controller,
    done: F,
) -> Fleet {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(fleet) = api.get(name).await
            && done(&fleet)
        {
            return fleet;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; controller log:\n{}",
            controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready_reason(fleet: &Fleet) -> String {
    fleet
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_pauses_resumes_completes_and_a_failing_canary_rolls_back() {
    let env = Env::get();
    let ns = env.namespace("rollout");
    let client = env.client().await.expect("client");
    let registry = Registry::new(&env.registry);
    let repo = format!("e2e/{ns}/web");
    for (tag, text) in [("v1", "one"), ("v2", "two")] {
        let images = [
            tiny_image("amd64", None, text).unwrap(),
            tiny_image("arm64", None, text).unwrap(),
        ];
        registry
            .push_index(&repo, tag, &images)
            .await
            .expect("pushing an index");
    }

    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let labels: BTreeMap<String, String> = [("role".to_string(), "kiosk".to_string())].into();
    // 18 devices the image serves, 2 it does not.
    create_devices(&devices, "kiosk", 18, &labels, &["amd64", "arm64"])
        .await
        .expect("devices");
    create_devices(&devices, "board", 2, &labels, &["riscv64"])
        .await
        .expect("riscv devices");

    let mut controller = Controller::start(
        env,
        &Options {
            namespace: &ns,
            identity: "rollout-a",
            lease_seconds: 15,
            args: &[],
        },
    )
    .expect("controller");
    let failing = Arc::new(Mutex::new(String::new()));
    let behaviour = Behaviour {
        fails: {
            let failing = failing.clone();
            Arc::new(move |_device: &str, revision: &str| *failing.lock().unwrap() == revision)
        },
        polls_to_finish: 2,
    };
    let sim = Simulation::start(devices.clone(), behaviour);

    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);
    let fleet = |tag: &str| {
        json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "kiosks"},
            "spec": {
                "selector": {"matchLabels": {"role": "kiosk"}},
                "template": {"containers": [{"name": "web", "image": format!("{}/{repo}:{tag}", env.registry)}]},
                "strategy": {
                    "maxUnavailable": 3,
                    "steps": [{"devices": "10%", "pause": {"untilResumed": true}}, {"devices": "50%", "pause": {"durationSeconds": 2}}],
                    "failureThreshold": 1,
                    "autoRollback": true
                }
            }
        })
    };
    let apply = PatchParams::apply("e2e-user");
    fleets
        .patch("kiosks", &apply, &Patch::Apply(fleet("v1")))
        .await
        .expect("applying the fleet");

    // Step 0: 10% of 18 is 2 devices, then a pause until resumed.
    let waiting = wait_for(&fleets, "kiosks", "the first pause", &controller, |f| {
        ready_reason(f) == "WaitingForResume"
    })
    .await;
    let status = waiting.status.clone().unwrap();
    assert_eq!(
        (status.updated, status.devices, status.unsupported),
        (2, 20, 2),
        "{status:?}"
    );
    assert_eq!(status.current_step.as_deref(), Some("0"));
    let (kstatus_now, _) = kstatus(&serde_json::to_value(&waiting).unwrap()).expect("kstatus");
    assert_eq!(kstatus_now, "InProgress");
    let v1 = status.update_revision.clone().expect("update revision");

    // The revision holds a state per architecture the image provides.
    let revisions: Api<FleetRevision> = Api::namespaced(client.clone(), &ns);
    let revision = revisions.get(&v1).await.expect("the revision exists");
    assert_eq!(revision.spec.architectures_label(), "amd64,arm64");
    assert_ne!(
        revision.spec.architectures[0].state,
        revision.spec.architectures[1].state
    );
    let riscv = status
        .architectures
        .iter()
        .find(|a| a.architecture.as_str() == "riscv64")
        .expect("riscv64 counted");
    assert!(!riscv.supported);

    // Nothing moves while waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleets.get("kiosks").await.unwrap().status.unwrap().updated,
        2
    );

    // Resume: on through 50% and the timed pause to everyone.
    let resume = json!({"spec": {"resume": {"revision": v1, "step": 0}}});
    fleets
        .patch("kiosks", &PatchParams::default(), &Patch::Merge(resume))
        .await
        .expect("resume");
    let paused = wait_for(&fleets, "kiosks", "the timed pause", &controller, |f| {
        ready_reason(f) == "StepPaused"
    })
    .await;
    assert_eq!(paused.status.unwrap().updated, 9);
    let done = wait_for(&fleets, "kiosks", "completion", &controller, |f| {
        ready_reason(f) == "RolloutComplete"
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!((status.updated, status.ready, status.failed), (18, 18, 0));
    assert_eq!(status.stable_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(
        kstatus(&serde_json::to_value(&done).unwrap()).unwrap().0,
        "Current"
    );
    env.kubectl([
        "wait",
        "--for=condition=Ready",
        "fleet/kiosks",
        "-n",
        &ns,
        "--timeout=10s",
    ])
    .run()
    .expect_ok("kubectl wait");
    let riscv_targets = devices
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|d| {
            d.metadata
                .name
                .as_deref()
                .unwrap_or_default()
                .starts_with("board-")
                && d.spec.revision.is_some()
        })
        .count();
    assert_eq!(riscv_targets, 0, "unsupported devices are never targeted");

    // v2 fails on every device that tries it: the canaries fail, the rollout aborts, and they
    // go back to v1; nobody else ever sees v2.
    let v2_name = {
        let template = serde_json::from_value(fleet("v2")["spec"]["template"].clone()).unwrap();
        let hash = edgevisor_controller::render::template_hash(&template);
        edgevisor_controller::render::revision_name("kiosks", &hash).unwrap()
    };
    *failing.lock().unwrap() = v2_name.clone();
    fleets
        .patch("kiosks", &apply, &Patch::Apply(fleet("v2")))
        .await
        .expect("applying v2");
    let aborted = wait_for(&fleets, "kiosks", "the abort", &controller, |f| {
        ready_reason(f) == "RolloutAborted"
    })
    .await;
    let status = aborted.status.clone().unwrap();
    assert_eq!(status.update_revision.as_deref(), Some(v2_name.as_str()));
    assert!(
        status.failed >= 1,
        "the failures that stopped it are counted: {status:?}"
    );
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.status, "True");
    assert_eq!(
        kstatus(&serde_json::to_value(&aborted).unwrap()).unwrap().0,
        "Failed"
    );
    let table = env
        .kubectl(["get", "fleet", "kiosks", "-n", &ns, "-o", "wide"])
        .run()
        .expect_ok("kubectl get fleet");
    assert!(
        table.contains("RolloutAborted") && table.contains("aborted"),
        "kubectl get fleet shows why:\n{table}"
    );

    // The canaries come back to v1.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_v2 = devices
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|d| d.spec.revision.as_deref() == Some(v2_name.as_str()))
            .count();
        if on_v2 == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{on_v2} devices still target v2");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let observed = sim.finish().await;
    assert!(
        observed.max_in_flight <= 3,
        "in flight reached {}",
        observed.max_in_flight
    );
    let tried_v2 = observed.order.get(&v2_name).cloned().unwrap_or_default();
    assert_eq!(
        tried_v2.len(),
        2,
        "only the canaries tried v2: {tried_v2:?}"
    );
    assert_eq!(
        observed.order.get(&v1).map(Vec::len),
        Some(18 + 2),
        "18 rolled out + 2 rolled back"
    );
    // The same canaries lead every rollout (targeted together, so in either order).
    let mut first_v1 = observed.order[&v1][..2].to_vec();
    let mut canaries = tried_v2.clone();
    first_v1.sort();
    canaries.sort();
    assert_eq!(first_v1, canaries);
    controller.stop().expect("graceful stop");
}
