//! Prometheus metrics of the controller, through `prometheus-client` (OpenMetrics text):
//! reconciles, their duration (a histogram), errors by kind, target writes, writes to the
//! Kubernetes API by resource, whether this replica leads, and per fleet (removed with the
//! fleet): devices by state, revision and architecture, offline devices, the rollout's phase
//! and step, and the share of devices on the newest revision.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

/// Writes to the Kubernetes API, by resource (`edgevisor_apiserver_writes_total{component,
/// resource}`): what a fleet costs the apiserver. The controller and the gateway each register
/// one, with their component's name.
#[derive(Clone)]
pub struct ApiWrites {
    component: &'static str,
    family: Family<Labels, Counter>,
}

impl ApiWrites {
    pub fn register(registry: &mut Registry, component: &'static str) -> ApiWrites {
        let family = Family::<Labels, Counter>::default();
        registry.register(
            "edgevisor_apiserver_writes",
            "Writes to the Kubernetes API, by component and resource",
            family.clone(),
        );
        ApiWrites { component, family }
    }

    /// `n` writes of `resource` (`device`, `device_status`, `fleet_status`, `event`, …).
    pub fn add(&self, resource: &'static str, n: usize) {
        self.family
            .get_or_create(&vec![
                ("component", self.component.to_string()),
                ("resource", resource.to_string()),
            ])
            .inc_by(n as u64);
    }
}

/// What one fleet's series say (see [`crate::views::fleet_figures`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetFigures {
    /// Devices by state: `current`, `updating`, `failed`.
    pub states: BTreeMap<&'static str, usize>,
    /// Devices by the revision they run (`none` before their first).
    pub revisions: BTreeMap<String, usize>,
    /// Devices by architecture (`unknown` before they report one).
    pub architectures: BTreeMap<String, usize>,
    pub offline: usize,
    /// The Ready condition's reason: `RollingOut`, `WaitingForResume`, `RolloutComplete`, …
    pub phase: String,
    /// The step of `spec.strategy.steps` the rollout is at.
    pub step: i64,
    /// Share of the fleet's devices on the newest revision, 0 to 1.
    pub updated_ratio: f64,
}

/// Per-fleet gauges; each fleet's label sets are kept so that a series the fleet no longer has
/// (a state, a revision, a phase) and a deleted fleet's series go.
#[derive(Default)]
struct FleetFamilies {
    devices: Family<Labels, Gauge>,
    revisions: Family<Labels, Gauge>,
    architectures: Family<Labels, Gauge>,
    offline: Family<Labels, Gauge>,
    phase: Family<Labels, Gauge>,
    step: Family<Labels, Gauge>,
    updated: Family<Labels, Gauge<f64, AtomicU64>>,
}

/// The label sets one fleet has, per family.
#[derive(Default)]
struct FleetSeries {
    devices: Vec<Labels>,
    revisions: Vec<Labels>,
    architectures: Vec<Labels>,
    phase: Vec<Labels>,
    fleet: Labels,
}

