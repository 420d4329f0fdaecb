//! Garbage collection: revisions beyond the retention count, then objects and
//! unpacked roots no remaining revision refers to. The committed, trying and factory
//! revisions and a revision being tried are never collected. The choice is pure
//! ([`choose_revisions`], [`unreferenced`]); the deletion uses the store's
//! rename-then-delete so a crash mid-GC leaves only `.tmp-` leftovers.

use std::collections::BTreeSet;

use crate::daemon::Daemon;
use crate::layers::chain_id;
use crate::state::State;
use crate::store::{Pointer, StoreError, remove_any};

pub use crate::control::GcReport;

/// Revisions to delete: all but the newest `retention` (by `created`, ascending
/// input order not assumed) and the protected ones.
pub fn choose_revisions(
    revisions: &[(String, u64)],
    protected: &BTreeSet<String>,
    retention: usize,
) -> Vec<String> {
    let mut sorted: Vec<&(String, u64)> = revisions.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    sorted
        .into_iter()
        .filter(|(r, _)| !protected.contains(r))
        .skip(retention)
        .map(|(r, _)| r.clone())
        .collect()
}

pub fn unreferenced(all: &[String], referenced: &BTreeSet<String>) -> Vec<String> {
    all.iter()
        .filter(|x| !referenced.contains(*x))
        .cloned()
        .collect()
}

impl Daemon {
    pub async fn gc(&self) -> Result<GcReport, StoreError> {
        let mut protected = BTreeSet::new();
        for p in [Pointer::Committed, Pointer::Trying, Pointer::Factory] {
            protected.extend(self.store.pointer(p));
        }
        protected.extend(self.busy_with());
        protected.extend(self.running.lock().await.rev.clone());
        let mut revs = Vec::new();
        for r in self.store.list_revisions()? {
            let created = std::fs::metadata(self.store.rev_dir(&r).join("state.json"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            revs.push((r, created));
        }
        let mut report = GcReport {
            revisions: choose_revisions(&revs, &protected, self.cfg.retention),
            ..GcReport::default()
        };
        for r in &report.revisions {
            self.store.remove_revision(r)?;
        }
        let mut objects = BTreeSet::new();
        let mut chains = BTreeSet::new();
        for r in self.store.list_revisions()? {
            let Ok(state) = self.store.read_state(&r).map(|b| State::parse(&b)) else {
                continue;
            };
            let Ok(state) = state else { continue };
            objects.extend(state.objects());
            for c in &state.containers {
                chains.insert(chain_id(&c.image.layers, c.allow_setuid));
            }
        }
        let all: Vec<String> = self
            .store
            .list_objects()?
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        for h in unreferenced(&all, &objects) {
            report.bytes += self.store.object_size(&h).unwrap_or(0);
            self.store.remove_object(&h)?;
            report.objects += 1;
        }
        let rootfs_dir = self.store.path("rootfs");
        let roots: Vec<String> = std::fs::read_dir(&rootfs_dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| crate::state::is_sha256_hex(n))
                    .collect()
            })
            .unwrap_or_default();
        for c in unreferenced(&roots, &chains) {
            let tmp = rootfs_dir.join(format!(".tmp-gc-{c}"));
            std::fs::rename(rootfs_dir.join(&c), &tmp).map_err(|source| StoreError::Io {
                path: tmp.clone(),
                source,
            })?;
            remove_any(&tmp)?;
            report.rootfs += 1;
        }
        tracing::info!(
            revisions = report.revisions.len(),
            objects = report.objects,
            rootfs = report.rootfs,
            "gc"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revs(n: u64) -> Vec<(String, u64)> {
        (1..=n).map(|i| (format!("r{i}"), i)).collect()
    }

    #[test]
    fn keeps_the_newest_and_the_protected() {
        let protected: BTreeSet<String> = ["r1".to_string(), "r3".to_string()].into();
        let gone = choose_revisions(&revs(6), &protected, 2);
        assert_eq!(gone, vec!["r4".to_string(), "r2".to_string()]);
    }

    #[test]
    fn nothing_to_collect_within_retention() {
        assert!(choose_revisions(&revs(3), &BTreeSet::new(), 3).is_empty());
        assert_eq!(choose_revisions(&revs(3), &BTreeSet::new(), 0).len(), 3);
    }

    #[test]
    fn unreferenced_objects() {
        let all = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let used: BTreeSet<String> = ["b".to_string()].into();
        assert_eq!(unreferenced(&all, &used), vec!["a", "c"]);
    }
}
