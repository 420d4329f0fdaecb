use super::*;
use crate::rollout::plan::Counts;

fn view(name: &str, target: Option<&str>) -> DeviceView {
    DeviceView::test(name, target)
}

fn role(r: &'static str) -> Selector {
    Selector::from_iter([("role", r)])
}

#[test]
fn a_shared_device_stays_with_the_fleet_whose_revision_it_targets_else_the_oldest() {
    let fleet = |name: &str, created: i64| FleetSelector {
        name: name.into(),
        selector: role("edge"),
        created,
    };
    let (f, g, h) = (fleet("f", 10), fleet("g", 5), fleet("h", 5));
    assert_eq!(owner(&[], None), None);
    assert_eq!(owner(&[&f], None), Some(0));
    assert_eq!(owner(&[&f, &g], None), Some(1), "g is older");
    assert_eq!(owner(&[&h, &g], None), Some(1), "same age: by name");
    assert_eq!(
        owner(&[&f, &g], Some("f-0123456789")),
        Some(0),
        "it targets f's revision: f had it first"
    );
    assert_eq!(
        owner(&[&f, &g], Some("k-0123456789")),
        Some(1),
        "a revision of a fleet that does not select it does not count"
    );
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
        more: false,
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
        reasons(&events("", &fresh, &p, "f-2", 2, &Overlap::default())),
        ["RolloutStarted"]
    );

    let at = |step| RolloutMemory {
        revision: Some("f-2".into()),
        step,
        ..RolloutMemory::default()
    };
    let p = plan(Phase::WaitingForResume { step: 1 }, 1, &[], Some("f-1"));
    let n = events("Progressing", &at(0), &p, "f-2", 2, &Overlap::default());
    assert_eq!(reasons(&n), ["StepReached", "WaitingForResume"]);
    assert_eq!(n[0].message, "f-2: step 2 of 2");
    assert!(
        events(
            "WaitingForResume",
            &at(1),
            &p,
            "f-2",
            2,
            &Overlap::default()
        )
        .is_empty(),
        "nothing new: nothing said"
    );

    let done = plan(Phase::Complete, 2, &[], Some("f-2"));
    assert_eq!(
        reasons(&events(
            "Progressing",
            &at(2),
            &done,
            "f-2",
            2,
            &Overlap::default()
        )),
        ["RolloutComplete"]
    );
    assert!(
        events(
            "RolloutComplete",
            &at(2),
            &done,
            "f-2",
            2,
            &Overlap::default()
        )
        .is_empty()
    );

    let aborted = plan(
        Phase::Aborted,
        1,
        &[("a", "f-1"), ("b", "f-1")],
        Some("f-1"),
    );
    let overlap = Overlap {
        count: 1,
        first: vec!["x".into()],
    };
    let n = events("Progressing", &at(1), &aborted, "f-2", 2, &overlap);
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
    // Devices target f-6 and f-2 and one is pinned to f-1.
    let referenced = |r: &str| ["f-6", "f-2", "f-1"].contains(&r);
    // In use: f-6 (update, targets), f-5 (stable), f-2 (a target), f-1 (a pin),
    // f-3 (rollbackTo). Unused: f-4 only; a limit of 0 prunes it, 1 keeps it.
    let prune = revisions_to_prune(&revisions, referenced, "f-6", Some("f-5"), Some("f-3"), 0);
    assert_eq!(prune, ["f-4"]);
    assert!(
        revisions_to_prune(&revisions, referenced, "f-6", Some("f-5"), Some("f-3"), 1).is_empty()
    );
    // Without the pins and targets, the newest unused are kept first.
    let prune = revisions_to_prune(&revisions, |_| false, "f-6", None, None, 2);
    assert_eq!(prune, ["f-3", "f-2", "f-1"]);
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
    let mut devices = [view("a", None), view("b", None), view("c", None)];
    devices[0].pinned = Some("f-0000000001".into()); // arm64 device, amd64-only revision
    devices[1].pinned = Some("f-0000000002".into());
    devices[2].pinned = Some("f-0000000009".into());
    let refused = refuse_pins(&devices, &revisions);
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
    assert_eq!((&*refused[0].0, &*refused[1].0), ("a", "c"));
}
