//! The controller process, wired: health endpoint, leader election, watch caches, the
//! fleet reconciler and the offline sweeper. [`run`] takes its client, configuration and
//! shutdown from the caller, so the binary's `main` only parses and dispatches.
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgevisor_crds::{Fleet, FleetRevision};
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::Recorder;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::cli::ControllerConfig;
use crate::device_index::DeviceIndex;
use crate::error::Error;
use crate::leader::{self, Elector};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::registry::{Credentials, Registry, parse_docker_config};
use crate::serve::{Health, serve};
use crate::watched::WatchedDevice;

/// How the controller stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shut down as asked (the lease is released for a standby).
    Stopped,
    /// The lease was lost: another replica may act, so this one must exit at once.
    LostLease,
}

/// Stands by until this replica leads, then reconciles until `shutdown` or the lease
/// is lost.
pub async fn run(
    client: Client,
    config: &ControllerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Ended, Error> {
    tokio::pin!(shutdown);
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let server = tokio::spawn(serve(config.metrics_addr, health.clone()));
    let _server = AbortOnDrop(server);

    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.lease_namespace);
    let lease = Duration::from_secs(config.lease_seconds);
    let elector = Arc::new(Elector::new(leases, &config.lease_name, &identity, lease));
    let retry = Duration::from_secs((config.lease_seconds / 5).max(1));

    // A standby is ready (it serves its endpoints) but does not act.
    health.ready.store(true, Ordering::Relaxed);
    info!(%identity, lease = %config.lease_name, "waiting to lead");
    if !leader::wait_to_lead(&elector, retry, &mut shutdown).await {
        return Ok(Ended::Stopped);
    }
    info!(%identity, "leading");
    metrics.set_leader(true);
    health.ready.store(false, Ordering::Relaxed);

    let registry = Registry::new(
        config.insecure_registries.clone(),
        registry_credentials(&client, config).await?,
    )
    .map_err(Error::RegistryClient)?;
    let signer = crate::signing::load_or_create(
        &client,
        &config.lease_namespace,
        &config.signing_key_secret,
    )
    .await?;
    let ended = reconcile_while_leading(
        client,
        config,
        registry,
        Arc::new(signer),
        metrics.clone(),
        health,
        &elector,
        retry,
        shutdown,
    )
    .await;
    metrics.set_leader(false);
    if ended == Ended::Stopped {
        elector.release().await;
    }
    Ok(ended)
}

