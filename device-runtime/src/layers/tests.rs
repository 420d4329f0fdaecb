use super::*;
use crate::testkit::{RawEntry, gzip, sha256_hex, tar, zstd};

fn desc(data: &[u8]) -> Descriptor {
    Descriptor {
        digest: format!("sha256:{}", sha256_hex(data)),
        size: data.len() as u64,
    }
}

fn unpack(entries: &[RawEntry]) -> (tempfile::TempDir, Result<UnpackStats, LayerError>) {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let t = tar(entries);
    let r = unpack_layer(&t[..], &root, Some(&desc(&t)), UnpackOptions::default());
    (outer, r)
}

/// Unpacks a layer's raw bytes into a fresh directory, checked against their own digest.
fn unpack_raw(data: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, LayerError>) {
    let d = tempfile::tempdir().unwrap();
    let r = unpack_layer(data, d.path(), Some(&desc(data)), UnpackOptions::default());
    (d, r)
}

fn assert_unsafe(r: Result<UnpackStats, LayerError>, what: &str) {
    match r {
        Err(LayerError::Unsafe { reason, .. }) => assert!(reason.contains(what), "{reason}"),
        other => panic!("expected refusal containing {what:?}, got {other:?}"),
    }
}

#[test]
fn plain_gzip_and_zstd_layers_unpack() {
    let t = tar(&[
        RawEntry::dir("etc/"),
        RawEntry::file("etc/hello", b"hi"),
        RawEntry::symlink("etc/link", "hello"),
        RawEntry::hardlink("etc/hard", "etc/hello"),
    ]);
    for data in [t.clone(), gzip(&t), zstd(&t)] {
        let d = tempfile::tempdir().unwrap();
        let s = unpack_layer(
            &data[..],
            d.path(),
            Some(&desc(&data)),
            UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(s.entries, 4);
        assert_eq!(fs::read(d.path().join("etc/link")).unwrap(), b"hi");
        assert_eq!(fs::read(d.path().join("etc/hard")).unwrap(), b"hi");
    }
}

#[test]
fn dot_dot_entry_is_refused() {
    let (outer, r) = unpack(&[RawEntry::file("../escaped", b"x")]);
    assert_unsafe(r, "escapes");
    assert!(!outer.path().join("escaped").exists());
}

#[test]
fn absolute_entry_stays_inside() {
    let (outer, r) = unpack(&[RawEntry::file("/abs-file", b"x")]);
    r.unwrap();
    assert!(outer.path().join("root/abs-file").exists());
}

#[test]
fn symlink_pointing_outside_is_refused() {
    let (_o, r) = unpack(&[RawEntry::symlink("evil", "../../../etc")]);
    assert_unsafe(r, "symlink target");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // An absolute link is fine for the container, but the unpacker must not follow it.
    let (outer, r) = unpack(&[
        RawEntry::symlink("etc", "/"),
        RawEntry::file("etc/planted", b"x"),
    ]);
    assert_unsafe(r, "symlink");
    assert!(!outer.path().join("planted").exists());
}

#[test]
fn hardlink_pointing_outside_is_refused() {
    let (_o, r) = unpack(&[RawEntry::hardlink("h", "../../etc/passwd")]);
    assert_unsafe(r, "hardlink target");
    let (_o, r) = unpack(&[RawEntry::hardlink("h", "/etc/passwd")]);
    assert_unsafe(r, "hardlink target");
}

#[test]
fn hardlink_through_a_symlink_is_refused() {
    let (_o, r) = unpack(&[
        RawEntry::symlink("up", "/"),
        RawEntry::hardlink("h", "up/etc/passwd"),
    ]);
    assert!(matches!(r, Err(LayerError::Unsafe { .. })), "{r:?}");
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let (_o, r) = unpack(&[RawEntry::file("dev-null", b"").with_kind(tar::EntryType::Char)]);
    assert_unsafe(r, "device");
    let (_o, r) = unpack(&[RawEntry::file("sda", b"").with_kind(tar::EntryType::Block)]);
    assert_unsafe(r, "device");
    let (_o, r) = unpack(&[RawEntry::file("p", b"").with_kind(tar::EntryType::Fifo)]);
    assert_unsafe(r, "fifo");
}

#[test]
fn setuid_is_stripped_unless_allowed() {
    let t = tar(&[RawEntry::file("su", b"x").with_mode(0o4755)]);
    let d = tempfile::tempdir().unwrap();
    let s = unpack_layer(&t[..], d.path(), None, UnpackOptions::default()).unwrap();
    assert_eq!(s.setuid_stripped, 1);
    let mode = fs::metadata(d.path().join("su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    let d = tempfile::tempdir().unwrap();
    unpack_layer(
        &t[..],
        d.path(),
        None,
        UnpackOptions {
            allow_setuid: true,
            max_bytes: None,
            max_entries: None,
        },
    )
    .unwrap();
    let mode = fs::metadata(d.path().join("su"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
}

#[test]
fn digest_and_size_mismatch_are_refused() {
    let t = gzip(&tar(&[RawEntry::file("a", b"x")]));
    let d = tempfile::tempdir().unwrap();
    let mut wrong = desc(&t);
    wrong.digest = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        unpack_layer(&t[..], d.path(), Some(&wrong), UnpackOptions::default()),
        Err(LayerError::Digest { .. })
    ));
    let mut wrong = desc(&t);
    wrong.size += 1;
    assert!(matches!(
        unpack_layer(&t[..], d.path(), Some(&wrong), UnpackOptions::default()),
        Err(LayerError::Size { .. })
    ));
}

#[test]
fn whiteouts_and_opaque_dirs_apply_to_lower_layers() {
    let d = tempfile::tempdir().unwrap();
    let lower = tar(&[
        RawEntry::dir("a/"),
        RawEntry::file("a/keep", b"1"),
        RawEntry::file("a/gone", b"1"),
        RawEntry::dir("o/"),
        RawEntry::file("o/old", b"1"),
    ]);
    let upper = tar(&[
        RawEntry::file("a/.wh.gone", b""),
        RawEntry::file("o/.wh..wh..opq", b""),
        RawEntry::file("o/new", b"2"),
    ]);
    unpack_layer(&lower[..], d.path(), None, UnpackOptions::default()).unwrap();
    let s = unpack_layer(&upper[..], d.path(), None, UnpackOptions::default()).unwrap();
    assert_eq!(s.whiteouts, 2);
    assert!(d.path().join("a/keep").exists());
    assert!(!d.path().join("a/gone").exists());
    assert!(!d.path().join("o/old").exists());
    assert!(d.path().join("o/new").exists());
    assert!(!d.path().join("o/.wh..wh..opq").exists());
}

#[test]
fn whiteout_cannot_escape() {
    let (_o, r) = unpack(&[RawEntry::file("../.wh.x", b"")]);
    assert_unsafe(r, "escapes");
}

#[test]
fn garbage_is_a_format_error_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let junk = [0x1f, 0x8b, 1, 2, 3, 4, 5];
    assert!(unpack_layer(&junk[..], d.path(), None, UnpackOptions::default()).is_err());
}

#[test]
fn a_layer_larger_than_the_budget_is_refused() {
    // 1 MiB of zeros compresses to about 1 KiB: a small bomb.
    let t = gzip(&tar(&[RawEntry::file("big", &vec![0u8; 1 << 20])]));
    let d = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        allow_setuid: false,
        max_bytes: Some(64 * 1024),
        max_entries: None,
    };
    assert!(matches!(
        unpack_layer(&t[..], d.path(), None, opts),
        Err(LayerError::TooLarge(65536))
    ));
    let size = fs::metadata(d.path().join("big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(size <= 64 * 1024 + 1, "{size}");
    let opts = UnpackOptions {
        allow_setuid: false,
        max_bytes: Some(2 << 20),
        max_entries: None,
    };
    let s = unpack_layer(&t[..], d.path(), None, opts).unwrap();
    assert_eq!(s.bytes, 1 << 20);
}

#[test]
fn a_layer_with_more_entries_than_allowed_is_refused() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<RawEntry> = names.iter().map(|n| RawEntry::file(n, b"")).collect();
    let t = tar(&entries);
    let d = tempfile::tempdir().unwrap();
    let opts = |max| UnpackOptions {
        max_entries: Some(max),
        ..UnpackOptions::default()
    };
    assert!(matches!(
        unpack_layer(&t[..], d.path(), None, opts(10)),
        Err(LayerError::TooManyEntries(10))
    ));
    assert!(unpack_layer(&t[..], d.path(), None, opts(20)).is_ok());
}

/// A tar split into zstd frames at an entry boundary, as `zstd:chunked` writes it, with
/// skippable frames between and after: every entry lands, none is lost.
#[test]
fn multi_frame_zstd_layers_unpack_every_entry() {
    let t = tar(&[
        RawEntry::dir("a/"),
        RawEntry::file("a/first", b"one"),
        RawEntry::file("a/second", &[b'x'; 3000]),
        RawEntry::file("a/third", b"three"),
    ]);
    // Headers and data are 512-byte blocks: the second entry starts at block 3.
    let cuts = [0, 3 * 512, 3 * 512 + 512 + 3072, t.len()];
    let mut data = Vec::new();
    for w in cuts.windows(2) {
        data.extend(zstd(&t[w[0]..w[1]]));
        data.extend(0x184D_2A5Eu32.to_le_bytes());
        data.extend(4u32.to_le_bytes());
        data.extend(b"toc!");
    }
    let (d, s) = unpack_raw(&data);
    assert_eq!(s.unwrap().entries, 4);
    assert_eq!(fs::read(d.path().join("a/second")).unwrap().len(), 3000);
    assert_eq!(fs::read(d.path().join("a/third")).unwrap(), b"three");
}

#[test]
fn a_layer_that_stops_early_or_holds_two_archives_is_refused() {
    let one = tar(&[RawEntry::file("one", b"1")]);
    let two = tar(&[RawEntry::file("two", b"2")]);
    // The first entry alone, without the end-of-archive marker.
    let cut = &one[..1024];
    let mut both = one.clone();
    both.extend(&two);
    for (what, data) in [
        ("truncated, zstd", zstd(cut)),
        ("truncated, gzip", gzip(cut)),
        ("truncated, plain", cut.to_vec()),
        (
            "two archives, zstd frames",
            [zstd(&one), zstd(&two)].concat(),
        ),
        ("two archives, plain", both),
    ] {
        let d = tempfile::tempdir().unwrap();
        let r = unpack_layer(
            &data[..],
            d.path(),
            Some(&desc(&data)),
            UnpackOptions::default(),
        );
        assert!(
            matches!(r, Err(LayerError::Format(_))),
            "{what}: expected a refusal, got {r:?}"
        );
    }
}
