//! Two controllers, one Lease: only the leader acts; kill it and the other takes over within
//! the lease time. Both serve /healthz, /readyz and /metrics.
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

async fn get(addr: &str, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn leads(c: &Controller) -> bool {
    get(&c.metrics, "/metrics")
        .await
        .1
        .lines()
        .any(|l| l == "edgevisor_leader 1")
}

async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let env = Env::get();
    let ns = env.namespace("leader");
    let client = env.client().await.expect("client");
    let lease = 6;
    let mut a = Controller::start(
        env,
        &Options {
            namespace: &ns,
            identity: "replica-a",
            lease_seconds: lease,
            args: &[],
        },
    )
    .expect("a");
    until("replica a to lead", Duration::from_secs(30), async || {
        leads(&a).await
    })
    .await;
    let mut b = Controller::start(
        env,
        &Options {
            namespace: &ns,
            identity: "replica-b",
            lease_seconds: lease,
            args: &[],
        },
    )
    .expect("b");
    until("replica b to serve", Duration::from_secs(30), async || {
        get(&b.metrics, "/healthz").await.0 == 200
    })
    .await;
    assert_eq!(
        get(&b.metrics, "/readyz").await.0,
        200,
        "a standby is ready"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(leads(&a).await && !leads(&b).await, "exactly one leads");

    // The leader acts: a rollout goes through.
    let registry = Registry::new(&env.registry);
    let repo = format!("e2e/{ns}/app");
    registry
        .push_index(&repo, "v1", &[tiny_image("amd64", None, "leader").unwrap()])
        .await
        .expect("push");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let labels: BTreeMap<String, String> = [("role".to_string(), "leader".to_string())].into();
    create_devices(&devices, "dev", 4, &labels, &["amd64"])
        .await
        .expect("devices");
    let sim = Simulation::start(devices.clone(), Behaviour::healthy(1));
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);
    let fleet = |tag: &str| {
        json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "ha"},
            "spec": {"selector": {"matchLabels": {"role": "leader"}},
                     "template": {"containers": [{"name": "app", "image": format!("{}/{repo}:{tag}", env.registry)}]},
                     "strategy": {"maxUnavailable": 2}}
        })
    };
    fleets
        .patch(
            "ha",
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(fleet("v1")),
        )
        .await
        .expect("apply");
    let ready = async || {
        fleets
            .get("ha")
            .await
            .ok()
            .and_then(|f| f.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
    };
    until(
        "the rollout under replica a",
        Duration::from_secs(60),
        ready,
    )
    .await;
    let metrics = get(&a.metrics, "/metrics").await.1;
    assert!(metrics.contains("edgevisor_reconciles_total"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "edgevisor_fleet_devices{{namespace=\"{ns}\",fleet=\"ha\",state=\"current\"}} 4"
        )),
        "{metrics}"
    );
    assert!(
        !get(&b.metrics, "/metrics")
            .await
            .1
            .contains("edgevisor_fleet_devices{"),
        "the standby did nothing"
    );

    // The leader dies without a word: the standby takes over within the lease time.
    a.kill();
    let took = until(
        "replica b to lead",
        Duration::from_secs(lease + 10),
        async || leads(&b).await,
    )
    .await;
    println!("standby took over {took:?} after the leader was killed (lease {lease}s)");
    assert!(
        took <= Duration::from_secs(lease + 3),
        "took over after {took:?}"
    );
    registry
        .push_index(
            &repo,
            "v2",
            &[tiny_image("amd64", None, "leader-2").unwrap()],
        )
        .await
        .expect("push");
    fleets
        .patch(
            "ha",
            &PatchParams::apply("e2e-user"),
            &Patch::Apply(fleet("v2")),
        )
        .await
        .expect("apply v2");
    let rolled = async || {
        fleets.get("ha").await.ok().is_some_and(|f| {
            let s = f.status.unwrap_or_default();
            s.observed_generation == f.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    until(
        "the rollout under replica b",
        Duration::from_secs(60),
        rolled,
    )
    .await;

    // What a human sees.
    let events = env
        .kubectl([
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "involvedObject.name=ha",
            "-o",
            "custom-columns=REASON:.reason",
        ])
        .run()
        .expect_ok("events");
    for reason in ["RevisionCreated", "RolloutStarted", "RolloutComplete"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
    sim.finish().await;
    b.stop().expect("graceful stop");
}
