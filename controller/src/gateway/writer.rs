//! Status writes, coalesced: a device's reports land in a pending slot that is written at most
//! once per coalescing window, and only when something a user would see changed. Liveness is
//! kept in memory: a device's `Online=True` (and `lastSeen`) is written when it comes online
//! (its status does not say so), never while it stays; which devices were heard from goes out
//! in one summary per replica and interval ([`crate::heard`], [`publish_heard`]), which the
//! controller reads to tell when one went quiet.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgevisor_crds::{Device, DeviceStatus};
use edgevisor_protocol::gateway::DeviceReport;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::cache::{DeviceCache, Key};
use super::metrics::GatewayMetrics;
use super::report;

/// The field manager of the gateway's status writes.
pub const FIELD_MANAGER: &str = "edgevisor-gateway";
const CONCURRENCY: usize = 16;
/// How long the watch cache may take to show this replica's own write.
const CACHE_LAG: Duration = Duration::from_secs(10);

struct Pending {
    status: DeviceStatus,
    due: Instant,
}

#[derive(Default)]
struct State {
    pending: HashMap<Key, Pending>,
    /// When this replica last wrote each device, and what.
    written: HashMap<Key, (Instant, DeviceStatus)>,
    /// When each device was last heard from (memory only).
    seen: HashMap<Key, Instant>,
    /// Devices waiting in a target long-poll now (how many polls each).
    polling: HashMap<Key, usize>,
}

/// A device's long-poll, counted while it waits; its end is a heartbeat.
pub struct Polling<'a> {
    writer: &'a Writer,
    key: Key,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut st = self.writer.state();
        if let Some(n) = st.polling.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.polling.remove(&self.key);
            }
        }
        st.seen.insert(self.key.clone(), Instant::now());
    }
}

pub struct Writer {
    client: Client,
    cache: Arc<DeviceCache>,
    metrics: Arc<GatewayMetrics>,
    coalesce: Duration,
    liveness: Duration,
    state: Mutex<State>,
    wake: Notify,
}

