//! The whole control API in one process: a daemon with the recording OCI fake, served
//! on a socket in a temp dir and driven by the real client, through install, run,
//! commit, a second revision that fails its try and rolls back, and refusals.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use super::serve;
use crate::client::{Client, ClientError};
use crate::control::{GcReport, RunState};
use crate::daemon::{Config, Daemon};
use crate::lifecycle::Status;
use crate::oci::fake::{Behaviour, Recording};
use crate::store::Store;
use crate::testkit::{self, RawEntry};

struct Served {
    dir: tempfile::TempDir,
    client: Client,
    oci: Arc<Recording>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve_in_temp_dir(script: &[Behaviour]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let socket = dir.path().join("control.sock");
    let cfg = Config {
        socket: socket.clone(),
        reserve_bytes: 0,
        stop_grace: Duration::from_millis(200),
        ..Config::default()
    };
    let oci = Arc::new(Recording::new(script));
    let d = Daemon::with_oci(store, cfg, oci.clone());
    d.recover().await.unwrap();
    let listener = UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, d, async {
        let _ = stopped.await;
    }));
    Served {
        client: Client::new(&socket),
        dir,
        oci,
        stop: Some(stop),
        task,
    }
}

/// Uploads a one-file image and returns the state of a revision running it.
async fn state_with_image(s: &Served, marker: &str, test_period: u64) -> Vec<u8> {
    let layer = testkit::gzip(&testkit::tar(&[
        RawEntry::dir("bin/"),
        RawEntry::file("bin/app", marker.as_bytes()).with_mode(0o755),
    ]));
    let config = testkit::image_config(&["/bin/app"]);
    for (name, data) in [("layer", &layer), ("config", &config)] {
        let p = s.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let up = s.client.put_object_file(&p).await.unwrap();
        assert_eq!(up.sha256.hex(), testkit::sha256_hex(data));
    }
    serde_json::to_vec(&serde_json::json!({
        "#spec": "edgevisor-state@1",
        "goalTimeoutSeconds": 5,
        "testPeriodSeconds": test_period,
        "containers": [{
            "name": "app",
            "image": {"config": testkit::descriptor(&config), "layers": [testkit::descriptor(&layer)]},
        }],
    }))
    .unwrap()
}

async fn wait_rest(c: &Client, rev: &str) -> crate::lifecycle::Progress {
    for _ in 0..200 {
        let p = c.progress(rev).await.unwrap();
        if !p.status.is_active() && p.status != Status::Queued {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{rev} never came to rest");
}

#[tokio::test]
async fn install_run_commit_fail_and_roll_back_through_the_socket() {
    // r1's container runs; r2's exits at once, so its try fails.
    let s = serve_in_temp_dir(&[
        Behaviour::UntilSignal,
        Behaviour::ExitAfter(Duration::from_millis(50), 1),
        Behaviour::UntilSignal,
    ])
    .await;
    let c = &s.client;
    assert!(c.steps().await.unwrap().is_empty());

    let r1 = state_with_image(&s, "one", 0).await;
    let queued = c.put_step("r1", r1).await.unwrap();
    assert_eq!(queued.status, Status::Queued);
    let accepted = c.run("r1").await.unwrap();
    assert_eq!(accepted.rev.as_deref(), Some("r1"));
    assert_eq!(wait_rest(c, "r1").await.status, Status::Done);
    let steps = c.steps().await.unwrap();
    assert!(steps[0].committed && steps[0].running, "{steps:?}");
    let containers = c.containers().await.unwrap();
    assert_eq!(containers.len(), 1);
    assert!(containers[0].state == RunState::Running && containers[0].at_goal());

    let r2 = state_with_image(&s, "two", 1).await;
    c.put_step("r2", r2).await.unwrap();
    c.run("r2").await.unwrap();
    let failed = wait_rest(c, "r2").await;
    assert_eq!(failed.status, Status::Error, "{failed:?}");
    let steps = c.steps().await.unwrap();
    let committed = crate::control::committed(&steps).unwrap();
    assert_eq!(committed.rev, "r1");
    assert!(committed.running, "back on r1: {steps:?}");
    let runs = s
        .oci
        .calls()
        .iter()
        .filter(|c| c.starts_with("run "))
        .count();
    assert_eq!(runs, 3, "r1, r2, r1 again: {:?}", s.oci.calls());

    // Refusals answer with the typed error body and change nothing.
    match c.run("nope").await {
        Err(ClientError::Api { status, body }) => {
            assert_eq!(status.as_u16(), 404);
            assert!(body.error.contains("no revision"), "{body:?}");
        }
        other => panic!("expected 404, got {other:?}"),
    }
    match c.put_step("r3", b"{\"#spec\": \"other\"}".to_vec()).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status.as_u16(), 422),
        other => panic!("expected 422, got {other:?}"),
    }
    assert_eq!(c.steps().await.unwrap().len(), 2);
    let gc: GcReport = c.gc().await.unwrap();
    assert!(gc.revisions.is_empty(), "retention keeps both: {gc:?}");

    let Served { stop, task, .. } = s;
    let _ = stop.map(|s| s.send(()));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns when its shutdown resolves")
        .unwrap();
}
