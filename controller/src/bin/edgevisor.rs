//! `edgevisor`: the cluster side of edgevisor. `edgevisor controller` runs the fleet
//! controller (leader-elected, with /metrics, /healthz, /readyz); `edgevisor gateway` runs the
//! device-facing HTTPS API (any number of replicas).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edgevisor_controller::leader::Elector;
use edgevisor_controller::metrics::Metrics;
use edgevisor_controller::reconcile::{self, Context};
use edgevisor_controller::registry::{Registry, parse_docker_config};
use edgevisor_controller::serve::{Health, serve};
use edgevisor_crds::{Device, Fleet, FleetRevision};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::Recorder;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{error, info, warn};

/// The cluster side of edgevisor.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet controller: render FleetRevisions, roll them out to Devices, report in
    /// Fleet status. Uses KUBECONFIG or the in-cluster ServiceAccount.
    Controller(ControllerArgs),
    /// Run the device gateway: enrollment, targets by long-poll, device status, over HTTPS.
    /// Uses KUBECONFIG or the in-cluster ServiceAccount.
    Gateway(GatewayArgs),
}

#[derive(Parser)]
struct GatewayArgs {
    /// Address of the device API (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,
    /// The server certificate chain (PEM), e.g. a mounted kubernetes.io/tls Secret's tls.crt.
    #[arg(long)]
    tls_cert: std::path::PathBuf,
    /// The server's private key (PEM).
    #[arg(long)]
    tls_key: std::path::PathBuf,
    /// Namespace of the bootstrap token Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "edgevisor-system")]
    token_namespace: String,
    /// A bootstrap token Secret (type edgevisor.dev/bootstrap-token); repeat for several.
    #[arg(
        long = "bootstrap-token-secret",
        default_value = "edgevisor-bootstrap-token"
    )]
    bootstrap_token_secrets: Vec<String>,
    /// Serve only Devices of this namespace (default: all namespaces).
    #[arg(long, env = "EDGEVISOR_NAMESPACE")]
    namespace: Option<String>,
    /// Write a device's lastSeen/Online at most once per this many seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    liveness_interval_seconds: u64,
    /// Write a device's status at most once per this many milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60000))]
    status_coalesce_ms: u64,
    /// How devices reach a registry: `HOST[:PORT]=URL` (the registry as image references
    /// name it = its base URL from the devices); repeat for several.
    #[arg(long = "device-registry", value_parser = edgevisor_controller::gateway::target::RegistryMap::parse_mapping)]
    device_registries: Vec<(String, String)>,
    /// A registry (`host:port`) devices reach over plain HTTP; repeat for several.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

#[derive(Parser)]
struct ControllerArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "EDGEVISOR_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader-election Lease (and of registry Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "edgevisor-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "edgevisor-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's lease lasts without renewal before another replica takes over.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,
    /// A registry (`host:port`) spoken to over plain HTTP; repeat for several.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A docker-config Secret in the lease namespace with registry credentials; repeat.
    #[arg(long = "registry-secret")]
    registry_secrets: Vec<String>,
    /// Device target writes in flight at once.
    #[arg(long, default_value_t = 16)]
    write_concurrency: usize,
    /// A device whose lastSeen is older than this many seconds is offline: it is not started
    /// on an update, counts as offline in its Fleet, and gets Online=False. Keep it a few
    /// times the gateway's liveness interval.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(10..))]
    offline_after_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    // reqwest is built without a crypto provider of its own: use the one kube uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Controller(args) => run_controller(args).await,
        Command::Gateway(args) => run_gateway(args).await,
    }
}

