//! Rolling back a failed try: stop what was tried, clear the trying pointer, start
//! the committed revision again, and report `ERROR` with the cause and the last log
//! lines of the container that failed.

use crate::daemon::Daemon;
use crate::store::Pointer;

impl Daemon {
    pub async fn rollback(self: &std::sync::Arc<Self>, rev: &str, reason: &str, logs: Vec<String>) {
        tracing::warn!(rev, reason, "try failed, rolling back");
        self.stop_all().await;
        if let Err(e) = self.store.set_pointer(Pointer::Trying, None) {
            tracing::error!(rev, error = %e, "cannot clear trying pointer");
        }
        self.start_committed().await;
        // Report only once the committed revision is back, so that whoever reads
        // ERROR also finds the device running its last good state.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(10) {
            let all_running = {
                let r = self.running.lock().await;
                r.handles
                    .values()
                    .all(|h| h.snapshot().state == crate::supervisor::RunState::Running)
            };
            if all_running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.mark_error(rev, reason, logs);
    }
}
