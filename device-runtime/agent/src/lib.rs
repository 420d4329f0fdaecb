//! The cloud agent (DESIGN §5): the device's client of the edgevisor gateway. It enrolls
//! once with a bootstrap token, long-polls its target revision, and carries each new
//! target out through the runtime's control socket ([`update`]), reporting progress,
//! the committed revision and the containers back to the gateway ([`report`]).
//!
//! The agent holds no state the runtime does not, besides its credential and the
//! download spool: after a restart it asks the runtime what it has and takes it from
//! there. Every network call is retried with jittered backoff ([`backoff`]); nothing it
//! receives from outside can make it panic or exit, only a refused enrollment can.

pub mod backoff;
pub mod credential;
pub mod error;
pub mod gateway;
pub mod registry;
pub mod report;
pub mod schedule;
pub mod signature;
pub mod update;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use clap::Parser;
use clap::builder::NonEmptyStringValueParser;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::credential::Credential;
use crate::gateway::{Gateway, GatewayError};
use crate::registry::{Downloader, DownloaderConfig};
use crate::report::{Reporter, committed_revision, containers_from_runtime, run_reporter};
use crate::schedule::{Action, Ended, Schedule};
use crate::update::{Ctx, Gate, Outcome, handle_target};
use device_runtime::client::Client;
use edgevisor_protocol::gateway::{EnrollRequest, MAX_WAIT_SECONDS, Target};
use edgevisor_protocol::registry_auth::{check_transport, parse_docker_config};

/// The edgevisor agent: connects this device to an edgevisor gateway. It enrolls once
/// (with a bootstrap token), then long-polls the device's target revision, downloads
/// what the runtime lacks (resumable, verified), installs and runs the revision through
/// the runtime's control socket, and reports progress and containers to the gateway.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
pub struct AgentArgs {
    /// Base URL of the gateway, e.g. https://gateway.example:8443.
    #[arg(long, env = "EDGEVISOR_AGENT_GATEWAY", value_parser = NonEmptyStringValueParser::new())]
    pub gateway: String,
    /// PEM file of the CA that signed the gateway's certificate. Only this CA is then
    /// trusted for the gateway; registries are checked against it and the system's roots.
    /// Without it, the system's roots are trusted for both.
    #[arg(long, env = "EDGEVISOR_AGENT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The runtime's control socket.
    #[arg(
        long,
        env = "EDGEVISOR_SOCKET",
        default_value = "/var/lib/edgevisor/control.sock"
    )]
    pub runtime_socket: PathBuf,
    /// Directory of the agent's own state: credential.json (0600) and the download spool.
    #[arg(
        long,
        env = "EDGEVISOR_AGENT_STATE_DIR",
        default_value = "/var/lib/edgevisor-agent"
    )]
    pub state_dir: PathBuf,
    /// This device's name (a DNS label): the name of its Device object.
    #[arg(long, env = "EDGEVISOR_AGENT_NAME", value_parser = NonEmptyStringValueParser::new())]
    pub name: String,
    /// CPU architecture: amd64, arm64, arm/v7 or riscv64.
    #[arg(long, env = "EDGEVISOR_AGENT_ARCHITECTURE", default_value = default_architecture())]
    pub architecture: String,
    /// File holding the bootstrap token, needed only until the device has enrolled.
    #[arg(long, env = "EDGEVISOR_AGENT_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Device metadata sent when enrolling (model, serial, OS), repeatable: --info model=rpi4.
    /// In the environment, comma-separated: model=rpi4,serial=0042.
    #[arg(long = "info", value_name = "KEY=VALUE", env = "EDGEVISOR_AGENT_INFO",
          value_delimiter = ',', value_parser = parse_info)]
    pub info: Vec<(String, String)>,
    /// Docker config.json whose "auths" hold credentials for private registries.
    #[arg(long, env = "EDGEVISOR_AGENT_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// A registry (host or host:port) the agent may reach over plain http, repeatable.
    /// For tests and labs only: blobs are verified by digest, but credentials and tokens
    /// for it, and for a token service on plain http, cross the network unprotected.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Accept an http:// --gateway. For tests only: the device's credential would cross
    /// the network in clear.
    #[arg(long)]
    pub insecure_gateway: bool,
    /// The controller's revision-signing public key(s), one base64 key per line (the
    /// controller's signing-key Secret, `ed25519.pub`), given with the bootstrap material.
    /// Every target's state must carry a signature by one of them, for this device's namespace,
    /// or it is refused (WONTGO, SignatureInvalid) and nothing is installed.
    #[arg(
        long,
        env = "EDGEVISOR_AGENT_REVISION_KEY",
        required_unless_present = "allow_unsigned_revisions"
    )]
    pub revision_key: Option<PathBuf>,
    /// Install targets without checking a signature. For tests only: whoever controls the
    /// gateway, or may write FleetRevisions, decides what this device runs.
    #[arg(long, conflicts_with = "revision_key")]
    pub allow_unsigned_revisions: bool,
    /// Objects downloaded at the same time.
    #[arg(long, env = "EDGEVISOR_AGENT_PARALLEL_DOWNLOADS", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parallel_downloads: u16,
    /// Download attempts per object before the update is reported failed.
    #[arg(long, env = "EDGEVISOR_AGENT_DOWNLOAD_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub download_attempts: u32,
    /// Seconds the gateway may hold a target long-poll open (at most 60).
    #[arg(long, env = "EDGEVISOR_AGENT_WAIT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECONDS))]
    pub wait_seconds: u64,
    /// Least time between two progress reports (status changes go at once).
    #[arg(
        long,
        env = "EDGEVISOR_AGENT_STATUS_INTERVAL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(0..=600_000)
    )]
    pub status_interval_ms: u64,
    /// How often the containers are checked for changes to report.
    #[arg(long, env = "EDGEVISOR_AGENT_CONTAINER_CHECK_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub container_check_seconds: u64,
    /// Seconds before an update that failed for a passing reason (downloads, space) is
    /// tried again, if the target has not changed meanwhile.
    #[arg(
        long,
        env = "EDGEVISOR_AGENT_RETRY_FAILED_SECONDS",
        default_value_t = 180,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub retry_failed_seconds: u64,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, env = "EDGEVISOR_LOG", default_value = "info")]
    pub log: String,
}

