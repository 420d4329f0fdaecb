//! The reconciler's decisions besides the rollout plan, as pure functions: which devices a
//! fleet has, which events a human should see, which revisions to forget. The reconciler
//! gathers their inputs from watch caches and writes what they answer.
use std::collections::BTreeSet;

use kube::core::Selector;

use crate::rollout::{self, DeviceView, Phase, RolloutMemory};

// === devices ===

/// A fleet of the namespace, as selection needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSelector {
    pub name: String,
    pub selector: Selector,
    /// `metadata.creationTimestamp`, seconds: the older fleet had its devices first.
    pub created: i64,
}

/// Which of the fleets that select a device has it (an index into `selecting`): the one whose
/// revision it targets, else the oldest.
pub fn owner(selecting: &[&FleetSelector], target: Option<&str>) -> Option<usize> {
    let had_it = target
        .and_then(crate::views::fleet_of_revision)
        .and_then(|f| selecting.iter().position(|s| s.name == f));
    had_it.or_else(|| {
        selecting
            .iter()
            .enumerate()
            .min_by_key(|(_, f)| (f.created, f.name.as_str()))
            .map(|(i, _)| i)
    })
}

/// A fleet's devices that another fleet selects too: how many, and the first names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlap {
    pub count: usize,
    pub first: Vec<String>,
}

// === events ===

/// An event for a human: `kubectl describe fleet` and `kubectl get events` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: String) -> Note {
        Note {
            warning: false,
            reason,
            message,
        }
    }
    pub fn warning(reason: &'static str, message: String) -> Note {
        Note {
            warning: true,
            reason,
            message,
        }
    }
}

/// The events a reconcile should emit: a rollout starting, a step reached, the rollout
/// ending (complete, aborted, waiting, pausing: once, when the Ready reason changes),
/// devices sent back, devices another fleet selects too.
pub fn events(
    old_ready_reason: &str,
    memory: &RolloutMemory,
    plan: &rollout::Plan,
    update: &str,
    steps: usize,
    overlap: &Overlap,
) -> Vec<Note> {
    let mut out = Vec::new();
    if overlap.count > 0 {
        out.push(Note::warning(
            "OverlappingSelectors",
            format!(
                "{} devices are selected by this and another fleet; each stays with the fleet that had it first: {}",
                overlap.count,
                overlap
                    .first
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if memory.revision.as_deref() != Some(update) {
        out.push(Note::normal(
            "RolloutStarted",
            format!("rolling out {update}"),
        ));
    } else if plan.memory.step > memory.step && plan.phase != Phase::Complete {
        out.push(Note::normal(
            "StepReached",
            if plan.memory.step >= steps {
                format!("{update}: past the last step, every device may update")
            } else {
                format!("{update}: step {} of {steps}", plan.memory.step + 1)
            },
        ));
    }
    match &plan.phase {
        Phase::Complete if old_ready_reason != "RolloutComplete" => out.push(Note::normal(
            "RolloutComplete",
            match (plan.counts.failed, plan.counts.skipped) {
                (0, 0) => format!("every device runs {update}"),
                (failed, offline) => format!(
                    "{update} reached the fleet: {} devices run it, {failed} failed, {offline} \
                     offline will catch up",
                    plan.counts.updated
                ),
            },
        )),
        Phase::Aborted if old_ready_reason != "RolloutAborted" => out.push(Note::warning(
            "RolloutAborted",
            format!(
                "{} devices failed {update}; the rollout stopped",
                plan.counts.failed
            ),
        )),
        Phase::Progressing
            if plan.stalled_for.is_some() && old_ready_reason != "ProgressDeadlineExceeded" =>
        {
            out.push(Note::warning(
                "ProgressDeadlineExceeded",
                format!(
                    "{update}: no progress for {}s; the rollout goes on if devices move",
                    plan.stalled_for.unwrap_or_default()
                ),
            ))
        }
        Phase::WaitingForResume { step } if old_ready_reason != "WaitingForResume" => {
            out.push(Note::normal(
                "WaitingForResume",
                format!(
                    "step {step} done; set spec.resume to {{revision: {update}, step: {step}}} to go on"
                ),
            ))
        }
        Phase::Paused { step, remaining } if old_ready_reason != "StepPaused" => out.push(
            Note::normal("StepPaused", format!("step {step} done; pausing {remaining}s")),
        ),
        _ => {}
    }
    let rollback = plan
        .retarget
        .iter()
        .filter(|(_, r)| r != update && Some(r.as_str()) == plan.stable_revision.as_deref())
        .count();
    if rollback > 0 {
        out.push(Note::warning(
            "RolledBack",
            format!(
                "sent {rollback} devices back to {}",
                plan.stable_revision.as_deref().unwrap_or_default()
            ),
        ));
    }
    out
}

// === revisions ===

/// Devices pinned to a revision they cannot run (not one of the fleet's retained `revisions`,
/// or without a state for the device's architecture), and why.
pub fn refuse_pins<'a>(
    pinned: impl IntoIterator<Item = &'a DeviceView>,
    revisions: &[std::sync::Arc<edgevisor_crds::FleetRevision>],
) -> Vec<(String, String)> {
    use kube::ResourceExt;
    let mut out = Vec::new();
    for d in pinned {
        let Some(pin) = d.pinned.as_deref() else {
            continue;
        };
        let why = match revisions.iter().find(|r| r.name_any() == pin) {
            None => Some(format!(
                "pinnedRevision {pin} is not a retained revision of its fleet"
            )),
            Some(r) => match d.architecture {
                Some(arch) if !r.spec.architectures.iter().any(|a| a.architecture == arch) => {
                    Some(format!(
                        "pinnedRevision {pin} has no {} state (it provides {})",
                        arch.as_str(),
                        r.spec.architectures_label()
                    ))
                }
                _ => None,
            },
        };
        if let Some(why) = why {
            out.push((d.name.to_string(), why));
        }
    }
    out
}

/// The revisions to delete: beyond the newest `limit` of those nothing uses. A revision
/// is in use when it is the update or stable revision, the one `rollbackTo` names, or
/// a device of the namespace targets, runs or is pinned to it (`referenced`). `revisions` are
/// (name, `spec.revision` number).
pub fn revisions_to_prune(
    revisions: &[(String, i64)],
    referenced: impl Fn(&str) -> bool,
    update: &str,
    stable: Option<&str>,
    rollback_to: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let mut in_use: BTreeSet<&str> = [update].into_iter().chain(stable).collect();
    in_use.extend(rollback_to);
    let mut unused: Vec<&(String, i64)> = revisions
        .iter()
        .filter(|(name, _)| !in_use.contains(name.as_str()) && !referenced(name))
        .collect();
    unused.sort_by_key(|(_, number)| std::cmp::Reverse(*number));
    unused
        .into_iter()
        .skip(limit)
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
