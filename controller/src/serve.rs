//! The HTTP endpoints of the controller and the gateway: `/metrics`, `/healthz`, `/readyz`.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Metrics in the OpenMetrics text format.
pub trait Exposition: Send + Sync {
    fn render(&self) -> String;
}

/// A registry in the OpenMetrics text format.
pub fn openmetrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// What the endpoints report.
pub struct Health {
    pub metrics: Arc<dyn Exposition>,
    /// Caches synced (leader) or standing by (not leader): able to do its job.
    pub ready: AtomicBool,
}

async fn handle(
    health: Arc<Health>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, health.metrics.render()),
        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" if health.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "caches not synced\n".to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let metrics = req.uri().path() == "/metrics";
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if metrics {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
    }
    Ok(response)
}

/// Serves until the process ends.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    loop {
        let (stream, _) = listener.accept().await?;
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(health.clone(), req));
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection");
            }
        });
    }
}
