//! Enrollment is exact, against two real gateway replicas over TLS and the real apiserver: the
//! races an attacker (or a fleet booting at once) can start, repeated over rounds so that a race
//! lost only sometimes fails the test; an expired token cannot re-enroll a revoked device; a
//! token cannot adopt a Device its operator did not hand to it.
use std::collections::BTreeSet;

use edgevisor_crds::Device;
use edgevisor_e2e::Env;
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway};
use edgevisor_protocol::gateway::EnrollResponse;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

const ROUNDS: usize = 4;
const RACERS: usize = 20;

struct Replicas {
    _gateways: Vec<Gateway>,
    urls: Vec<String>,
    http: reqwest::Client,
}

impl Replicas {
    /// Enrolls `name` through replica `i % 2`.
    async fn enroll(&self, i: usize, token: &str, name: &str) -> (StatusCode, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/v1/enroll", self.urls[i % self.urls.len()]))
            .bearer_auth(token)
            .json(&json!({"name": name, "architecture": "amd64"}))
            .send()
            .await
            .expect("enroll request");
        (r.status(), r.json().await.unwrap_or_default())
    }

    async fn poll(&self, i: usize, ns: &str, name: &str, credential: &str) -> StatusCode {
        self.http
            .get(format!(
                "{}/v1/devices/{ns}/{name}/target?waitSeconds=0",
                self.urls[i % self.urls.len()]
            ))
            .bearer_auth(credential)
            .send()
            .await
            .expect("target request")
            .status()
    }
}

fn stored_hash(d: &Device) -> Option<String> {
    d.status
        .as_ref()?
        .enrollment
        .as_ref()
        .map(|e| e.credential_sha256.clone())
}

