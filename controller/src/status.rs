//! The Fleet's status, from a rollout plan. Pure: the reconciler writes what this returns.
//!
//! Conditions follow kstatus: `Ready` is the summary, `Reconciling` and `Stalled` are
//! abnormal-true (present and True only while the controller works, or is stuck), and a
//! condition keeps its `lastTransitionTime` while its status does not change, so rewriting the
//! same status is a no-op the reconciler can skip.
use edgevisor_crds::common::condition::{
    OVERLAPPING_SELECTORS, PROGRESSING, READY, RECONCILING, ROLLOUT_ABORTED, STALLED,
};
use edgevisor_crds::fleet::{ArchitectureCounts, FleetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::reconcile::decide::Overlap;
use crate::rollout::{Phase, Plan};

/// A condition's status, reason and message.
pub type Cond = (&'static str, bool, &'static str, String);

/// The conditions of a phase, in the contract DESIGN §3 and the Argo CD and kstatus checks
/// read.
pub fn phase_conditions(phase: &Phase, plan: &Plan, steps: usize) -> Vec<Cond> {
    let c = &plan.counts;
    let progress = format!(
        "{} of {} devices updated, {} updating, {} failed",
        c.updated,
        c.devices.saturating_sub(c.unsupported),
        c.updating,
        c.failed
    );
    let step_of = |step: usize| format!("step {} of {}", step + 1, steps);
    let (ready, reconciling, progressing, stalled, aborted): (Cond, Cond, Cond, Cond, Cond) =
        match phase {
            Phase::Progressing => match plan.stalled_for {
                None => (
                    (READY, false, "RollingOut", progress.clone()),
                    (RECONCILING, true, "RollingOut", progress.clone()),
                    (PROGRESSING, true, "RollingOut", progress.clone()),
                    (STALLED, false, "RollingOut", String::new()),
                    (ROLLOUT_ABORTED, false, "RollingOut", String::new()),
                ),
                // As a Deployment past its progress deadline: said, not aborted.
                Some(quiet) => {
                    let m = format!(
                        "no progress for {quiet}s (progressDeadlineSeconds); {progress}{}",
                        if plan.failed_devices.is_empty() {
                            String::new()
                        } else {
                            format!("; failed: {}", names(&plan.failed_devices, c.failed))
                        }
                    );
                    (
                        (READY, false, "ProgressDeadlineExceeded", m.clone()),
                        // kstatus reads Reconciling=True as in progress, whatever Stalled says.
                        (
                            RECONCILING,
                            false,
                            "ProgressDeadlineExceeded",
                            String::new(),
                        ),
                        (PROGRESSING, false, "ProgressDeadlineExceeded", m.clone()),
                        (STALLED, true, "ProgressDeadlineExceeded", m),
                        (
                            ROLLOUT_ABORTED,
                            false,
                            "ProgressDeadlineExceeded",
                            String::new(),
                        ),
                    )
                }
            },
            Phase::Paused { step, remaining } => {
                let m = format!(
                    "paused after {} for {remaining}s more; {progress}",
                    step_of(*step)
                );
                (
                    (READY, false, "StepPaused", m.clone()),
                    (RECONCILING, true, "StepPaused", m.clone()),
                    (PROGRESSING, false, "StepPaused", m),
                    (STALLED, false, "StepPaused", String::new()),
                    (ROLLOUT_ABORTED, false, "StepPaused", String::new()),
                )
            }
            Phase::WaitingForResume { step } => {
                let m = format!(
                    "waiting at {}; go on with kubectl edgevisor rollout promote, or spec.resume: {{revision: {}, step: {step}}}; {progress}",
                    step_of(*step),
                    plan.memory.revision.as_deref().unwrap_or_default()
                );
                (
                    (READY, false, "WaitingForResume", m.clone()),
                    (RECONCILING, true, "WaitingForResume", m.clone()),
                    (PROGRESSING, false, "WaitingForResume", m),
                    (STALLED, false, "WaitingForResume", String::new()),
                    (ROLLOUT_ABORTED, false, "WaitingForResume", String::new()),
                )
            }
            Phase::FleetPaused => {
                let m = format!("spec.paused is true; {progress}");
                (
                    (READY, false, "FleetPaused", m.clone()),
                    (RECONCILING, false, "FleetPaused", m.clone()),
                    (PROGRESSING, false, "FleetPaused", m),
                    (STALLED, false, "FleetPaused", String::new()),
                    (ROLLOUT_ABORTED, false, "FleetPaused", String::new()),
                )
            }
            Phase::Complete => {
                let mut m = format!(
                    "{} devices run {}",
                    c.updated,
                    plan.memory.revision.as_deref().unwrap_or_default()
                );
                if c.failed > 0 {
                    m.push_str(&format!(
                        "; {} failed (below the threshold): {}",
                        c.failed,
                        names(&plan.failed_devices, c.failed)
                    ));
                }
                if c.skipped > 0 {
                    m.push_str(&format!(
                        "; {} offline, to catch up when back: {}",
                        c.skipped,
                        names(&plan.skipped_offline, c.skipped)
                    ));
                }
                (
                    (READY, true, "RolloutComplete", m.clone()),
                    (RECONCILING, false, "RolloutComplete", String::new()),
                    (PROGRESSING, false, "RolloutComplete", m),
                    (STALLED, false, "RolloutComplete", String::new()),
                    (ROLLOUT_ABORTED, false, "RolloutComplete", String::new()),
                )
            }
            Phase::Aborted => {
                let m = format!(
                    "rollout of {} aborted: {} devices failed ({}); {}",
                    plan.memory.revision.as_deref().unwrap_or_default(),
                    c.failed,
                    names(&plan.failed_devices, c.failed),
                    match &plan.stable_revision {
                        Some(stable) =>
                            format!("devices go back to {stable} when autoRollback is on"),
                        None => "there is no stable revision to go back to".to_string(),
                    }
                );
                (
                    (READY, false, "RolloutAborted", m.clone()),
                    (RECONCILING, false, "RolloutAborted", String::new()),
                    (PROGRESSING, false, "RolloutAborted", m.clone()),
                    (STALLED, true, "RolloutAborted", m.clone()),
                    (ROLLOUT_ABORTED, true, "FailureThresholdExceeded", m),
                )
            }
        };
    vec![ready, reconciling, progressing, stalled, aborted]
}

/// `a, b, c` and, past the names kept, how many more.
fn names(shown: &[String], total: usize) -> String {
    let mut out = shown.join(", ");
    if total > shown.len() {
        out.push_str(&format!(" and {} more", total - shown.len()));
    }
    out
}

/// The conditions of a Fleet that cannot be rendered (a registry error, a bad template).
/// Every condition is rewritten, so a stale `RolloutAborted` or `Progressing` of an earlier
/// rollout does not hide the reason.
pub fn render_failed_conditions(message: &str) -> Vec<Cond> {
    vec![
        (READY, false, "RenderFailed", message.to_string()),
        (RECONCILING, false, "RenderFailed", String::new()),
        (PROGRESSING, false, "RenderFailed", message.to_string()),
        (STALLED, true, "RenderFailed", message.to_string()),
        (ROLLOUT_ABORTED, false, "RenderFailed", String::new()),
    ]
}

/// The status of a Fleet whose template cannot be rendered: the whole old status (server-side
/// apply drops what its manager stops sending, so the counts and the stable revision survive a
/// failed render) with the render failure's conditions, for `generation`.
pub fn render_failed_status(
    old: &FleetStatus,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> FleetStatus {
    FleetStatus {
        observed_generation: generation,
        conditions: merge_conditions(
            &old.conditions,
            render_failed_conditions(message),
            generation,
            now,
        ),
        ..old.clone()
    }
}

/// Merges new conditions into old ones: a condition whose status did not change keeps its
/// `lastTransitionTime`; conditions not named stay as they were.
pub fn merge_conditions(
    old: &[Condition],
    new: Vec<Cond>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = old.to_vec();
    for (type_, status, reason, message) in new {
        let status = if status { "True" } else { "False" }.to_string();
        let previous = out.iter().position(|c| c.type_ == type_);
        let transition = match previous.map(|i| &out[i]) {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(now),
        };
        let condition = Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: transition,
        };
        match previous {
            Some(i) => out[i] = condition,
            None => out.push(condition),
        }
    }
    out
}

/// The step column: the index while moving or paused, a word when not.
pub fn step_label(phase: &Phase, step: usize) -> String {
    match phase {
        Phase::Complete => "done".into(),
        Phase::Aborted => "aborted".into(),
        // The index is kept while paused: it is where the rollout goes on from.
        Phase::Paused { step, .. } | Phase::WaitingForResume { step } => step.to_string(),
        Phase::FleetPaused | Phase::Progressing => step.to_string(),
    }
}

/// The conditions of a plan, with devices the fleet shares with another (`overlapping`) said
/// in their own condition and in `Ready`'s message.
fn conditions(plan: &Plan, steps: usize, overlapping: &Overlap) -> Vec<Cond> {
    let mut out = phase_conditions(&plan.phase, plan, steps);
    // Devices of an architecture the revision lacks are never updated: said, not silent. A
    // revision none of the fleet's devices can run is no success at all.
    let c = &plan.counts;
    if c.unsupported > 0 {
        let m = format!(
            "{} of {} devices run an architecture {} does not provide; they are not updated",
            c.unsupported,
            c.devices,
            plan.memory.revision.as_deref().unwrap_or("the revision")
        );
        if c.unsupported == c.devices && plan.phase == Phase::Complete {
            for cond in out.iter_mut() {
                match cond.0 {
                    READY => *cond = (READY, false, "NoSupportedDevices", m.clone()),
                    STALLED => *cond = (STALLED, true, "NoSupportedDevices", m.clone()),
                    _ => {}
                }
            }
        } else if let Some(ready) = out.iter_mut().find(|cond| cond.0 == READY) {
            ready.3 = format!("{}; {m}", ready.3);
        }
    }
    if overlapping.count == 0 {
        out.push((OVERLAPPING_SELECTORS, false, "NoOverlap", String::new()));
        return out;
    }
    let shown: Vec<String> = overlapping
        .first
        .iter()
        .take(crate::rollout::plan::NAMES_SHOWN)
        .cloned()
        .collect();
    let m = format!(
        "{} devices are also selected by another fleet; each stays with the fleet that had it \
         first: {}",
        overlapping.count,
        names(&shown, overlapping.count)
    );
    if let Some(ready) = out.iter_mut().find(|c| c.0 == READY) {
        ready.3 = format!("{}; {m}", ready.3);
    }
    out.push((OVERLAPPING_SELECTORS, true, "OverlappingSelectors", m));
    out
}

/// The Fleet's whole status after a plan.
pub fn fleet_status(
    old: Option<&FleetStatus>,
    plan: &Plan,
    steps: usize,
    architectures: Vec<ArchitectureCounts>,
    overlapping: &Overlap,
    generation: Option<i64>,
    now: Timestamp,
) -> FleetStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let c = &plan.counts;
    let n = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    FleetStatus {
        observed_generation: generation,
        update_revision: plan.memory.revision.clone(),
        stable_revision: plan.stable_revision.clone(),
        current_step: Some(step_label(&plan.phase, plan.memory.step)),
        pause_started_at: plan
            .memory
            .pause_started_at
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(Time),
        last_progress_time: plan
            .memory
            .progress
            .as_ref()
            .and_then(|(_, at)| Timestamp::from_second(*at).ok())
            .map(Time),
        progress_mark: plan.memory.progress.as_ref().map(|(mark, _)| mark.clone()),
        retry_attempt: plan.memory.retry_attempt,
        failures_since: plan
            .memory
            .failures_since
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(Time),
        devices: n(c.devices),
        updated: n(c.updated),
        ready: n(c.ready),
        updating: n(c.updating),
        failed: n(c.failed),
        offline: n(c.offline),
        unsupported: n(c.unsupported),
        architectures,
        conditions: merge_conditions(
            old_conditions,
            conditions(plan, steps, overlapping),
            generation,
            now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{RolloutMemory, plan::Counts};

    fn plan(phase: Phase) -> Plan {
        Plan {
            failed_devices: vec![],
            skipped_offline: vec![],
            retarget: vec![],
            memory: RolloutMemory {
                revision: Some("f-0123456789".into()),
                step: 1,
                pause_started_at: None,
                aborted: false,
                ..RolloutMemory::default()
            },
            phase,
            stable_revision: Some("f-aaaaaaaaaa".into()),
            counts: Counts {
                devices: 20,
                updated: 2,
                updating: 1,
                ..Counts::default()
            },
            requeue_after: None,
            stalled_for: None,
            more: false,
        }
    }

    fn get<'a>(conditions: &'a [Condition], t: &str) -> &'a Condition {
        conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn each_phase_reads_as_kstatus_expects() {
        let now = Timestamp::UNIX_EPOCH;
        let s = fleet_status(
            None,
            &plan(Phase::Progressing),
            3,
            vec![],
            &Overlap::default(),
            Some(4),
            now,
        );
        assert_eq!(get(&s.conditions, READY).status, "False");
        assert_eq!(get(&s.conditions, RECONCILING).status, "True");
        assert_eq!(
            get(&s.conditions, READY).message,
            "2 of 20 devices updated, 1 updating, 0 failed"
        );
        assert_eq!(s.current_step.as_deref(), Some("1"));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );

        let s = fleet_status(
            None,
            &plan(Phase::Complete),
            3,
            vec![],
            &Overlap::default(),
            Some(4),
            now,
        );
        assert_eq!(get(&s.conditions, READY).status, "True");
        assert_eq!(get(&s.conditions, RECONCILING).status, "False");
        assert_eq!(s.current_step.as_deref(), Some("done"));
        // Complete with failures below the threshold and devices skipped while offline: both
        // named in the message a user reads.
        let mut partial = plan(Phase::Complete);
        partial.counts.failed = 12;
        partial.failed_devices = (0..10).map(|i| format!("kiosk-{i}")).collect();
        partial.skipped_offline = vec!["kiosk-99".into()];
        partial.counts.skipped = 1;
        let s = fleet_status(None, &partial, 3, vec![], &Overlap::default(), Some(4), now);
        let ready = get(&s.conditions, READY);
        assert_eq!(ready.status, "True");
        assert!(
            ready
                .message
                .contains("12 failed (below the threshold): kiosk-0, kiosk-1")
                && ready.message.contains("kiosk-9 and 2 more")
                && ready
                    .message
                    .contains("1 offline, to catch up when back: kiosk-99"),
            "{}",
            ready.message
        );

        let mut aborted = plan(Phase::Aborted);
        aborted.counts.failed = 1;
        aborted.failed_devices = vec!["kiosk-3".into()];
        let s = fleet_status(None, &aborted, 3, vec![], &Overlap::default(), Some(4), now);
        // Devices shared with another fleet are named, and Ready says so.
        let shared = fleet_status(
            None,
            &plan(Phase::Complete),
            3,
            vec![],
            &Overlap {
                count: 1,
                first: vec!["kiosk-9".into()],
            },
            Some(4),
            now,
        );
        assert_eq!(
            get(&shared.conditions, OVERLAPPING_SELECTORS).status,
            "True"
        );
        assert!(get(&shared.conditions, READY).message.contains("kiosk-9"));
        assert!(get(&s.conditions, STALLED).message.contains("(kiosk-3)"));
        assert_eq!(get(&s.conditions, STALLED).status, "True");
        assert_eq!(get(&s.conditions, ROLLOUT_ABORTED).status, "True");
        assert_eq!(
            get(&s.conditions, ROLLOUT_ABORTED).reason,
            "FailureThresholdExceeded"
        );

        let s = fleet_status(
            None,
            &plan(Phase::WaitingForResume { step: 0 }),
            3,
            vec![],
            &Overlap::default(),
            Some(4),
            now,
        );
        assert!(
            get(&s.conditions, READY)
                .message
                .contains("spec.resume: {revision: f-0123456789, step: 0}")
        );
    }

    #[test]
    fn devices_of_a_missing_architecture_are_said_and_none_at_all_is_no_success() {
        let now = Timestamp::UNIX_EPOCH;
        let mut some = plan(Phase::Complete);
        some.counts.unsupported = 2;
        let s = fleet_status(None, &some, 3, vec![], &Overlap::default(), Some(4), now);
        assert_eq!(get(&s.conditions, READY).status, "True");
        assert!(
            get(&s.conditions, READY)
                .message
                .contains("2 of 20 devices run an architecture")
        );
        let mut none = plan(Phase::Complete);
        none.counts.unsupported = 20;
        let s = fleet_status(None, &none, 3, vec![], &Overlap::default(), Some(4), now);
        assert_eq!(get(&s.conditions, READY).reason, "NoSupportedDevices");
        assert_eq!(get(&s.conditions, STALLED).status, "True");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(100).unwrap();
        let first = fleet_status(
            None,
            &plan(Phase::Progressing),
            3,
            vec![],
            &Overlap::default(),
            Some(1),
            t0,
        );
        let again = fleet_status(
            Some(&first),
            &plan(Phase::Progressing),
            3,
            vec![],
            &Overlap::default(),
            Some(1),
            t1,
        );
        assert_eq!(first, again, "the same plan later gives the same status");
        let done = fleet_status(
            Some(&first),
            &plan(Phase::Complete),
            3,
            vec![],
            &Overlap::default(),
            Some(1),
            t1,
        );
        assert_eq!(get(&done.conditions, READY).last_transition_time, Time(t1));
        assert_eq!(
            get(&done.conditions, STALLED).last_transition_time,
            Time(t0)
        );
    }
}
