//! The controller shares contracts with the device side through the protocol crate
//! only: nothing of the runtime or the agent (tar, rustix, the control socket) is in
//! its build.

use std::process::Command;

#[test]
fn the_controller_depends_on_the_protocol_not_on_the_device_side() {
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
        .args(["--format", "{p}", "-p", "edgevisor-controller"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.contains(&"edgevisor-protocol"), "{names:?}");
    for banned in [
        "edgevisor-device-runtime",
        "edgevisor-agent",
        "tar",
        "rustix",
    ] {
        assert!(
            !names.contains(&banned),
            "the controller depends on {banned}"
        );
    }
}
