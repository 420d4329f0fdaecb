//! How the device's daemons run and learn they must stop: on one thread (they mostly
//! wait, and a device's memory is for its containers; blocking work goes to tokio's
//! blocking pool), until SIGTERM (systemd, a container engine) or SIGINT (a terminal).
//! The daemons take [`terminated`] as their shutdown, so tests can hand them any other.

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

/// Runs `daemon` on a one-thread executor and turns its result into the exit code,
/// printing `<program>: <error>` (the error's message includes its causes).
pub fn run_daemon<E: std::fmt::Display>(
    program: &str,
    daemon: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    // Few blocking threads, gone soon after their work: each holds a stack and an
    // allocator arena in a device's memory while it lives.
    let result = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
        .and_then(|rt| rt.block_on(daemon).map_err(|e| e.to_string()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
