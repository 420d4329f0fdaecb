use std::time::Instant;

use super::*;
use crate::rollout::plan::Counts;

fn view(name: &str, target: Option<&str>) -> DeviceView {
    DeviceView::test(name, target)
}

fn cached(name: &str, role: &str, last_seen: Option<i64>) -> CachedDevice {
    CachedDevice {
        labels: [("role".to_string(), role.to_string())].into(),
        view: view(name, Some("f-1")),
        last_seen,
    }
}

fn role(r: &'static str) -> Selector {
    Selector::from_iter([("role", r)])
}

#[test]
fn devices_are_selected_shared_ones_left_alone_and_quiet_ones_offline() {
    let devices = [
        cached("a", "edge", Some(1000)),
        cached("b", "edge", Some(100)),
        cached("c", "other", Some(1000)),
        cached("d", "shared", Some(1000)),
    ];
    let edge_or_shared = Selector::from_iter([kube::core::Expression::In(
        "role".into(),
        ["edge".to_string(), "shared".to_string()].into(),
    )]);
    let mut written = Overlay::new();
    let fleet = |name: &str, selector: Selector, created: i64| FleetSelector {
        name: name.into(),
        selector,
        created,
    };
    // The other fleet is older: the shared device stays with it, and both report it.
    let s = select_devices(
        "ns",
        &fleet("f", edge_or_shared.clone(), 10),
        &[fleet("g", role("shared"), 5)],
        devices.iter(),
        &mut written,
        1000,
        600,
    );
    let names: Vec<(&str, bool)> = s
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.online))
        .collect();
    assert_eq!(names, [("a", true), ("b", false)]);
    assert_eq!(s.conflicted, ["d"]);
    // Younger, but the device targets this fleet's revision: it had it first.
    let mut mine = devices.clone();
    mine[3].view.target = Some("f-0123456789".into());
    let s = select_devices(
        "ns",
        &fleet("f", edge_or_shared, 10),
        &[fleet("g", role("shared"), 5)],
        mine.iter(),
        &mut written,
        1000,
        600,
    );
    assert!(s.devices.iter().any(|d| d.name == "d"));
    assert_eq!(s.conflicted, ["d"]);
}

#[test]
fn own_writes_show_until_the_cache_does() {
    let devices = [cached("a", "edge", None), cached("b", "edge", None)];
    let mut written = Overlay::new();
    written.insert(
        ("ns".into(), "a".into()),
        ("f-2".into(), 50, Instant::now()),
    );
    written.insert(
        ("ns".into(), "b".into()),
        ("f-1".into(), 60, Instant::now()),
    );
    let s = select_devices(
        "ns",
        &FleetSelector {
            name: "f".into(),
            selector: role("edge"),
            created: 0,
        },
        &[],
        devices.iter(),
        &mut written,
        100,
        600,
    );
    assert_eq!(
        s.devices[0].target.as_deref(),
        Some("f-2"),
        "not yet in the cache"
    );
    assert_eq!(s.devices[0].targeted_at, Some(50));
    assert_eq!(s.devices[1].target.as_deref(), Some("f-1"));
    assert_eq!(written.len(), 1, "b's write is in the cache: forgotten");
}

fn plan(
    phase: Phase,
    step: usize,
    retarget: &[(&str, &str)],
    stable: Option<&str>,
) -> rollout::Plan {
    rollout::Plan {
        failed_devices: vec![],
        skipped_offline: vec![],
        retarget: retarget
            .iter()
            .map(|(d, r)| (d.to_string(), r.to_string()))
            .collect(),
        memory: RolloutMemory {
            revision: Some("f-2".into()),
            step,
            pause_started_at: None,
            aborted: phase == Phase::Aborted,
            ..RolloutMemory::default()
        },
        phase,
        stable_revision: stable.map(str::to_owned),
        counts: Counts {
            failed: 3,
            ..Counts::default()
        },
        requeue_after: None,
        stalled_for: None,
    }
}

fn reasons(notes: &[Note]) -> Vec<&str> {
    notes.iter().map(|n| n.reason).collect()
}

#[test]
fn events_say_each_thing_once() {
    let fresh = RolloutMemory::default();
    let p = plan(Phase::Progressing, 0, &[("a", "f-2")], Some("f-1"));
    assert_eq!(
        reasons(&events("", &fresh, &p, "f-2", 2, &[])),
        ["RolloutStarted"]
    );

    let at = |step| RolloutMemory {
        revision: Some("f-2".into()),
        step,
        ..RolloutMemory::default()
    };
    let p = plan(Phase::WaitingForResume { step: 1 }, 1, &[], Some("f-1"));
    let n = events("Progressing", &at(0), &p, "f-2", 2, &[]);
    assert_eq!(reasons(&n), ["StepReached", "WaitingForResume"]);
    assert_eq!(n[0].message, "f-2: step 2 of 2");
    assert!(
        events("WaitingForResume", &at(1), &p, "f-2", 2, &[]).is_empty(),
        "nothing new: nothing said"
    );

    let done = plan(Phase::Complete, 2, &[], Some("f-2"));
    assert_eq!(
        reasons(&events("Progressing", &at(2), &done, "f-2", 2, &[])),
        ["RolloutComplete"]
    );
    assert!(events("RolloutComplete", &at(2), &done, "f-2", 2, &[]).is_empty());

    let aborted = plan(
        Phase::Aborted,
        1,
        &[("a", "f-1"), ("b", "f-1")],
        Some("f-1"),
    );
    let n = events("Progressing", &at(1), &aborted, "f-2", 2, &["x".into()]);
    assert_eq!(
        reasons(&n),
        ["OverlappingSelectors", "RolloutAborted", "RolledBack"]
    );
    assert!(n.iter().all(|n| n.warning));
    assert_eq!(n[2].message, "sent 2 devices back to f-1");
}

