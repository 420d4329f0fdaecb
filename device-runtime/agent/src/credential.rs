//! The device's credential, kept in `<state-dir>/credential.json` (mode 0600).
//!
//! The gateway shows a credential exactly once, in the answer to enrollment, and keeps
//! only its hash: losing the file means enrolling again with a new bootstrap token. So
//! it is written the way the runtime writes its pointers — a temp file in the same
//! directory (0600 from its creation, never readable by others even for a moment),
//! fsynced, renamed over the old name, and the directory fsynced — and a power cut
//! leaves either no file or a complete one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "credential.json";

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub namespace: String,
    pub name: String,
    pub credential: String,
    /// The gateway that issued it, for the operator reading the file.
    pub gateway: String,
}

// The secret stays out of logs and panics.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("credential", &"<redacted>")
            .field("gateway", &self.gateway)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a credential file: {msg} (delete it to enroll again)")]
    Corrupt { path: PathBuf, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// The stored credential, `None` when the device has not enrolled yet.
pub fn load(state_dir: &Path) -> Result<Option<Credential>, CredentialError> {
    let p = path(state_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p)(e)),
    };
    let c: Credential = serde_json::from_slice(&bytes).map_err(|e| CredentialError::Corrupt {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    if c.credential.is_empty() || c.namespace.is_empty() || c.name.is_empty() {
        return Err(CredentialError::Corrupt {
            path: p,
            msg: "empty namespace, name or credential".into(),
        });
    }
    Ok(Some(c))
}

/// Writes the credential atomically with mode 0600 (see the module doc).
pub fn store(state_dir: &Path, c: &Credential) -> Result<(), CredentialError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    let dest = path(state_dir);
    let tmp = state_dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(c).map_err(|e| CredentialError::Corrupt {
        path: dest.clone(),
        msg: e.to_string(),
    })?;
    let write = || -> std::io::Result<()> {
        // A leftover of a crash between create and rename: ours (same pid) or stale.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(&dest)(e)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample() -> Credential {
        Credential {
            namespace: "fleet-a".into(),
            name: "edge-1".into(),
            credential: "s3cret".into(),
            gateway: "https://gw:8443".into(),
        }
    }

    #[test]
    fn roundtrip_with_mode_0600_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(load(&state).unwrap(), None);
        store(&state, &sample()).unwrap();
        assert_eq!(load(&state).unwrap(), Some(sample()));
        let mode = std::fs::metadata(path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(dmode & 0o077, 0, "state dir readable by others: {dmode:o}");
        // Overwriting keeps the mode and leaves no temp file.
        let mut other = sample();
        other.credential = "rotated".into();
        store(&state, &other).unwrap();
        assert_eq!(load(&state).unwrap().unwrap().credential, "rotated");
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn corrupt_files_are_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"{not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("delete it to enroll again"), "{e}");
        std::fs::write(
            path(dir.path()),
            br#"{"namespace":"a","name":"b","credential":"","gateway":"g"}"#,
        )
        .unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("s3cret") && s.contains("edge-1"), "{s}");
    }
}
