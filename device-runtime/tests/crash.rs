//! Crash safety: start an install, SIGKILL the runtime at a random moment (object
//! upload, unpacking, trying, committing, idle), restart it, and check that it comes
//! back on a committed revision with a consistent store. Cycles default to 50
//! (`EDGEVISOR_CRASH_CYCLES`), the seed is printed (`EDGEVISOR_CRASH_SEED` replays).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use device_runtime::lifecycle::Status;
use device_runtime::state::State;
use device_runtime::testkit::{self, RawEntry};
use serde_json::{Value, json};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything a consistent store must satisfy, whatever moment the kill hit.
fn check_store(storage: &Path) -> Result<(), String> {
    for e in std::fs::read_dir(storage.join("objects/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            return Err(format!("leftover temp object {name}"));
        }
        let data = std::fs::read(e.path()).unwrap();
        if testkit::sha256_hex(&data) != name {
            return Err(format!("object {name} does not match its digest"));
        }
    }
    for dir in ["revisions", "rootfs", "boot"] {
        for e in std::fs::read_dir(storage.join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                return Err(format!("leftover {dir}/{name} after recovery"));
            }
        }
    }
    for e in std::fs::read_dir(storage.join("revisions")).unwrap() {
        let p = e.unwrap().path();
        let state =
            std::fs::read(p.join("state.json")).map_err(|e| format!("{}: {e}", p.display()))?;
        State::parse(&state).map_err(|e| format!("{}: {e}", p.display()))?;
        let progress: Value =
            serde_json::from_slice(&std::fs::read(p.join("progress.json")).unwrap())
                .map_err(|e| format!("{}: progress: {e}", p.display()))?;
        let status = progress["status"].as_str().unwrap_or_default();
        if matches!(status, "DOWNLOADING" | "INPROGRESS" | "TESTING") {
            return Err(format!("{} left in {status} after recovery", p.display()));
        }
    }
    if storage.join("boot/trying").exists() {
        return Err("trying pointer survived recovery".into());
    }
    Ok(())
}

