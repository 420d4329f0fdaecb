//! Running the real controller binary as a local process, authenticated as the chart's
//! controller ServiceAccount (a TokenRequest token), scoped to one test namespace.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::Env;
use crate::process::{Managed, cargo_binary, free_port, spawn_logged};
pub use crate::release::RELEASE_NAMESPACE;

static BUILT: OnceLock<PathBuf> = OnceLock::new();
static RELEASE_KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();

/// Builds the `edgevisor` binary (a no-op when up to date) and returns its path; or the
/// binary `EDGEVISOR_CONTROLLER_BIN` names (the benchmarks' optimised build). The gateway is the
/// same binary.
pub fn binary(env: &Env) -> &'static Path {
    BUILT.get_or_init(|| {
        cargo_binary(
            env,
            "edgevisor-controller",
            "edgevisor",
            "EDGEVISOR_CONTROLLER_BIN",
        )
    })
}

/// Installs the chart (once) and returns a kubeconfig of its controller ServiceAccount.
pub fn controller_kubeconfig(env: &Env) -> &'static Path {
    RELEASE_KUBECONFIG.get_or_init(|| crate::release::sa_kubeconfig(env, "edgevisor-controller"))
}

/// The release's revision-signing Secret, which the controller fills on its first start.
pub const SIGNING_KEY_SECRET: &str = "edgevisor-revision-signing-key";

/// The controller's revision-signing public key as a device's `--revision-key` file, read the
/// way an operator would (from the Secret `namespace`/`secret`), once a controller has created
/// it.
pub async fn revision_public_key(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let secret_object = secrets
            .get_opt(secret)
            .await
            .context("reading the revision-signing Secret")?;
        if let Some(key) = secret_object
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get("ed25519.pub"))
        {
            return String::from_utf8(key.0.clone()).context("ed25519.pub is not text");
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no controller filled {namespace}/{secret} within a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A running controller; killed when dropped.
pub struct Controller {
    process: Managed,
    pub metrics: String,
}

/// Options of one controller process.
pub struct Options<'a> {
    /// The only namespace it watches.
    pub namespace: &'a str,
    /// Its identity in the Lease; the same identity takes its own lease back at once.
    pub identity: &'a str,
    pub lease_seconds: u64,
    /// More flags (`--registry-secret`, …).
    pub args: &'a [&'a str],
}

impl Controller {
    /// Starts `edgevisor controller` as the chart's ServiceAccount.
    pub fn start(env: &Env, options: &Options<'_>) -> anyhow::Result<Controller> {
        let binary = binary(env);
        let kubeconfig = controller_kubeconfig(env);
        let port = free_port()?;
        let log = env.repo.join(format!(
            "target/e2e-env/logs/controller-{}-{}.log",
            options.namespace, options.identity
        ));
        let mut command = Command::new(binary);
        command
            .args(["controller", "--namespace", options.namespace])
            .args([
                "--lease-namespace",
                RELEASE_NAMESPACE,
                "--lease-name",
                &format!("edgevisor-{}", options.namespace),
            ])
            .args([
                "--identity",
                options.identity,
                "--lease-seconds",
                &options.lease_seconds.to_string(),
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--insecure-registry", &env.registry])
            .args(options.args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn");
        let child = spawn_logged(&mut command, &log)?;
        Ok(Controller {
            process: Managed::new(child, log, 30),
            metrics: format!("127.0.0.1:{port}"),
        })
    }
}

impl std::ops::Deref for Controller {
    type Target = Managed;
    fn deref(&self) -> &Managed {
        &self.process
    }
}

impl std::ops::DerefMut for Controller {
    fn deref_mut(&mut self) -> &mut Managed {
        &mut self.process
    }
}
