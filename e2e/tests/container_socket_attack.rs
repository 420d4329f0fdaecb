//! The boundary between a container and the runtime, tried as an attacker who owns a root
//! container: a real runtime, a real runc container running `socket-attacker` as root,
//! thousands of attempts through every path it has to manager rights (a plain request,
//! a connection inherited from a child that exited, a connection whose pid became another
//! program). Every attempt must be answered 403, and nothing it tried to write may exist,
//! as seen from the host.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

#[path = "../../device-runtime/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const ROUNDS: usize = 1000;

#[tokio::test]
async fn a_root_container_never_gets_manager_rights_on_its_socket() {
    let attacker = env!("CARGO_BIN_EXE_socket-attacker");
    let libdir = std::fs::canonicalize("/lib/x86_64-linux-gnu").expect("host libc directory");
    let policy = json!({"hostPaths": [
        {"path": libdir, "readOnly": true},
        {"path": "/lib64", "readOnly": true},
        {"path": attacker, "readOnly": true},
    ]});
    let dev = Device::with_policy(&[], Some(&policy.to_string()));
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let script = format!("/bin/attacker \"$EDGEVISOR_SOCKET\" {ROUNDS}; exec sleep 1000");
    let mut app = container("app", &image, &script);
    app["mounts"] = json!([
        {"source": libdir, "destination": "/lib/x86_64-linux-gnu", "readOnly": true},
        {"source": "/lib64", "destination": "/lib64", "readOnly": true},
        {"source": attacker, "destination": "/bin/attacker", "readOnly": true},
    ]);
    let p = install_and_run(&c, "v1", state(vec![app], 30, 1)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());

    let t = Instant::now();
    let summary = loop {
        let logs = c
            .call(hyper::Method::GET, "/containers/app/logs?lines=50", "")
            .await
            .unwrap();
        let logs = String::from_utf8_lossy(&logs.body).into_owned();
        if let Some(line) = logs.lines().find(|l| l.contains("attempts=")) {
            break (line.to_owned(), logs);
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the attacker did not finish:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (line, logs) = summary;
    let n = 3 * ROUNDS;
    assert!(
        line.ends_with(&format!("attempts={n} forbidden={n} other=0")),
        "{line}\n{logs}"
    );

    // From the host: nothing the container tried to write exists.
    for kind in ["user-meta", "device-meta"] {
        let meta = c
            .get::<serde_json::Value>(&format!("/{kind}"))
            .await
            .unwrap();
        assert!(!meta.to_string().contains("pwned"), "{kind}: {meta}");
    }
    let steps = c.get::<serde_json::Value>("/steps").await.unwrap();
    assert!(!steps.to_string().contains("pwned"), "{steps}");
    let revisions: Vec<_> = std::fs::read_dir(dev.storage().join("revisions"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(revisions, ["v1"]);
}