/// Sets `now` in `family` and removes what `before` had and `now` has not; returns `now`'s
/// label sets.
fn replace_series(
    family: &Family<Labels, Gauge>,
    before: &[Labels],
    now: Vec<(Labels, usize)>,
) -> Vec<Labels> {
    let keep: Vec<Labels> = now.iter().map(|(l, _)| l.clone()).collect();
    for gone in before.iter().filter(|l| !keep.contains(l)) {
        family.remove(gone);
    }
    for (labels, n) in now {
        family
            .get_or_create(&labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    keep
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_seconds: Histogram,
    errors: Family<Labels, Counter>,
    device_writes: Counter,
    pub writes: ApiWrites,
    fleets: FleetFamilies,
    series: Mutex<BTreeMap<(String, String), FleetSeries>>,
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
        let writes = ApiWrites::register(&mut registry, "controller");
        let fleets = FleetFamilies::default();
        for (name, help, family) in [
            (
                "edgevisor_fleet_devices",
                "Devices of a fleet, by state",
                &fleets.devices,
            ),
            (
                "edgevisor_fleet_devices_by_revision",
                "Devices of a fleet, by the revision they run",
                &fleets.revisions,
            ),
            (
                "edgevisor_fleet_devices_by_architecture",
                "Devices of a fleet, by CPU architecture",
                &fleets.architectures,
            ),
            (
                "edgevisor_fleet_devices_offline",
                "Devices of a fleet not heard from for the offline time",
                &fleets.offline,
            ),
            (
                "edgevisor_fleet_rollout_phase",
                "1 for the phase (the Ready reason) a fleet's rollout is in",
                &fleets.phase,
            ),
            (
                "edgevisor_fleet_rollout_step",
                "The step of spec.strategy.steps a fleet's rollout is at",
                &fleets.step,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "edgevisor_fleet_updated_ratio",
            "Share of a fleet's devices on its newest revision",
            fleets.updated.clone(),
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
            writes,
            fleets,
            series: Mutex::default(),
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

    /// A fleet's figures; series it no longer has are removed.
    pub fn fleet(&self, namespace: &str, fleet: &str, figures: &FleetFigures) {
        let base: Labels = vec![
            ("namespace", namespace.to_string()),
            ("fleet", fleet.to_string()),
        ];
        let with = |key: &'static str, value: &str| -> Labels {
            let mut l = base.clone();
            l.push((key, value.to_string()));
            l
        };
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let before = all
            .remove(&(namespace.to_string(), fleet.to_string()))
            .unwrap_or_default();
        let f = &self.fleets;
        let series = FleetSeries {
            devices: replace_series(
                &f.devices,
                &before.devices,
                figures
                    .states
                    .iter()
                    .map(|(s, n)| (with("state", s), *n))
                    .collect(),
            ),
            revisions: replace_series(
                &f.revisions,
                &before.revisions,
                figures
                    .revisions
                    .iter()
                    .map(|(r, n)| (with("revision", r), *n))
                    .collect(),
            ),
            architectures: replace_series(
                &f.architectures,
                &before.architectures,
                figures
                    .architectures
                    .iter()
                    .map(|(a, n)| (with("architecture", a), *n))
                    .collect(),
            ),
            phase: replace_series(
                &f.phase,
                &before.phase,
                vec![(with("phase", &figures.phase), 1)],
            ),
            fleet: base.clone(),
        };
        f.offline
            .get_or_create(&base)
            .set(i64::try_from(figures.offline).unwrap_or(i64::MAX));
        f.step.get_or_create(&base).set(figures.step);
        f.updated.get_or_create(&base).set(figures.updated_ratio);
        all.insert((namespace.to_string(), fleet.to_string()), series);
    }

    /// Removes the series of every fleet `exists` says is gone.
    pub fn retain_fleets(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let f = &self.fleets;
        all.retain(|(ns, fleet), series| {
            let keep = exists(ns, fleet);
            if !keep {
                for l in &series.devices {
                    f.devices.remove(l);
                }
                for l in &series.revisions {
                    f.revisions.remove(l);
                }
                for l in &series.architectures {
                    f.architectures.remove(l);
                }
                for l in &series.phase {
                    f.phase.remove(l);
                }
                f.offline.remove(&series.fleet);
                f.step.remove(&series.fleet);
                f.updated.remove(&series.fleet);
            }
            keep
        });
    }

    pub fn device_writes(&self, n: usize) {
        self.device_writes.inc_by(n as u64);
        self.writes.add("device", n);
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

    fn figures(states: &[(&'static str, usize)], revision: &str, phase: &str) -> FleetFigures {
        FleetFigures {
            states: states.iter().copied().collect(),
            revisions: [(revision.to_string(), states.iter().map(|(_, n)| n).sum())].into(),
            architectures: [("amd64".to_string(), 1)].into(),
            offline: 1,
            phase: phase.to_string(),
            step: 1,
            updated_ratio: 0.5,
        }
    }

    #[test]
    fn series_follow_their_fleet_and_durations_are_a_histogram() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3));
        m.error("kube");
        m.device_writes(3);
        m.fleet(
            "ns",
            "a",
            &figures(&[("current", 4), ("updating", 1)], "a-1", "RollingOut"),
        );
        m.fleet(
            "ns",
            "b",
            &figures(&[("current", 2)], "b-1", "RolloutComplete"),
        );
        let text = m.render();
        for want in [
            "edgevisor_reconciles_total 1",
            "edgevisor_reconcile_duration_seconds_bucket{le=\"0.004\"} 1",
            "edgevisor_reconcile_errors_total{error=\"kube\"} 1",
            "edgevisor_fleet_devices{namespace=\"ns\",fleet=\"a\",state=\"current\"} 4",
            "edgevisor_fleet_devices_by_revision{namespace=\"ns\",fleet=\"a\",revision=\"a-1\"} 5",
            "edgevisor_fleet_devices_by_architecture{namespace=\"ns\",fleet=\"a\",architecture=\"amd64\"} 1",
            "edgevisor_fleet_devices_offline{namespace=\"ns\",fleet=\"a\"} 1",
            "edgevisor_fleet_rollout_phase{namespace=\"ns\",fleet=\"a\",phase=\"RollingOut\"} 1",
            "edgevisor_fleet_rollout_step{namespace=\"ns\",fleet=\"a\"} 1",
            "edgevisor_fleet_updated_ratio{namespace=\"ns\",fleet=\"a\"} 0.5",
            "edgevisor_apiserver_writes_total{component=\"controller\",resource=\"device\"} 3",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        // A state, revision or phase the fleet no longer has goes; a deleted fleet's series go.
        m.fleet(
            "ns",
            "a",
            &figures(&[("current", 5)], "a-2", "RolloutComplete"),
        );
        m.retain_fleets(|_, fleet| fleet != "b");
        let text = m.render();
        assert!(!text.contains("state=\"updating\""), "{text}");
        assert!(!text.contains("revision=\"a-1\""), "{text}");
        assert!(!text.contains("phase=\"RollingOut\""), "{text}");
        assert!(!text.contains("fleet=\"b\""), "{text}");
        assert!(text.contains("fleet=\"a\",state=\"current\"} 5"), "{text}");
        assert!(
            text.contains("fleet=\"a\",phase=\"RolloutComplete\"} 1"),
            "{text}"
        );
    }
}
