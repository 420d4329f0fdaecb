//! Images as real tools push them: built and pushed by buildah and skopeo (Debian's), not by
//! our code — Docker and OCI manifests; gzip, zstd, `zstd:chunked` and two-frame zstd
//! layers; an OCI index and a Docker manifest list. Each is resolved by the controller's
//! registry client, then installed and run by a real runtime with runc, and the container
//! itself shows that its root filesystem is the layer's, every file of it.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use device_runtime::client::Client;
use edgevisor_controller::registry::Registry as ControllerRegistry;
use edgevisor_crds::Architecture;
use edgevisor_e2e::Env;
use edgevisor_e2e::devices::{delete_containers, runtime_binary};
use edgevisor_e2e::process::{Managed, spawn_logged};
use edgevisor_protocol::lifecycle::Status;

/// (repository, architectures, what its amd64 layer starts with)
const FORMS: &[(&str, &[&str], [u8; 2])] = &[
    ("oci-gzip", &["amd64"], [0x1f, 0x8b]),
    ("v2s2-gzip", &["amd64"], [0x1f, 0x8b]),
    ("oci-zstd", &["amd64"], [0x28, 0xb5]),
    ("oci-zstd-chunked", &["amd64"], [0x28, 0xb5]),
    ("oci-zstd-2frames", &["amd64"], [0x28, 0xb5]),
    ("multi-oci", &["amd64", "arm64"], [0x1f, 0x8b]),
    ("multi-v2s2", &["amd64", "arm64"], [0x1f, 0x8b]),
];

/// The files every image holds (see e2e/images/independent.sh).
const BIN: &str = "busybox cat echo ls sh sleep true wc";

async fn fetch_blob(host: &str, repo: &str, digest: &str, dir: &Path) -> std::path::PathBuf {
    let url = format!("http://{host}/v2/{repo}/blobs/{digest}");
    let bytes = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .expect("blob")
        .bytes()
        .await
        .expect("blob body");
    let path = dir.join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, &bytes).expect("spool");
    path
}

async fn wait_rest(c: &Client, rev: &str) -> edgevisor_protocol::lifecycle::Progress {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(p) = c.progress(rev).await
            && !p.status.is_active()
            && p.status != Status::Queued
        {
            return p;
        }
        assert!(Instant::now() < deadline, "{rev} never came to rest");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn images_built_by_buildah_resolve_install_and_run() {
    let env = Env::get();
    if !nix_root() {
        panic!("this test runs containers with runc: run it as root");
    }
    let work = tempfile::tempdir().expect("tempdir");
    let prefix = format!("independent-{}", std::process::id());
    let build = std::process::Command::new("bash")
        .arg(env.repo.join("e2e/images/independent.sh"))
        .env("REGISTRY", &env.registry)
        .env("WORK", work.path().join("build"))
        .env("PREFIX", &prefix)
        .output()
        .expect("running e2e/images/independent.sh (buildah, skopeo: e2e/lib/tools.sh)");
    assert!(
        build.status.success(),
        "building with buildah failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // One runtime, a revision per form.
    let dir = work.path().join("dev");
    std::fs::create_dir_all(dir.join("storage")).unwrap();
    let socket = dir.join("storage/control.sock");
    let child = spawn_logged(
        std::process::Command::new(runtime_binary(env))
            .arg("--storage")
            .arg(dir.join("storage"))
            .args(["--stop-grace-seconds", "1"]),
        &dir.join("runtime.log"),
    )
    .expect("runtime");
    let runtime = Managed::new(child, dir.join("runtime.log"), 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "{}", runtime.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = Client::new(&socket);
    let registry = ControllerRegistry::new(vec![env.registry.clone()], Default::default())
        .expect("registry client");

    for (form, arches, magic) in FORMS {
        let repo = format!("{prefix}/{form}");
        let image = format!("{}/{repo}:v1", env.registry);
        let platforms = registry
            .resolve(&image)
            .await
            .unwrap_or_else(|e| panic!("{form}: the controller cannot resolve it: {e}"));
        let got: Vec<String> = platforms.keys().map(|a| a.to_string()).collect();
        let want: Vec<String> = arches.iter().map(|a| a.to_string()).collect();
        assert_eq!(got, want, "{form}: platforms");
        let amd64 = &platforms[&Architecture::Amd64];

        let spool = work.path().join(form);
        std::fs::create_dir_all(&spool).unwrap();
        let mut layers = Vec::new();
        for blob in std::iter::once(&amd64.config).chain(&amd64.layers) {
            let path = fetch_blob(&env.registry, &repo, &blob.digest, &spool).await;
            c.put_object_file(&path)
                .await
                .expect("upload to the runtime");
            layers.push(serde_json::json!({"digest": blob.digest, "size": blob.size}));
        }
        let first = std::fs::read(spool.join(amd64.layers[0].digest.trim_start_matches("sha256:")))
            .unwrap();
        assert_eq!(
            first[..2],
            magic[..],
            "{form}: the layer is compressed as expected"
        );
        let config = layers.remove(0);
        let state = serde_json::json!({
            "#spec": "edgevisor-state@1",
            "goalTimeoutSeconds": 20,
            "testPeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": {"config": config, "layers": layers},
                "command": ["/bin/sh", "-c", "cat /etc/ota-form; echo bin: $(ls /bin); exec sleep 1000"],
            }],
        });
        let rev = form.to_string();
        c.put_step(&rev, serde_json::to_vec(&state).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{form}: install: {e}"));
        c.run(&rev).await.expect("run");
        let p = wait_rest(&c, &rev).await;
        assert_eq!(
            p.status,
            Status::Done,
            "{form}: {p:?}\n{}",
            runtime.log_tail()
        );
        let logs = c
            .call(hyper::Method::GET, "/containers/app/logs?lines=20", "")
            .await
            .expect("logs");
        // The log holds every revision's output: this one's is at its end.
        let logs = String::from_utf8_lossy(&logs.body);
        let marker = if form.starts_with("multi") {
            "multi"
        } else {
            form
        };
        let tail: Vec<&str> = logs.lines().rev().take(2).collect();
        assert_eq!(
            tail,
            [format!("bin: {BIN}"), format!("{marker} v1")],
            "{form}: /etc/ota-form and every file of /bin, in the container: {logs}"
        );
    }
    let steps: BTreeMap<String, Option<Status>> = c
        .steps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.rev, s.status))
        .collect();
    assert_eq!(steps.len(), FORMS.len(), "{steps:?}");
    drop(runtime);
    delete_containers(&dir.join("storage/runc"));
}

fn nix_root() -> bool {
    rustix::process::geteuid().is_root()
}
