//! Install, commit, roll forward, roll back, and failed tries, with real runc.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn install_commit_roll_forward_and_back() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let v1 = state(
        vec![
            container("web", &image, "echo v1 up; exec sleep 1000"),
            container("db", &image, "exec sleep 1000"),
        ],
        10,
        1,
    );
    let queued = serde_json::to_value(c.put_step("v1", v1.clone()).await.unwrap()).unwrap();
    assert_eq!(queued["status"], "QUEUED");
    let total =
        image["layers"][0]["size"].as_u64().unwrap() + image["config"]["size"].as_u64().unwrap();
    assert_eq!(queued["downloads"]["total_bytes"], total);
    assert_eq!(queued["downloads"]["present_bytes"], total);
    let p = install_and_run(&c, "v1", v1).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
    let steps = steps_by_rev(&c).await;
    assert_eq!(steps["v1"]["committed"], true);
    assert_eq!(steps["v1"]["factory"], true);
    let mut r = running(&c).await;
    r.sort();
    assert_eq!(
        r,
        vec![("db".into(), "v1".into()), ("web".into(), "v1".into())]
    );

    // Roll forward to v2 (one container changes, one is new).
    let v2 = state(
        vec![
            container("web", &image, "echo v2 up; exec sleep 1000"),
            container("cache", &image, "exec sleep 1000"),
        ],
        10,
        1,
    );
    let p = install_and_run(&c, "v2", v2).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
    let steps = steps_by_rev(&c).await;
    assert_eq!(steps["v2"]["committed"], true);
    assert_eq!(steps["v1"]["factory"], true);
    let mut r = running(&c).await;
    r.sort();
    assert_eq!(
        r,
        vec![("cache".into(), "v2".into()), ("web".into(), "v2".into())]
    );
    let logs = c
        .call(hyper::Method::GET, "/containers/web/logs?lines=5", "")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&logs.body).contains("v2 up"));

    // Roll back to v1, still on disk.
    c.run("v1").await.unwrap();
    let p = wait_rest(&c, "v1", Duration::from_secs(60)).await;
    assert_eq!(p["status"], "DONE", "{p}");
    assert_eq!(steps_by_rev(&c).await["v1"]["committed"], true);
    let mut r = running(&c).await;
    r.sort();
    assert_eq!(
        r,
        vec![("db".into(), "v1".into()), ("web".into(), "v1".into())]
    );

    // A runtime restart comes back on the committed revision.
    let mut dev = dev;
    dev.stop();
    dev.start();
    let c = dev.client();
    let t = std::time::Instant::now();
    while running(&c).await.len() < 2 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running(&c).await.len(), 2, "{}", dev.log());
}

#[tokio::test]
async fn failed_tries_end_in_error_with_the_committed_revision_running() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let good = state(
        vec![container("app", &image, "echo good up; exec sleep 1000")],
        10,
        1,
    );
    assert_eq!(install_and_run(&c, "good", good).await["status"], "DONE");

    let mut exits = container("app", &image, "echo about to fail; sleep 0.3; exit 3");
    exits["restartPolicy"] = json!("on-failure");
    let mut unhealthy = container("app", &image, "exec sleep 1000");
    unhealthy["health"] = json!({"type": "exec", "command": ["/bin/false"], "intervalMs": 200});
    let mut silent = container("app", &image, "exec sleep 1000");
    silent["health"] = json!({"type": "signal"});
    let cases = [
        ("exits", exits, "exited with code 3"),
        ("unhealthy", unhealthy, "did not become healthy"),
        ("silent", silent, "did not become ready"),
    ];
    for (rev, ct, reason) in cases {
        let p = install_and_run(&c, rev, state(vec![ct], 2, 1)).await;
        assert_eq!(p["status"], "ERROR", "{rev}: {p}");
        assert!(p["reason"].as_str().unwrap().contains(reason), "{rev}: {p}");
        if rev == "exits" {
            assert!(p["logs"].to_string().contains("about to fail"), "{p}");
            // Only what the failing revision's container wrote.
            assert!(!p["logs"].to_string().contains("good up"), "{p}");
        }
        let steps = steps_by_rev(&c).await;
        assert_eq!(steps["good"]["committed"], true);
        assert_eq!(steps[rev]["trying"], false);
        assert_eq!(
            running(&c).await,
            vec![("app".into(), "good".into())],
            "{rev}"
        );
    }
}

#[tokio::test]
async fn gc_keeps_committed_factory_and_retention_and_drops_the_rest() {
    let dev = Device::new(&["--retention", "1"]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let revs = ["f", "a", "b", "c", "d"];
    for (i, rev) in revs.iter().enumerate() {
        // Each revision gets its own file object, so GC has something to drop.
        let content = format!("revision {rev}\n");
        let p = dev.dir.path().join(format!("file-{rev}"));
        std::fs::write(&p, &content).unwrap();
        let hex = c.put_object_file(&p).await.unwrap().sha256.hex().to_owned();
        let mut st: serde_json::Value = serde_json::from_slice(&state(
            vec![container("app", &image, "exec sleep 1000")],
            10,
            0,
        ))
        .unwrap();
        st["files"] =
            json!([{"path": "etc/rev", "digest": format!("sha256:{hex}"), "size": content.len()}]);
        let bytes = serde_json::to_vec(&st).unwrap();
        if i < 3 {
            assert_eq!(install_and_run(&c, rev, bytes).await["status"], "DONE");
        } else {
            c.put_step(rev, bytes).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Roll back to a: committed = a, factory = f; b, c, d are candidates.
    c.run("a").await.unwrap();
    assert_eq!(
        wait_rest(&c, "a", Duration::from_secs(30)).await["status"],
        "DONE"
    );
    let objects_before = c
        .get::<serde_json::Value>("/objects")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    let report = c.gc().await.unwrap();
    let mut gone = report.revisions.clone();
    gone.sort();
    // Retention 1 keeps the newest candidate (d) besides committed a and factory f.
    assert_eq!(gone, vec!["b", "c"], "{report:?}");
    assert_eq!(report.objects, 2, "{report:?}");
    let steps = steps_by_rev(&c).await;
    assert_eq!(
        steps.keys().cloned().collect::<Vec<_>>(),
        vec!["a", "d", "f"]
    );
    let objects_after = c
        .get::<serde_json::Value>("/objects")
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(objects_after, objects_before - 2);
    // What is left still runs: roll forward to d.
    c.run("d").await.unwrap();
    assert_eq!(
        wait_rest(&c, "d", Duration::from_secs(30)).await["status"],
        "DONE"
    );
    // A file delivered with the state is visible to the container.
    let files = dev.storage().join("revisions/d/files/etc/rev");
    assert_eq!(std::fs::read_to_string(files).unwrap(), "revision d\n");
}
