//! The on-disk store under `--storage DIR`.
//!
//! ```text
//! lock                      flock: one runtime per storage directory
//! objects/sha256/<hex>      verified blobs (config, layers, files)
//! objects/partial/<hex>     uploads in flight, kept so an upload can resume
//! revisions/<rev>/          state.json + progress.json
//! boot/{committed,trying,factory}   pointers, each one file holding a revision name
//! rootfs/<chain>/           unpacked images, shared by every revision using them
//! bundles/<rev>/<name>/     runc bundles (config.json), rebuilt on every run
//! volumes/<name>/<volume>/  persistent volumes; logs/<name>.log; meta/{device,user}/
//! ```
//!
//! Crash model: every file that must survive is written to a temp name in the same
//! directory, fsynced, renamed over the target and the directory fsynced; directories
//! (revisions, unpacked roots) are built under a `.tmp-` name and renamed into place.
//! So after a crash a reader sees either the old or the new content, and
//! [`Store::recover`] only has to delete leftovers whose names start with `.tmp-`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::lifecycle::Progress;
use crate::state::{is_sha256_hex, valid_rev};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("storage {0} is in use by another runtime")]
    Locked(PathBuf),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointer {
    Committed,
    Trying,
    Factory,
}

impl Pointer {
    fn file(self) -> &'static str {
        match self {
            Pointer::Committed => "committed",
            Pointer::Trying => "trying",
            Pointer::Factory => "factory",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    Device,
    User,
}

impl MetaKind {
    fn dir(self) -> &'static str {
        match self {
            MetaKind::Device => "device",
            MetaKind::User => "user",
        }
    }
}

/// The storage directory, locked for this process's lifetime.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
}

// === impl Store ===

