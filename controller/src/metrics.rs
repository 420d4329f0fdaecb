//! Prometheus metrics of the controller, through `prometheus-client` (OpenMetrics text):
//! reconciles, their duration (a histogram), errors by kind, target writes, devices of
//! each fleet by state (removed with the fleet), and whether this replica leads.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    errors: Family<Labels, Counter>,
    device_writes: Counter,
    fleet_devices: Family<Labels, Gauge>,
    /// The label sets each fleet has in `fleet_devices`, to remove them with the fleet.
    fleet_series: Mutex<BTreeMap<(String, String), Vec<Labels>>>,
    leader_gauge: Gauge,
    leader: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        registry.register(
            "edgevisor_reconciles",
            "Fleet reconciles run",
            reconciles.clone(),
        );
        // 1 ms to about 33 s.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "edgevisor_reconcile_duration_seconds",
            "Time one fleet reconcile takes",
            reconcile_seconds.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "edgevisor_reconcile_errors",
            "Failed reconciles, by error",
            errors.clone(),
        );
        let device_writes = Counter::default();
        registry.register(
            "edgevisor_device_target_writes",
            "Device targets written",
            device_writes.clone(),
        );
        let fleet_devices = Family::<Labels, Gauge>::default();
        registry.register(
            "edgevisor_fleet_devices",
            "Devices of a fleet, by state",
            fleet_devices.clone(),
        );
        let leader_gauge = Gauge::default();
        registry.register(
            "edgevisor_leader",
            "Whether this replica leads",
            leader_gauge.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            errors,
            device_writes,
            fleet_devices,
            fleet_series: Mutex::default(),
            leader_gauge,
            leader: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn error(&self, label: &'static str) {
        self.errors
            .get_or_create(&vec![("error", label.to_string())])
            .inc();
    }

    /// The fleet's devices by state; states it no longer has are removed.
    pub fn devices(&self, namespace: &str, fleet: &str, states: BTreeMap<&'static str, usize>) {
        let labels = |state: &str| -> Labels {
            vec![
                ("namespace", namespace.to_string()),
                ("fleet", fleet.to_string()),
                ("state", state.to_string()),
            ]
        };
        let mut series = self.fleet_series.lock().unwrap_or_else(|e| e.into_inner());
        let now: Vec<Labels> = states.keys().map(|s| labels(s)).collect();
        if let Some(before) = series.get(&(namespace.to_string(), fleet.to_string())) {
            for gone in before.iter().filter(|l| !now.contains(l)) {
                self.fleet_devices.remove(gone);
            }
        }
        for (state, n) in &states {
            self.fleet_devices
                .get_or_create(&labels(state))
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        series.insert((namespace.to_string(), fleet.to_string()), now);
    }

    /// Removes the series of every fleet `exists` says is gone.
    pub fn retain_fleets(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut series = self.fleet_series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|(ns, fleet), labels| {
            let keep = exists(ns, fleet);
            if !keep {
                for l in labels.iter() {
                    self.fleet_devices.remove(l);
                }
            }
            keep
        });
    }

    pub fn device_writes(&self, n: usize) {
        self.device_writes.inc_by(n as u64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
        self.leader_gauge.set(i64::from(leader));
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

impl crate::serve::Exposition for Metrics {
    fn render(&self) -> String {
        crate::serve::openmetrics(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::Exposition;

    #[test]
    fn series_follow_their_fleet_and_durations_are_a_histogram() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3));
        m.error("kube");
        m.devices("ns", "a", [("current", 4), ("updating", 1)].into());
        m.devices("ns", "b", [("current", 2)].into());
        let text = m.render();
        assert!(text.contains("edgevisor_reconciles_total 1"), "{text}");
        assert!(
            text.contains("edgevisor_reconcile_duration_seconds_bucket{le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgevisor_reconcile_errors_total{error=\"kube\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "edgevisor_fleet_devices{namespace=\"ns\",fleet=\"a\",state=\"current\"} 4"
            ),
            "{text}"
        );
        // A state the fleet no longer has goes; a deleted fleet's series go.
        m.devices("ns", "a", [("current", 5)].into());
        m.retain_fleets(|_, fleet| fleet != "b");
        let text = m.render();
        assert!(!text.contains("state=\"updating\""), "{text}");
        assert!(!text.contains("fleet=\"b\""), "{text}");
        assert!(text.contains("fleet=\"a\",state=\"current\"} 5"), "{text}");
    }
}
