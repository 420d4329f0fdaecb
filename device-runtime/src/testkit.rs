//! Helpers to craft layers, images and states in tests (unit, integration, fuzz).
//! Kept in the library so the integration tests and fuzz targets share them; it does
//! no I/O except reading `/bin/busybox` when asked.

use std::io::Write;

use sha2::{Digest, Sha256};

/// One raw tar entry. Names are written verbatim, so tests can craft entries that a
/// well-behaved tar writer would refuse to produce (`../x`, `/etc/x`).
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Option<String>,
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Regular,
            mode: 0o644,
            data: data.to_vec(),
            link: None,
        }
    }
    pub fn dir(name: &str) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: Vec::new(),
            link: None,
        }
    }
    pub fn symlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Symlink,
            mode: 0o777,
            data: Vec::new(),
            link: Some(target.into()),
        }
    }
    pub fn hardlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            link: Some(target.into()),
            kind: tar::EntryType::Link,
            ..RawEntry::symlink(name, "")
        }
    }
    pub fn with_kind(mut self, kind: tar::EntryType) -> RawEntry {
        self.kind = kind;
        self
    }
    pub fn with_mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }
}

/// A plain tar of raw entries (names up to 100 bytes).
pub fn tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let name = e.name.as_bytes();
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        if let Some(l) = &e.link {
            let l = l.as_bytes();
            let n = l.len().min(99);
            h.as_old_mut().linkname[..n].copy_from_slice(&l[..n]);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap_or_default();
    }
    b.into_inner().unwrap_or_default()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn descriptor(data: &[u8]) -> serde_json::Value {
    serde_json::json!({"digest": format!("sha256:{}", sha256_hex(data)), "size": data.len()})
}

/// The applets the test containers use, as symlinks to busybox.
pub const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "true", "false", "ls", "nc", "httpd", "wget", "test", "kill",
];

/// A gzip layer with `/bin/busybox` from the host plus applet symlinks.
pub fn busybox_layer() -> std::io::Result<Vec<u8>> {
    let bb = std::fs::read("/bin/busybox")?;
    let mut entries = vec![
        RawEntry::dir("bin/"),
        RawEntry::file("bin/busybox", &bb).with_mode(0o755),
        RawEntry::dir("tmp/"),
        RawEntry::dir("etc/"),
        RawEntry::file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"),
    ];
    for a in APPLETS {
        entries.push(RawEntry::symlink(&format!("bin/{a}"), "busybox"));
    }
    Ok(gzip(&tar(&entries)))
}

/// A minimal OCI image config.
pub fn image_config(cmd: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap_or_default()
}
