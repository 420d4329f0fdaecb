//! The runtime runs on the device as root, with little memory: its crate must not pull
//! in TLS, an HTTP client or Kubernetes. Only the agent (its own crate) talks to the
//! network. Checked on the real dependency graph, not on a comment.

use std::process::Command;

/// The crates of `package`'s normal (non-dev, non-build) dependency tree.
pub fn normal_dependencies(package: &str) -> Vec<String> {
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
