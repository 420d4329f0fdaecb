//! Startup: whatever happened before (crash, SIGKILL, power loss), come back on the
//! committed revision. Temp leftovers are deleted, stray containers of ours are
//! killed, an interrupted try is reported as failed, and the committed revision is
//! started.

use crate::daemon::Daemon;
use crate::lifecycle::{Progress, Status};
use crate::store::Pointer;

impl Daemon {
    pub async fn recover(self: &std::sync::Arc<Self>) -> Result<(), crate::store::StoreError> {
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
                    // A re-run of the committed revision was cut short: it is still the
                    // committed one, so its status is restored rather than transitioned.
                    self.store
                        .write_progress(&rev, &Progress::new(Status::Done, "committed"))?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::daemon::{Config, Daemon};
    use crate::lifecycle::{Progress, Status};
    use crate::oci::fake::Recording;
    use crate::store::{Pointer, Store};
    use crate::testkit::{RawEntry, descriptor, gzip, image_config, tar};

    fn state(store: &Store, script: &str) -> Vec<u8> {
        let layer = gzip(&tar(&[
            RawEntry::dir("bin/"),
            RawEntry::file("bin/app", b"#!"),
        ]));
        let config = image_config(&["/bin/app"]);
        store.put_object_bytes(&layer).unwrap();
        store.put_object_bytes(&config).unwrap();
        serde_json::to_vec(&serde_json::json!({
            "#spec": "edgevisor-state@1",
            "containers": [{"name": "app", "command": ["/bin/app", script],
                "image": {"config": descriptor(&config), "layers": [descriptor(&layer)]}}]
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_restart_while_trying_fails_the_try_and_starts_the_committed_revision() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let good = state(&store, "good");
        let new = state(&store, "new");
        store
            .create_revision("good", &good, &Progress::new(Status::Done, "committed"))
            .unwrap();
        store
            .create_revision("new", &new, &Progress::new(Status::Testing, "testing"))
            .unwrap();
        store.set_pointer(Pointer::Committed, Some("good")).unwrap();
        store.set_pointer(Pointer::Trying, Some("new")).unwrap();
        std::fs::write(d.path().join("revisions/.tmp-half"), "x").unwrap();

        let oci = Arc::new(Recording::new(&[]));
        let cfg = Config {
            socket: d.path().join("control.sock"),
            ..Config::default()
        };
        let daemon = Daemon::with_oci(store, cfg, oci.clone());
        daemon.recover().await.unwrap();

        let p = daemon.store.read_progress("new").unwrap();
        assert_eq!(p.status, Status::Error);
        assert!(
            p.reason
                .unwrap_or_default()
                .contains("restarted while trying")
        );
        assert_eq!(daemon.store.pointer(Pointer::Trying), None);
        assert_eq!(
            daemon.store.pointer(Pointer::Committed).as_deref(),
            Some("good")
        );
        assert!(!d.path().join("revisions/.tmp-half").exists());
        assert_eq!(daemon.running.lock().await.rev.as_deref(), Some("good"));
        let run = format!("run {}", daemon.container_id("app"));
        for _ in 0..100 {
            if oci.calls().contains(&run) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let calls = oci.calls();
        assert_eq!(calls[0], "list");
        assert!(
            calls
                .iter()
                .any(|c| c == &format!("run {}", daemon.container_id("app"))),
            "{calls:?}"
        );
        // The bundle was built from the committed state.
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.path().join("bundles/good/app/config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            cfg["process"]["args"],
            serde_json::json!(["/bin/app", "good"])
        );
        daemon.stop_all().await;
    }

    #[tokio::test]
    async fn a_committed_revision_that_cannot_start_falls_back_to_the_factory_one() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let factory = state(&store, "factory");
        store
            .create_revision("f", &factory, &Progress::new(Status::Done, "committed"))
            .unwrap();
        // The committed revision needs an object that is gone (e.g. a damaged disk).
        let mut broken: serde_json::Value =
            serde_json::from_slice(&state(&store, "broken")).unwrap();
        broken["containers"][0]["image"]["layers"][0]["digest"] =
            serde_json::json!(format!("sha256:{}", "d".repeat(64)));
        let broken = serde_json::to_vec(&broken).unwrap();
        store
            .create_revision("c", &broken, &Progress::new(Status::Done, "committed"))
            .unwrap();
        store.set_pointer(Pointer::Factory, Some("f")).unwrap();
        store.set_pointer(Pointer::Committed, Some("c")).unwrap();
        let cfg = Config {
            socket: d.path().join("control.sock"),
            ..Config::default()
        };
        let daemon = Daemon::with_oci(store, cfg, Arc::new(Recording::new(&[])));
        daemon.recover().await.unwrap();
        assert_eq!(daemon.running.lock().await.rev.as_deref(), Some("f"));
        assert_eq!(
            daemon.store.pointer(Pointer::Committed).as_deref(),
            Some("c")
        );
        daemon.stop_all().await;
    }
}
