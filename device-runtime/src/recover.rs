//! Startup: whatever happened before (crash, SIGKILL, power loss), come back on the
//! committed revision. Temp leftovers are deleted, stray containers of ours are
//! killed, an interrupted try is reported as failed, and the committed revision is
//! started.

use crate::daemon::Daemon;
use crate::lifecycle::{Progress, Status};
use crate::store::Pointer;

impl Daemon {
    pub async fn recover(&self) -> Result<(), crate::store::StoreError> {
        let removed = self.store.recover()?;
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "removed leftovers of interrupted writes"
            );
        }
        match self.oci.list().await {
            Ok(ids) => {
                for id in ids.iter().filter(|i| i.starts_with(&self.prefix)) {
                    let _ = self.oci.kill(id, "KILL").await;
                    let _ = self.oci.delete_force(id).await;
                    tracing::info!(id, "removed stale container");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list containers"),
        }
        let committed = self.store.pointer(Pointer::Committed);
        if let Some(trying) = self.store.pointer(Pointer::Trying) {
            if Some(&trying) != committed.as_ref() && self.store.has_revision(&trying) {
                self.set_progress(
                    &trying,
                    Progress::failed(
                        Status::Error,
                        "the runtime restarted while trying this revision; back on the committed one",
                        Vec::new(),
                    ),
                );
            }
            self.store.set_pointer(Pointer::Trying, None)?;
        }
        // A try can also be interrupted before the trying pointer was set.
        for rev in self.store.list_revisions()? {
            if let Ok(p) = self.store.read_progress(&rev)
                && p.status.is_active()
            {
                if Some(&rev) == committed.as_ref() {
                    self.set_progress(&rev, Progress::new(Status::Done, "committed"));
                } else {
                    self.set_progress(
                        &rev,
                        Progress::failed(
                            Status::Error,
                            "interrupted by a runtime restart",
                            Vec::new(),
                        ),
                    );
                }
            }
        }
        self.start_committed().await;
        Ok(())
    }
}
