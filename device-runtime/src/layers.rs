//! Safe unpacking of OCI image layers into a root filesystem.
//!
//! A layer is outside input: a crafted tar must not be able to write outside the
//! root, plant a device node, or smuggle a setuid binary. Each entry is checked
//! lexically ([`crate::paths`]) and against what is already on disk (`lstat` of every
//! parent, so a symlink planted by an earlier entry or layer is never followed).
//! Whiteouts (`.wh.<name>`) and opaque directories (`.wh..wh..opq`) from later layers
//! delete what earlier layers created. The compressed stream is hashed while it is
//! read, so a layer whose digest or size does not match its descriptor is refused
//! (and the half-built root is thrown away by the caller).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::paths::{clean_relative, resolve_link};
use crate::state::Descriptor;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("layer digest mismatch: expected {expected}, got sha256:{actual}")]
    Digest { expected: String, actual: String },
    #[error("layer size mismatch: expected {expected} bytes, got {actual}")]
    Size { expected: u64, actual: u64 },
    #[error("layer unpacks to more than the {0} bytes allowed (free space minus reserve)")]
    TooLarge(u64),
    #[error("layer is not a valid archive: {0}")]
    Format(String),
    #[error("layer has more than {0} entries")]
    TooManyEntries(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> LayerError {
    LayerError::Unsafe {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Keep setuid/setgid bits (the state must ask for it per container).
    pub allow_setuid: bool,
    /// Bytes of file content the whole unpack may write (`None`: no limit), so a
    /// compression bomb cannot fill the device.
    pub max_bytes: Option<u64>,
    /// Entries one layer may hold (`None`: [`MAX_ENTRIES`]).
    pub max_entries: Option<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    pub setuid_stripped: u64,
}

/// Reads and hashes the raw (compressed) bytes on their way to the decoder.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks one layer on top of `root`, checking it against `expected`.
pub fn unpack_layer<R: Read>(
    raw: R,
    root: &Path,
    expected: Option<&Descriptor>,
    opts: UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let mut hashing = BufReader::new(Hashing {
        inner: raw,
        hasher: Sha256::new(),
        bytes: 0,
    });
    let magic = hashing
        .fill_buf()
        .map_err(|e| LayerError::Format(e.to_string()))?;
    let stats = if magic.starts_with(&[0x1f, 0x8b]) {
        unpack_stream(flate2::read::MultiGzDecoder::new(&mut hashing), root, opts)?
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        unpack_stream(zstd::Frames::new(&mut hashing), root, opts)?
    } else {
        unpack_stream(&mut hashing, root, opts)?
    };
    // Whatever a decoder left unread (it should be nothing) still counts toward the digest.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| LayerError::Format(e.to_string()))?;
    let h = hashing.into_inner();
    if let Some(d) = expected {
        let actual = hex::encode(h.hasher.finalize());
        if h.bytes != d.size {
            return Err(LayerError::Size {
                expected: d.size,
                actual: h.bytes,
            });
        }
        if d.digest.strip_prefix("sha256:") != Some(actual.as_str()) {
            return Err(LayerError::Digest {
                expected: d.digest.clone(),
                actual,
            });
        }
    }
    Ok(stats)
}

/// Unpacks a decoded tar stream and then reads it to its end, so every compressed
/// frame or member is decoded (and checked) and the digest covers every byte. The
/// archive must end with its end-of-archive marker and nothing but zeros may follow:
/// a stream that stops early, or holds a second archive, would otherwise install a
/// root filesystem that is not the layer's.
fn unpack_stream<R: Read>(
    decoded: R,
    root: &Path,
    opts: UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let mut tail = LastBlock::new(decoded);
    let stats = unpack_tar(&mut tail, root, opts)?;
    if !tail.ends_with_zero_block() {
        return Err(LayerError::Format(
            "the archive ends without its end-of-archive marker (truncated layer?)".into(),
        ));
    }
    let mut rest = [0u8; 8192];
    loop {
        let n = tail
            .inner
            .read(&mut rest)
            .map_err(|e| LayerError::Format(e.to_string()))?;
        if n == 0 {
            return Ok(stats);
        }
        if rest[..n].iter().any(|&b| b != 0) {
            return Err(LayerError::Format(
                "data follows the end of the archive (a second archive?)".into(),
            ));
        }
    }
}

/// Remembers the last tar block read, to tell an archive that ended with its
/// end-of-archive marker from a stream that merely stopped.
struct LastBlock<R> {
    inner: R,
    last: [u8; 512],
    filled: usize,
}

impl<R: Read> LastBlock<R> {
    fn new(inner: R) -> LastBlock<R> {
        LastBlock {
            inner,
            last: [0; 512],
            filled: 0,
        }
    }

    fn ends_with_zero_block(&self) -> bool {
        // An empty stream is an empty layer, not a truncated one.
        self.filled == 0 || (self.filled == self.last.len() && self.last.iter().all(|&b| b == 0))
    }
}

impl<R: Read> Read for LastBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        let len = self.last.len();
        if got.len() >= len {
            self.last.copy_from_slice(&got[got.len() - len..]);
        } else {
            self.last.copy_within(got.len().., 0);
            self.last[len - got.len()..].copy_from_slice(got);
        }
        self.filled = (self.filled + n).min(len);
        Ok(n)
    }
}

