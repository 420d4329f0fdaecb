//! Installing a revision: `PUT /steps/{rev}`. Validates the state, checks that every
//! object it needs is in the store and that there is room, and records the revision
//! as `QUEUED`. Nothing runs yet; `run` does that.

use crate::daemon::Daemon;
use crate::lifecycle::{Progress, Status};
use crate::state::{State, StateError, parse_digest, valid_rev};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("revision name {0:?} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")]
    BadName(String),
    #[error(transparent)]
    Invalid(#[from] StateError),
    #[error("WONTGO: objects missing from the store: {}", .0.join(", "))]
    Missing(Vec<String>),
    #[error("WONTGO: object sha256:{0} has {1} bytes, the state says {2}")]
    SizeMismatch(String, u64, u64),
    #[error("revision {0} exists with a different state; revisions are immutable")]
    Conflict(String),
    #[error("not enough space: need {need} bytes, {free} free")]
    NoSpace { need: u64, free: u64 },
    #[error("WONTGO: {0}")]
    Policy(#[from] crate::policy::PolicyDenied),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Objects a state needs that the store lacks, with any whose size is wrong.
pub fn check_objects(d: &Daemon, state: &State) -> Result<(), InstallError> {
    let missing: Vec<String> = state
        .objects()
        .into_iter()
        .filter(|h| !d.store.has_object(h))
        .map(|h| format!("sha256:{h}"))
        .collect();
    if !missing.is_empty() {
        return Err(InstallError::Missing(missing));
    }
    let descs = state.descriptors();
    for (digest, size) in descs {
        if let Some(h) = parse_digest(digest) {
            let have = d.store.object_size(h).unwrap_or(0);
            if have != size {
                return Err(InstallError::SizeMismatch(h.to_owned(), have, size));
            }
        }
    }
    Ok(())
}

/// Space a revision will need beyond its objects: unpacked layers are roughly a few
/// times their compressed size. Pure so the rule is tested directly.
pub fn space_needed(state_len: u64, layers_total: u64, reserve: u64) -> u64 {
    state_len
        .saturating_add(layers_total.saturating_mul(3))
        .saturating_add(reserve)
}

impl Daemon {
    /// Returns `true` when the revision was created, `false` when it already existed
    /// with the same bytes (PUT is idempotent).
    pub fn install(&self, rev: &str, body: &[u8]) -> Result<bool, InstallError> {
        if !valid_rev(rev) {
            return Err(InstallError::BadName(rev.to_owned()));
        }
        let state = State::parse(body)?;
        // Before anything is stored: a refused state leaves no trace but its answer.
        self.cfg
            .policy
            .check(&state, crate::policy::resolve_host_path)?;
        if self.store.has_revision(rev) {
            return if self.store.read_state(rev)? == body {
                Ok(false)
            } else {
                Err(InstallError::Conflict(rev.to_owned()))
            };
        }
        check_objects(self, &state)?;
        let need = space_needed(
            body.len() as u64,
            state.total_size(),
            self.cfg.reserve_bytes,
        );
        let free = self.store.free_bytes()?;
        if free < need {
            return Err(InstallError::NoSpace { need, free });
        }
        let mut progress = Progress::new(Status::Queued, "installed, waiting to run");
        progress.downloads = Some(self.downloads(&state));
        self.store.create_revision(rev, body, &progress)?;
        tracing::info!(
            rev,
            containers = state.containers.len(),
            "revision installed"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_rule() {
        assert_eq!(space_needed(10, 100, 1000), 1310);
        assert_eq!(space_needed(u64::MAX, 1, 1), u64::MAX);
    }
}
