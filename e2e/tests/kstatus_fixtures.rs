//! The Fleet status the controller writes, as kstatus reads it (kpt, Config Sync, Flux and
//! Helm 4's `--wait`): a rollout under way or paused between steps is `InProgress`, a finished
//! one `Current`, an aborted or unrenderable one `Failed`, and a status from an older generation
//! says nothing of the new one. The objects are the Argo CD health fixtures, so both tools are
//! checked against the same statuses.
use std::path::Path;

use edgevisor_e2e::kstatus::kstatus;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("argocd/resource_customizations/edgevisor.dev/Fleet/testdata")
        .join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The message of the fixture's condition `type`, which kstatus passes on.
fn condition_message(fleet: &Value, type_: &str) -> String {
    fleet["status"]["conditions"]
        .as_array()
        .expect("the fixture has conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_else(|| panic!("the fixture has no {type_} condition with a message"))
        .to_string()
}

fn assert_kstatus(name: &str, status: &str, message: &str) {
    let fleet = fixture(name);
    let got = kstatus(&fleet).expect("running kstatus");
    assert_eq!(
        got,
        (status.to_string(), message.to_string()),
        "kstatus of the Fleet fixture {name}"
    );
}

#[test]
fn a_rollout_under_way_is_in_progress() {
    let fleet = fixture("progressing-rolling-out");
    assert_kstatus(
        "progressing-rolling-out",
        "InProgress",
        &condition_message(&fleet, "Reconciling"),
    );
}

/// A pause between steps, timed or until resumed, is still a rollout under way: Reconciling.
#[test]
fn a_rollout_paused_between_steps_is_in_progress() {
    for name in ["suspended-step-paused", "suspended-waiting-for-resume"] {
        let fleet = fixture(name);
        assert_kstatus(
            name,
            "InProgress",
            &condition_message(&fleet, "Reconciling"),
        );
    }
}

/// A fleet paused by `spec.paused` is not Reconciling, yet not Ready: kstatus has no "suspended"
/// and falls back to Ready=False, so tools that wait for Current wait until it is unpaused.
#[test]
fn a_fleet_paused_by_the_user_is_in_progress() {
    let fleet = fixture("suspended-fleet-paused");
    assert_kstatus(
        "suspended-fleet-paused",
        "InProgress",
        &condition_message(&fleet, "Ready"),
    );
}

#[test]
fn a_complete_rollout_is_current() {
    assert_kstatus("healthy", "Current", "Resource is Ready");
    // Also with a failure below the threshold, and while held.
    assert_kstatus(
        "healthy-paused-with-a-failure",
        "Current",
        "Resource is Ready",
    );
}

/// Stalled=True makes it Failed, with the Stalled message: how many devices failed and why, or
/// what the registry said.
#[test]
fn an_aborted_or_unrenderable_rollout_is_failed() {
    for name in [
        "degraded-aborted",
        "degraded-render-failed",
        "degraded-progress-deadline",
    ] {
        let fleet = fixture(name);
        assert_kstatus(name, "Failed", &condition_message(&fleet, "Stalled"));
    }
}

/// A status written for generation 3 says nothing of generation 4, even when it says Ready.
#[test]
fn a_status_of_an_older_generation_is_in_progress() {
    let fleet = fixture("progressing-stale-generation");
    assert_eq!(
        condition_message(&fleet, "Ready"),
        "19 devices run demo-3f9a1c2b7d; 1 of 20 devices run an architecture demo-3f9a1c2b7d does not provide; they are not updated",
        "the stale fixture carries a finished rollout's Ready"
    );
    assert_kstatus(
        "progressing-stale-generation",
        "InProgress",
        "Fleet generation is 4, but latest observed generation is 3",
    );
}