/// The architecture this binary was built for, in the gateway's words.
pub fn default_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm/v7",
        "riscv64" => "riscv64",
        _ => "amd64",
    }
}

fn parse_info(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Installs ring as rustls' crypto provider (reqwest is built without one). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connection setup shared by both clients. Reads may pause for as long as a long-poll
/// lasts; a longer silence is a dead connection. The gateway's connection is kept for the
/// next long-poll; a registry's only while an update downloads: an idle connection keeps
/// its buffers (grown to a blob's chunks) and its TLS state in the device's memory.
/// Redirects are followed only to https, or to a host listed in `insecure` (a registry's
/// storage may redirect elsewhere; a downgrade to cleartext is refused like any plain-http
/// URL).
fn client_builder(
    read_timeout: Duration,
    keep_idle: Duration,
    insecure: &[String],
) -> reqwest::ClientBuilder {
    let insecure = insecure.to_vec();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if let Err(host) = check_transport(attempt.url().as_str(), &insecure) {
            let e = format!("refused a redirect to plain http ({host}); see --insecure-registry");
            attempt.error(e)
        } else if attempt.previous().len() >= 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("edgevisor-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(read_timeout)
        .tcp_keepalive(Duration::from_secs(30))
        .pool_idle_timeout(keep_idle)
        .redirect(redirects)
}

const GATEWAY_IDLE: Duration = Duration::from_secs(90);
const REGISTRY_IDLE: Duration = Duration::from_secs(5);

/// The clients for the gateway (only the CA of `ca_pem` trusted, when given) and for
/// registries (that CA and the system roots). `insecure`: hosts a redirect may lead to over
/// plain http (`--insecure-registry`).
pub fn http_clients(
    ca_pem: Option<&[u8]>,
    read_timeout: Duration,
    insecure: &[String],
) -> Result<(reqwest::Client, reqwest::Client)> {
    install_crypto_provider();
    let Some(pem) = ca_pem else {
        let build = |idle| {
            client_builder(read_timeout, idle, insecure)
                .build()
                .map_err(|source| Error::Http {
                    what: "HTTPS client with the system's CA roots",
                    source,
                })
        };
        return Ok((build(GATEWAY_IDLE)?, build(REGISTRY_IDLE)?));
    };
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| Error::Http {
        what: "reading the CA PEM",
        source,
    })?;
    if certs.is_empty() {
        return Err(Error::Config("no certificate in the CA PEM".into()));
    }
    let gateway = client_builder(read_timeout, GATEWAY_IDLE, insecure)
        .tls_certs_only(certs.clone())
        .build()
        .map_err(|source| Error::Http {
            what: "gateway HTTPS client",
            source,
        })?;
    let registry = match client_builder(read_timeout, REGISTRY_IDLE, insecure)
        .tls_certs_merge(certs.clone())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            // No system roots to merge with (a minimal device image): the CA alone.
            tracing::warn!(
                "system CA roots unavailable ({e}); registries must use the --ca-cert CA"
            );
            client_builder(read_timeout, REGISTRY_IDLE, insecure)
                .tls_certs_only(certs)
                .build()
                .map_err(|source| Error::Http {
                    what: "registry HTTPS client",
                    source,
                })?
        }
    };
    Ok((gateway, registry))
}