/// Entries one layer may hold. Large distribution images hold a few tens of thousands;
/// millions of empty files would exhaust the storage filesystem's inodes, which the byte
/// budget does not see.
pub const MAX_ENTRIES: usize = 500_000;

fn unpack_tar<R: Read>(r: R, root: &Path, opts: UnpackOptions) -> Result<UnpackStats, LayerError> {
    let mut archive = tar::Archive::new(r);
    let mut stats = UnpackStats::default();
    let entries = archive
        .entries()
        .map_err(|e| LayerError::Format(e.to_string()))?;
    for (i, entry) in entries.enumerate() {
        let max = opts.max_entries.unwrap_or(MAX_ENTRIES);
        if i >= max {
            return Err(LayerError::TooManyEntries(max));
        }
        let mut entry = entry.map_err(|e| LayerError::Format(e.to_string()))?;
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw_path)
            .map_err(|_| unsafe_entry("<non-utf8>", "path is not UTF-8"))?;
        stats.entries += 1;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let rel = clean_relative(&name).map_err(|e| unsafe_entry(&name, e.to_string()))?;
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = ensure_dirs(root, &parent_rel, &name)?;

        if file_name == ".wh..wh..opq" {
            // Opaque: what lower layers put in this directory disappears.
            for e in fs::read_dir(&parent).map_err(io_at(&parent))? {
                let e = e.map_err(io_at(&parent))?;
                remove_any(&e.path())?;
            }
            stats.whiteouts += 1;
            continue;
        }
        if let Some(victim) = file_name.strip_prefix(".wh.") {
            if victim.is_empty() || victim == "." || victim == ".." {
                return Err(unsafe_entry(&name, "bad whiteout"));
            }
            remove_any(&parent.join(victim))?;
            stats.whiteouts += 1;
            continue;
        }

        let dest = parent.join(&file_name);
        let header_mode = entry
            .header()
            .mode()
            .map_err(|e| LayerError::Format(e.to_string()))?;
        let mut mode = header_mode & 0o7777;
        if mode & 0o6000 != 0 && !opts.allow_setuid {
            mode &= !0o6000;
            stats.setuid_stripped += 1;
        }
        let uid = entry.header().uid().unwrap_or(0);
        let gid = entry.header().gid().unwrap_or(0);
        let owner = (
            u32::try_from(uid).unwrap_or(0),
            u32::try_from(gid).unwrap_or(0),
        );

        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&dest)?;
                        fs::create_dir(&dest).map_err(io_at(&dest))?;
                    }
                    Err(_) => fs::create_dir(&dest).map_err(io_at(&dest))?,
                }
                chown(&dest, owner);
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io_at(&dest))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_any(&dest)?;
                // O_NOFOLLOW + create_new: never write through a link.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io_at(&dest))?;
                let budget = opts.max_bytes.map(|m| m.saturating_sub(stats.bytes));
                let limit = budget.map_or(u64::MAX, |b| b.saturating_add(1));
                let n = io::copy(&mut (&mut entry).take(limit), &mut f)
                    .map_err(|e| LayerError::Format(e.to_string()))?;
                stats.bytes += n;
                if let (Some(max), Some(b)) = (opts.max_bytes, budget)
                    && n > b
                {
                    return Err(LayerError::TooLarge(max));
                }
                drop(f);
                chown(&dest, owner);
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io_at(&dest))?;
            }
            tar::EntryType::Symlink => {
                let target = link_name(&entry, &name)?;
                resolve_link(&rel, &target)
                    .map_err(|e| unsafe_entry(&name, format!("symlink target: {e}")))?;
                remove_any(&dest)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(io_at(&dest))?;
                let _ = std::os::unix::fs::lchown(&dest, Some(owner.0), Some(owner.1));
            }
            tar::EntryType::Link => {
                let target = link_name(&entry, &name)?;
                let target_rel = clean_relative(&target)
                    .map_err(|e| unsafe_entry(&name, format!("hardlink target: {e}")))?;
                let tparent = target_rel
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                check_no_symlinks(root, &tparent, &name)?;
                let src = root.join(&target_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(unsafe_entry(
                            &name,
                            format!(
                                "hardlink target {target:?} is not a file already in the layer root"
                            ),
                        ));
                    }
                }
                if src != dest {
                    remove_any(&dest)?;
                    fs::hard_link(&src, &dest).map_err(io_at(&dest))?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry(
                    &name,
                    "device nodes are not allowed in layers",
                ));
            }
            tar::EntryType::Fifo => {
                return Err(unsafe_entry(&name, "fifos are not allowed in layers"));
            }
            other => {
                return Err(unsafe_entry(
                    &name,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        }
    }
    Ok(stats)
}

