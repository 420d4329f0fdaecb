//! Committing a tried revision: it becomes the one the device boots into.
//!
//! Order matters for crashes: the committed pointer is written first (atomic), then
//! the trying pointer cleared. A crash in between leaves trying == committed, which
//! recovery treats as committed.

use crate::daemon::Daemon;
use crate::lifecycle::{Progress, Status};
use crate::store::Pointer;

impl Daemon {
    pub async fn commit(self: &std::sync::Arc<Self>, rev: &str) {
        let result = (|| {
            self.store.set_pointer(Pointer::Committed, Some(rev))?;
            if self.store.pointer(Pointer::Factory).is_none() {
                // The first committed revision is the factory one, never collected.
                self.store.set_pointer(Pointer::Factory, Some(rev))?;
            }
            self.store.set_pointer(Pointer::Trying, None)
        })();
        match result {
            Ok(()) => self.set_progress(rev, Progress::new(Status::Done, "committed")),
            Err(e) => {
                let reason = format!("cannot commit: {e}");
                self.rollback(rev, &reason, Vec::new()).await;
            }
        }
    }
}
