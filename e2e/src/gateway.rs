//! Running the real gateway (`edgevisor gateway`, the controller's binary) as a local process,
//! authenticated as the chart's gateway ServiceAccount, and the bootstrap-token Secrets devices
//! enroll with.
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};

use crate::Env;
use crate::process::{Managed, free_port, spawn_logged};
use crate::release::RELEASE_NAMESPACE;
use crate::tls::TlsFiles;

/// The chart's gateway ServiceAccount.
pub const SERVICE_ACCOUNT: &str = "edgevisor-gateway";
/// The bootstrap-token Secret the chart lets the gateway read by default
/// (`gateway.bootstrapTokenSecrets`).
pub const BOOTSTRAP_TOKEN_SECRET: &str = "edgevisor-bootstrap-token";
/// The `type` of bootstrap-token Secrets.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "edgevisor.dev/bootstrap-token";

static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();

/// Installs the chart (once) and returns a kubeconfig of its gateway ServiceAccount.
pub fn gateway_kubeconfig(env: &Env) -> &'static Path {
    KUBECONFIG.get_or_init(|| crate::release::sa_kubeconfig(env, SERVICE_ACCOUNT))
}

/// Options of one gateway process.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names its log file: `target/e2e-env/logs/gateway-<name>.log`.
    pub name: String,
    /// Where devices reach it (`--listen`).
    pub listen: SocketAddr,
    /// Its serving certificate and key.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The only namespace it watches (`--namespace`); all when `None`.
    pub namespace: Option<String>,
    /// Where the bootstrap-token Secrets are (`--token-namespace`).
    pub token_namespace: String,
    /// Their names (`--bootstrap-token-secret`, repeated).
    pub bootstrap_token_secrets: Vec<String>,
    /// How devices reach a registry the cluster knows as `host:port`
    /// (`--device-registry host:port=url`).
    pub device_registries: Vec<(String, String)>,
    /// Registries spoken to over plain HTTP, besides the test registry (always passed).
    pub insecure_registries: Vec<String>,
    /// `--liveness-interval-seconds`.
    pub liveness_interval_seconds: Option<u64>,
    /// `--status-coalesce-ms`.
    pub status_coalesce_ms: Option<u64>,
    /// More flags.
    pub args: Vec<String>,
}

impl Options {
    /// A gateway on `listen` with the certificate of `tls`, reading the chart's default
    /// bootstrap-token Secret in the release namespace, watching every namespace.
    pub fn new(name: &str, listen: SocketAddr, tls: &TlsFiles) -> Options {
        Options {
            name: name.to_string(),
            listen,
            tls_cert: tls.cert.clone(),
            tls_key: tls.key.clone(),
            namespace: None,
            token_namespace: RELEASE_NAMESPACE.to_string(),
            bootstrap_token_secrets: vec![BOOTSTRAP_TOKEN_SECRET.to_string()],
            device_registries: Vec::new(),
            insecure_registries: Vec::new(),
            liveness_interval_seconds: None,
            status_coalesce_ms: None,
            args: Vec::new(),
        }
    }
}

impl Options {
    /// A gateway on a free loopback port, serving only `namespace`, enrolling with the token
    /// Secret `token_secret`: what the gateway tests run.
    pub fn for_namespace(
        name: &str,
        tls: &TlsFiles,
        namespace: &str,
        token_secret: &str,
    ) -> anyhow::Result<Options> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut options = Options::new(name, listen, tls);
        options.namespace = Some(namespace.to_string());
        options.bootstrap_token_secrets = vec![token_secret.to_string()];
        Ok(options)
    }
}

/// Marks the Device `name` revoked, as an operator would (`spec.revoked: true`).
pub async fn revoke(devices: &Api<edgevisor_crds::Device>, name: &str) -> anyhow::Result<()> {
    devices
        .patch(
            name,
            &PatchParams::apply("e2e-operator"),
            &Patch::Apply(serde_json::json!({"apiVersion": "edgevisor.dev/v1alpha1",
                "kind": "Device", "spec": {"revoked": true}})),
        )
        .await
        .with_context(|| format!("revoking {name}"))?;
    Ok(())
}

/// A running gateway; killed when dropped.
pub struct Gateway {
    process: Managed,
    /// `https://<listen>`: the URL devices are given.
    pub url: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// `host:port` of its metrics server.
    pub metrics: String,
}

