//! Fuzz-style property tests that run with `cargo test` (the libFuzzer targets in
//! `fuzz/` go deeper but need nightly): the state parser and the layer unpacker
//! never panic on any input, and nothing a layer says escapes its root.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use device_runtime::layers::{UnpackOptions, unpack_layer};
use device_runtime::state::State;
use device_runtime::testkit::{RawEntry, gzip, tar};
use proptest::prelude::*;

const VALID: &str = r##"{"#spec":"edgevisor-state@1","containers":[{"name":"web","image":{"config":{"digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1},"layers":[{"digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":2}]},"command":["/bin/sh"],"health":{"type":"tcp","port":80},"volumes":[{"name":"d","destination":"/d"}]}],"files":[{"path":"etc/x","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":3}]}"##;

fn check_inside(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = m.file_type();
        assert!(!ft.is_block_device() && !ft.is_char_device() && !ft.is_fifo());
        if !ft.is_symlink() {
            assert_eq!(
                m.permissions().mode() & 0o6000,
                0,
                "setuid kept on {:?}",
                e.path()
            );
        }
        if ft.is_dir() {
            check_inside(&e.path());
        }
    }
}

/// Unpacks into `jail/root` and checks that `jail` holds nothing else afterwards.
fn unpack_jailed(data: &[u8]) {
    let jail = tempfile::tempdir().unwrap();
    let root = jail.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let _ = unpack_layer(data, &root, None, UnpackOptions::default());
    let names: Vec<_> = std::fs::read_dir(jail.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("root")],
        "escaped the root"
    );
    check_inside(&root);
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh..wh..opq".to_string()),
        Just("etc".to_string()),
        "[a-z.]{1,4}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..4))
        .prop_map(|(abs, c)| format!("{}{}", if abs { "/" } else { "" }, c.join("/")))
}

fn entry() -> impl Strategy<Value = RawEntry> {
    (
        0u8..7,
        path(),
        path(),
        prop_oneof![Just(0o644u32), Just(0o4755), Just(0o2755), Just(0o755)],
    )
        .prop_map(|(kind, name, target, mode)| match kind {
            0 => RawEntry::file(&name, b"x").with_mode(mode),
            1 => RawEntry::dir(&name),
            2 => RawEntry::symlink(&name, &target),
            3 => RawEntry::hardlink(&name, &target),
            4 => RawEntry::file(&name, b"").with_kind(tar::EntryType::Char),
            5 => RawEntry::file(&name, b"").with_kind(tar::EntryType::Fifo),
            _ => RawEntry::file(&name, b"").with_kind(tar::EntryType::Block),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn state_parser_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = State::parse(&data);
    }

    #[test]
    fn mutated_states_never_panic_and_accepted_ones_round_trip(
        edits in prop::collection::vec((0usize..VALID.len(), any::<u8>()), 0..4)
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (pos, b) in edits {
            bytes[pos] = b;
        }
        if let Ok(s) = State::parse(&bytes) {
            let again = State::parse(&serde_json::to_vec(&s).unwrap()).unwrap();
            prop_assert_eq!(again, s);
        }
    }

    #[test]
    fn unpacker_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..2048), gz in any::<bool>()) {
        let data = if gz { gzip(&data) } else { data };
        unpack_jailed(&data);
    }

    #[test]
    fn crafted_tars_never_escape(entries in prop::collection::vec(entry(), 1..8)) {
        unpack_jailed(&tar(&entries));
    }
}