impl Writer {
    pub fn new(
        client: Client,
        cache: Arc<DeviceCache>,
        metrics: Arc<GatewayMetrics>,
        coalesce: Duration,
        liveness: Duration,
    ) -> Arc<Writer> {
        Arc::new(Writer {
            client,
            cache,
            metrics,
            coalesce,
            liveness,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device was heard from.
    pub fn seen(&self, key: &Key) {
        self.state().seen.insert(key.clone(), Instant::now());
    }

    /// Merges a report; schedules a write if a user would see the difference.
    pub fn report(&self, key: &Key, report: &DeviceReport) {
        let Some(entry) = self.cache.get(key) else {
            return;
        };
        let now = Instant::now();
        let mut st = self.state();
        st.seen.insert(key.clone(), now);
        let base = match (st.pending.get(key), st.written.get(key)) {
            (Some(p), _) => p.status.clone(),
            // The cache may not show our last write yet.
            (None, Some((_, w)))
                if w.last_seen.as_ref().map(|t| t.0)
                    > entry.status.last_seen.as_ref().map(|t| t.0) =>
            {
                w.clone()
            }
            _ => report::owned(&entry.status),
        };
        let merged = report::merge(&base, report, entry.target.as_deref(), Timestamp::now());
        if let Some(ended) = report::ended(&base, &merged) {
            self.metrics.update_ended(&key.0, &ended);
        }
        let changed = report::visible(&merged) != report::visible(&base);
        if let Some(p) = st.pending.get_mut(key) {
            p.status = merged;
        } else if changed {
            let due = match st.written.get(key) {
                Some((at, _)) => (*at + self.coalesce).max(now),
                None => now,
            };
            st.pending.insert(
                key.clone(),
                Pending {
                    status: merged,
                    due,
                },
            );
            drop(st);
            self.wake.notify_one();
        }
    }

    /// The device waits in a long-poll until the guard drops.
    pub fn polling(&self, key: &Key) -> Polling<'_> {
        *self.state().polling.entry(key.clone()).or_default() += 1;
        Polling {
            writer: self,
            key: key.clone(),
        }
    }

    /// Devices heard from within `within` or waiting in a long-poll now: what the next
    /// summary lists.
    pub fn heard_within(&self, within: Duration) -> Vec<Key> {
        let now = Instant::now();
        let st = self.state();
        let mut keys: Vec<Key> = st
            .seen
            .iter()
            .filter(|(_, at)| now.duration_since(**at) < within)
            .map(|(k, _)| k.clone())
            .collect();
        keys.extend(
            st.polling
                .keys()
                .filter(|k| {
                    st.seen
                        .get(*k)
                        .is_none_or(|at| now.duration_since(*at) >= within)
                })
                .cloned(),
        );
        keys
    }

    /// Schedules an `Online=True` write for each device heard from whose status does not say
    /// it is online (it just came, or came back), and forgets devices not heard from for a
    /// while. A device that stays online costs no write.
    fn sweep(&self) {
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut st = self.state();
        let keep = self.liveness * 2 + Duration::from_secs(60);
        st.seen.retain(|_, at| now.duration_since(*at) < keep);
        st.written
            .retain(|_, (at, _)| now.duration_since(*at) < keep);
        let due: Vec<(Key, Arc<super::cache::Entry>)> = st
            .seen
            .keys()
            .filter(|k| !st.pending.contains_key(*k))
            .filter_map(|k| {
                let entry = self.cache.get(k)?;
                // The cache may not show a write of a moment ago yet; after that, what it shows
                // is the truth (the controller may have marked the device offline since).
                let written_online = st.written.get(k).is_some_and(|(at, w)| {
                    report::online(w) && now.duration_since(*at) < CACHE_LAG
                });
                (!report::online(&entry.status) && !written_online).then(|| (k.clone(), entry))
            })
            .collect();
        for (key, entry) in due {
            let mut status = report::owned(&entry.status);
            report::alive(&mut status, entry.target.as_deref(), wall);
            st.pending.insert(key, Pending { status, due: now });
        }
    }

    /// Writes due statuses until the process ends.
    pub async fn run(self: Arc<Self>) {
        let sweep_every =
            (self.liveness / 10).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let mut next_sweep = Instant::now() + sweep_every;
        loop {
            let now = Instant::now();
            if now >= next_sweep && self.cache.ready() {
                self.sweep();
                next_sweep = now + sweep_every;
            }
            let (batch, next_due) = {
                let mut st = self.state();
                let due: Vec<Key> = st
                    .pending
                    .iter()
                    .filter(|(_, p)| p.due <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                let batch: Vec<(Key, DeviceStatus)> = due
                    .into_iter()
                    .filter_map(|k| st.pending.remove(&k).map(|p| (k, p.status)))
                    .collect();
                let next_due = st.pending.values().map(|p| p.due).min();
                (batch, next_due)
            };
            if !batch.is_empty() {
                let this = &self;
                let results: Vec<(Key, DeviceStatus, Result<(), kube::Error>)> =
                    futures::stream::iter(batch)
                        .map(|(key, status)| async move {
                            let r = this.write(&key, &status).await;
                            (key, status, r)
                        })
                        .buffer_unordered(CONCURRENCY)
                        .collect()
                        .await;
                let mut st = self.state();
                for (key, status, result) in results {
                    match result {
                        Ok(()) => {
                            self.metrics.status_write();
                            st.written.insert(key, (Instant::now(), status));
                        }
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(error) => {
                            warn!(namespace = %key.0, device = %key.1, %error, "status write failed; retrying");
                            self.metrics.status_write_error();
                            st.pending.entry(key).or_insert(Pending {
                                status,
                                due: Instant::now() + Duration::from_secs(2),
                            });
                        }
                    }
                }
                continue;
            }
            let until = next_due.unwrap_or(next_sweep).min(next_sweep);
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Publishes, every liveness interval until the process ends, which devices this replica
    /// heard from (in the interval, or waiting in a long-poll): one ConfigMap write per
    /// interval, whatever the number of devices. `name` is the replica's (its pod's); with
    /// `owner`, the summary goes with the pod.
    pub async fn publish_heard(
        self: Arc<Self>,
        namespace: String,
        name: String,
        owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) {
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), &namespace);
        let object = crate::heard::object_name(&name);
        loop {
            tokio::time::sleep(self.liveness).await;
            let keys = self.heard_within(self.liveness);
            let summary =
                crate::heard::config_map(&name, &namespace, owner.clone(), Timestamp::now(), &keys);
            match api
                .patch(
                    &object,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&summary),
                )
                .await
            {
                Ok(_) => {
                    self.metrics.writes.add("configmap", 1);
                    debug!(devices = keys.len(), "published the devices heard from");
                }
                Err(error) => {
                    warn!(%error, "publishing the devices heard from; retrying next interval")
                }
            }
        }
    }

    async fn write(&self, key: &Key, status: &DeviceStatus) -> Result<(), kube::Error> {
        let api: Api<Device> = Api::namespaced(self.client.clone(), &key.0);
        let patch = json!({
            "apiVersion": "edgevisor.dev/v1alpha1",
            "kind": "Device",
            "status": status,
        });
        debug!(namespace = %key.0, device = %key.1, "writing status");
        api.patch_status(
            &key.1,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map(|_| ())
    }
}