#[allow(clippy::too_many_arguments)]
async fn reconcile_while_leading(
    client: Client,
    config: &ControllerConfig,
    registry: Registry,
    signer: Arc<crate::signing::Signer>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    elector: &Elector,
    retry: Duration,
    shutdown: impl Future<Output = ()>,
) -> Ended {
    let (fleets, devices, revisions): (Api<Fleet>, Api<WatchedDevice>, Api<FleetRevision>) =
        match &config.namespace {
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
    let watch = watcher::Config::default();
    // Devices go into the compact index; the controller is triggered by the same events.
    let device_index = Arc::new(DeviceIndex::default());
    let device_events = {
        let index = device_index.clone();
        watcher(devices, watch.clone())
            .default_backoff()
            .map_ok(crate::watched::into_devices)
            .inspect_ok(move |event| index.apply(event))
            .touched_objects()
    };
    let (revision_store, revision_writer) = reflector::store();
    let revision_events = reflector(
        revision_writer,
        watcher(revisions, watch.clone()).modify(|r| r.managed_fields_mut().clear()),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(fleets, watch);
    let fleet_store = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        registry,
        signer,
        recorder: Recorder::new(client, "edgevisor-controller".into()),
        metrics,
        fleets: fleet_store.clone(),
        devices: device_index.clone(),
        revisions: revision_store.clone(),
        said_on_devices: Default::default(),
        write_concurrency: config.write_concurrency,
        offline_after: Duration::from_secs(config.offline_after_seconds),
        synced: false.into(),
    });
    // The gateways' heard-from summaries: which devices are alive, without a write per device.
    let _heard = AbortOnDrop(tokio::spawn(crate::liveness::follow_heard(
        Api::namespaced(ctx.client.clone(), &config.lease_namespace),
        device_index.clone(),
    )));
    let _offline = AbortOnDrop(tokio::spawn(crate::liveness::mark_offline(
        ctx.clone(),
        Duration::from_secs((config.offline_after_seconds / 10).clamp(5, 60)),
    )));
    // A deleted fleet's series leave /metrics with it, and its tally the index.
    let _series = AbortOnDrop(tokio::spawn({
        let (metrics, fleets, devices) = (
            ctx.metrics.clone(),
            fleet_store.clone(),
            ctx.devices.clone(),
        );
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let exists = |ns: &str, name: &str| {
                    fleets
                        .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                        .is_some()
                };
                metrics.retain_fleets(exists);
                devices.retain_fleets(exists);
            }
        }
    }));
    let _synced = AbortOnDrop(tokio::spawn({
        let (ctx, health, fleets, revisions, devices) = (
            ctx.clone(),
            health,
            fleet_store.clone(),
            revision_store,
            device_index,
        );
        async move {
            // Said while it lasts: a cache that never fills (a watch refused or failing to
            // decode) would otherwise leave a leader that silently does nothing.
            let started = std::time::Instant::now();
            let mut said = started;
            loop {
                let (f, r, d) = (
                    fleets.wait_until_ready().now_or_never().is_some(),
                    revisions.wait_until_ready().now_or_never().is_some(),
                    devices.is_ready(),
                );
                if f && r && d {
                    break;
                }
                if said.elapsed() >= Duration::from_secs(10) {
                    said = std::time::Instant::now();
                    warn!(
                        fleets = f,
                        revisions = r,
                        devices = d,
                        waited = ?started.elapsed(),
                        "still waiting for the watch caches to fill"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ctx.synced.store(true, Ordering::Release);
            health.ready.store(true, Ordering::Relaxed);
            info!(took = ?started.elapsed(), "caches synced");
        }
    }));

    // The reconciler stops gracefully (in-flight reconciles finish) on shutdown, and at
    // once when the lease is lost.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reconciler = controller
        .owns_stream(revision_events)
        .watches_stream(device_events, move |device| {
            reconcile::fleets_for_device(&fleet_store, &device)
        })
        .graceful_shutdown_on(async move {
            let _ = stopped.await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            // Reconcile errors are logged by the error policy; a failing watch is said here.
            if let Err(error @ kube::runtime::controller::Error::QueueError(_)) = result {
                warn!(%error, "watch");
            } else if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        });
    tokio::pin!(reconciler);
    let lease = Duration::from_secs(config.lease_seconds);
    let ended = tokio::select! {
        _ = &mut reconciler => return Ended::Stopped,
        _ = shutdown => Ended::Stopped,
        _ = leader::hold(elector, retry, lease) => return Ended::LostLease,
    };
    let _ = stop.send(());
    reconciler.await;
    ended
}

/// The credentials of the docker-config Secrets the controller is told to read.
async fn registry_credentials(
    client: &Client,
    config: &ControllerConfig,
) -> Result<HashMap<String, Credentials>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.lease_namespace);
    let mut out = HashMap::new();
    for name in &config.registry_secrets {
        let bad = |reason: String| Error::RegistrySecret {
            name: name.clone(),
            reason,
        };
        let secret = secrets.get(name).await.map_err(|e| bad(e.to_string()))?;
        let json = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
            .ok_or_else(|| bad("no .dockerconfigjson".into()))?;
        out.extend(parse_docker_config(&json.0).map_err(bad)?);
    }
    Ok(out)
}

/// A background task that ends with its owner.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A replica's name when it has no pod's: the host's name and the process id.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
