//! How the device's daemons learn they must stop: SIGTERM (systemd, a container
//! engine) or SIGINT (a terminal). The daemons take this future as their shutdown, so
//! tests can hand them any other.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