fn link_name<R: Read>(entry: &tar::Entry<R>, name: &str) -> Result<String, LayerError> {
    let t = entry
        .link_name_bytes()
        .ok_or_else(|| unsafe_entry(name, "link without target"))?;
    String::from_utf8(t.into_owned()).map_err(|_| unsafe_entry(name, "link target is not UTF-8"))
}

fn chown(p: &Path, (uid, gid): (u32, u32)) {
    // Ownership is best effort: unprivileged test runs cannot chown.
    let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
}

/// Creates missing parents; refuses to go through a symlink (it could point anywhere
/// on the host, since we are not inside the container's mount namespace).
fn ensure_dirs(root: &Path, rel: &Path, entry: &str) -> Result<PathBuf, LayerError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(unsafe_entry(
                    entry,
                    format!(
                        "parent {:?} is a symlink",
                        cur.strip_prefix(root).unwrap_or(&cur)
                    ),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove_any(&cur)?;
                fs::create_dir(&cur).map_err(io_at(&cur))?;
            }
            Err(_) => fs::create_dir(&cur).map_err(io_at(&cur))?,
        }
    }
    Ok(cur)
}

fn check_no_symlinks(root: &Path, rel: &Path, entry: &str) -> Result<(), LayerError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if let Ok(m) = fs::symlink_metadata(&cur)
            && !m.is_dir()
        {
            return Err(unsafe_entry(
                entry,
                "hardlink target goes through a non-directory",
            ));
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), LayerError> {
    crate::store::remove_any(p).map_err(|e| LayerError::Io {
        path: p.to_owned(),
        source: io::Error::other(e.to_string()),
    })
}

/// The name under which an image's unpacked root is shared: a hash of its layer
/// digests in order (and whether setuid bits were kept).
pub fn chain_id(layers: &[Descriptor], allow_setuid: bool) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.digest.as_bytes());
        h.update(b"\n");
    }
    if allow_setuid {
        h.update(b"setuid\n");
    }
    hex::encode(h.finalize())
}

/// Unpacks all layers of an image into `rootfs/<chain>` unless it is already there.
/// Built under a temp name, synced, then renamed: a crash never leaves a partial
/// root under the final name.
pub fn unpack_image(
    store: &crate::store::Store,
    layers: &[Descriptor],
    mut opts: UnpackOptions,
) -> Result<PathBuf, LayerError> {
    let chain = chain_id(layers, opts.allow_setuid);
    let dir = store.path("rootfs");
    let final_path = dir.join(&chain);
    if final_path.is_dir() {
        return Ok(final_path);
    }
    let tmp = dir.join(format!(".tmp-{chain}"));
    remove_any(&tmp)?;
    fs::create_dir(&tmp).map_err(io_at(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io_at(&tmp))?;
    let result = (|| {
        for l in layers {
            let hex = crate::state::parse_digest(&l.digest)
                .ok_or_else(|| LayerError::Format(format!("bad digest {}", l.digest)))?;
            let p = store.object_path(hex);
            let f = File::open(&p).map_err(io_at(&p))?;
            let st = unpack_layer(f, &tmp, Some(l), opts)?;
            opts.max_bytes = opts.max_bytes.map(|m| m.saturating_sub(st.bytes));
        }
        let f = File::open(&tmp).map_err(io_at(&tmp))?;
        rustix::fs::syncfs(&f).map_err(|e| LayerError::Io {
            path: tmp.clone(),
            source: e.into(),
        })?;
        fs::rename(&tmp, &final_path).map_err(io_at(&final_path))?;
        crate::store::sync_dir(&dir).map_err(|e| LayerError::Io {
            path: dir.clone(),
            source: io::Error::other(e.to_string()),
        })
    })();
    if let Err(e) = result {
        let _ = remove_any(&tmp);
        return Err(e);
    }
    Ok(final_path)
}

#[cfg(test)]
mod tests;
mod zstd;
