//! The chart release every test runs its cluster-side processes under, and kubeconfigs of its
//! ServiceAccounts: the controller and the gateway run as local processes authenticated with a
//! TokenRequest token of the chart's ServiceAccount, so they get exactly the chart's RBAC.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::Env;

/// The namespace of the release: its ServiceAccounts, the controller's Lease, the bootstrap
/// token Secrets the gateway may read.
pub const RELEASE_NAMESPACE: &str = "edgevisor-system";
/// The release's name.
pub const RELEASE: &str = "edgevisor";

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Values of a release whose controller and gateway run as local processes (under its
/// ServiceAccounts' tokens), not as pods.
pub const LOCAL_PROCESSES_VALUES: &str = "e2e/values/local-processes.yaml";
static KUBECONFIGS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Bootstrap-token Secrets the gateway may read, one per test that enrolls devices, so tests
/// running at the same time do not replace each other's token.
pub const TOKEN_SECRETS: &[&str] = &[
    "edgevisor-bootstrap-token",
    "e2e-token-gateway-api",
    "e2e-token-story",
    "e2e-token-bench",
    "e2e-token-races",
    "e2e-token-hostile",
    "e2e-token-liveness",
];

/// A label on namespaces that belong to another release than [`RELEASE`] (the chart test
/// installs a second one): this release's admission policy does not hold there, as a user with
/// several releases in one cluster would set `admission.namespaceSelector`.
pub const OTHER_RELEASE_LABEL: &str = "e2e.edgevisor.dev/other-release";

/// Installs (or upgrades) the chart with its default values (and the test token Secrets),
/// once per test binary.
pub fn install_chart(env: &Env) {
    INSTALLED.get_or_init(|| {
        env.ensure_crds();
        env.helm([
            "upgrade",
            "--install",
            RELEASE,
            "charts/edgevisor",
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--force-conflicts",
            // The controller and the gateway of this release run as local processes with its
            // ServiceAccounts: no pods (they would pull the default image from the internet).
            "--values",
            LOCAL_PROCESSES_VALUES,
            "--set-json",
            &format!(
                "gateway.bootstrapTokenSecrets={}",
                serde_json::json!(TOKEN_SECRETS)
            ),
            "--set-json",
            &format!(
                "admission.namespaceSelector={}",
                serde_json::json!({"matchExpressions": [
                    {"key": OTHER_RELEASE_LABEL, "operator": "DoesNotExist"}]})
            ),
        ])
        .run()
        .expect_ok("installing the chart");
    });
}

/// Installs the chart (once) and returns a kubeconfig of its ServiceAccount `service_account`
/// (in [`RELEASE_NAMESPACE`]), made once per test binary and ServiceAccount.
pub fn sa_kubeconfig(env: &Env, service_account: &str) -> PathBuf {
    install_chart(env);
    let mut cache = KUBECONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(path) = cache.get(service_account) {
        return path.clone();
    }
    let dir = env.repo.join("target/e2e-env/tokens");
    std::fs::create_dir_all(&dir).expect("token dir");
    let short = service_account
        .strip_prefix("edgevisor-")
        .unwrap_or(service_account);
    let path = dir.join(format!("{short}-{}.kubeconfig", std::process::id()));
    env.command_in_repo(
        "e2e/env",
        [
            "sa-kubeconfig",
            RELEASE_NAMESPACE,
            service_account,
            &path.to_string_lossy(),
        ],
    )
    .run()
    .expect_ok(&format!("a token for the {service_account} ServiceAccount"));
    cache.insert(service_account.to_string(), path.clone());
    path
}