impl Store {
    /// Creates the layout if needed and takes the lock; fails fast if another
    /// runtime holds it, since two writers would corrupt pointers.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).at(root)?;
        let root = root.canonicalize().at(root)?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(root)),
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        // Objects, states (other containers' env), logs and metadata are root's alone;
        // the root directory is only traversable, so the manager group reaches the
        // control socket in it and nothing else.
        for d in [
            "objects/sha256",
            "objects/partial",
            "revisions",
            "boot",
            "rootfs",
            "bundles",
            "volumes",
            "logs",
            "meta/device",
            "meta/user",
            "runc",
        ] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
            let top = root.join(d.split('/').next().unwrap_or(d));
            fs::set_permissions(&top, fs::Permissions::from_mode(0o700)).at(&top)?;
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711)).at(&root)?;
        Ok(Store { root, _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Deletes what an interrupted write left behind. Everything else on disk is
    /// complete by construction (see the module docs).
    pub fn recover(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for d in [
            "objects/sha256",
            "revisions",
            "boot",
            "rootfs",
            "meta/device",
            "meta/user",
        ] {
            let dir = self.root.join(d);
            for e in fs::read_dir(&dir).at(&dir)? {
                let e = e.at(&dir)?;
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    remove_any(&e.path())?;
                    removed.push(e.path());
                }
            }
        }
        // Inside revisions, a temp progress/state file may be left too.
        for rev in self.list_revisions()? {
            let dir = self.rev_dir(&rev);
            for e in fs::read_dir(&dir).at(&dir)? {
                let e = e.at(&dir)?;
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    remove_any(&e.path())?;
                    removed.push(e.path());
                }
            }
        }
        // Bundles are derived data, rebuilt on every run.
        let b = self.root.join("bundles");
        remove_any(&b)?;
        fs::create_dir_all(&b).at(&b)?;
        Ok(removed)
    }

    // --- objects ---

    pub fn object_path(&self, hex: &str) -> PathBuf {
        self.root.join("objects/sha256").join(hex)
    }

    pub fn partial_path(&self, hex: &str) -> PathBuf {
        self.root.join("objects/partial").join(hex)
    }

    pub fn has_object(&self, hex: &str) -> bool {
        is_sha256_hex(hex) && self.object_path(hex).is_file()
    }

    pub fn object_size(&self, hex: &str) -> Option<u64> {
        fs::metadata(self.object_path(hex)).ok().map(|m| m.len())
    }

    pub fn partial_size(&self, hex: &str) -> u64 {
        fs::metadata(self.partial_path(hex))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    pub fn list_objects(&self) -> Result<Vec<(String, u64)>> {
        let dir = self.root.join("objects/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_sha256_hex(&name) {
                out.push((name, e.metadata().at(&e.path())?.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Starts (offset 0) or resumes (offset = bytes already received) an upload.
    pub fn begin_upload(&self, hex: &str, offset: u64) -> Result<Upload> {
        if !is_sha256_hex(hex) {
            return Err(StoreError::Invalid(format!(
                "{hex:?} is not a sha256 digest"
            )));
        }
        let path = self.partial_path(hex);
        let have = self.partial_size(hex);
        if offset > have {
            return Err(StoreError::Invalid(format!(
                "resume at {offset} but only {have} bytes were received"
            )));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        file.set_len(offset).at(&path)?;
        // Hash what is already there, reading from disk rather than memory.
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = offset;
        while left > 0 {
            let n = file.read(&mut buf).at(&path)?;
            if n == 0 {
                break;
            }
            let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(offset)).at(&path)?;
        Ok(Upload {
            hex: hex.to_owned(),
            path,
            file,
            hasher,
            written: offset,
        })
    }

    /// Verifies and moves a finished upload into place.
    pub fn finish_upload(&self, up: Upload, expected_size: Option<u64>) -> Result<u64> {
        let Upload {
            hex,
            path,
            file,
            hasher,
            written,
        } = up;
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(StoreError::DigestMismatch {
                expected: hex,
                actual,
            });
        }
        if let Some(e) = expected_size
            && e != written
        {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(StoreError::SizeMismatch {
                expected: e,
                actual: written,
            });
        }
        file.sync_all().at(&path)?;
        drop(file);
        let dest = self.object_path(&hex);
        fs::rename(&path, &dest).at(&dest)?;
        sync_dir(dest.parent().unwrap_or(&self.root))?;
        Ok(written)
    }

    /// Stores a small in-memory blob (tests, state files).
    pub fn put_object_bytes(&self, bytes: &[u8]) -> Result<String> {
        let hex = hex::encode(Sha256::digest(bytes));
        if !self.has_object(&hex) {
            let mut up = self.begin_upload(&hex, 0)?;
            up.write(bytes)?;
            self.finish_upload(up, None)?;
        }
        Ok(hex)
    }

    /// Re-hashes an object; used by recovery checks and tests.
    pub fn verify_object(&self, hex: &str) -> Result<bool> {
        let path = self.object_path(hex);
        let mut f = File::open(&path).at(&path)?;
        let mut h = Sha256::new();
        io::copy(&mut f, &mut h).at(&path)?;
        Ok(hex::encode(h.finalize()) == hex)
    }

    pub fn remove_object(&self, hex: &str) -> Result<()> {
        let p = self.object_path(hex);
        fs::remove_file(&p).at(&p)
    }

    // --- revisions ---

    pub fn rev_dir(&self, rev: &str) -> PathBuf {
        self.root.join("revisions").join(rev)
    }

    pub fn has_revision(&self, rev: &str) -> bool {
        valid_rev(rev) && self.rev_dir(rev).join("state.json").is_file()
    }

    pub fn list_revisions(&self) -> Result<Vec<String>> {
        let dir = self.root.join("revisions");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_rev(&name) && e.path().join("state.json").is_file() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates `revisions/<rev>` with its state and first progress in one rename.
    pub fn create_revision(&self, rev: &str, state_json: &[u8], progress: &Progress) -> Result<()> {
        let final_dir = self.rev_dir(rev);
        let tmp = self.root.join("revisions").join(format!(".tmp-{rev}"));
        remove_any(&tmp)?;
        fs::create_dir(&tmp).at(&tmp)?;
        write_synced(&tmp.join("state.json"), state_json)?;
        write_synced(&tmp.join("progress.json"), &to_json(progress))?;
        sync_dir(&tmp)?;
        fs::rename(&tmp, &final_dir).at(&final_dir)?;
        sync_dir(&self.root.join("revisions"))
    }

    pub fn read_state(&self, rev: &str) -> Result<Vec<u8>> {
        let p = self.rev_dir(rev).join("state.json");
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(format!("revision {rev}")),
            _ => StoreError::Io { path: p, source: e },
        })
    }

    pub fn read_progress(&self, rev: &str) -> Result<Progress> {
        let p = self.rev_dir(rev).join("progress.json");
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(format!("revision {rev}")),
            _ => StoreError::Io {
                path: p.clone(),
                source: e,
            },
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", p.display())))
    }

    pub fn write_progress(&self, rev: &str, progress: &Progress) -> Result<()> {
        atomic_write(&self.rev_dir(rev).join("progress.json"), &to_json(progress))
    }

    pub fn remove_revision(&self, rev: &str) -> Result<()> {
        let dir = self.rev_dir(rev);
        let tmp = self.root.join("revisions").join(format!(".tmp-gc-{rev}"));
        // Rename first so a crash mid-delete never leaves a half revision visible.
        fs::rename(&dir, &tmp).at(&dir)?;
        sync_dir(&self.root.join("revisions"))?;
        remove_any(&tmp)
    }

    // --- pointers ---

    pub fn pointer(&self, p: Pointer) -> Option<String> {
        let s = fs::read_to_string(self.root.join("boot").join(p.file())).ok()?;
        let s = s.trim();
        valid_rev(s).then(|| s.to_owned())
    }

    pub fn set_pointer(&self, p: Pointer, rev: Option<&str>) -> Result<()> {
        let path = self.root.join("boot").join(p.file());
        match rev {
            Some(r) => atomic_write(&path, format!("{r}\n").as_bytes()),
            None => {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e).at(&path),
                }
                sync_dir(&self.root.join("boot"))
            }
        }
    }

    // --- meta ---

    fn meta_path(&self, kind: MetaKind, key: &str) -> Result<PathBuf> {
        if !valid_rev(key) {
            return Err(StoreError::Invalid(format!(
                "meta key {key:?} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"
            )));
        }
        Ok(self.root.join("meta").join(kind.dir()).join(key))
    }

    pub fn meta_get(&self, kind: MetaKind, key: &str) -> Result<Vec<u8>> {
        let p = self.meta_path(kind, key)?;
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(format!("meta key {key}")),
            _ => StoreError::Io { path: p, source: e },
        })
    }

    pub fn meta_put(&self, kind: MetaKind, key: &str, value: &[u8]) -> Result<()> {
        atomic_write(&self.meta_path(kind, key)?, value)
    }

    pub fn meta_delete(&self, kind: MetaKind, key: &str) -> Result<()> {
        let p = self.meta_path(kind, key)?;
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(p.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(format!("meta key {key}")))
            }
            Err(e) => Err(e).at(&p),
        }
    }

    pub fn meta_list(&self, kind: MetaKind) -> Result<Vec<(String, String)>> {
        let dir = self.root.join("meta").join(kind.dir());
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let k = e.file_name().to_string_lossy().into_owned();
            if valid_rev(&k) {
                let v = fs::read(e.path()).at(&e.path())?;
                out.push((k, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes available to us on the storage filesystem.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| StoreError::Io {
            path: self.root.clone(),
            source: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// An upload in progress: bytes are hashed as they are written, never buffered.
pub struct Upload {
    hex: String,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
}

impl Upload {
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write_all(chunk).at(&self.path)?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Invalid(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

pub fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).at(p),
        Ok(_) => fs::remove_file(p).at(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Status;

    #[test]
    fn only_root_reads_the_store_and_its_root_is_only_traversable() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.root()), 0o711);
        for sub in ["objects", "revisions", "logs", "meta", "volumes"] {
            assert_eq!(mode(&s.root().join(sub)), 0o700, "{sub}");
        }
    }

    #[test]
    fn second_open_of_the_same_storage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = Store::open(d.path()).unwrap();
        assert!(matches!(Store::open(d.path()), Err(StoreError::Locked(_))));
    }

    #[test]
    fn upload_verifies_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let data = b"hello, edge device";
        let hex = hex::encode(Sha256::digest(data));
        let mut up = s.begin_upload(&hex, 0).unwrap();
        up.write(&data[..5]).unwrap();
        drop(up);
        assert_eq!(s.partial_size(&hex), 5);
        assert!(!s.has_object(&hex));
        let mut up = s.begin_upload(&hex, 5).unwrap();
        up.write(&data[5..]).unwrap();
        s.finish_upload(up, Some(data.len() as u64)).unwrap();
        assert!(s.has_object(&hex) && s.verify_object(&hex).unwrap());
        assert_eq!(s.partial_size(&hex), 0);
    }

    #[test]
    fn bad_digest_is_refused_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let hex = "0".repeat(64);
        let mut up = s.begin_upload(&hex, 0).unwrap();
        up.write(b"not it").unwrap();
        assert!(matches!(
            s.finish_upload(up, None),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!s.has_object(&hex));
        assert_eq!(s.partial_size(&hex), 0);
        assert!(s.begin_upload(&hex, 10).is_err(), "resume past the end");
    }

    #[test]
    fn recover_removes_temp_leftovers_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.create_revision("r1", b"{}", &Progress::new(Status::Queued, "q"))
            .unwrap();
        fs::create_dir(s.path("revisions/.tmp-r2")).unwrap();
        fs::write(s.path("boot/.tmp-committed-1"), "x").unwrap();
        fs::write(s.path("revisions/r1/.tmp-progress.json-9"), "x").unwrap();
        let removed = s.recover().unwrap();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert_eq!(s.list_revisions().unwrap(), vec!["r1"]);
        assert_eq!(s.read_progress("r1").unwrap().status, Status::Queued);
    }

    #[test]
    fn pointers_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.pointer(Pointer::Committed), None);
        s.set_pointer(Pointer::Committed, Some("r1")).unwrap();
        assert_eq!(s.pointer(Pointer::Committed).as_deref(), Some("r1"));
        s.set_pointer(Pointer::Committed, None).unwrap();
        s.set_pointer(Pointer::Committed, None).unwrap();
        assert_eq!(s.pointer(Pointer::Committed), None);
    }
}
