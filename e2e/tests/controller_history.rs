//! Roll back and forward with `spec.rollbackTo`, and `revisionHistoryLimit` forgetting the
//! revisions no device uses.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgevisor_crds::{Device, Fleet, FleetRevision};
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{Controller, Options};
use edgevisor_e2e::gateway_role::{Behaviour, Simulation, create_devices};
use edgevisor_e2e::images::{Registry, tiny_image};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// Waits until the fleet is Ready for its latest spec; returns its update revision.
async fn settled(fleets: &Api<Fleet>, controller: &Controller) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(f) = fleets.get("hist").await {
            let s = f.status.clone().unwrap_or_default();
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && s.observed_generation == f.metadata.generation {
                return s.update_revision.unwrap_or_default();
            }
        }
        assert!(
            Instant::now() < deadline,
            "fleet never settled:\n{}",
            controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn currents(devices: &Api<Device>) -> Vec<String> {
    let mut out: Vec<String> = devices
        .list(&ListParams::default())
        .await
        .expect("listing devices")
        .items
        .into_iter()
        .filter_map(|d| d.status.and_then(|s| s.current_revision))
        .collect();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_and_forward_and_forget_old_revisions() {
    let env = Env::get();
    let ns = env.namespace("history");
    let client = env.client().await.expect("client");
    let registry = Registry::new(&env.registry);
    let repo = format!("e2e/{ns}/app");
    for tag in ["v1", "v2", "v3"] {
        registry
            .push_index(&repo, tag, &[tiny_image("amd64", None, tag).unwrap()])
            .await
            .expect("push");
    }
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let labels: BTreeMap<String, String> = [("role".to_string(), "hist".to_string())].into();
    create_devices(&devices, "dev", 5, &labels, &["amd64"])
        .await
        .expect("devices");
    let sim = Simulation::start(devices.clone(), Behaviour::healthy(1));
    let controller = Controller::start(
        env,
        &Options {
            namespace: &ns,
            identity: "history",
            lease_seconds: 15,
            args: &[],
        },
    )
    .expect("controller");
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);
    let apply = |tag: &str, extra: serde_json::Value| {
        let mut spec = json!({
            "selector": {"matchLabels": {"role": "hist"}},
            "template": {"containers": [{"name": "app", "image": format!("{}/{repo}:{tag}", env.registry)}]},
            "strategy": {"maxUnavailable": 5},
            "revisionHistoryLimit": 1
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "hist"}, "spec": spec})
    };
    let user = PatchParams::apply("e2e-user");
    fleets
        .patch("hist", &user, &Patch::Apply(apply("v1", json!({}))))
        .await
        .expect("v1");
    let v1 = settled(&fleets, &controller).await;
    fleets
        .patch("hist", &user, &Patch::Apply(apply("v2", json!({}))))
        .await
        .expect("v2");
    let v2 = settled(&fleets, &controller).await;
    assert_ne!(v1, v2);
    assert_eq!(currents(&devices).await, vec![v2.clone()]);

    // Back to v1 with the template still at v2.
    fleets
        .patch(
            "hist",
            &user,
            &Patch::Apply(apply("v2", json!({"rollbackTo": v1}))),
        )
        .await
        .expect("rollbackTo");
    assert_eq!(settled(&fleets, &controller).await, v1);
    assert_eq!(currents(&devices).await, vec![v1.clone()]);
    // Forward again: drop rollbackTo, the template's revision returns.
    fleets
        .patch("hist", &user, &Patch::Apply(apply("v2", json!({}))))
        .await
        .expect("forward");
    assert_eq!(settled(&fleets, &controller).await, v2);

    // A rollback to a revision that does not exist is a clear condition, and nothing moves.
    fleets
        .patch(
            "hist",
            &user,
            &Patch::Apply(apply("v2", json!({"rollbackTo": "hist-0000000000"}))),
        )
        .await
        .expect("bad rollbackTo");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleets.get("hist").await.unwrap();
        let s = f.status.unwrap_or_default();
        if let Some(c) = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
        {
            assert!(
                c.message
                    .contains("names hist-0000000000, which is not a retained revision"),
                "{}",
                c.message
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Stalled condition for a missing rollbackTo"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(currents(&devices).await, vec![v2.clone()]);
    let kept = fleets.get("hist").await.unwrap().status.unwrap_or_default();
    assert_eq!(
        kept.stable_revision.as_deref(),
        Some(v2.as_str()),
        "a failed render keeps the stable revision"
    );
    assert_eq!(kept.updated, 5, "and the counts");

    // With revisionHistoryLimit 1, v3 keeps one revision no device uses (v2, the newest) and
    // forgets v1.
    fleets
        .patch("hist", &user, &Patch::Apply(apply("v3", json!({}))))
        .await
        .expect("v3");
    let v3 = settled(&fleets, &controller).await;
    let revisions: Api<FleetRevision> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names: Vec<String> = revisions
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.name_any())
            .collect();
        if !names.contains(&v1) && names.contains(&v2) && names.contains(&v3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old revisions were kept: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sim.finish().await;
}