/// The stored credential, or a new one from enrolling. Only a refused enrollment (4xx)
/// is fatal: network errors and 5xx are retried, the gateway may be starting.
pub async fn credential(args: &AgentArgs, gw: &Gateway) -> Result<Credential> {
    if let Some(c) = credential::load(&args.state_dir)? {
        if c.name != args.name {
            tracing::warn!(
                "--name {} differs from the enrolled name {}; using the enrolled identity",
                args.name,
                c.name
            );
        }
        tracing::info!("enrolled as {}/{}", c.namespace, c.name);
        return Ok(c);
    }
    let Some(token_file) = &args.bootstrap_token_file else {
        return Err(Error::Config(format!(
            "not enrolled yet ({} does not exist) and no --bootstrap-token-file given",
            credential::path(&args.state_dir).display()
        )));
    };
    let token = std::fs::read_to_string(token_file).map_err(|source| Error::File {
        flag: "--bootstrap-token-file",
        path: token_file.clone(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "bootstrap token file {} is empty",
            token_file.display()
        )));
    }
    let req = EnrollRequest {
        name: args.name.clone(),
        architecture: args.architecture.clone(),
        info: args.info.iter().cloned().collect(),
    };
    let problems = req.validate();
    if !problems.is_empty() {
        return Err(Error::Config(format!(
            "cannot enroll: {}",
            problems.join("; ")
        )));
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let resp = loop {
        match gw.enroll(token, &req).await {
            Ok(r) => break r,
            Err(GatewayError::Transient(e)) => {
                let d = backoff.next_delay();
                tracing::warn!("enrollment: {e}; retrying in {d:?}");
                tokio::time::sleep(d).await;
            }
            Err(GatewayError::Refused { status, message })
            | Err(GatewayError::Rejected { status, message }) => {
                let why = match status {
                    401 => "the bootstrap token is invalid or expired",
                    403 => "the bootstrap token is used up",
                    409 => {
                        "a device of this name is already enrolled (restore its credential.json, or delete the Device's credential in the cluster to enroll again)"
                    }
                    422 => "the gateway finds the request invalid",
                    _ => "the gateway refused",
                };
                return Err(Error::EnrollmentRefused {
                    why,
                    status,
                    message,
                });
            }
        }
    };
    let c = Credential {
        namespace: resp.namespace,
        name: resp.name,
        credential: resp.credential,
        gateway: gw.base().to_owned(),
    };
    credential::store(&args.state_dir, &c).map_err(Error::CredentialNotStored)?;
    tracing::info!(
        "enrolled as {}/{}; credential stored in {}",
        c.namespace,
        c.name,
        credential::path(&args.state_dir).display()
    );
    Ok(c)
}

