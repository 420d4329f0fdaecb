//! Status writes, coalesced: a device's reports land in a pending slot that is written at most
//! once per coalescing window, and only when something a user would see changed. Liveness is
//! kept in memory and written as `lastSeen`/`Online` at most once per liveness interval.
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

fn seconds_since(
    t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: Timestamp,
) -> Option<i64> {
    t.map(|t| now.as_second() - t.0.as_second())
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

    /// Schedules liveness writes for devices heard from whose `lastSeen` is older than the
    /// interval, and forgets devices not heard from in two intervals.
    fn sweep(&self) {
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut st = self.state();
        let liveness = self.liveness;
        st.seen
            .retain(|_, at| now.duration_since(*at) < liveness * 2);
        st.written
            .retain(|_, (at, _)| now.duration_since(*at) < liveness * 2);
        let due: Vec<(Key, Arc<super::cache::Entry>)> = st
            .seen
            .keys()
            .filter(|k| !st.pending.contains_key(*k))
            .filter_map(|k| {
                let entry = self.cache.get(k)?;
                let last = st
                    .written
                    .get(k)
                    .and_then(|(_, w)| w.last_seen.clone())
                    .max(entry.status.last_seen.clone());
                seconds_since(last.as_ref(), wall)
                    .is_none_or(|s| s >= liveness.as_secs() as i64)
                    .then(|| (k.clone(), entry))
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
