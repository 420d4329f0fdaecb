//! The agent's update flow against a real runtime (real runc) and a registry plus the
//! gateway's files endpoint served here over HTTP: install with downloads of only the
//! missing objects, commit, a failing revision that is reported and not retried, a state
//! that does not match its digest, and a blob the registry lacks.
#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::credential::Credential;
use agent::gateway::Gateway;
use agent::registry::{Downloader, DownloaderConfig};
use agent::report::Reporter;
use agent::update::{Ctx, Gate, Outcome, handle_target};
use bytes::Bytes;
use common::*;
use device_runtime::testkit;
use edgevisor_protocol::gateway::{BlobSource, Target};
use edgevisor_protocol::lifecycle::Status;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

type Body = BoxBody<Bytes, std::io::Error>;

const CRED: &str = "device-secret";

#[derive(Default)]
struct Server {
    /// Path → content.
    objects: HashMap<String, Vec<u8>>,
    hits: Mutex<Vec<String>>,
}

async fn serve(s: Arc<Server>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    s.hits.lock().unwrap().push(path.clone());
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {CRED}"));
    let (status, body) = if path.starts_with("/v1/") && !authorized {
        (StatusCode::UNAUTHORIZED, b"{\"error\":\"who\"}".to_vec())
    } else {
        match s.objects.get(&path) {
            Some(b) => (StatusCode::OK, b.clone()),
            None => (StatusCode::NOT_FOUND, b"{\"error\":\"unknown\"}".to_vec()),
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    Ok(r)
}

async fn start(s: Arc<Server>) -> u16 {
    serve_loopback(s, serve).await
}

fn target(rev: &str, state: Vec<u8>, blobs: Vec<BlobSource>) -> Target {
    Target {
        revision: rev.into(),
        architecture: "amd64".into(),
        state_digest: format!("sha256:{}", hex_of(&state)),
        state: String::from_utf8(state).unwrap(),
        blobs,
        signature: None,
    }
}

#[tokio::test]
async fn targets_are_downloaded_installed_run_and_reported() {
    let dev = Device::new(&[]);
    let runtime = dev.client();

    let layer = testkit::busybox_layer().unwrap();
    let config = testkit::image_config(&["/bin/sh"]);
    let motd = b"hello from the gateway\n".to_vec();
    let mut server = Server::default();
    for b in [&layer, &config] {
        server.objects.insert(
            format!("/v2/team/app/blobs/sha256:{}", hex_of(b)),
            b.clone(),
        );
    }
    server.objects.insert(
        format!("/v1/devices/fleet/edge-1/files/{}", hex_of(&motd)),
        motd.clone(),
    );
    let server = Arc::new(server);
    let port = start(server.clone()).await;
    let registry = format!("http://127.0.0.1:{port}");
    let blobs: Vec<BlobSource> = [&config, &layer]
        .iter()
        .map(|b| BlobSource {
            digest: format!("sha256:{}", hex_of(b)),
            size: b.len() as u64,
            registry: registry.clone(),
            repository: "team/app".into(),
        })
        .collect();

    agent::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .build()
        .unwrap();
    let (reporter, _rx) = Reporter::new();
    let ctx = Arc::new(Ctx {
        runtime: runtime.clone(),
        gateway: Gateway::new(http.clone(), &registry, true).unwrap(),
        cred: Credential {
            namespace: "fleet".into(),
            name: "edge-1".into(),
            credential: CRED.into(),
            gateway: registry.clone(),
        },
        downloader: Downloader::new(DownloaderConfig {
            registry_http: http.clone(),
            gateway_http: http,
            registry_auth: HashMap::new(),
            insecure_registries: vec![format!("127.0.0.1:{port}")],
            spool_dir: dev.dir.path().join("agent/downloads"),
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
        }),
        reporter: reporter.clone(),
        parallel_downloads: 2,
        // Signatures are the binary test's subject (tests/binary.rs).
        revision_keys: None,
        poll: Duration::from_millis(100),
        retry_later: Duration::from_secs(60),
    });
    let run = |t: Target| handle_target(ctx.clone(), t, Arc::new(Gate::default()));

    let image =
        json!({"config": testkit::descriptor(&config), "layers": [testkit::descriptor(&layer)]});
    let mut st: serde_json::Value = serde_json::from_slice(&state(
        vec![container(
            "app",
            &image,
            "cat /run/edgevisor/files/motd; exec sleep 1000",
        )],
        10,
        1,
    ))
    .unwrap();
    st["files"] = json!([{"path": "motd", "digest": format!("sha256:{}", hex_of(&motd)), "size": motd.len()}]);
    let r1 = target("r1", serde_json::to_vec(&st).unwrap(), blobs.clone());

    // First install: every object is downloaded (layer and config from the registry, the
    // file from the gateway with the credential), then the revision is tried and committed.
    assert_eq!(
        run(r1.clone()).await,
        Outcome::Finished(Status::Done),
        "{}",
        dev.log()
    );
    let rep = reporter.current();
    let u = rep.update.clone().unwrap();
    assert_eq!(
        (u.revision.as_str(), u.status, u.progress),
        ("r1", Status::Done, 100)
    );
    let total = (layer.len() + config.len() + motd.len()) as u64;
    assert_eq!((u.downloaded_bytes, u.total_bytes), (total, total));
    assert_eq!(rep.current_revision.as_deref(), Some("r1"));
    assert_eq!(rep.containers.len(), 1);
    assert!(
        rep.containers[0].ready && rep.containers[0].state == "running",
        "{rep:?}"
    );
    let logs = runtime
        .call(hyper::Method::GET, "/containers/app/logs?lines=5", "")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&logs.body).contains("hello from the gateway"));
    let spool: Vec<_> = std::fs::read_dir(dev.dir.path().join("agent/downloads"))
        .unwrap()
        .collect();
    assert!(spool.is_empty(), "spool files are deleted once uploaded");

    // The same target again (an agent restart): nothing downloaded, DONE reported.
    let hits = server.hits.lock().unwrap().len();
    assert_eq!(run(r1.clone()).await, Outcome::Finished(Status::Done));
    assert_eq!(server.hits.lock().unwrap().len(), hits);

    // A revision whose container fails: the runtime rolls back, ERROR with the reason,
    // r1 still current. Nothing to download (same image).
    let mut bad = container("app", &image, "echo about to fail; sleep 0.3; exit 3");
    bad["restartPolicy"] = json!("on-failure");
    let r2 = target("r2", state(vec![bad], 3, 1), blobs.clone());
    assert_eq!(run(r2.clone()).await, Outcome::Finished(Status::Error));
    let rep = reporter.current();
    let u = rep.update.clone().unwrap();
    assert_eq!((u.revision.as_str(), u.status), ("r2", Status::Error));
    assert_eq!(u.reason.as_deref(), Some("ContainerExited"));
    let message = u.message.unwrap();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(message.contains("about to fail"), "logs follow the message");
    assert_eq!(rep.current_revision.as_deref(), Some("r1"));
    assert_eq!(server.hits.lock().unwrap().len(), hits);

    // Offered again, it is reported, not tried again.
    let before = runtime.progress("r2").await.unwrap();
    assert_eq!(run(r2).await, Outcome::Finished(Status::Error));
    assert_eq!(runtime.progress("r2").await.unwrap(), before);

    // A state that does not match its digest is refused before the runtime sees it.
    let mut r3 = target("r3", state(vec![], 3, 1), vec![]);
    r3.state_digest = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(run(r3).await, Outcome::RetryLater(_)));
    let u = reporter.current().update.unwrap();
    assert_eq!((u.revision.as_str(), u.status), ("r3", Status::Wontgo));
    assert!(!steps_by_rev(&runtime).await.contains_key("r3"));

    // A layer the registry does not have: WONTGO with the cause, retried later.
    let ghost = b"a layer nobody pushed".to_vec();
    let ghost_image =
        json!({"config": testkit::descriptor(&config), "layers": [testkit::descriptor(&ghost)]});
    let mut ghost_blobs = blobs.clone();
    ghost_blobs.push(BlobSource {
        digest: format!("sha256:{}", hex_of(&ghost)),
        size: ghost.len() as u64,
        registry: registry.clone(),
        repository: "team/app".into(),
    });
    let r4 = target(
        "r4",
        state(
            vec![container("app", &ghost_image, "exec sleep 1000")],
            3,
            1,
        ),
        ghost_blobs,
    );
    assert!(matches!(run(r4).await, Outcome::RetryLater(_)));
    let u = reporter.current().update.unwrap();
    assert_eq!((u.revision.as_str(), u.status), ("r4", Status::Wontgo));
    assert_eq!(u.reason.as_deref(), Some("DownloadFailed"));
    assert!(u.message.unwrap().contains("not found"));

    // Cancelled before `run`: nothing is installed.
    let gate = Arc::new(Gate::default());
    gate.cancel();
    let r5 = target(
        "r5",
        state(vec![container("app", &image, "exec sleep 1000")], 3, 1),
        blobs,
    );
    assert_eq!(
        handle_target(ctx.clone(), r5, gate).await,
        Outcome::Cancelled
    );
    assert!(!steps_by_rev(&runtime).await.contains_key("r5"));
    assert_eq!(running(&runtime).await, vec![("app".into(), "r1".into())]);
}
