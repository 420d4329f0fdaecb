//! Prometheus metrics of the gateway: requests by route and code, enrollments, status writes,
//! long-polls waiting now.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Default)]
pub struct GatewayMetrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    enrollments: AtomicU64,
    status_writes: AtomicU64,
    status_write_errors: AtomicU64,
    waiting: AtomicI64,
    pub devices: AtomicU64,
}

impl GatewayMetrics {
    pub fn request(&self, route: &'static str, code: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, code))
            .or_default() += 1;
    }

    pub fn enrolled(&self) {
        self.enrollments.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status_write(&self) {
        self.status_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status_write_error(&self) {
        self.status_write_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a waiting long-poll for as long as the guard lives.
    pub fn waiting(&self) -> WaitingGuard<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(self)
    }
}

pub struct WaitingGuard<'a>(&'a GatewayMetrics);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl crate::serve::Exposition for GatewayMetrics {
    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP edgevisor_gateway_requests_total Device API requests by route and code.\n# TYPE edgevisor_gateway_requests_total counter\n");
        for ((route, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "edgevisor_gateway_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        for (name, help, kind, value) in [
            (
                "edgevisor_gateway_enrollments_total",
                "Devices enrolled.",
                "counter",
                self.enrollments.load(Ordering::Relaxed) as i64,
            ),
            (
                "edgevisor_gateway_status_writes_total",
                "Device status writes to the Kubernetes API.",
                "counter",
                self.status_writes.load(Ordering::Relaxed) as i64,
            ),
            (
                "edgevisor_gateway_status_write_errors_total",
                "Failed device status writes (retried).",
                "counter",
                self.status_write_errors.load(Ordering::Relaxed) as i64,
            ),
            (
                "edgevisor_gateway_waiting_polls",
                "Target long-polls waiting now.",
                "gauge",
                self.waiting.load(Ordering::Relaxed),
            ),
            (
                "edgevisor_gateway_devices",
                "Devices in the watch cache.",
                "gauge",
                self.devices.load(Ordering::Relaxed) as i64,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