impl Gateway {
    /// Starts `edgevisor gateway` as the chart's gateway ServiceAccount and waits until it
    /// accepts connections on its listen address.
    pub fn start(env: &Env, options: &Options) -> anyhow::Result<Gateway> {
        let binary = crate::controller::binary(env);
        let kubeconfig = gateway_kubeconfig(env);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let log = env
            .repo
            .join(format!("target/e2e-env/logs/gateway-{}.log", options.name));
        let mut command = Command::new(binary);
        command
            .arg("gateway")
            .args(["--listen", &options.listen.to_string()])
            .args(["--metrics-addr", &metrics])
            .arg("--tls-cert")
            .arg(&options.tls_cert)
            .arg("--tls-key")
            .arg(&options.tls_key)
            .args(["--token-namespace", &options.token_namespace]);
        for secret in &options.bootstrap_token_secrets {
            command.args(["--bootstrap-token-secret", secret]);
        }
        if let Some(namespace) = &options.namespace {
            command.args(["--namespace", namespace]);
        }
        for (cluster, device) in &options.device_registries {
            command.args(["--device-registry", &format!("{cluster}={device}")]);
        }
        command.args(["--insecure-registry", &env.registry]);
        for registry in &options.insecure_registries {
            command.args(["--insecure-registry", registry]);
        }
        if let Some(seconds) = options.liveness_interval_seconds {
            command.args(["--liveness-interval-seconds", &seconds.to_string()]);
        }
        if let Some(ms) = options.status_coalesce_ms {
            command.args(["--status-coalesce-ms", &ms.to_string()]);
        }
        command
            .args(&options.args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn");
        let child = spawn_logged(&mut command, &log)?;
        let mut gateway = Gateway {
            process: Managed::new(child, log, 40),
            url: format!("https://{}", options.listen),
            listen: options.listen,
            metrics,
        };
        gateway.wait_listening(Duration::from_secs(60))?;
        Ok(gateway)
    }

    /// Starts it and waits until its caches are synced (`/readyz`).
    pub async fn start_ready(env: &Env, options: &Options) -> anyhow::Result<Gateway> {
        let gw = Gateway::start(env, options)?;
        crate::measure::wait_ready(&gw.metrics, Duration::from_secs(60), || gw.log_tail()).await?;
        Ok(gw)
    }

    /// Waits until the gateway accepts TCP connections on its listen address.
    pub fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&self.listen, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "the gateway exited ({status}) before listening on {}:\n{}",
                    self.listen,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway did not listen on {} within {timeout:?}:\n{}",
                    self.listen,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl std::ops::Deref for Gateway {
    type Target = Managed;
    fn deref(&self) -> &Managed {
        &self.process
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Managed {
        &mut self.process
    }
}

// === bootstrap tokens ===

/// A bootstrap-token Secret: what devices present to enroll, and what their Devices get.
#[derive(Clone, Debug)]
pub struct BootstrapToken {
    /// The Secret's name.
    pub secret: String,
    /// The Secret's namespace (the gateway's `--token-namespace`).
    pub namespace: String,
    /// The secret string devices present (`token`).
    pub token: String,
    /// Where the Devices it enrolls are created (`device-namespace`).
    pub device_namespace: String,
    /// Labels put on every Device it enrolls (`labels`, `k=v,k2=v2`).
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 (`expiration`).
    pub expiration: Option<String>,
    /// Most enrollments (`usage-limit`).
    pub usage_limit: Option<u32>,
}

impl BootstrapToken {
    /// A fresh random token in the chart's default Secret, enrolling into `device_namespace`.
    pub fn new(device_namespace: &str) -> anyhow::Result<BootstrapToken> {
        Ok(BootstrapToken {
            secret: BOOTSTRAP_TOKEN_SECRET.to_string(),
            namespace: RELEASE_NAMESPACE.to_string(),
            token: random_token()?,
            device_namespace: device_namespace.to_string(),
            labels: BTreeMap::new(),
            expiration: None,
            usage_limit: None,
        })
    }

    /// The Secret's `data`.
    pub fn data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            data.insert(k.to_string(), ByteString(v.into_bytes()));
        };
        put("token", self.token.clone());
        put("device-namespace", self.device_namespace.clone());
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            put("labels", labels.join(","));
        }
        if let Some(expiration) = &self.expiration {
            put("expiration", expiration.clone());
        }
        if let Some(limit) = self.usage_limit {
            put("usage-limit", limit.to_string());
        }
        data
    }
}

/// Creates or replaces the token's Secret (server-side apply as `edgevisor-e2e`: keys left out
/// of `token` are removed).
pub async fn apply_bootstrap_token(
    client: &kube::Client,
    token: &BootstrapToken,
) -> anyhow::Result<()> {
    // The release namespace, and the RBAC that lets the gateway read this Secret, come with the
    // chart.
    crate::release::install_chart(Env::get());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &token.namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(token.secret.clone()),
            namespace: Some(token.namespace.clone()),
            ..Default::default()
        },
        type_: Some(BOOTSTRAP_TOKEN_TYPE.to_string()),
        data: Some(token.data()),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&secret)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    secrets
        .patch(
            &token.secret,
            &PatchParams::apply("edgevisor-e2e").force(),
            &Patch::Apply(value),
        )
        .await
        .with_context(|| {
            format!(
                "applying bootstrap token Secret {}/{}",
                token.namespace, token.secret
            )
        })?;
    Ok(())
}

/// 32 random hex digits from the kernel.
pub fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(bytes))
}
