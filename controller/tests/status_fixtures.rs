//! The Fleet fixtures the Argo CD health checks and kstatus are tested on
//! (`e2e/argocd/resource_customizations/edgevisor.dev/Fleet/testdata`) are statuses this
//! controller writes: each is made here by the controller's own status code from a plan, and a
//! fixture that differs fails this test. `UPDATE_FIXTURES=1 cargo test -p
//! edgevisor-controller --test status_fixtures` writes them again after a change.
use edgevisor_controller::rollout::plan::Counts;
use edgevisor_controller::rollout::{Phase, Plan, RolloutMemory};
use edgevisor_controller::status;
use edgevisor_crds::fleet::{ArchitectureCounts, FleetStatus};
use edgevisor_crds::{Architecture, Fleet};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

const UPDATE: &str = "demo-3f9a1c2b7d";
const STABLE: &str = "demo-8e1d0c4a55";

fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../e2e/argocd/resource_customizations/edgevisor.dev/Fleet/testdata")
}

/// The Fleet every fixture shares: a canary of one until resumed, then a quarter for 600 s.
fn fleet(generation: i64, paused: bool) -> Fleet {
    let mut spec = json!({
        "selector": {"matchLabels": {"site": "berlin"}},
        "template": {"containers": [{"name": "app", "image": "registry.example.com/app:1.4"}]},
        "strategy": {"maxUnavailable": 2, "steps": [
            {"devices": 1, "pause": {"untilResumed": true}},
            {"devices": "25%", "pause": {"durationSeconds": 600}}],
            "failureThreshold": "10%", "autoRollback": true, "progressDeadlineSeconds": 600}
    });
    if paused {
        spec["paused"] = json!(true);
    }
    serde_json::from_value(json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet",
        "metadata": {"name": "demo", "namespace": "edge", "generation": generation,
            "uid": "5d0c5f3e-8a4b-4c1e-9f7a-2b6d1e0a9c31", "creationTimestamp": "2026-11-20T08:00:00Z"},
        "spec": spec
    }))
    .expect("the fixture fleet")
}

fn plan(phase: Phase, step: usize, counts: Counts) -> Plan {
    Plan {
        failed_devices: vec![],
        skipped_offline: vec![],
        retarget: vec![],
        memory: RolloutMemory {
            revision: Some(UPDATE.into()),
            step,
            aborted: phase == Phase::Aborted,
            pause_started_at: matches!(phase, Phase::Paused { .. })
                .then(|| at("2026-11-25T10:00:00Z").as_second()),
            progress: Some((
                "0b5f1c2d3e4f5a6b".into(),
                at("2026-11-25T10:09:48Z").as_second(),
            )),
            ..RolloutMemory::default()
        },
        phase,
        stable_revision: Some(STABLE.into()),
        counts,
        requeue_after: None,
        stalled_for: None,
        more: false,
    }
}

fn at(t: &str) -> Timestamp {
    t.parse().expect("a time")
}

fn counts(updated: usize, updating: usize, failed: usize, unsupported: usize) -> Counts {
    Counts {
        devices: 20,
        updated,
        ready: updated,
        updating,
        failed,
        offline: 0,
        unsupported,
        skipped: 0,
    }
}

fn architectures(updated_amd64: i32, updated_arm64: i32) -> Vec<ArchitectureCounts> {
    vec![
        ArchitectureCounts {
            architecture: Architecture::Amd64,
            devices: 12,
            updated: updated_amd64,
            ready: updated_amd64,
            failed: 0,
            supported: true,
        },
        ArchitectureCounts {
            architecture: Architecture::Arm64,
            devices: 7,
            updated: updated_arm64,
            ready: updated_arm64,
            failed: 0,
            supported: true,
        },
        ArchitectureCounts {
            architecture: Architecture::ArmV7,
            devices: 1,
            updated: 0,
            ready: 0,
            failed: 0,
            supported: false,
        },
    ]
}

