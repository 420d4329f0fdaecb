//! Prometheus metrics of the gateway, through `prometheus-client`: requests by route and
//! code, their latency by route (histograms), how long target long-polls waited,
//! enrollments, status writes and every write to the Kubernetes API by resource, long-polls
//! waiting now, devices in the cache, and what devices report of their updates: how long they
//! took (a histogram by outcome) and why they failed (by reason).
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    long_poll_wait: Histogram,
    enrollments: Counter,
    status_writes: Counter,
    status_write_errors: Counter,
    waiting: Gauge,
    connections: Gauge,
    connections_refused: Counter,
    devices_gauge: Gauge<u64, AtomicU64>,
    update_seconds: Family<Labels, Histogram>,
    update_failures: Family<Labels, Counter>,
    pub writes: crate::metrics::ApiWrites,
}

fn update_buckets() -> Histogram {
    // 1 s to about 4.5 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

fn latency_buckets() -> Histogram {
    // 0.5 ms to about 16 s; long-polls go to their own histogram.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for GatewayMetrics {
    fn default() -> GatewayMetrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "edgevisor_gateway_requests",
            "Device API requests by route and code",
            requests.clone(),
        );
        let latency =
            Family::<Labels, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register(
            "edgevisor_gateway_request_duration_seconds",
            "Device API request latency by route (a target long-poll counts its wait)",
            latency.clone(),
        );
        // 10 ms to about 80 s: a long-poll waits at most 60 s.
        let long_poll_wait = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "edgevisor_gateway_long_poll_wait_seconds",
            "How long target long-polls waited before answering",
            long_poll_wait.clone(),
        );
        let enrollments = Counter::default();
        registry.register(
            "edgevisor_gateway_enrollments",
            "Devices enrolled",
            enrollments.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "edgevisor_gateway_status_writes",
            "Device status writes to the Kubernetes API",
            status_writes.clone(),
        );
        let status_write_errors = Counter::default();
        registry.register(
            "edgevisor_gateway_status_write_errors",
            "Failed device status writes (retried)",
            status_write_errors.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "edgevisor_gateway_waiting_polls",
            "Target long-polls waiting now",
            waiting.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "edgevisor_gateway_connections",
            "Device API connections open now (any phase, TLS handshake included)",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "edgevisor_gateway_connections_refused",
            "Connections closed at once because the replica had its maximum open",
            connections_refused.clone(),
        );
        let devices_gauge = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "edgevisor_gateway_devices",
            "Devices in the watch cache",
            devices_gauge.clone(),
        );
        let update_seconds =
            Family::<Labels, Histogram>::new_with_constructor(update_buckets as fn() -> Histogram);
        registry.register(
            "edgevisor_device_update_duration_seconds",
            "How long updates took on the devices, start to end, by namespace and outcome",
            update_seconds.clone(),
        );
        let update_failures = Family::<Labels, Counter>::default();
        registry.register(
            "edgevisor_device_update_failures",
            "Updates that ended in failure, by namespace and the reason the device gave",
            update_failures.clone(),
        );
        let writes = crate::metrics::ApiWrites::register(&mut registry, "gateway");
        GatewayMetrics {
            update_seconds,
            update_failures,
            writes,
            registry,
            requests,
            latency,
            long_poll_wait,
            enrollments,
            status_writes,
            status_write_errors,
            waiting,
            connections,
            connections_refused,
            devices_gauge,
        }
    }
}

impl GatewayMetrics {
    pub fn request(&self, route: &'static str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("route", route.to_string())])
            .observe(took.as_secs_f64());
    }

    /// A device enrolled: its credential's hash was written to its status.
    pub fn enrolled(&self) {
        self.enrollments.inc();
        self.writes.add("device_status", 1);
    }

    pub fn status_write(&self) {
        self.status_writes.inc();
        self.writes.add("device_status", 1);
    }

    /// An update a device reported ended: its outcome (`DONE`, `ERROR`, …), why if it failed,
    /// and how long it took if the device said when it started.
    pub fn update_ended(&self, namespace: &str, ended: &super::report::Ended) {
        if let Some(seconds) = ended.seconds {
            self.update_seconds
                .get_or_create(&vec![
                    ("namespace", namespace.to_string()),
                    ("outcome", ended.outcome.to_string()),
                ])
                .observe(seconds);
        }
        if let Some(reason) = &ended.failure {
            self.update_failures
                .get_or_create(&vec![
                    ("namespace", namespace.to_string()),
                    ("reason", reason.clone()),
                ])
                .inc();
        }
    }

    pub fn status_write_error(&self) {
        self.status_write_errors.inc();
    }

    pub fn set_devices(&self, n: usize) {
        self.devices_gauge.set(n as u64);
    }

    /// Counts a waiting long-poll for as long as the guard lives, and records its wait.
    pub fn waiting(&self) -> WaitingGuard<'_> {
        self.waiting.inc();
        WaitingGuard(self, Instant::now())
    }
}

impl GatewayMetrics {
    /// Counts an open connection for as long as the guard lives.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.connections.inc();
        ConnectionGuard(self)
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }
}

pub struct ConnectionGuard<'a>(&'a GatewayMetrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

pub struct WaitingGuard<'a>(&'a GatewayMetrics, Instant);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.dec();
        self.0
            .long_poll_wait
            .observe(self.1.elapsed().as_secs_f64());
    }
}

impl crate::serve::Exposition for GatewayMetrics {
    fn render(&self) -> String {
        crate::serve::openmetrics(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::Exposition;

    #[test]
    fn requests_latency_and_waits_are_exposed() {
        let m = GatewayMetrics::default();
        m.request("target", 200, Duration::from_millis(2));
        {
            let _w = m.waiting();
            assert!(m.render().contains("edgevisor_gateway_waiting_polls 1"));
        }
        m.set_devices(7);
        m.status_write();
        m.update_ended(
            "shops",
            &crate::gateway::report::Ended {
                outcome: "ERROR",
                failure: Some("ContainerExited".into()),
                seconds: Some(3.0),
            },
        );
        let text = m.render();
        for want in [
            "edgevisor_apiserver_writes_total{component=\"gateway\",resource=\"device_status\"} 1",
            "edgevisor_device_update_duration_seconds_bucket{le=\"4.0\",namespace=\"shops\",outcome=\"ERROR\"} 1",
            "edgevisor_device_update_failures_total{namespace=\"shops\",reason=\"ContainerExited\"} 1",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(
            text.contains("edgevisor_gateway_requests_total{route=\"target\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgevisor_gateway_request_duration_seconds_count{route=\"target\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgevisor_gateway_long_poll_wait_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("edgevisor_gateway_waiting_polls 0"), "{text}");
        assert!(text.contains("edgevisor_gateway_devices 7"), "{text}");
    }
}
