//! `kubectl edgevisor`: the plugin built by the workspace, run the way users run it (kubectl
//! finds `kubectl-edgevisor` on the PATH).
use std::path::PathBuf;

use crate::{Cmd, Env};

/// Builds the plugin (a no-op when up to date) and returns its path, or the binary
/// `EDGEVISOR_PLUGIN_BIN` names.
pub fn binary(env: &Env) -> PathBuf {
    crate::process::cargo_binary(
        env,
        "kubectl-edgevisor",
        "kubectl-edgevisor",
        "EDGEVISOR_PLUGIN_BIN",
    )
}

/// `kubectl edgevisor -n <namespace> <args>` as the admin.
pub fn kubectl_edgevisor(env: &Env, namespace: &str, args: &[&str]) -> Cmd {
    let binary = binary(env);
    let dir = binary.parent().map(PathBuf::from).unwrap_or_default();
    env.kubectl_with_path(&dir, ["edgevisor", "-n", namespace])
        .args(args)
}
