//! Registries that want Bearer tokens (the auth of Docker Hub, GHCR, Quay), with the real
//! CNCF distribution registry and a token service of the test's own: the controller
//! resolves images through it and the agent downloads blobs from it, each with the
//! credentials of a docker config, each asking for one token and reusing it.
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use agent::registry::{Downloader, DownloaderConfig, Fetch, Source};
use edgevisor_controller::registry::{Registry as ControllerRegistry, RegistryError};
use edgevisor_e2e::images::{Registry, tiny_image};
use edgevisor_e2e::token_registry::TokenRegistry;
use edgevisor_protocol::registry_auth::{Credentials, parse_docker_config};

const USER: &str = "robot";
const PASSWORD: &str = "t0ken-pass";

fn docker_config(host: &str, user: &str, password: &str) -> HashMap<String, Credentials> {
    let config = serde_json::json!({"auths": {host: {"username": user, "password": password}}});
    parse_docker_config(config.to_string().as_bytes()).expect("a docker config")
}

#[tokio::test]
async fn the_controller_resolves_through_token_auth_with_one_token() {
    let tr = TokenRegistry::start(&[(USER, PASSWORD)])
        .await
        .expect("token registry");
    let pusher = Registry::new(&tr.host).with_bearer_token(&tr.push_token("team/app"));
    let (_, pushed) = pusher
        .push_index(
            "team/app",
            "v1",
            &[
                tiny_image("amd64", None, "a").unwrap(),
                tiny_image("arm64", None, "b").unwrap(),
            ],
        )
        .await
        .expect("push with a token");
    assert!(
        Registry::new(&tr.host)
            .push_index("team/app", "v2", &[tiny_image("amd64", None, "x").unwrap()])
            .await
            .is_err(),
        "the registry must refuse anonymous pushes"
    );
    let image = format!("{}/team/app:v1", tr.host);

    // The test's token service speaks plain http, like its registry: both are listed.
    let insecure = vec![tr.host.clone(), tr.token_host()];
    // Listing only the registry is not enough: credentials never go to a cleartext realm.
    let registry_only = ControllerRegistry::new(
        vec![tr.host.clone()],
        docker_config(&tr.host, USER, PASSWORD),
    )
    .unwrap();
    let before = tr.token_requests();
    match registry_only.resolve(&image).await {
        Err(RegistryError::Invalid { what, .. }) => assert!(what.contains("plain http"), "{what}"),
        other => panic!("a cleartext realm must be refused, got {other:?}"),
    }
    assert_eq!(tr.token_requests(), before, "the token service was asked");

    let anonymous = ControllerRegistry::new(insecure.clone(), HashMap::new()).unwrap();
    match anonymous.resolve(&image).await {
        Err(RegistryError::Status { status, body, .. }) => {
            assert_eq!(status, 401, "{body}");
            assert!(body.contains("token request refused"), "{body}");
        }
        other => panic!("anonymous resolution must fail, got {other:?}"),
    }
    let wrong =
        ControllerRegistry::new(insecure.clone(), docker_config(&tr.host, USER, "wrong")).unwrap();
    assert!(wrong.resolve(&image).await.is_err(), "wrong password");

    let before = tr.token_requests();
    let registry =
        ControllerRegistry::new(insecure.clone(), docker_config(&tr.host, USER, PASSWORD)).unwrap();
    let platforms = registry
        .resolve(&image)
        .await
        .expect("resolves with credentials");
    assert_eq!(platforms.len(), 2, "{platforms:?}");
    for p in &pushed {
        assert!(
            platforms
                .values()
                .any(|i| i.manifest_digest == p.manifest_digest),
            "{} resolved",
            p.architecture
        );
    }
    // The index, two manifests and two configs: one token for all of them, and for a
    // second resolution too.
    registry.resolve(&image).await.expect("again");
    assert_eq!(
        tr.token_requests() - before,
        1,
        "the controller reuses its token"
    );
}

#[tokio::test]
async fn the_agent_downloads_through_token_auth_and_reuses_its_token() {
    let tr = TokenRegistry::start(&[(USER, PASSWORD)])
        .await
        .expect("token registry");
    let pusher = Registry::new(&tr.host).with_bearer_token(&tr.push_token("team/blobs"));
    let blobs: Vec<Vec<u8>> = (0..2u8)
        .map(|i| vec![i; 200_000 + usize::from(i)])
        .collect();
    let mut fetches = Vec::new();
    for b in &blobs {
        let digest = pusher.push_blob("team/blobs", b).await.expect("push");
        fetches.push(Fetch {
            hex: digest.trim_start_matches("sha256:").to_owned(),
            size: b.len() as u64,
            source: Source::Registry {
                base: format!("http://{}", tr.host).parse().unwrap(),
                repository: "team/blobs".into(),
            },
        });
    }
    let spool = tempfile::tempdir().unwrap();
    let downloader = |auth: HashMap<String, Credentials>| {
        Downloader::new(DownloaderConfig {
            registry_http: reqwest::Client::new(),
            gateway_http: reqwest::Client::new(),
            registry_auth: auth,
            // The test registry and its token service speak plain http.
            insecure_registries: vec![tr.host.clone(), tr.token_host()],
            spool_dir: spool.path().join("downloads"),
            max_attempts: 2,
            base_delay: Duration::from_millis(50),
        })
    };

    let progress = AtomicU64::new(0);
    let e = downloader(HashMap::new())
        .download(&fetches[0], &progress)
        .await
        .expect_err("no credentials");
    assert!(e.msg.contains("refused") && !e.retry, "{e}");
    let e = downloader(docker_config(&tr.host, USER, "wrong"))
        .download(&fetches[0], &progress)
        .await
        .expect_err("wrong credentials");
    assert!(e.msg.contains("registry-auth"), "{e}");

    let before = tr.token_requests();
    let d = downloader(docker_config(&tr.host, USER, PASSWORD));
    for (f, b) in fetches.iter().zip(&blobs) {
        let path = d.download(f, &AtomicU64::new(0)).await.expect("download");
        assert_eq!(&std::fs::read(&path).unwrap(), b, "verified content");
    }
    assert_eq!(
        tr.token_requests() - before,
        1,
        "one token for the repository"
    );
}
