//! The gateway (DESIGN §5): the device-facing HTTPS API. Stateless and run as any number of
//! replicas: Devices and FleetRevisions come from watch caches, liveness lives in memory,
//! and every durable fact is in the Kubernetes API.
//!
//! - [`auth`]: credentials and bootstrap tokens (pure).
//! - [`cache`]: Devices as the gateway needs them, by key and by credential.
//! - [`target`], [`report`]: what a device is answered and what its reports become (pure).
//! - [`enroll`]: creating or adopting a Device and issuing its credential.
//! - [`writer`]: coalesced status writes, `Online` on transitions, the heard-from summaries.
//! - [`http`]: the server, its per-connection limits and the routes.
//! - [`tls`]: the server certificate, reloaded when its files change.
pub mod auth;
pub mod cache;
pub mod enroll;
pub mod http;
pub mod metrics;
pub mod report;
pub mod target;
pub mod tls;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use edgevisor_crds::FleetRevision;
use kube::Client;
use kube::runtime::reflector::Store;

use crate::watched::WatchedDevice;
use cache::DeviceCache;
use metrics::GatewayMetrics;
use target::RegistryMap;
use writer::Writer;

/// What the gateway is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The namespace of the bootstrap token Secrets.
    pub token_namespace: String,
    /// The bootstrap token Secrets' names.
    pub token_secrets: Vec<String>,
    pub registries: RegistryMap,
    pub liveness: Duration,
    pub coalesce: Duration,
    pub limits: http::Limits,
    /// This replica's name and, in a pod, the pod as the owner of its heard-from summary.
    pub identity: String,
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// Everything a request handler reads.
pub struct Gateway {
    pub client: Client,
    pub config: Config,
    pub devices: Arc<DeviceCache>,
    pub revisions: Store<FleetRevision>,
    pub writer: Arc<Writer>,
    pub metrics: Arc<GatewayMetrics>,
    pub tokens: enroll::TokenCache,
}

/// Runs the gateway until `shutdown` resolves: watches, the status writer, the device API on
/// `listen` and `/metrics`, `/healthz`, `/readyz` on `metrics_addr`.
pub async fn run(
    client: Client,
    config: Config,
    namespace: Option<String>,
    listen: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
    tls: Arc<tls::ReloadingCert>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::error::Error> {
    use std::sync::atomic::Ordering;

    use crate::error::Error;

    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    use kube::{Api, ResourceExt};

    let metrics = Arc::new(GatewayMetrics::default());
    let health = Arc::new(crate::serve::Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let (devices_api, revisions_api): (Api<WatchedDevice>, Api<FleetRevision>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let devices = Arc::new(DeviceCache::default());
    let device_watch = {
        let devices = devices.clone();
        let metrics = metrics.clone();
        watcher(devices_api, watcher::Config::default())
            .default_backoff()
            .map_ok(crate::watched::into_devices)
            .try_for_each(move |event| {
                devices.apply(&event);
                metrics.set_devices(devices.len());
                futures::future::ready(Ok(()))
            })
    };
    let (revisions, revision_writer) = reflector::store();
    let revision_watch = {
        let devices = devices.clone();
        reflector(
            revision_writer,
            watcher(revisions_api, watcher::Config::default())
                .modify(|r| r.managed_fields_mut().clear()),
        )
        .default_backoff()
        .touched_objects()
        // A revision appearing may complete a target a device is waiting for.
        .try_for_each(move |_| {
            devices.wake_all();
            futures::future::ready(Ok(()))
        })
    };
    let writer = writer::Writer::new(
        client.clone(),
        devices.clone(),
        metrics.clone(),
        config.coalesce,
        config.liveness,
    );
    let heard = writer.clone().publish_heard(
        config.token_namespace.clone(),
        config.identity.clone(),
        config.owner.clone(),
    );
    let gateway = Arc::new(Gateway {
        client,
        config,
        devices: devices.clone(),
        revisions: revisions.clone(),
        writer: writer.clone(),
        metrics,
        tokens: Default::default(),
    });
    let ready = {
        let health = health.clone();
        async move {
            if revisions.wait_until_ready().await.is_ok() {
                while !devices.ready() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                health.ready.store(true, Ordering::Relaxed);
                tracing::info!("caches synced");
            }
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        r = crate::serve::serve(metrics_addr, health) => r.map_err(|source| Error::Listen { what: "the metrics endpoint", addr: metrics_addr, source }),
        r = http::serve(listen, tls.server_config(), gateway) => r,
        _ = tls.clone().watch() => Ok(()),
        r = device_watch => r.map_err(|source| Error::Watch { what: "Devices", source }),
        r = revision_watch => r.map_err(|source| Error::Watch { what: "FleetRevisions", source }),
        _ = writer.run() => Ok(()),
        _ = heard => Ok(()),
        _ = ready => Ok(()),
        _ = shutdown => Ok(()),
    }
}