/// Keeps the report's committed revision and containers current: once at start, then
/// every `every` (the reporter sends only when they changed).
async fn watch_runtime(runtime: Client, reporter: Reporter, every: Duration) {
    let mut down = false;
    loop {
        let steps = runtime.steps().await;
        let containers = runtime.containers().await;
        match (steps, containers) {
            (Ok(s), Ok(c)) => {
                if down {
                    tracing::info!("the runtime answers again");
                    down = false;
                }
                let current = committed_revision(&s);
                let cs = containers_from_runtime(&c);
                reporter.update(|r| {
                    r.current_revision = current;
                    r.containers = cs;
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                if !down {
                    tracing::warn!("cannot read the runtime's state: {e}");
                    down = true;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// One long-poll, after `delay` (the backoff of the previous one's failure).
async fn poll_target(
    gw: Gateway,
    cred: Credential,
    known: Option<String>,
    wait: Duration,
    delay: Duration,
) -> Result<Option<Target>, GatewayError> {
    tokio::time::sleep(delay).await;
    gw.target(&cred, known.as_deref(), wait).await
}

/// The update task of the current target.
struct Task {
    gate: Arc<Gate>,
    handle: JoinHandle<Outcome>,
}

fn start(ctx: &Arc<Ctx>, target: Target) -> Task {
    tracing::info!("handling target {}", target.revision);
    let gate = Arc::new(Gate::default());
    let handle = tokio::spawn(handle_target(ctx.clone(), target, gate.clone()));
    Task { gate, handle }
}

/// The agent: enroll, then serve targets until `shutdown` resolves.
pub async fn run(args: AgentArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    tokio::pin!(shutdown);
    let wait = Duration::from_secs(args.wait_seconds);
    let (ctx, gw, cred) = tokio::select! {
        c = setup(&args, wait) => c?,
        _ = &mut shutdown => return Ok(()),
    };
    let mut schedule = Schedule::default();
    let mut task: Option<Task> = None;
    let mut known: Option<String> = None;
    let mut net_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut refused_backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    let mut poll = Box::pin(poll_target(
        gw.clone(),
        cred.clone(),
        None,
        wait,
        Duration::ZERO,
    ));
    loop {
        let action = tokio::select! {
            res = &mut poll => {
                let mut delay = Duration::ZERO;
                let mut action = Action::Nothing;
                match res {
                    Ok(found) => {
                        net_backoff.reset();
                        refused_backoff.reset();
                        if let Some(t) = found {
                            known = Some(t.revision.clone());
                            action = schedule.on_target(t);
                        }
                    }
                    Err(GatewayError::Refused { status, message }) => {
                        delay = refused_backoff.next_delay();
                        tracing::error!(
                            "credential refused: revoked or device deleted ({status}: {message}); \
                             asking again in {delay:?}"
                        );
                    }
                    Err(GatewayError::Rejected { status, message }) => {
                        delay = refused_backoff.next_delay();
                        tracing::error!(
                            "the gateway rejected the target request ({status}: {message}); \
                             asking again in {delay:?}"
                        );
                    }
                    Err(GatewayError::Transient(e)) => {
                        delay = net_backoff.next_delay();
                        tracing::warn!("target long-poll failed: {e}; retrying in {delay:?}");
                    }
                }
                poll = Box::pin(poll_target(gw.clone(), cred.clone(), known.clone(), wait, delay));
                action
            }
            out = async {
                match task.as_mut() {
                    Some(t) => (&mut t.handle).await,
                    None => std::future::pending().await,
                }
            } => {
                task = None;
                let rev = schedule.current().unwrap_or_default().to_owned();
                let ended = match out {
                    Ok(Outcome::Finished(st)) => {
                        tracing::info!("{rev}: {st}");
                        Ended::Finished
                    }
                    Ok(Outcome::Cancelled) => Ended::Cancelled,
                    Ok(Outcome::RetryLater(d)) => Ended::RetryAfter(d),
                    Err(e) => {
                        tracing::error!("{rev}: the update task failed: {e}");
                        Ended::RetryAfter(ctx.retry_later)
                    }
                };
                schedule.on_outcome(ended, std::time::Instant::now())
            }
            _ = async {
                match schedule.retry_at() {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => schedule.on_retry_due(),
            _ = &mut shutdown => {
                tracing::info!("stopping (a try in progress goes on in the runtime)");
                return Ok(());
            }
        };
        match action {
            Action::Nothing => {}
            Action::Start(t) => task = Some(start(&ctx, t)),
            Action::Supersede { current, next } => {
                if task.as_ref().is_some_and(|t| t.gate.cancel()) {
                    tracing::info!("target changed to {next} while preparing {current}: switching");
                } else {
                    tracing::info!("target changed to {next}; handling it once {current} rests");
                }
            }
        }
    }
}

/// Everything the loop needs: the clients, the credential (enrolling if need be) and
/// the background reporters.
async fn setup(args: &AgentArgs, wait: Duration) -> Result<(Arc<Ctx>, Gateway, Credential)> {
    let ca = match &args.ca_cert {
        Some(p) => Some(std::fs::read(p).map_err(|source| Error::File {
            flag: "--ca-cert",
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let (gateway_http, registry_http) = http_clients(
        ca.as_deref(),
        (wait + Duration::from_secs(30)).max(Duration::from_secs(60)),
        &args.insecure_registries,
    )?;
    let gw = Gateway::new(gateway_http.clone(), &args.gateway, args.insecure_gateway)
        .map_err(Error::Config)?;
    let registry_auth = match &args.registry_auth {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|source| Error::File {
                flag: "--registry-auth",
                path: p.clone(),
                source,
            })?;
            parse_docker_config(&bytes)
                .map_err(|e| Error::Config(format!("--registry-auth {}: {e}", p.display())))?
        }
        None => Default::default(),
    };
    let revision_keys = match &args.revision_key {
        Some(p) => Some(signature::RevisionKeys::load(p)?),
        None => {
            tracing::warn!("--allow-unsigned-revisions: targets are installed without a signature");
            None
        }
    };
    let cred = credential(args, &gw).await?;
    let runtime = Client::new(&args.runtime_socket);
    let (reporter, report_rx) = Reporter::new();
    let ctx = Arc::new(Ctx {
        runtime: runtime.clone(),
        gateway: gw.clone(),
        cred: cred.clone(),
        downloader: Downloader::new(DownloaderConfig {
            registry_http,
            gateway_http,
            registry_auth,
            insecure_registries: args.insecure_registries.clone(),
            spool_dir: args.state_dir.join("downloads"),
            max_attempts: args.download_attempts,
            base_delay: Duration::from_millis(500),
        }),
        reporter: reporter.clone(),
        parallel_downloads: usize::from(args.parallel_downloads),
        poll: Duration::from_millis(500),
        retry_later: Duration::from_secs(args.retry_failed_seconds),
        revision_keys,
    });
    tokio::spawn(run_reporter(
        report_rx,
        gw.clone(),
        cred.clone(),
        Duration::from_millis(args.status_interval_ms),
    ));
    tokio::spawn(watch_runtime(
        runtime,
        reporter,
        Duration::from_secs(args.container_check_seconds),
    ));
    Ok((ctx, gw, cred))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_flags_and_info_pairs() {
        let a = AgentArgs::try_parse_from([
            "agent",
            "--gateway",
            "https://gw:8443",
            "--ca-cert",
            "/ca.pem",
            "--name",
            "edge-1",
            "--info",
            "model=rpi=4",
            "--info",
            "os=linux",
            "--parallel-downloads",
            "5",
            "--revision-key",
            "/etc/edgevisor/revision.pub",
        ])
        .unwrap();
        assert_eq!(
            a.info,
            vec![
                ("model".to_string(), "rpi=4".to_string()),
                ("os".into(), "linux".into())
            ]
        );
        assert_eq!(a.parallel_downloads, 5);
        assert_eq!(a.wait_seconds, 30);
        assert_eq!(a.architecture, default_architecture());
        let bad = |extra: &[&str]| {
            let mut v = vec!["agent", "--gateway", "g", "--ca-cert", "c", "--name", "n"];
            v.extend_from_slice(extra);
            AgentArgs::try_parse_from(v).is_err()
        };
        // Without the controller's key the agent does not start, unless told to run anything.
        assert!(bad(&[]));
        assert!(!bad(&["--allow-unsigned-revisions"]));
        assert!(bad(&["--allow-unsigned-revisions", "--revision-key", "k"]));
        let minimal = || {
            vec![
                "agent",
                "--gateway",
                "g",
                "--name",
                "n",
                "--revision-key",
                "k",
            ]
        };
        let bad = |extra: &[&str]| {
            let mut v = minimal();
            v.extend_from_slice(extra);
            AgentArgs::try_parse_from(v).is_err()
        };
        assert!(bad(&["--info", "novalue"]));
        // An empty setting of the configuration file is a mistake, not a value.
        let empty = |flag: &str| {
            let mut v = minimal();
            let i = v.iter().position(|a| *a == flag).unwrap() + 1;
            v[i] = "";
            AgentArgs::try_parse_from(v).is_err()
        };
        assert!(empty("--gateway") && empty("--name"));
        assert!(bad(&["--wait-seconds", "61"]));
        assert!(bad(&["--parallel-downloads", "0"]));
        assert!(!bad(&[]));
    }
}
