//! The reconciler's decisions besides the rollout plan, as pure functions: which devices a
//! fleet has, which events a human should see, which revisions to forget. The reconciler
//! gathers their inputs from watch caches and writes what they answer.
use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Selector, SelectorExt};

use crate::device_index::CachedDevice;
use crate::reconcile::Overlay;
use crate::rollout::{self, DeviceView, Phase, RolloutMemory};

// === devices ===

/// A fleet of the namespace, as selection needs it.
#[derive(Debug, Clone)]
pub struct FleetSelector {
    pub name: String,
    pub selector: Selector,
    /// `metadata.creationTimestamp`, seconds: the older fleet had its devices first.
    pub created: i64,
}

/// A fleet's devices, and those another fleet selects too.
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    pub devices: Vec<DeviceView>,
    /// Selected by this fleet and another: each stays with the fleet that had it first.
    pub conflicted: Vec<String>,
}

/// The devices of namespace `ns` that `me` picks, as the planner sees them: offline when not
/// heard from within `offline_after` seconds, and with this controller's own recent target
/// writes (`written`, which the cache may not show yet) laid over. Entries of `written` the
/// cache already shows are dropped from it. A device that `others` select too stays with the
/// fleet that had it first: the one whose revision it targets, else the oldest fleet.
pub fn select_devices<'a>(
    ns: &str,
    me: &FleetSelector,
    others: &[FleetSelector],
    cached: impl IntoIterator<Item = &'a CachedDevice>,
    written: &mut Overlay,
    now: i64,
    offline_after: i64,
) -> Selection {
    let mut out = Selection::default();
    for device in cached {
        if !me.selector.matches(&device.labels) {
            continue;
        }
        let name = &device.view.name;
        let rivals: Vec<&FleetSelector> = others
            .iter()
            .filter(|f| f.selector.matches(&device.labels))
            .collect();
        if !rivals.is_empty() {
            out.conflicted.push(name.clone());
            let had_it = device
                .view
                .target
                .as_deref()
                .and_then(crate::views::fleet_of_revision)
                .filter(|f| *f == me.name || rivals.iter().any(|r| r.name == *f));
            let owner = match had_it {
                Some(f) => f,
                None => rivals
                    .iter()
                    .copied()
                    .chain(std::iter::once(me))
                    .min_by_key(|f| (f.created, f.name.as_str()))
                    .map_or(me.name.as_str(), |f| f.name.as_str()),
            };
            if owner != me.name {
                continue;
            }
        }
        let mut view = device.view.clone();
        view.online = view.online && !device.stale(now, offline_after);
        // The overlay is empty but for moments after a write: no key to build per device
        // on every reconcile of a large fleet.
        if !written.is_empty() {
            let key = (ns.to_owned(), name.clone());
            match written.get(&key) {
                Some((revision, _, _)) if view.target.as_ref() == Some(revision) => {
                    written.remove(&key);
                }
                Some((revision, at, _)) => {
                    view.target = Some(revision.clone());
                    view.targeted_at = Some(*at);
                }
                None => {}
            }
        }
        out.devices.push(view);
    }
    out
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
    conflicted: &[String],
) -> Vec<Note> {
    let mut out = Vec::new();
    if !conflicted.is_empty() {
        out.push(Note::warning(
            "OverlappingSelectors",
            format!(
                "{} devices are selected by this and another fleet; each stays with the fleet that had it first: {}",
                conflicted.len(),
                conflicted
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

/// How many devices target each revision of `names`.
pub fn device_counts<'a>(
    names: impl IntoIterator<Item = &'a str>,
    devices: &[DeviceView],
) -> BTreeMap<&'a str, usize> {
    names
        .into_iter()
        .map(|n| {
            let count = devices
                .iter()
                .filter(|d| d.target.as_deref() == Some(n))
                .count();
            (n, count)
        })
        .collect()
}

/// The revisions to delete: beyond the newest `limit` of those nothing uses. A revision
/// is in use when it is the update or stable revision, the one `rollbackTo` names, or
/// any device of the fleet targets, runs or is pinned to it. `revisions` are
/// (name, `spec.revision` number).
/// Marks each device pinned to a revision it cannot run (not one of the fleet's retained
/// `revisions`, or without a state for its architecture) and says why, per device.
pub fn refuse_pins(
    devices: &mut [DeviceView],
    revisions: &[std::sync::Arc<edgevisor_crds::FleetRevision>],
) -> Vec<(String, String)> {
    use kube::ResourceExt;
    let mut out = Vec::new();
    for d in devices.iter_mut() {
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
            d.pin_refused = true;
            out.push((d.name.clone(), why));
        }
    }
    out
}

/// Devices of the namespace that target one of `fleet`'s revisions but are not among its
/// selected `devices` any more: they left the fleet.
pub fn released(fleet: &str, devices: &[DeviceView], in_namespace: &[DeviceView]) -> Vec<String> {
    let selected: BTreeSet<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    in_namespace
        .iter()
        .filter(|d| !selected.contains(d.name.as_str()))
        .filter(|d| {
            d.target
                .as_deref()
                .and_then(crate::views::fleet_of_revision)
                == Some(fleet)
        })
        .map(|d| d.name.clone())
        .collect()
}

pub fn revisions_to_prune(
    revisions: &[(String, i64)],
    devices: &[DeviceView],
    update: &str,
    stable: Option<&str>,
    rollback_to: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let mut in_use: BTreeSet<&str> = [update].into_iter().chain(stable).collect();
    in_use.extend(rollback_to);
    for d in devices {
        in_use.extend(d.target.as_deref());
        in_use.extend(d.current.as_deref());
        in_use.extend(d.pinned.as_deref());
    }
    let mut unused: Vec<&(String, i64)> = revisions
        .iter()
        .filter(|(name, _)| !in_use.contains(name.as_str()))
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
