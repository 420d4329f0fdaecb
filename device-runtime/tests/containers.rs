//! What a container may do over the socket, health checks, and container control.
//! The application uses the real `evctl`, bind-mounted with the host's libc.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The device policy that lets a test container mount the host's libc and `evctl`,
/// read-only.
fn evctl_policy() -> String {
    let libdir = std::fs::canonicalize("/lib/x86_64-linux-gnu").expect("host libc directory");
    json!({"hostPaths": [
        {"path": libdir, "readOnly": true},
        {"path": "/lib64", "readOnly": true},
        {"path": env!("CARGO_BIN_EXE_evctl"), "readOnly": true},
    ]})
    .to_string()
}

fn with_evctl(mut c: serde_json::Value) -> serde_json::Value {
    let libdir = std::fs::canonicalize("/lib/x86_64-linux-gnu").expect("host libc directory");
    c["mounts"] = json!([
        {"source": libdir, "destination": "/lib/x86_64-linux-gnu", "readOnly": true},
        {"source": "/lib64", "destination": "/lib64", "readOnly": true},
        {"source": env!("CARGO_BIN_EXE_evctl"), "destination": "/bin/evctl", "readOnly": true},
    ]);
    c
}

#[tokio::test]
async fn a_container_sees_its_own_socket_and_may_only_read_its_own_and_signal() {
    let dev = Device::with_policy(&[], Some(&evctl_policy()));
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let script = "evctl put-object /bin/busybox; echo put-rc=$?; \
                  evctl run v1; echo run-rc=$?; \
                  evctl steps; echo steps-rc=$?; \
                  evctl meta user pwned yes; echo meta-rc=$?; \
                  evctl containers | grep -c '^[a-z]' | sed 's/^/containers-seen=/'; \
                  evctl signal --container other; echo other-rc=$?; \
                  evctl signal && echo signalled; exec sleep 1000";
    let mut app = with_evctl(container("app", &image, script));
    app["health"] = json!({"type": "signal"});
    let other = container("other", &image, "exec sleep 1000");
    let p = install_and_run(&c, "v1", state(vec![app, other], 20, 1)).await;
    let logs = c
        .call(hyper::Method::GET, "/containers/app/logs", "")
        .await
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.body).into_owned();
    assert_eq!(p["status"], "DONE", "{p}\n{logs}\n{}", dev.log());
    assert!(logs.contains("403"), "{logs}");
    for refused in [
        "put-rc=1",
        "run-rc=1",
        "steps-rc=1",
        "meta-rc=1",
        "other-rc=1",
    ] {
        assert!(logs.contains(refused), "{refused}: {logs}");
    }
    assert!(logs.contains("may only signal for itself"), "{logs}");
    assert!(logs.contains("containers-seen=1"), "{logs}");
    assert!(logs.contains("signalled"), "{logs}");
    // Nothing the container tried to write arrived.
    let objects = c.get::<serde_json::Value>("/objects").await.unwrap();
    let busybox = device_runtime::testkit::sha256_hex(&std::fs::read("/bin/busybox").unwrap());
    assert!(!objects.to_string().contains(&busybox));
    let meta = c.get::<serde_json::Value>("/user-meta").await.unwrap();
    assert!(!meta.to_string().contains("pwned"), "{meta}");
    // The management socket is not in the container, and the host side of its own
    // socket is reachable by root only.
    let bundle = dev.storage().join("bundles/v1/app/config.json");
    let config = std::fs::read_to_string(&bundle).unwrap();
    assert!(!config.contains(dev.socket().to_str().unwrap()), "{config}");
    let mode = std::fs::metadata(dev.storage().join("sockets")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn a_container_the_policy_grants_the_manager_role_manages_the_device() {
    let mut policy: serde_json::Value = serde_json::from_str(&evctl_policy()).unwrap();
    policy["managerRole"] = json!(["admin"]);
    let dev = Device::with_policy(&[], Some(&policy.to_string()));
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let mut admin = with_evctl(container(
        "admin",
        &image,
        "evctl meta user granted yes && echo wrote; exec sleep 1000",
    ));
    admin["roles"] = json!(["manager"]);
    let p = install_and_run(&c, "v1", state(vec![admin], 20, 1)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
    let t = std::time::Instant::now();
    loop {
        let meta = c.get::<serde_json::Value>("/user-meta").await.unwrap();
        if meta.to_string().contains("granted") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{meta}\n{}",
            dev.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_container_cannot_hold_more_than_its_share_of_connections() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let app = container("app", &image, "exec sleep 1000");
    let p = install_and_run(&c, "v1", state(vec![app], 20, 1)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
    // Its socket, as the container reaches it (the host's root can too).
    let sock = dev.storage().join("sockets/app.sock");
    let ask = |s: &mut UnixStream| -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /buildinfo HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let limit = device_runtime::api::CONTAINER_CONNECTIONS;
    let mut held: Vec<UnixStream> = (0..limit)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut extra = UnixStream::connect(&sock).unwrap();
    assert_eq!(
        ask(&mut extra),
        "",
        "a connection past the limit was served"
    );
    assert!(ask(&mut held[0]).starts_with("HTTP/1.1 200"));
    // The management socket is not affected.
    c.get::<serde_json::Value>("/steps").await.unwrap();
    // A freed slot serves again.
    drop(held);
    let t = std::time::Instant::now();
    loop {
        let mut again = UnixStream::connect(&sock).unwrap();
        if ask(&mut again).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "slots were not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_symlink_planted_under_an_allowed_host_path_does_not_reach_beyond_it() {
    let data = tempfile::tempdir_in("/tmp").unwrap();
    // What a container with the data directory mounted read-write could leave there.
    std::os::unix::fs::symlink("/", data.path().join("x")).unwrap();
    let policy = json!({"hostPaths": [{"path": data.path()}]}).to_string();
    let dev = Device::with_policy(&[], Some(&policy));
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let mut app = container("app", &image, "exec sleep 1000");
    app["mounts"] = json!([{"source": data.path().join("x"), "destination": "/host"}]);
    let e = c
        .put_step("v1", state(vec![app.clone()], 20, 1))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("which leads to /"), "{e}");
    // The directory itself is allowed.
    app["mounts"] = json!([{"source": data.path(), "destination": "/data"}]);
    let p = install_and_run(&c, "v2", state(vec![app], 20, 1)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
}

#[tokio::test]
async fn a_state_that_leaves_tmpfs_open_runs_under_a_smaller_policy_limit() {
    let dev = Device::with_policy(&[], Some(r#"{"maxTmpfsBytes": 8388608}"#));
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let app = container("app", &image, "exec sleep 1000");
    let p = install_and_run(&c, "v1", state(vec![app], 20, 1)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
    let bundle = dev.storage().join("bundles/v1/app/config.json");
    let config = std::fs::read_to_string(bundle).unwrap();
    assert!(config.contains("size=8388608"), "{config}");
}

#[tokio::test]
async fn the_device_policy_refuses_what_it_does_not_allow_before_anything_is_stored() {
    let mut dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let mut root_mount = container("app", &image, "exec sleep 1000");
    root_mount["mounts"] = json!([{"source": "/", "destination": "/host"}]);
    let mut setuid = container("app", &image, "exec sleep 1000");
    setuid["allowSetuid"] = json!(true);
    let mut caps = container("app", &image, "exec sleep 1000");
    caps["capabilities"] = json!(["CAP_SYS_ADMIN"]);
    // A host device the container must be able to open for reading and writing.
    let mut device = container(
        "app",
        &image,
        "( exec 3<>/dev/fuse ) || exit 7; exec sleep 1000",
    );
    device["devices"] = json!([{"path": "/dev/fuse"}]);
    let cases = [
        ("mount", root_mount, "containers[app].mounts[0].source"),
        ("setuid", setuid, "containers[app].allowSetuid"),
        ("caps", caps, "containers[app].capabilities"),
        ("device", device, "containers[app].devices[0].path"),
    ];
    for (rev, app, field) in &cases {
        let body = state(vec![app.clone()], 20, 1);
        let e = c
            .call(hyper::Method::PUT, &format!("/steps/{rev}"), body)
            .await
            .expect_err("refused");
        let text = e.to_string();
        assert_eq!(
            e.status(),
            Some(hyper::StatusCode::UNPROCESSABLE_ENTITY),
            "{text}"
        );
        assert!(
            text.contains("denied by the device's policy") && text.contains(field),
            "{text}"
        );
        assert!(
            !dev.storage().join("revisions").join(rev).exists(),
            "{rev} was stored"
        );
    }
    assert!(
        std::fs::read_dir(dev.storage().join("rootfs"))
            .unwrap()
            .next()
            .is_none(),
        "something was unpacked"
    );

    // The device's owner allows them: the same states install and run.
    dev.stop();
    let policy = dev.dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"hostPaths": [{"path": "/"}], "setuid": true, "capabilities": ["CAP_SYS_ADMIN"],
            "devices": [{"path": "/dev/fuse"}]}"#,
    )
    .unwrap();
    dev.extra_args = vec!["--policy".into(), policy.display().to_string()];
    dev.start();
    let c = dev.client();
    for (rev, app, _) in &cases {
        let p = install_and_run(&c, rev, state(vec![app.clone()], 20, 1)).await;
        assert_eq!(p["status"], "DONE", "{rev}: {p}\n{}", dev.log());
    }
    // Given read-only, the device opens for reading and not for writing.
    let mut read_only = container(
        "app",
        &image,
        "( exec 3<>/dev/fuse ) 2>/dev/null && exit 9; ( exec 3</dev/fuse ) || exit 8; \
         exec sleep 1000",
    );
    read_only["devices"] = json!([{"path": "/dev/fuse", "readOnly": true}]);
    let p = install_and_run(&c, "device-ro", state(vec![read_only], 20, 1)).await;
    assert_eq!(p["status"], "DONE", "device-ro: {p}\n{}", dev.log());
}

#[tokio::test]
async fn health_checks_commit_and_containers_can_be_controlled() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    // exec check passes once the app wrote its marker; tcp check against busybox nc.
    let mut exec = container("exec", &image, "sleep 0.5; touch /tmp/ok; exec sleep 1000");
    exec["health"] =
        json!({"type": "exec", "command": ["/bin/test", "-f", "/tmp/ok"], "intervalMs": 200});
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut tcp = container(
        "tcp",
        &image,
        &format!("exec nc -ll -p {port} -e /bin/true"),
    );
    tcp["health"] = json!({"type": "tcp", "port": port, "intervalMs": 200});
    let mut http = container(
        "http",
        &image,
        &format!(
            "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p {} -h /tmp/www",
            port + 1
        ),
    );
    http["health"] =
        json!({"type": "http", "port": port + 1, "path": "/index.html", "intervalMs": 200});
    let p = install_and_run(&c, "v1", state(vec![exec, tcp, http], 20, 1)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());

    let body = |a: &str| serde_json::to_vec(&json!({"action": a})).unwrap();
    c.call(hyper::Method::PUT, "/containers/exec", body("stop"))
        .await
        .unwrap();
    let list = containers(&c).await;
    let exec_state = list.iter().find(|x| x["name"] == "exec").unwrap()["state"].clone();
    assert_eq!(exec_state, "stopped");
    c.call(hyper::Method::PUT, "/containers/exec", body("start"))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    while running(&c).await.len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "exec did not start again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = c
        .call(hyper::Method::PUT, "/containers/nope", body("start"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(hyper::StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn restart_policies_back_off_and_logs_rotate() {
    let dev = Device::new(&["--log-max-bytes", "2000"]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    // Exits 0 quickly and often: `always` restarts it; output rotates the log.
    let mut flappy = container(
        "flappy",
        &image,
        "sleep 1; i=0; while [ $i -lt 60 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done; exit 0",
    );
    flappy["restartPolicy"] = json!("always");
    let mut once = container("once", &image, "echo done; exit 7");
    once["restartPolicy"] = json!("on-failure");
    once["successExitCodes"] = json!([7]);
    let steady = container("steady", &image, "exec sleep 1000");
    c.put_step("v1", state(vec![flappy, once, steady], 10, 0))
        .await
        .unwrap();
    c.run("v1").await.unwrap();
    let p = wait_rest(&c, "v1", Duration::from_secs(30)).await;
    assert_eq!(p["status"], "DONE", "{p}");
    // Each run lasts about a second, then waits 200 ms, 400 ms, 800 ms, ...
    let t = std::time::Instant::now();
    let restarts = |l: &[serde_json::Value]| {
        l.iter().find(|x| x["name"] == "flappy").unwrap()["restarts"]
            .as_u64()
            .unwrap()
    };
    let list = loop {
        let list = containers(&c).await;
        if restarts(&list) >= 2 {
            break list;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "flappy was not restarted: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Two restarts cost at least two runs plus 200 + 400 ms of backoff.
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let get = |n: &str| list.iter().find(|x| x["name"] == n).unwrap().clone();
    assert_eq!(get("once")["restarts"], 0);
    assert_eq!(get("once")["lastExit"], 7);
    assert!(dev.storage().join("logs/flappy.log.1").exists());
    let size = std::fs::metadata(dev.storage().join("logs/flappy.log"))
        .unwrap()
        .len();
    assert!(size <= 2000, "log not rotated: {size}");
}

#[tokio::test]
async fn limits_and_isolated_network_are_applied() {
    let dev = Device::new(&[]);
    let c = dev.client();
    let image = busybox_image(&c, dev.dir.path()).await;
    let mut boxed = container("boxed", &image, "exec sleep 1000");
    boxed["network"] = json!("isolated");
    boxed["limits"] = json!({"memoryBytes": 33554432, "pids": 32, "cpuMillis": 250});
    let host = container("host", &image, "exec sleep 1000");
    let p = install_and_run(&c, "v1", state(vec![boxed, host], 10, 0)).await;
    assert_eq!(p["status"], "DONE", "{p}\n{}", dev.log());
    let list = containers(&c).await;
    let pid = |n: &str| {
        list.iter().find(|x| x["name"] == n).unwrap()["pid"]
            .as_u64()
            .unwrap()
    };
    let netns = |pid: u64| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        netns(pid("boxed")),
        ours,
        "isolated container shares the host network"
    );
    assert_eq!(
        netns(pid("host")),
        ours,
        "host-network container got its own namespace"
    );
    // The memory limit is in the container's cgroup, v1 or v2.
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", pid("boxed"))).unwrap();
    let limit = cg
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            if ctrl.split(',').any(|x| x == "memory") {
                std::fs::read_to_string(format!(
                    "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
                ))
                .ok()
            } else if ctrl.is_empty() {
                std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()
            } else {
                None
            }
        })
        .expect("memory cgroup of the container");
    assert_eq!(limit.trim(), "33554432");
}