/// The committed revision's unpacked root holds the exact bytes its layers carry.
fn check_committed_root(storage: &Path, rev: &str) -> Result<(), String> {
    let state = State::parse(
        &std::fs::read(storage.join("revisions").join(rev).join("state.json")).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let c = &state.containers[0];
    let chain = device_runtime::layers::chain_id(&c.image.layers, false);
    let root = storage.join("rootfs").join(chain);
    let bb = std::fs::read(root.join("bin/busybox")).map_err(|e| format!("{rev} rootfs: {e}"))?;
    if bb != std::fs::read("/bin/busybox").unwrap() {
        return Err(format!("{rev}: unpacked busybox differs"));
    }
    let marker = std::fs::read(root.join("etc/cycle")).map_err(|e| format!("{rev}: {e}"))?;
    if !marker.starts_with(format!("{rev}\n").as_bytes()) {
        return Err(format!("{rev}: etc/cycle is not this revision's"));
    }
    Ok(())
}

/// Where the kill landed, from what the runtime logged before it died.
fn phase(log: &str, rev: &str) -> String {
    let needle = format!("rev=\"{rev}\" status=");
    if let Some(pos) = log.rfind(&needle) {
        let rest = &log[pos + needle.len()..];
        return rest.split_whitespace().next().unwrap_or("?").to_owned();
    }
    if log.contains(&format!("path=\"/steps/{rev}\"")) {
        return "INSTALLED".into();
    }
    "UPLOADING".into()
}

#[tokio::test]
async fn sigkill_at_random_moments_always_recovers() {
    let cycles: usize = std::env::var("EDGEVISOR_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("EDGEVISOR_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: {cycles} cycles, seed {seed}");
    let mut rng = Rng(seed);
    let mut dev = Device::new(&["--retention", "2"]);
    let base_dir = dev.dir.path().to_path_buf();
    let busybox_layer = testkit::busybox_layer().unwrap();
    let config = testkit::image_config(&["/bin/sh"]);

    let make_rev = |rev: &str, pad: usize| -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut marker = format!("{rev}\n").into_bytes();
        marker.extend((0..pad).map(|i| (i * 7 % 251) as u8));
        let layer = testkit::gzip(&testkit::tar(&[
            RawEntry::dir("etc/"),
            RawEntry::file("etc/cycle", &marker),
        ]));
        let image = json!({"config": testkit::descriptor(&config),
                           "layers": [testkit::descriptor(&busybox_layer), testkit::descriptor(&layer)]});
        let st = state(
            vec![
                container("app", &image, "exec sleep 1000"),
                container("side", &image, "exec sleep 1000"),
            ],
            10,
            if pad.is_multiple_of(2) { 1 } else { 0 },
        );
        (vec![busybox_layer.clone(), config.clone(), layer], st)
    };

    let upload = |c: device_runtime::client::Client,
                  blobs: Vec<Vec<u8>>,
                  dir: std::path::PathBuf| async move {
        for (i, b) in blobs.iter().enumerate() {
            let p = dir.join(format!("blob{i}"));
            std::fs::write(&p, b).unwrap();
            c.put_object_file(&p).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };

    // The factory revision.
    let (blobs, st) = make_rev("c0", 1000);
    upload(dev.client(), blobs, base_dir.clone()).await.unwrap();
    assert_eq!(
        install_and_run(&dev.client(), "c0", st).await["status"],
        "DONE"
    );

    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut committed_changes = 0;
    let started = Instant::now();
    for i in 1..=cycles {
        let rev = format!("c{i}");
        let (blobs, st) = make_rev(&rev, 50_000 + rng.below(400_000) as usize);
        // Spread kills over upload (short delays), unpacking, testing and after commit.
        let delay = Duration::from_millis(match rng.below(4) {
            0 => rng.below(150),
            1 => rng.below(800),
            _ => 300 + rng.below(2500),
        });
        let log_start = dev.log().len();
        let pid = dev.pid().unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        });
        let c = dev.client();
        let flow = async {
            upload(c.clone(), blobs, base_dir.clone()).await?;
            c.put_step(&rev, st).await.map_err(|e| e.to_string())?;
            c.run(&rev).await.map_err(|e| e.to_string())?;
            if i % 10 == 0 {
                let _ = c.gc().await;
            }
            for _ in 0..100 {
                let p = c.progress(&rev).await.map_err(|e| e.to_string())?;
                if !p.status.is_active() && p.status != Status::Queued {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<(), String>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), flow).await;
        killer.join().unwrap();
        dev.kill9();
        let ph = phase(&dev.log()[log_start..], &rev);
        *phases.entry(ph.clone()).or_default() += 1;

        // Sometimes the restart itself is killed, in the middle of recovery.
        if rng.below(4) == 0 {
            dev.spawn();
            std::thread::sleep(Duration::from_millis(rng.below(120)));
            dev.kill9();
            *phases.entry("RECOVERY".into()).or_default() += 1;
        }
        dev.start();
        let c = dev.client();
        let steps = steps_by_rev(&c).await;
        let committed: Vec<&String> = steps
            .iter()
            .filter(|(_, s)| s["committed"] == true)
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            committed.len(),
            1,
            "cycle {i} ({ph}): committed {committed:?}\n{steps:?}"
        );
        let committed = committed[0].clone();
        if committed == rev {
            committed_changes += 1;
        }
        assert!(
            steps["c0"]["factory"] == true,
            "cycle {i}: factory revision lost"
        );
        if let Err(e) = check_store(&dev.storage()) {
            panic!(
                "cycle {i} (killed in {ph}, seed {seed}): {e}\n{}",
                dev.log()
            );
        }
        if let Err(e) = check_committed_root(&dev.storage(), &committed) {
            panic!("cycle {i} (killed in {ph}, seed {seed}): {e}");
        }
        if let Some(s) = steps.get(&rev) {
            let st = s["status"].as_str().unwrap();
            assert!(
                (committed == rev && st == "DONE")
                    || (committed != rev && matches!(st, "QUEUED" | "ERROR" | "WONTGO")),
                "cycle {i} ({ph}): {rev} is {st}, committed {committed}"
            );
        }
        // Back on the committed revision: both containers run it.
        let t = Instant::now();
        loop {
            let r = running(&c).await;
            if r.len() == 2 && r.iter().all(|(_, rv)| *rv == committed) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "cycle {i} ({ph}): running {r:?}, committed {committed}\n{}",
                dev.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "crash test: {cycles} cycles in {:.1}s, seed {seed}, kill phases {phases:?}, {committed_changes} tries committed before the kill",
        started.elapsed().as_secs_f64()
    );
}