/// `(file, comment, fleet)` for every fixture.
fn fixtures() -> Vec<(&'static str, &'static str, Fleet)> {
    let now = at("2026-11-25T10:20:00Z");
    let with = |mut f: Fleet, s: FleetStatus| {
        f.status = Some(s);
        f
    };
    let written = |p: &Plan, generation: i64, archs: Vec<ArchitectureCounts>| {
        status::fleet_status(
            None,
            p,
            2,
            archs,
            &Default::default(),
            Some(generation),
            now,
        )
    };
    let complete = {
        let mut p = plan(Phase::Complete, 2, counts(19, 0, 0, 1));
        p.stable_revision = Some(UPDATE.into());
        p
    };
    let aborted = {
        let mut p = plan(Phase::Aborted, 1, counts(1, 0, 2, 0));
        p.failed_devices = vec!["berlin-07".into(), "berlin-12".into()];
        p
    };
    let stalled = {
        let mut p = plan(Phase::Progressing, 1, counts(3, 1, 0, 0));
        p.stalled_for = Some(612);
        p
    };
    let complete_with_a_failure = {
        let mut p = plan(Phase::Complete, 2, counts(19, 0, 1, 0));
        p.stable_revision = Some(UPDATE.into());
        p.failed_devices = vec!["berlin-07".into()];
        p
    };
    let mut no_status = fleet(1, false);
    no_status.status = None;
    vec![
        (
            "healthy",
            "Rollout complete; one arm/v7 device has no image of its architecture.",
            with(fleet(3, false), written(&complete, 3, architectures(12, 7))),
        ),
        (
            "progressing-rolling-out",
            "Rolling out at step 1: 3 devices updated, 2 updating, 1 failed (under the threshold of 2).",
            with(
                fleet(3, false),
                written(&plan(Phase::Progressing, 1, counts(3, 2, 1, 0)), 3, vec![]),
            ),
        ),
        (
            "progressing-no-status",
            "Just created: the controller has not reconciled it yet, so there is no status.",
            no_status,
        ),
        (
            "progressing-stale-generation",
            "The template changed (generation 4) and the status still describes generation 3's finished rollout.",
            with(fleet(4, false), written(&complete, 3, architectures(12, 7))),
        ),
        (
            "suspended-waiting-for-resume",
            "The canary runs the new revision; the rollout waits at step 0 to be resumed.",
            with(
                fleet(3, false),
                written(
                    &plan(Phase::WaitingForResume { step: 0 }, 0, counts(1, 0, 0, 0)),
                    3,
                    vec![],
                ),
            ),
        ),
        (
            "suspended-step-paused",
            "Step 1 done: a timed pause of 600 s before the rest.",
            with(
                fleet(3, false),
                written(
                    &plan(
                        Phase::Paused {
                            step: 1,
                            remaining: 480,
                        },
                        1,
                        counts(5, 0, 0, 0),
                    ),
                    3,
                    vec![],
                ),
            ),
        ),
        (
            "suspended-fleet-paused",
            "Paused by the user (spec.paused) in the middle of a rollout.",
            with(
                fleet(4, true),
                written(&plan(Phase::FleetPaused, 1, counts(3, 0, 0, 0)), 4, vec![]),
            ),
        ),
        (
            "degraded-aborted",
            "Two devices failed, crossing the threshold (10% of 20): the rollout aborted.",
            with(fleet(3, false), written(&aborted, 3, vec![])),
        ),
        (
            "degraded-render-failed",
            "The template names a tag the registry does not have: nothing can be rendered.",
            with(
                fleet(3, false),
                status::render_failed_status(
                    &written(&complete, 2, architectures(12, 7)),
                    "resolving registry.example.com/app:1.5: registry.example.com answered 404 MANIFEST_UNKNOWN: manifest unknown",
                    Some(3),
                    now,
                ),
            ),
        ),
        (
            "degraded-progress-deadline",
            "No device made progress for progressDeadlineSeconds: Stalled, not aborted.",
            with(fleet(3, false), written(&stalled, 3, vec![])),
        ),
        (
            "healthy-paused-with-a-failure",
            "Complete with one failure below the threshold, then held by spec.paused: still Ready.",
            with(fleet(3, true), written(&complete_with_a_failure, 3, vec![])),
        ),
    ]
}

fn render(comment: &str, fleet: &Fleet) -> String {
    let yaml = serde_norway::to_string(fleet).expect("YAML");
    format!(
        "# {comment}\n# Written by controller/tests/status_fixtures.rs from the controller's status code.\n{yaml}"
    )
}

#[test]
fn the_fixtures_are_statuses_the_controller_writes() {
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let mut stale = Vec::new();
    for (name, comment, fleet) in fixtures() {
        let path = fixtures_dir().join(format!("{name}.yaml"));
        let want = render(comment, &fleet);
        if update {
            std::fs::write(&path, &want).expect("writing a fixture");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "fixtures differ from what the controller writes: {stale:?}; run UPDATE_FIXTURES=1 cargo test -p edgevisor-controller --test status_fixtures"
    );
}