async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    use edgevisor_controller::gateway::{self, target::RegistryMap};
    let tls = gateway::http::tls_config(&args.tls_cert, &args.tls_key)?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let config = gateway::Config {
        token_namespace: args.token_namespace,
        token_secrets: args.bootstrap_token_secrets,
        registries: RegistryMap {
            device_urls: args.device_registries.into_iter().collect(),
            insecure: args.insecure_registries.into_iter().collect(),
        },
        liveness: Duration::from_secs(args.liveness_interval_seconds),
        coalesce: Duration::from_millis(args.status_coalesce_ms),
    };
    gateway::run(
        client,
        config,
        args.namespace,
        args.listen,
        args.metrics_addr,
        tls,
        shutdown_signal(),
    )
    .await
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let server = tokio::spawn(serve(args.metrics_addr, health.clone()));

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    let elector = Arc::new(Elector::new(
        leases,
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_seconds),
    ));
    let retry = Duration::from_secs((args.lease_seconds / 5).max(1));

    // Stand by until this replica leads: ready, but not acting.
    health.ready.store(true, Ordering::Relaxed);
    info!(%identity, lease = %args.lease_name, "waiting to lead");
    loop {
        match elector.try_acquire().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown_signal() => return Ok(()),
        }
    }
    info!(%identity, "leading");
    metrics.set_leader(true);
    health.ready.store(false, Ordering::Relaxed);

    let registry = Registry::new(
        args.insecure_registries.clone(),
        registry_credentials(&client, &args).await?,
    )
    .context("building the registry client")?;
    let (fleets, devices, revisions): (Api<Fleet>, Api<Device>, Api<FleetRevision>) =
        match &args.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let config = watcher::Config::default();
    // Devices go into the compact index; the controller is triggered by the same events.
    let device_index = Arc::new(edgevisor_controller::device_index::DeviceIndex::default());
    let device_events = {
        let index = device_index.clone();
        watcher(devices, config.clone())
            .default_backoff()
            .inspect_ok(move |event| index.apply(event))
            .touched_objects()
    };
    let (revision_store, revision_writer) = reflector::store();
    let revision_events = reflector(
        revision_writer,
        watcher(revisions, config.clone()).modify(|r| r.managed_fields_mut().clear()),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(fleets, config);
    let fleet_store = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        registry,
        recorder: Recorder::new(client.clone(), "edgevisor-controller".into()),
        metrics: metrics.clone(),
        fleets: fleet_store.clone(),
        devices: device_index.clone(),
        revisions: revision_store.clone(),
        written: Default::default(),
        write_concurrency: args.write_concurrency,
        offline_after: Duration::from_secs(args.offline_after_seconds),
        synced: false.into(),
    });
    let offline = tokio::spawn(edgevisor_controller::liveness::mark_offline(
        ctx.clone(),
        Duration::from_secs((args.offline_after_seconds / 10).clamp(5, 60)),
    ));

    // Renew the lease while leading; losing it means another replica may act: stop at once.
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let renewer = {
        let elector = elector.clone();
        let lease = Duration::from_secs(args.lease_seconds);
        tokio::spawn(async move {
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(retry).await;
                match elector.try_acquire().await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) if last_renewed.elapsed() < lease => {
                        warn!(error = %e, "renewing the lease")
                    }
                    Err(_) => break,
                }
            }
            let _ = lost_tx.send(());
        })
    };
    let (ready, synced) = (health.clone(), ctx.clone());
    let stores = (
        revision_store.clone(),
        fleet_store.clone(),
        device_index.clone(),
    );
    tokio::spawn(async move {
        let (r, f, d) = stores;
        if r.wait_until_ready().await.is_ok() && f.wait_until_ready().await.is_ok() {
            while !d.is_ready() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            synced.synced.store(true, Ordering::Release);
            ready.ready.store(true, Ordering::Relaxed);
            info!("caches synced");
        }
    });

    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let lost = lost.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = lost_rx => lost.store(true, Ordering::Relaxed),
            }
        }
    };
    let run = controller
        .owns_stream(revision_events)
        .watches_stream(device_events, move |device| {
            reconcile::fleets_for_device(&fleet_store, &device)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        });
    run.await;
    renewer.abort();
    offline.abort();
    server.abort();
    metrics.set_leader(false);
    if lost.load(Ordering::Relaxed) {
        error!("lost the leader lease; exiting so that only one replica acts");
        std::process::exit(1);
    }
    elector.release().await;
    info!("stopped");
    Ok(())
}

async fn registry_credentials(
    client: &Client,
    args: &ControllerArgs,
) -> anyhow::Result<std::collections::HashMap<String, edgevisor_controller::registry::Credentials>>
{
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.lease_namespace);
    let mut out = std::collections::HashMap::new();
    for name in &args.registry_secrets {
        let secret = secrets
            .get(name)
            .await
            .with_context(|| format!("reading registry Secret {name}"))?;
        let json = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
            .with_context(|| format!("Secret {name} has no .dockerconfigjson"))?;
        out.extend(
            parse_docker_config(&json.0).map_err(|e| anyhow::anyhow!("Secret {name}: {e}"))?,
        );
    }
    Ok(out)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
