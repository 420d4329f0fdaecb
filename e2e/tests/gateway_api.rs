//! The gateway's device API against the real apiserver, as the chart's gateway ServiceAccount:
//! enrollment and its refusals, who may read what, long-poll wake-ups, file content, coalesced
//! status writes, and revocation taking effect at once.
use std::time::{Duration, Instant};

use base64::Engine as _;
use edgevisor_crds::{Device, FleetRevision, UpdateStatus};
use edgevisor_e2e::Env;
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway};
use edgevisor_protocol::gateway::{
    ContainerReport, DeviceReport, EnrollResponse, Target, UpdateReport,
};
use edgevisor_protocol::lifecycle::Status;
use futures::StreamExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

struct Device_ {
    http: reqwest::Client,
    base: String,
    ns: String,
    name: String,
    credential: String,
}

impl Device_ {
    fn url(&self, ns: &str, name: &str, what: &str) -> String {
        format!("{}/v1/devices/{ns}/{name}/{what}", self.base)
    }

    async fn target(&self, of: &str, query: &str) -> reqwest::Response {
        self.http
            .get(format!("{}?{query}", self.url(&self.ns, of, "target")))
            .bearer_auth(&self.credential)
            .send()
            .await
            .expect("target request")
    }

    async fn report(&self, report: &DeviceReport) -> StatusCode {
        self.http
            .put(self.url(&self.ns, &self.name, "status"))
            .bearer_auth(&self.credential)
            .json(report)
            .send()
            .await
            .expect("status request")
            .status()
    }
}

