//! The control socket: the OpenAPI document against the server, bad inputs (each
//! gets its code and changes nothing on disk), uploads, and caller authorisation.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use device_runtime::api::ROUTES;
use device_runtime::testkit::{self, RawEntry};
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

fn openapi() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn documented() -> BTreeMap<(String, String), BTreeSet<u16>> {
    let doc = openapi();
    let mut out = BTreeMap::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let codes = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse::<u16>().unwrap())
                .collect();
            out.insert((method.to_uppercase(), path.clone()), codes);
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let doc: BTreeSet<(String, String)> = documented().into_keys().collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(doc, served, "openapi.yaml and api::ROUTES disagree");
}

fn body(b: impl Into<Bytes>) -> device_runtime::api::Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// Bytes of every file in the store that a bad request must not touch.
fn snapshot(storage: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if ["runc", "logs", "control.sock", "lock", "rootfs", "bundles"]
                .iter()
                .any(|s| rel == *s)
            {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(root, &e.path(), out);
            } else if ft.is_file() {
                out.insert(rel, testkit::sha256_hex(&std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(storage, storage, &mut out);
    out
}

#[tokio::test]
async fn documented_routes_are_served_with_documented_codes() {
    let dev = Device::new(&[]);
    let c = dev.client();
    for ((method, path), codes) in documented() {
        let concrete = path
            .replace("{rev}", "no-such-rev")
            .replace("{sha256}", &"0".repeat(64))
            .replace("{key}", "k1")
            .replace("{name}", "web");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let b = if m == Method::GET || m == Method::DELETE {
            ""
        } else {
            "{}"
        };
        let r = c.send(m, &concrete, body(b), &[]).await.unwrap();
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            !text.contains("no such endpoint"),
            "{method} {path} not served"
        );
        assert!(
            codes.contains(&r.status.as_u16()),
            "{method} {concrete}: {} is not documented ({codes:?}): {text}",
            r.status
        );
        if !r.status.is_success() {
            assert!(
                r.json()["error"].is_string(),
                "{method} {path}: error body {text}"
            );
        }
    }
}

#[tokio::test]
async fn bad_inputs_get_their_code_and_change_nothing() {
    let mut dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let v1 = state(vec![container("app", &image, "exec sleep 1000")], 10, 1);
    assert_eq!(
        install_and_run(&c, "v1", v1.clone()).await["status"],
        "DONE"
    );
    let before = snapshot(&dev.storage());

    let missing = format!("sha256:{}", "e".repeat(64));
    let mut missing_layer = image.clone();
    missing_layer["layers"][0] = json!({"digest": missing, "size": 5});
    let mut wrong_size = image.clone();
    wrong_size["layers"][0]["size"] = json!(image["layers"][0]["size"].as_u64().unwrap() + 1);
    let bad_spec =
        serde_json::to_vec(&json!({"#spec": "edgevisor-state@9", "containers": []})).unwrap();
    let cases: Vec<(Method, String, Vec<u8>, u16, &str)> = vec![
        (
            Method::PUT,
            "/steps/x1".into(),
            b"{not json".to_vec(),
            422,
            "not valid JSON",
        ),
        (Method::PUT, "/steps/x1".into(), bad_spec, 422, "#spec"),
        (
            Method::PUT,
            "/steps/x1".into(),
            state(vec![container("app", &missing_layer, "true")], 5, 1),
            422,
            "missing",
        ),
        (
            Method::PUT,
            "/steps/x1".into(),
            state(vec![container("app", &wrong_size, "true")], 5, 1),
            422,
            "bytes",
        ),
        (
            Method::PUT,
            "/steps/.hidden".into(),
            v1.clone(),
            400,
            "revision name",
        ),
        (
            Method::PUT,
            "/steps/v1".into(),
            state(vec![container("app", &image, "true")], 5, 1),
            409,
            "immutable",
        ),
        (
            Method::PUT,
            format!("/objects/{}", "0".repeat(64)),
            b"not it".to_vec(),
            422,
            "digest mismatch",
        ),
        (
            Method::PUT,
            "/objects/NOTHEX".into(),
            b"x".to_vec(),
            400,
            "64 lowercase hex",
        ),
        (
            Method::POST,
            "/commands".into(),
            br#"{"op":"explode"}"#.to_vec(),
            400,
            "unknown op",
        ),
        (
            Method::POST,
            "/commands".into(),
            br#"{"op":"run","payload":"nope"}"#.to_vec(),
            404,
            "no revision",
        ),
        (
            Method::POST,
            "/commands".into(),
            b"[]".to_vec(),
            400,
            "bad command",
        ),
        (
            Method::GET,
            "/nope".into(),
            Vec::new(),
            404,
            "no such endpoint",
        ),
        (
            Method::DELETE,
            "/steps".into(),
            Vec::new(),
            405,
            "not allowed",
        ),
        (
            Method::PUT,
            "/containers/app".into(),
            br#"{"action":"dance"}"#.to_vec(),
            400,
            "action",
        ),
        (
            Method::PUT,
            "/device-meta/..".into(),
            b"x".to_vec(),
            400,
            "meta key",
        ),
    ];
    for (m, path, b, code, needle) in cases {
        let r = c.send(m.clone(), &path, body(b), &[]).await.unwrap();
        let j = r.json();
        assert_eq!(r.status.as_u16(), code, "{m} {path}: {j}");
        assert!(
            j["error"].as_str().unwrap_or_default().contains(needle),
            "{m} {path}: {j}"
        );
        assert_eq!(
            snapshot(&dev.storage()),
            before,
            "{m} {path} changed the store"
        );
        if needle == "missing" {
            assert_eq!(j["status"], "WONTGO");
            assert_eq!(j["missing"], json!([missing]));
        }
    }

    // Resume beyond what was received.
    let hex = "1".repeat(64);
    let r = c
        .send(
            Method::PUT,
            &format!("/objects/{hex}"),
            body("abc"),
            &[("content-range", "bytes 10-12/13".into())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(snapshot(&dev.storage()), before);

    // No space: the same runtime with a reserve larger than the disk.
    dev.stop();
    dev.extra_args = vec!["--reserve-bytes".into(), (1u64 << 60).to_string()];
    dev.start();
    let c = dev.client();
    let before = snapshot(&dev.storage());
    let blob = b"some new object".to_vec();
    let r = c
        .send(
            Method::PUT,
            &format!("/objects/{}", testkit::sha256_hex(&blob)),
            body(blob),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{}", r.json());
    let v2 = state(vec![container("app", &image, "exec sleep 999")], 5, 1);
    let r = c
        .send(Method::PUT, "/steps/v2", body(v2), &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{}", r.json());
    assert_eq!(snapshot(&dev.storage()), before);
}

#[tokio::test]
async fn uploads_stream_resume_and_refuse_concurrent_writers() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let hex = testkit::sha256_hex(&data);
    let half = data.len() / 2;
    let r = c
        .send(
            Method::PUT,
            &format!("/objects/{hex}"),
            body(data[..half].to_vec()),
            &[(
                "content-range",
                format!("bytes 0-{}/{}", half - 1, data.len()),
            )],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json());
    let r = c
        .send(Method::GET, &format!("/objects/{hex}"), body(""), &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["partialBytes"], half);

    // The client resumes from what the runtime has.
    let f = dev.dir.path().join("blob");
    std::fs::write(&f, &data).unwrap();
    let v = c.put_object_file(&f).await.unwrap();
    assert_eq!(v.sha256.hex(), hex);
    assert_eq!(v.size, Some(data.len() as u64));
    let r = c
        .send(Method::GET, &format!("/objects/{hex}"), body(""), &[])
        .await
        .unwrap();
    assert_eq!(r.body.as_ref(), data.as_slice());
    // Idempotent.
    let r = c
        .send(
            Method::PUT,
            &format!("/objects/{hex}"),
            body(data.clone()),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // A second writer of an object being uploaded is told to come back later.
    let other: Vec<u8> = vec![7u8; 100_000];
    let ohex = testkit::sha256_hex(&other);
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    let c2 = c.clone();
    let path = format!("/objects/{ohex}");
    let first = tokio::spawn(async move {
        let b = http_body_util::StreamBody::new(rx).boxed();
        c2.send(
            Method::PUT,
            &path,
            b,
            &[("content-length", "100000".into())],
        )
        .await
    });
    use futures::SinkExt;
    tx.send(Ok(hyper::body::Frame::data(Bytes::from(
        other[..1000].to_vec(),
    ))))
    .await
    .unwrap();
    // Wait until the runtime has the first writer's bytes on disk.
    let t = std::time::Instant::now();
    loop {
        let r = c
            .send(Method::GET, &format!("/objects/{ohex}"), body(""), &[])
            .await
            .unwrap();
        if r.json()["partialBytes"].as_u64().unwrap_or(0) >= 1000 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "first upload never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c
        .send(
            Method::PUT,
            &format!("/objects/{ohex}"),
            body(other.clone()),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.json());
    assert!(r.json()["error"].is_string());
    tx.send(Ok(hyper::body::Frame::data(Bytes::from(
        other[1000..].to_vec(),
    ))))
    .await
    .unwrap();
    drop(tx);
    let r = first.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json());
}

#[tokio::test]
async fn an_update_in_progress_blocks_another() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let mut waits = container("app", &image, "exec sleep 1000");
    waits["health"] = json!({"type": "signal"});
    c.put_step("slow", state(vec![waits], 3, 1)).await.unwrap();
    c.put_step(
        "other",
        state(vec![container("app", &image, "exec sleep 1000")], 5, 1),
    )
    .await
    .unwrap();
    c.run("slow").await.unwrap();
    let e = c.run("other").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT), "{e}");
    let r = c
        .send(Method::POST, "/commands", body(r#"{"op":"gc"}"#), &[])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["error"].is_string());
    assert_eq!(
        wait_rest(&c, "slow", Duration::from_secs(30)).await["status"],
        "ERROR"
    );
    c.run("other").await.unwrap();
    assert_eq!(
        wait_rest(&c, "other", Duration::from_secs(30)).await["status"],
        "DONE"
    );
}

#[tokio::test]
async fn crafted_layer_fails_the_install_and_the_device_keeps_running() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    assert_eq!(
        install_and_run(
            &c,
            "good",
            state(vec![container("app", &image, "exec sleep 1000")], 10, 1)
        )
        .await["status"],
        "DONE"
    );
    let evil = testkit::gzip(&testkit::tar(&[RawEntry::file(
        "../../../escaped-by-layer",
        b"x",
    )]));
    let p = dev.dir.path().join("evil");
    std::fs::write(&p, &evil).unwrap();
    c.put_object_file(&p).await.unwrap();
    let mut img = image.clone();
    img["layers"]
        .as_array_mut()
        .unwrap()
        .push(testkit::descriptor(&evil));
    let pr = install_and_run(
        &c,
        "evil",
        state(vec![container("app", &img, "exec sleep 1000")], 10, 1),
    )
    .await;
    assert_eq!(pr["status"], "ERROR", "{pr}");
    assert!(pr["reason"].as_str().unwrap().contains("escapes"), "{pr}");
    assert!(!dev.dir.path().join("escaped-by-layer").exists());
    assert!(!dev.storage().join("escaped-by-layer").exists());
    assert_eq!(running(&c).await, vec![("app".into(), "good".into())]);
}

#[tokio::test]
async fn device_and_user_meta_round_trip() {
    let dev = Device::new(&[]);
    let c = dev.client();
    for kind in ["device-meta", "user-meta"] {
        c.call(Method::PUT, &format!("/{kind}/hostname"), "edge-1")
            .await
            .unwrap();
        let r = c
            .call(Method::GET, &format!("/{kind}/hostname"), "")
            .await
            .unwrap();
        assert_eq!(r.body.as_ref(), b"edge-1");
        let all = c
            .get::<serde_json::Value>(&format!("/{kind}"))
            .await
            .unwrap();
        assert_eq!(all, json!({"hostname": "edge-1"}));
        c.call(Method::DELETE, &format!("/{kind}/hostname"), "")
            .await
            .unwrap();
        let e = c
            .call(Method::GET, &format!("/{kind}/hostname"), "")
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    }
    let b = c.get::<serde_json::Value>("/buildinfo").await.unwrap();
    assert_eq!(b["stateSpec"], "edgevisor-state@1");
}

#[tokio::test]
async fn socket_is_0660_and_a_second_runtime_cannot_share_the_storage() {
    use std::os::unix::fs::PermissionsExt;
    let dev = Device::new(&[]);
    let mode = std::fs::metadata(dev.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runtime"))
        .arg("--storage")
        .arg(dev.storage())
        .arg("--socket")
        .arg(dev.dir.path().join("second.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another runtime"), "{err}");
    // The first one is unaffected.
    c_ok(&dev).await;
}

async fn c_ok(dev: &Device) {
    let b = dev
        .client()
        .get::<serde_json::Value>("/buildinfo")
        .await
        .unwrap();
    assert!(b["version"].is_string());
}