#[test]
fn unused_revisions_beyond_the_limit_are_pruned() {
    let revisions: Vec<(String, i64)> = (1..=6).map(|i| (format!("f-{i}"), i)).collect();
    let mut pinned = view("p", Some("f-6"));
    pinned.pinned = Some("f-1".into());
    let devices = [view("a", Some("f-6")), view("b", Some("f-2")), pinned];
    // In use: f-6 (update, targets), f-5 (stable), f-2 (a target), f-1 (a pin),
    // f-3 (rollbackTo). Unused: f-4 only; a limit of 0 prunes it, 1 keeps it.
    let prune = revisions_to_prune(&revisions, &devices, "f-6", Some("f-5"), Some("f-3"), 0);
    assert_eq!(prune, ["f-4"]);
    assert!(
        revisions_to_prune(&revisions, &devices, "f-6", Some("f-5"), Some("f-3"), 1).is_empty()
    );
    // Without the pins and targets, the newest unused are kept first.
    let prune = revisions_to_prune(&revisions, &[], "f-6", None, None, 2);
    assert_eq!(prune, ["f-3", "f-2", "f-1"]);
    let counts = device_counts(["f-6", "f-2", "f-4"], &devices);
    assert_eq!(counts["f-6"], 2);
    assert_eq!(counts["f-2"], 1);
    assert_eq!(counts["f-4"], 0);
}

#[test]
fn a_device_that_left_is_released_and_keeps_its_revision() {
    let mut stayed = DeviceView::test("stayed", Some("f-1111111111"));
    stayed.target = Some("f-2222222222".into());
    let left = DeviceView::test("left", Some("f-0000000000"));
    let other = DeviceView::test("other", Some("g-0000000000"));
    let fleet = vec![stayed.clone()];
    let namespace = vec![stayed, left, other];
    assert_eq!(released("f", &fleet, &namespace), vec!["left".to_string()]);
    // Its revision, old and beyond the history limit, is kept while it runs it.
    let revisions = vec![
        ("f-0000000000".to_string(), 1),
        ("f-1111111111".to_string(), 2),
        ("f-2222222222".to_string(), 3),
    ];
    assert!(revisions_to_prune(&revisions, &namespace, "f-2222222222", None, None, 0).is_empty());
    assert_eq!(
        revisions_to_prune(&revisions, &fleet, "f-2222222222", None, None, 0),
        vec!["f-0000000000".to_string()],
        "judged on the fleet's devices alone, it would have been deleted"
    );
}

#[test]
fn a_pin_a_device_cannot_run_is_refused_with_the_reason() {
    use edgevisor_crds::fleet_revision::{ArchitectureState, FleetRevisionSpec};
    let revision = |name: &str, archs: &[edgevisor_crds::Architecture]| {
        std::sync::Arc::new(edgevisor_crds::FleetRevision::new(
            name,
            FleetRevisionSpec {
                fleet: "f".into(),
                revision: 1,
                template_hash: "a".repeat(64),
                architectures: archs
                    .iter()
                    .map(|a| ArchitectureState {
                        architecture: *a,
                        state_digest: "0".repeat(64),
                        state: "{}".into(),
                        images: vec![],
                        signature: None,
                    })
                    .collect(),
                files: vec![],
            },
        ))
    };
    let revisions = vec![
        revision("f-0000000001", &[edgevisor_crds::Architecture::Amd64]),
        revision("f-0000000002", &[edgevisor_crds::Architecture::Arm64]),
    ];
    let mut devices = vec![view("a", None), view("b", None), view("c", None)];
    devices[0].pinned = Some("f-0000000001".into()); // arm64 device, amd64-only revision
    devices[1].pinned = Some("f-0000000002".into());
    devices[2].pinned = Some("f-0000000009".into());
    let refused = refuse_pins(&mut devices, &revisions);
    assert_eq!(refused.len(), 2);
    assert!(
        refused[0].1.contains("has no arm64 state"),
        "{}",
        refused[0].1
    );
    assert!(
        refused[1].1.contains("not a retained revision"),
        "{}",
        refused[1].1
    );
    assert!(devices[0].pin_refused && !devices[1].pin_refused && devices[2].pin_refused);
}
