//! The command line of `edgevisor`: one binary, two roles. Clap derive only; what each
//! role does lives in [`crate::run`] and [`crate::gateway`].
use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// The cluster side of edgevisor.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the fleet controller: render FleetRevisions, roll them out to Devices, report in
    /// Fleet status. Uses KUBECONFIG or the in-cluster ServiceAccount.
    Controller(ControllerConfig),
    /// Run the device gateway: enrollment, targets by long-poll, device status, over HTTPS.
    /// Uses KUBECONFIG or the in-cluster ServiceAccount.
    Gateway(GatewayArgs),
    /// Check that URLs answer (the image has no shell or curl): resolves each host with the
    /// system resolver, GETs it, prints the status; exits non-zero on the first that does not
    /// answer as expected. Used by `helm test`.
    Probe(ProbeArgs),
}

#[derive(Parser)]
pub struct ProbeArgs {
    /// `URL` (expects a 2xx) or `STATUS=URL`, e.g. `401=https://gw:443/v1/devices/a/b/target`.
    #[arg(required = true, value_parser = crate::probe::parse)]
    pub probes: Vec<crate::probe::Probe>,
    /// Do not verify HTTPS certificates (for a reachability check of a Service whose address
    /// the certificate does not name).
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Seconds each URL has to answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_seconds: u64,
}

#[derive(Parser)]
pub struct GatewayArgs {
    /// Address of the device API (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// The server certificate chain (PEM), e.g. a mounted kubernetes.io/tls Secret's tls.crt.
    #[arg(long)]
    pub tls_cert: std::path::PathBuf,
    /// The server's private key (PEM).
    #[arg(long)]
    pub tls_key: std::path::PathBuf,
    /// Namespace of the bootstrap token Secrets (and of this replica's heard-from summary).
    #[arg(long, env = "POD_NAMESPACE", default_value = "edgevisor-system")]
    pub token_namespace: String,
    /// This replica's name, in its heard-from summary's (default: POD_NAME, else host name and
    /// pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The pod's UID (the downward API's metadata.uid): the summary is owned by the pod, so it
    /// goes when the pod does.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// A bootstrap token Secret (type edgevisor.dev/bootstrap-token); repeat for several.
    #[arg(
        long = "bootstrap-token-secret",
        default_value = "edgevisor-bootstrap-token"
    )]
    pub bootstrap_token_secrets: Vec<String>,
    /// Serve only Devices of this namespace (default: all namespaces).
    #[arg(long, env = "EDGEVISOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Every this many seconds, publish which devices this replica heard from (one ConfigMap,
    /// `edgevisor-heard-<identity>`, in the token namespace); the controller marks a device
    /// offline when no summary lists it for its --offline-after-seconds. A device's `Online` is
    /// written only when it changes.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub liveness_interval_seconds: u64,
    /// Write a device's status at most once per this many milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60000))]
    pub status_coalesce_ms: u64,
    /// How devices reach a registry: `HOST[:PORT]=URL` (the registry as image references
    /// name it = its base URL from the devices); repeat for several.
    #[arg(long = "device-registry", value_parser = crate::gateway::target::RegistryMap::parse_mapping)]
    pub device_registries: Vec<(String, String)>,
    /// A registry (`host:port`) devices reach over plain HTTP; repeat for several.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Most open device connections of this replica (TLS handshakes included); past it new
    /// connections are closed at once.
    #[arg(long, default_value_t = 25_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Seconds a client has for its TLS handshake, for a request's headers, and for a request's
    /// body, each.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub client_timeout_seconds: u64,
}

#[derive(Parser)]
pub struct ControllerConfig {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "EDGEVISOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader-election Lease (and of registry Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "edgevisor-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "edgevisor-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a leader's lease lasts without renewal before another replica takes over.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// A registry (`host:port`) spoken to over plain HTTP; repeat for several.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// The Secret (in the lease namespace) holding the Ed25519 key that signs every rendered
    /// state; created with a new key if absent. Its `ed25519.pub` is the public-key file
    /// devices are given (the agent's `--revision-key`).
    #[arg(long, default_value = "edgevisor-revision-signing-key")]
    pub signing_key_secret: String,
    /// A docker-config Secret in the lease namespace with registry credentials; repeat.
    #[arg(long = "registry-secret")]
    pub registry_secrets: Vec<String>,
    /// Device target writes in flight at once.
    #[arg(long, default_value_t = 16)]
    pub write_concurrency: usize,
    /// A device whose lastSeen is older than this many seconds is offline: it is not started
    /// on an update, counts as offline in its Fleet, and gets Online=False. Keep it a few
    /// times the gateway's liveness interval.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..))]
    pub offline_after_seconds: u64,
}
