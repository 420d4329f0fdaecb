//! The story's Fleet: its templates, applying them, the revisions they render to.

use super::*;

// === the fleet ===

pub(super) fn template(app: &str, side: &str, version: &str, broken: bool) -> Value {
    let app_container = if broken {
        json!({"name": "app", "image": app, "restartPolicy": "Never",
               "command": ["/bin/sh", "-c", "echo \"app $VERSION: config missing\" >&2; exit 3"],
               "env": [{"name": "VERSION", "value": version}]})
    } else {
        json!({"name": "app", "image": app, "command": ["/bin/sh", "/app/run.sh"],
               "env": [{"name": "VERSION", "value": version}]})
    };
    json!({
        "containers": [
            app_container,
            {"name": "side", "image": side, "command": ["/bin/sh", "-c", "while true; do sleep 1; done"]}
        ],
        "goalTimeoutSeconds": 30,
        "testPeriodSeconds": 2
    })
}

pub(super) fn fleet(template: &Value, canary_step: bool) -> Value {
    let mut strategy =
        json!({"maxUnavailable": DEVICES, "failureThreshold": 1, "autoRollback": true});
    if canary_step {
        strategy["maxUnavailable"] = json!(2);
        strategy["steps"] = json!([{"devices": 1, "pause": {"untilResumed": true}}]);
    }
    json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": FLEET},
        "spec": {
            "selector": {"matchLabels": {"role": ROLE}},
            "template": template,
            "strategy": strategy
        }
    })
}

/// The FleetRevision name the controller gives `template`.
pub(super) fn revision_name(template: &Value) -> anyhow::Result<String> {
    let template = serde_json::from_value(template.clone()).context("a template")?;
    let hash = edgevisor_controller::render::template_hash(&template);
    edgevisor_controller::render::revision_name(FLEET, &hash).context("a revision name")
}

/// A GET or PUT to the gateway's device API with a bearer credential; the status code.
pub(super) async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    credential: &str,
) -> anyhow::Result<u16> {
    let mut request = http.request(method.clone(), url).bearer_auth(credential);
    if method == reqwest::Method::PUT {
        request = request.json(&json!({"containers": []}));
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    Ok(response.status().as_u16())
}

/// Makes `namespace` ready for another run of the story: creates it if missing, deletes its
/// Fleets, FleetRevisions, Devices and events, and waits until they are gone.
pub async fn reset_namespace(env: &Env, namespace: &str) -> anyhow::Result<()> {
    let client = env.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))?;
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context(format!("creating namespace {namespace}")),
        }
    }
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), namespace);
    let devices: Api<Device> = Api::namespaced(client.clone(), namespace);
    let revisions: Api<edgevisor_crds::FleetRevision> = Api::namespaced(client.clone(), namespace);
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), namespace);
    let (dp, lp) = (DeleteParams::default(), ListParams::default());
    fleets.delete_collection(&dp, &lp).await?;
    revisions.delete_collection(&dp, &lp).await?;
    devices.delete_collection(&dp, &lp).await?;
    events.delete_collection(&dp, &lp).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = fleets.list(&lp).await?.items.len()
            + revisions.list(&lp).await?.items.len()
            + devices.list(&lp).await?.items.len();
        if left == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{left} Fleets, FleetRevisions and Devices of {namespace} are still there a minute after deleting them"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