#[tokio::test]
async fn enrollment_is_exact_under_races_across_two_replicas() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::get();
    let client = env.client().await.unwrap();
    let ns = env.namespace("enroll");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();
    let tls = edgevisor_e2e::tls::make_server_cert(dir.path(), &[]).unwrap();
    let mut token = BootstrapToken::new(&ns).unwrap();
    token.secret = "e2e-token-races".into();
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &token.namespace);
    let mut gateways = Vec::new();
    for replica in ["races-a", "races-b"] {
        let options = gateway::Options::for_namespace(replica, &tls, &ns, &token.secret).unwrap();
        gateways.push(Gateway::start_ready(env, &options).await.unwrap());
    }
    let replicas = Replicas {
        urls: gateways.iter().map(|g| g.url.clone()).collect(),
        _gateways: gateways,
        http: reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&tls.ca_pem().unwrap()).unwrap()])
            .build()
            .unwrap(),
    };

    for round in 0..ROUNDS {
        // --- 20 simultaneous enrollments of one new name, half through each replica: exactly
        // one credential, and it is the one stored.
        token.usage_limit = None;
        gateway::apply_bootstrap_token(&client, &token)
            .await
            .unwrap();
        let name = format!("same-{round}");
        let answers = join_all((0..RACERS).map(|i| replicas.enroll(i, &token.token, &name))).await;
        let winners: Vec<EnrollResponse> = answers
            .iter()
            .filter(|(code, _)| *code == StatusCode::CREATED)
            .map(|(_, v)| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let losers: BTreeSet<u16> = answers
            .iter()
            .filter(|(code, _)| *code != StatusCode::CREATED)
            .map(|(code, _)| code.as_u16())
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} enrollments of one name succeeded: {answers:?}",
            winners.len()
        );
        assert_eq!(
            losers,
            BTreeSet::from([409]),
            "round {round}: the others must be told the name is enrolled: {answers:?}"
        );
        let stored = stored_hash(&devices.get(&name).await.unwrap());
        assert_eq!(
            stored,
            Some(hex::encode(Sha256::digest(
                winners[0].credential.as_bytes()
            ))),
            "round {round}: the stored credential is not the one handed out"
        );
        for i in 0..2 {
            assert_eq!(
                replicas.poll(i, &ns, &name, &winners[0].credential).await,
                StatusCode::NO_CONTENT,
                "round {round}: the winner's credential does not work on replica {i}"
            );
        }

        // --- A token with a usage limit of 1, 20 enrollments of different names at once
        // across both replicas: exactly one Device. The count starts over each round.
        secrets
            .patch(
                &token.secret,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"edgevisor.dev/enrollments": null}}}),
                ),
            )
            .await
            .unwrap();
        token.usage_limit = Some(1);
        gateway::apply_bootstrap_token(&client, &token)
            .await
            .unwrap();
        let prefix = format!("limited-{round}-");
        let names: Vec<String> = (0..RACERS).map(|i| format!("{prefix}{i}")).collect();
        let answers = join_all(
            names
                .iter()
                .enumerate()
                .map(|(i, name)| replicas.enroll(i, &token.token, name)),
        )
        .await;
        let created = answers
            .iter()
            .filter(|(c, _)| *c == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "round {round}: {answers:?}");
        assert!(
            answers.iter().all(|(c, v)| *c == StatusCode::CREATED
                || (*c == StatusCode::FORBIDDEN
                    && v["error"].as_str().unwrap_or("").contains("limit of 1"))),
            "round {round}: the others must be told the token is used up: {answers:?}"
        );
        let made = devices
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|d| d.name_any().starts_with(&prefix))
            .count();
        assert_eq!(made, 1, "round {round}: {made} Devices for a token of one");
    }

    // --- A revoked device, re-enrolling with a token that expired: refused, through either
    // replica, and the stored credential is unchanged. With a valid token: a new credential.
    token.usage_limit = None;
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .unwrap();
    let (code, first) = replicas.enroll(0, &token.token, "revoked").await;
    assert_eq!(code, StatusCode::CREATED, "{first}");
    gateway::revoke(&devices, "revoked").await.unwrap();
    let before = stored_hash(&devices.get("revoked").await.unwrap());
    token.expiration = Some("2020-01-01T00:00:00Z".into());
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .unwrap();
    for i in 0..2 {
        let (code, err) = replicas.enroll(i, &token.token, "revoked").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "replica {i}: {err}");
        assert!(
            err["error"].as_str().unwrap_or("").contains("expired"),
            "{err}"
        );
    }
    assert_eq!(
        stored_hash(&devices.get("revoked").await.unwrap()),
        before,
        "an expired token changed a revoked device's credential"
    );
    token.expiration = None;
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .unwrap();
    let (code, again) = replicas.enroll(1, &token.token, "revoked").await;
    assert_eq!(code, StatusCode::CREATED, "{again}");
    assert_ne!(stored_hash(&devices.get("revoked").await.unwrap()), before);

    // --- An operator's Device is adopted only by a token it names.
    let operator_device = |name: &str, allow: Option<&str>| {
        let mut d: Device = serde_json::from_value(json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
            "metadata": {"name": name}, "spec": {}
        }))
        .unwrap();
        if let Some(t) = allow {
            d.annotations_mut()
                .insert("edgevisor.dev/enroll-with".into(), t.into());
        }
        d
    };
    devices
        .create(&PostParams::default(), &operator_device("kept", None))
        .await
        .unwrap();
    devices
        .create(
            &PostParams::default(),
            &operator_device("elsewhere", Some("another-token")),
        )
        .await
        .unwrap();
    devices
        .create(
            &PostParams::default(),
            &operator_device("handed", Some(&token.secret)),
        )
        .await
        .unwrap();
    for name in ["kept", "elsewhere"] {
        let (code, err) = replicas.enroll(0, &token.token, name).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{name}: {err}");
        assert!(
            err["error"]
                .as_str()
                .unwrap_or("")
                .contains("edgevisor.dev/enroll-with"),
            "{err}"
        );
        assert_eq!(
            stored_hash(&devices.get(name).await.unwrap()),
            None,
            "{name} was taken over"
        );
    }
    let (code, value) = replicas.enroll(1, &token.token, "handed").await;
    assert_eq!(code, StatusCode::CREATED, "{value}");
}
