//! Prometheus metrics of the gateway, through `prometheus-client`: requests by route and
//! code, their latency by route (histograms), how long target long-polls waited,
//! enrollments, status writes, long-polls waiting now, devices in the cache.
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
        GatewayMetrics {
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

    pub fn enrolled(&self) {
        self.enrollments.inc();
    }

    pub fn status_write(&self) {
        self.status_writes.inc();
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
        let text = m.render();
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
