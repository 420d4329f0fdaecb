//! Devices that stopped talking: the gateway keeps liveness in memory, writes `Online=True`
//! (and `lastSeen`) when a device comes online, and publishes which devices it heard from in one
//! summary per replica and interval ([`crate::heard`]). When a device goes quiet no gateway
//! writes anything, so the controller (one leader, not N gateway replicas) sets `Online=False`
//! once neither `lastSeen` nor any summary is newer than the offline window. It owns only that
//! condition; the gateway takes it back (forced apply) when the device returns.
use std::sync::Arc;
use std::time::Duration;

use edgevisor_crds::Device;
use edgevisor_crds::common::condition::ONLINE;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use crate::reconcile::{Context, FIELD_MANAGER};

/// Feeds the gateways' heard-from summaries (ConfigMaps labelled [`crate::heard::LABEL`] in
/// `api`'s namespace) into the index, until the task is dropped.
pub async fn follow_heard(
    api: Api<k8s_openapi::api::core::v1::ConfigMap>,
    index: Arc<crate::device_index::DeviceIndex>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().labels(crate::heard::LABEL);
    let mut events = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    while let Some(event) = events.next().await {
        match event {
            Ok(summary) => match crate::heard::read(&summary) {
                Ok((at, keys)) => index.heard(at.as_second(), Timestamp::now().as_second(), keys),
                Err(error) => warn!(%error, "ignoring a heard-from summary"),
            },
            Err(error) => warn!(%error, "watching the gateways' heard-from summaries"),
        }
    }
}

/// Marks quiet devices offline every `every`, until the task is dropped.
pub async fn mark_offline(ctx: Arc<Context>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let now = Timestamp::now();
        let window = ctx.offline_after.as_secs() as i64;
        for (ns, name) in ctx.devices.gone_quiet(now.as_second(), window) {
            let api: Api<Device> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({
                "apiVersion": "edgevisor.dev/v1alpha1",
                "kind": "Device",
                "status": {"conditions": [{
                    "type": ONLINE,
                    "status": "False",
                    "reason": "NotSeen",
                    "message": format!("not heard from in {window} s"),
                    "lastTransitionTime": now,
                }]},
            });
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(patch),
                )
                .await
            {
                Ok(_) => {
                    ctx.metrics.writes.add("device_status", 1);
                    info!(namespace = %ns, device = %name, "device went offline")
                }
                Err(error) => {
                    warn!(namespace = %ns, device = %name, %error, "marking a device offline")
                }
            }
        }
    }
}
