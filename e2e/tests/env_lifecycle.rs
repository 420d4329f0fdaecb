//! `e2e/env` itself, on an environment of its own (its own directory and ports, without a node,
//! beside the one the other tests use): `up` reports a taken port clearly, `down` leaves no process running and
//! no port taken.
use std::net::TcpListener;
use std::path::Path;

use edgevisor_e2e::Env;

fn env_script(env: &Env, dir: &Path, args: &[&str]) -> edgevisor_e2e::Cmd {
    // No node: one runs already (the other tests'), and a machine has room for one only.
    env.command_in_repo("e2e/env", args)
        .env("EDGEVISOR_ENV_DIR", dir.to_string_lossy())
        .env("EDGEVISOR_NODE", "off")
}

fn pids(dir: &Path) -> Vec<u32> {
    ["etcd", "kube-apiserver", "registry"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(format!("{name}.pid"))).ok())
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
}

fn ports(dir: &Path) -> Vec<u16> {
    std::fs::read_to_string(dir.join("ports"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('=')?.1.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn up_names_a_taken_port_and_down_cleans_up_after_it() {
    let env = Env::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let err = env_script(env, dir.path(), &["up"])
        .env("EDGEVISOR_APISERVER_PORT", port.to_string())
        .run()
        .expect_err("up with the apiserver's port taken");
    assert!(
        err.contains(&format!("kube-apiserver: port 127.0.0.1:{port} is taken")),
        "{err}"
    );
    let started = pids(dir.path());
    env_script(env, dir.path(), &["down"])
        .run()
        .expect_ok("down after a failed up");
    for pid in started {
        assert!(!alive(pid), "pid {pid} still runs after down");
    }
}

#[test]
fn up_then_down_leaves_no_process_and_no_port() {
    let env = Env::get();
    let dir = tempfile::tempdir().expect("tempdir");
    env_script(env, dir.path(), &["up"]).run().expect_ok("up");
    let status = env_script(env, dir.path(), &["status"])
        .run()
        .expect_ok("status");
    for name in ["etcd", "kube-apiserver", "registry"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{status}"
        );
    }
    // `up` again is a no-op on a running environment.
    env_script(env, dir.path(), &["up"])
        .run()
        .expect_ok("up again");
    let running = pids(dir.path());
    let used = ports(dir.path());
    assert_eq!(running.len(), 3, "{running:?}");
    // etcd's two, the apiserver's, the registry's and Prometheus' (chosen even without a node).
    assert_eq!(used.len(), 5, "{used:?}");

    env_script(env, dir.path(), &["down"])
        .run()
        .expect_ok("down");
    for pid in running {
        assert!(!alive(pid), "pid {pid} still runs after down");
    }
    for port in used {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken after down"
        );
    }
    let status = env_script(env, dir.path(), &["status"]).run();
    assert!(
        !status.ok() && status.stdout.contains("stopped"),
        "{}",
        status.stdout
    );
}