async fn enroll(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let r = http
        .post(format!("{base}/v1/enroll"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("enroll request");
    let code = r.status();
    (code, r.json().await.unwrap_or_default())
}

fn downloading(bytes: u64) -> DeviceReport {
    DeviceReport {
        current_revision: None,
        update: Some(UpdateReport {
            revision: "app-0123456789".into(),
            status: Status::Downloading,
            progress: 10,
            message: Some("downloading".into()),
            reason: None,
            downloaded_bytes: bytes,
            total_bytes: 1_000_000,
        }),
        containers: vec![],
    }
}

#[tokio::test]
async fn the_device_api_admits_serves_and_refuses_as_it_must() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::get();
    let client = env.client().await.unwrap();
    let ns = env.namespace("gwapi");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();
    let tls = edgevisor_e2e::tls::make_server_cert(dir.path(), &[]).unwrap();
    let mut token = BootstrapToken::new(&ns).unwrap();
    token.labels.insert("site".into(), "lab".into());
    token.usage_limit = Some(3);
    token.secret = "e2e-token-gateway-api".into();
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .unwrap();
    let options = gateway::Options::for_namespace("api", &tls, &ns, &token.secret).unwrap();
    let gw = Gateway::start_ready(env, &options).await.unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&tls.ca_pem().unwrap()).unwrap()])
        .build()
        .unwrap();
    let base = gw.url.clone();

    // --- Enrollment and its refusals.
    let body =
        |name: &str| json!({"name": name, "architecture": "amd64", "info": {"model": "test"}});
    let (code, err) = enroll(&http, &base, "not-the-token-at-all", body("dev-a")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{err}");
    let (code, err) = enroll(
        &http,
        &base,
        &token.token,
        json!({"name": "Dev_A", "architecture": "mips"}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("DNS label"),
        "{err}"
    );
    let (code, err) = enroll(
        &http,
        &base,
        &token.token,
        json!({"name": "dev-a", "arch": "amd64"}),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        devices
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "a refused enrollment left a Device behind"
    );

    // An operator may create a Device first and let the token adopt it.
    devices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                "metadata": {"name": "pre", "labels": {"made-by": "operator"},
                    "annotations": {"edgevisor.dev/enroll-with": &token.secret}}, "spec": {}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let mut enrolled = Vec::new();
    for name in ["dev-a", "dev-b", "pre"] {
        let (code, value) = enroll(&http, &base, &token.token, body(name)).await;
        assert_eq!(code, StatusCode::CREATED, "{name}: {value}");
        let e: EnrollResponse = serde_json::from_value(value).unwrap();
        assert_eq!((e.namespace.as_str(), e.name.as_str()), (ns.as_str(), name));
        enrolled.push(Device_ {
            http: http.clone(),
            base: base.clone(),
            ns: ns.clone(),
            name: name.into(),
            credential: e.credential,
        });
    }
    let (a, b, pre) = (&enrolled[0], &enrolled[1], &enrolled[2]);
    let dev_a = devices.get("dev-a").await.unwrap();
    assert_eq!(dev_a.labels().get("site").map(String::as_str), Some("lab"));
    let status = dev_a.status.clone().unwrap();
    assert_eq!(
        status
            .architecture
            .map(|a| a.as_str().to_string())
            .as_deref(),
        Some("amd64")
    );
    assert_eq!(status.info.get("model").map(String::as_str), Some("test"));
    let enrollment = status.enrollment.unwrap();
    assert_eq!(
        enrollment.credential_sha256,
        hex::encode(Sha256::digest(a.credential.as_bytes())),
        "only the credential's hash is stored"
    );
    assert!(
        !serde_json::to_string(&dev_a)
            .unwrap()
            .contains(&a.credential)
    );
    assert_eq!(
        devices
            .get("pre")
            .await
            .unwrap()
            .labels()
            .get("made-by")
            .map(String::as_str),
        Some("operator"),
        "an adopted Device keeps its labels"
    );
    let (code, err) = enroll(&http, &base, &token.token, body("dev-a")).await;
    assert_eq!(code, StatusCode::CONFLICT, "enrolled twice: {err}");
    let (code, err) = enroll(&http, &base, &token.token, body("dev-d")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "past the usage limit: {err}");
    assert!(
        err["error"].as_str().unwrap().contains("limit of 3"),
        "{err}"
    );

    // --- Who may read what.
    let anonymous = http
        .get(a.url(&ns, "dev-a", "target"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let forged = http
        .get(a.url(&ns, "dev-a", "target"))
        .bearer_auth("evd1_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let other = a.target("dev-b", "waitSeconds=0").await;
    assert_eq!(
        other.status(),
        StatusCode::FORBIDDEN,
        "dev-a read dev-b's target"
    );
    let r = a
        .http
        .put(a.url(&ns, "dev-b", "status"))
        .bearer_auth(&a.credential)
        .json(&downloading(1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "dev-a wrote dev-b's status"
    );

    // --- Long-poll: nothing to do answers 204 after the wait; a new target answers at once.
    let started = Instant::now();
    assert_eq!(
        a.target("dev-a", "waitSeconds=1").await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    let file = b"greeting=hello\n";
    let file_hex = hex::encode(Sha256::digest(file));
    let state = json!({"#spec": "edgevisor-state@1", "containers": [], "files": [
        {"path": "app.conf", "digest": format!("sha256:{file_hex}"), "size": file.len()}]})
    .to_string();
    let revisions: Api<FleetRevision> = Api::namespaced(client.clone(), &ns);
    revisions
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "FleetRevision",
                "metadata": {"name": "app-0123456789"},
                "spec": {"fleet": "app", "revision": 1, "templateHash": &"0123456789".repeat(7)[..64],
                    "architectures": [{"architecture": "amd64",
                        "stateDigest": hex::encode(Sha256::digest(state.as_bytes())),
                        "state": state, "images": []}],
                    "files": [{"path": "app.conf", "digest": format!("sha256:{file_hex}"),
                        "size": file.len(), "mode": 420,
                        "content": base64::engine::general_purpose::STANDARD.encode(file)}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let waiting = {
        let a = Device_ {
            http: a.http.clone(),
            base: a.base.clone(),
            ns: a.ns.clone(),
            name: a.name.clone(),
            credential: a.credential.clone(),
        };
        tokio::spawn(async move {
            let r = a.target("dev-a", "waitSeconds=30").await;
            (r.status(), Instant::now(), r.json::<Target>().await.ok())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    devices
        .patch(
            "dev-a",
            &PatchParams::apply("e2e-operator"),
            &Patch::Apply(
                json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                "spec": {"revision": "app-0123456789"}}),
            ),
        )
        .await
        .unwrap();
    let targeted = Instant::now();
    let (code, answered, target) = waiting.await.unwrap();
    assert_eq!(code, StatusCode::OK);
    assert!(
        answered.duration_since(targeted) < Duration::from_secs(3),
        "the long-poll was not woken by the new target"
    );
    let target = target.expect("a target body");
    assert_eq!(target.revision, "app-0123456789");
    assert_eq!(target.state, state, "the state is served byte for byte");
    // Asking again with the revision known waits; the file is served to its device only.
    assert_eq!(
        a.target("dev-a", "known=app-0123456789&waitSeconds=0")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let got = http
        .get(a.url(&ns, "dev-a", &format!("files/{file_hex}")))
        .bearer_auth(&a.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), file);
    let theirs = http
        .get(a.url(&ns, "dev-b", &format!("files/{file_hex}")))
        .bearer_auth(&a.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::FORBIDDEN);

    // --- Status: a burst of byte counts is one write; heartbeats are none.
    assert_eq!(
        b.report(&DeviceReport {
            current_revision: None,
            update: None,
            containers: vec![]
        })
        .await,
        StatusCode::ACCEPTED
    );
    // The first liveness write (lastSeen, Online) lands within the gateway's sweep.
    let deadline = Instant::now() + Duration::from_secs(30);
    while devices
        .get("dev-b")
        .await
        .unwrap()
        .status
        .and_then(|s| s.last_seen)
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "no liveness write:\n{}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bad = DeviceReport {
        containers: vec![ContainerReport {
            name: "BAD NAME".into(),
            state: "running".into(),
            ready: true,
            restarts: 0,
            exit_code: None,
            message: None,
        }],
        ..Default::default()
    };
    assert_eq!(b.report(&bad).await, StatusCode::UNPROCESSABLE_ENTITY);
    let writes = count_writes(devices.clone(), "dev-b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20u64 {
        assert_eq!(
            b.report(&downloading(1000 * (i + 1))).await,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            b.target("dev-b", "waitSeconds=0").await.status(),
            StatusCode::NO_CONTENT
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut done = downloading(1_000_000);
    if let Some(u) = done.update.as_mut() {
        u.status = Status::Error;
        u.progress = 100;
        u.message = Some("container app exited with code 3".into());
        u.reason = Some("ContainerExited".into());
    }
    assert_eq!(b.report(&done).await, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_secs(4)).await;
    writes.abort();
    let seen = writes.await.unwrap_err();
    drop(seen);
    let n = WRITES.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        n, 2,
        "20 byte counts, 20 polls and a failure must be exactly 2 status writes"
    );
    let status = devices.get("dev-b").await.unwrap().status.unwrap();
    let update = status.update.unwrap();
    assert_eq!(update.status, UpdateStatus::Error);
    assert_eq!(update.reason.as_deref(), Some("ContainerExited"));
    assert_eq!(update.downloaded_bytes, Some(1_000_000));
    assert_eq!(status.history.len(), 1);
    let managers: Vec<String> = devices
        .get("dev-b")
        .await
        .unwrap()
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "edgevisor-gateway")
            && managers.iter().any(|m| m == "edgevisor-gateway-enrollment"),
        "{managers:?}"
    );
    assert!(
        status.enrollment.is_some(),
        "a status write dropped the enrollment"
    );

    // --- Revocation is immediate, also for a waiting long-poll; deletion too.
    let waiting = tokio::spawn({
        let (http, url, cred) = (
            pre.http.clone(),
            pre.url(&ns, "pre", "target"),
            pre.credential.clone(),
        );
        async move {
            http.get(format!("{url}?waitSeconds=30"))
                .bearer_auth(cred)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway::revoke(&devices, "pre").await.unwrap();
    let revoked_at = Instant::now();
    assert_eq!(waiting.await.unwrap().unwrap(), StatusCode::FORBIDDEN);
    assert!(revoked_at.elapsed() < Duration::from_secs(3));
    assert_eq!(
        pre.target("pre", "waitSeconds=0").await.status(),
        StatusCode::FORBIDDEN
    );
    // A revoked device may enroll again; it stays refused until an operator lifts the flag.
    let (code, value) = enroll(&http, &base, &token.token, body("pre")).await;
    assert_eq!(code, StatusCode::CREATED, "{value}");
    devices
        .delete("dev-a", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.target("dev-a", "waitSeconds=0").await.status() != StatusCode::UNAUTHORIZED {
        assert!(
            Instant::now() < deadline,
            "a deleted device is still served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts status changes of one Device seen by a watch, into [`WRITES`].
fn count_writes(devices: Api<Device>, name: &str) -> tokio::task::JoinHandle<()> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        let mut first = true;
        let mut stream = watcher(devices, config).applied_objects().boxed();
        while let Some(Ok(d)) = stream.next().await {
            let status = serde_json::to_string(&d.status).unwrap_or_default();
            if !first && last.as_ref() != Some(&status) {
                WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            first = false;
            last = Some(status);
        }
    })
}
