//! Where the crate boundaries are, checked on the real dependency graph, not on a comment:
//! the runtime runs on the device as root, with little memory, so its crate pulls in no
//! TLS, HTTP client or Kubernetes (only the agent, its own crate, talks to the network);
//! the controller shares contracts with the device side through the protocol crate only.

use std::process::Command;

/// The crates of `package`'s normal (non-dev, non-build) dependency tree.
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_runtime_has_no_tls_http_client_or_kubernetes() {
    let deps = normal_dependencies("edgevisor-device-runtime");
    assert!(
        deps.iter().any(|d| d == "hyper"),
        "the tree was read: {deps:?}"
    );
    for banned in [
        "reqwest",
        "rustls",
        "hyper-rustls",
        "tokio-rustls",
        "ring",
        "kube",
        "kube-client",
        "k8s-openapi",
        "edgevisor-agent",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "the runtime's crate depends on {banned}"
        );
    }
}

#[test]
fn the_controller_depends_on_the_protocol_not_on_the_device_side() {
    let deps = normal_dependencies("edgevisor-controller");
    assert!(deps.iter().any(|d| d == "edgevisor-protocol"), "{deps:?}");
    for banned in [
        "edgevisor-device-runtime",
        "edgevisor-agent",
        "tar",
        "rustix",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "the controller depends on {banned}"
        );
    }
}
