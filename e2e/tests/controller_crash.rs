//! A controller killed (SIGKILL) at random moments in the middle of rollouts, at least ten
//! times, resumes each time from what the apiserver holds: never more than `maxUnavailable`
//! devices in flight, never a device given the same revision twice, and the rollout completes.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgevisor_crds::{Device, Fleet};
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{Controller, Options};
use edgevisor_e2e::gateway_role::{Behaviour, Simulation, create_devices};
use edgevisor_e2e::images::{Registry, tiny_image};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Ready for the fleet's latest spec.
fn complete(fleet: &Fleet) -> bool {
    let Some(status) = &fleet.status else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready && status.observed_generation == fleet.metadata.generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_without_breaking_the_rollout() {
    let env = Env::get();
    let ns = env.namespace("crash");
    let client = env.client().await.expect("client");
    let registry = Registry::new(&env.registry);
    let repo = format!("e2e/{ns}/app");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let labels: BTreeMap<String, String> = [("role".to_string(), "crash".to_string())].into();
    create_devices(&devices, "dev", 20, &labels, &["amd64"])
        .await
        .expect("devices");

    let sim = Simulation::start(devices.clone(), Behaviour::healthy(4));
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    println!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    let options = Options {
        namespace: &ns,
        identity: "crash-test",
        lease_seconds: 15,
        args: &[],
    };
    let mut kills = 0;
    let mut rollouts = 0;
    let started = Instant::now();
    while kills < 10 || rollouts == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "did not finish: {kills} kills, {rollouts} rollouts"
        );
        rollouts += 1;
        let tag = format!("v{rollouts}");
        let images = [tiny_image("amd64", None, &tag).unwrap()];
        registry
            .push_index(&repo, &tag, &images)
            .await
            .expect("push");
        let fleet = json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "crash"},
            "spec": {
                "selector": {"matchLabels": {"role": "crash"}},
                "template": {"containers": [{"name": "app", "image": format!("{}/{repo}:{tag}", env.registry)}]},
                "strategy": {"maxUnavailable": 3, "failureThreshold": 1}
            }
        });
        fleets
            .patch(
                "crash",
                &PatchParams::apply("e2e-user"),
                &Patch::Apply(fleet),
            )
            .await
            .expect("apply");
        // Kill the controller at random moments until this rollout completes.
        loop {
            let mut controller = Controller::start(env, &options).expect("controller");
            let life = Duration::from_millis(300 + rng.next(1500));
            let until = Instant::now() + life;
            let mut finished = false;
            while Instant::now() < until {
                if fleets.get("crash").await.is_ok_and(|f| complete(&f)) {
                    finished = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if finished {
                controller.stop().expect("graceful stop");
                break;
            }
            assert!(
                controller.running(),
                "the controller died by itself:\n{}",
                controller.log_tail()
            );
            controller.kill();
            kills += 1;
        }
    }
    let observed = sim.finish().await;
    println!(
        "crash test: {kills} kills over {rollouts} rollouts, {} targets written, at most {} in flight",
        observed.assignments.len(),
        observed.max_in_flight
    );
    assert!(kills >= 10);
    assert!(
        observed.max_in_flight <= 3,
        "in flight reached {} > maxUnavailable 3",
        observed.max_in_flight
    );
    assert!(
        observed.repeated.is_empty(),
        "devices given the same revision twice: {:?}",
        observed.repeated
    );
    assert_eq!(
        observed.assignments.len(),
        20 * rollouts,
        "every device got every revision exactly once"
    );
}
