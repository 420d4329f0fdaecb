//! Prometheus metrics of the controller, rendered in the text exposition format by hand: a few
//! counters and gauges do not need a metrics framework.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Reconcile counts, durations and errors, and devices per state per fleet.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reconciles: u64,
    reconcile_seconds_sum: f64,
    errors: BTreeMap<String, u64>,
    devices: BTreeMap<(String, String), BTreeMap<&'static str, usize>>,
    device_writes: u64,
    leader: bool,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock only loses metrics, never the controller.
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    pub fn reconciled(&self, took: Duration) {
        self.with(|m| {
            m.reconciles += 1;
            m.reconcile_seconds_sum += took.as_secs_f64();
        });
    }

    pub fn error(&self, label: &str) {
        self.with(|m| *m.errors.entry(label.to_string()).or_default() += 1);
    }

    pub fn devices(&self, namespace: &str, fleet: &str, states: BTreeMap<&'static str, usize>) {
        self.with(|m| {
            m.devices
                .insert((namespace.to_string(), fleet.to_string()), states);
        });
    }

    pub fn fleet_gone(&self, namespace: &str, fleet: &str) {
        self.with(|m| {
            m.devices
                .remove(&(namespace.to_string(), fleet.to_string()));
        });
    }

    pub fn device_writes(&self, n: usize) {
        self.with(|m| m.device_writes += n as u64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.with(|m| m.leader = leader);
    }

    pub fn is_leader(&self) -> bool {
        self.with(|m| m.leader)
    }

    /// The text exposition format.
    fn render_text(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let _ = writeln!(out, "# HELP edgevisor_reconciles_total Fleet reconciles run.");
            let _ = writeln!(out, "# TYPE edgevisor_reconciles_total counter");
            let _ = writeln!(out, "edgevisor_reconciles_total {}", m.reconciles);
            let _ = writeln!(out, "# HELP edgevisor_reconcile_seconds_total Time spent reconciling.");
            let _ = writeln!(out, "# TYPE edgevisor_reconcile_seconds_total counter");
            let _ = writeln!(out, "edgevisor_reconcile_seconds_total {}", m.reconcile_seconds_sum);
            let _ = writeln!(out, "# HELP edgevisor_reconcile_errors_total Failed reconciles, by error.");
            let _ = writeln!(out, "# TYPE edgevisor_reconcile_errors_total counter");
            for (label, n) in &m.errors {
                let _ = writeln!(out, "edgevisor_reconcile_errors_total{{error=\"{label}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP edgevisor_device_target_writes_total Device targets written.");
            let _ = writeln!(out, "# TYPE edgevisor_device_target_writes_total counter");
            let _ = writeln!(out, "edgevisor_device_target_writes_total {}", m.device_writes);
            let _ = writeln!(out, "# HELP edgevisor_fleet_devices Devices of a fleet, by state.");
            let _ = writeln!(out, "# TYPE edgevisor_fleet_devices gauge");
            for ((ns, fleet), states) in &m.devices {
                for (state, n) in states {
                    let _ = writeln!(out, "edgevisor_fleet_devices{{namespace=\"{ns}\",fleet=\"{fleet}\",state=\"{state}\"}} {n}");
                }
            }
            let _ = writeln!(out, "# HELP edgevisor_leader Whether this replica leads.");
            let _ = writeln!(out, "# TYPE edgevisor_leader gauge");
            let _ = writeln!(out, "edgevisor_leader {}", u8::from(m.leader));
            out
        })
    }
}

impl crate::serve::Exposition for Metrics {
    fn render(&self) -> String {
        self.render_text()
    }
}
