//! Any bytes given to the layer unpacker: no panic, nothing written outside the
//! root, no device node, fifo or setuid file inside it.
#![no_main]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use device_runtime::layers::{UnpackOptions, unpack_layer};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let b = std::env::temp_dir().join(format!("evfuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("jail/root")).expect("fuzz dir");
        b
    })
}

fn check(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = std::fs::symlink_metadata(e.path()).expect("lstat");
        let ft = m.file_type();
        assert!(!ft.is_block_device() && !ft.is_char_device() && !ft.is_fifo(), "{:?}", e.path());
        if !ft.is_symlink() {
            assert_eq!(m.permissions().mode() & 0o6000, 0, "setuid kept: {:?}", e.path());
        }
        if ft.is_dir() {
            check(&e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let jail = base().join("jail");
    let root = jail.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir(&root).expect("root");
    let _ = unpack_layer(data, &root, None, UnpackOptions::default());
    let outside: Vec<_> = std::fs::read_dir(&jail)
        .expect("jail")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "root")
        .collect();
    assert!(outside.is_empty(), "escaped the root: {outside:?}");
    check(&root);
});
