//! [`plan`]: given a Fleet's rollout settings, what it remembers, and its Devices, which devices
//! get a new target now, and what the rollout's status is.
//!
//! Words used here:
//! - *targetable*: a device of a supported architecture, not pinned, not held (`spec.paused`);
//!   the only devices the rollout moves.
//! - *in flight*: a device whose target differs from what it runs and whose update has not
//!   failed; it is unavailable, and counts against `maxUnavailable` whatever revision it is
//!   going to.
//! - *failed*: its update to the update revision ended in `WONTGO`/`ERROR`, or, while targeted
//!   to it, did not end within `progressDeadlineSeconds` of its start (or of being targeted, for
//!   a device that never started: an offline device).
//! - *canary order*: devices sorted by a stable hash of their name, so the same devices go first
//!   in every rollout of every fleet revision.
use std::collections::BTreeSet;

use edgevisor_crds::fleet::{Resume, RolloutStrategy};
use edgevisor_crds::{Architecture, UpdateStatus};

use super::sizes::{Round, resolve};

/// The Fleet, as the plan needs it.
#[derive(Clone, Debug)]
pub struct FleetView<'a> {
    /// `spec.strategy`.
    pub strategy: &'a RolloutStrategy,
    /// `spec.paused`: nothing moves.
    pub paused: bool,
    /// `spec.resume`: lets a pause `untilResumed` end.
    pub resume: Option<&'a Resume>,
    /// The revision being rolled out (the template's, or `rollbackTo`).
    pub update_revision: &'a str,
    /// The last revision that reached every targetable device; where auto-rollback goes.
    pub stable_revision: Option<&'a str>,
    /// The architectures the update revision provides.
    pub supported: &'a BTreeSet<Architecture>,
    /// Now, in seconds since the epoch.
    pub now: i64,
}

/// What the plan remembers from one call to the next (kept in `Fleet.status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutMemory {
    /// The update revision the rest is about: memory of another revision is forgotten, so a new
    /// template starts a new rollout at step 0.
    pub revision: Option<String>,
    /// The index of the step the rollout is at (`steps.len()` once past the last).
    pub step: usize,
    /// When the pause of `step` began.
    pub pause_started_at: Option<i64>,
    /// The failure threshold was crossed: no device gets the update revision any more.
    pub aborted: bool,
}

/// A device's latest update, as it reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// The revision it was installing.
    pub revision: String,
    /// Where it got.
    pub status: UpdateStatus,
    /// When it started, seconds since the epoch.
    pub started_at: Option<i64>,
}

/// A Device, as the plan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// `metadata.name`.
    pub name: String,
    /// The architecture it reported; unknown devices are never targeted.
    pub architecture: Option<Architecture>,
    /// `spec.revision`.
    pub target: Option<String>,
    /// `status.currentRevision`: what it runs, committed.
    pub current: Option<String>,
    /// `status.update`.
    pub update: Option<UpdateReport>,
    /// When the controller set `target` (it records this beside the target).
    pub targeted_at: Option<i64>,
    /// `spec.paused`.
    pub paused: bool,
    /// `spec.pinnedRevision`.
    pub pinned: Option<String>,
    /// Heard from within the liveness window.
    pub online: bool,
    /// Every container at its goal.
    pub ready: bool,
    /// Revisions whose update ended in failure on it, from its history: a device sent back
    /// after failing still counts as failed for that revision.
    pub failed_revisions: Vec<String>,
    /// `spec.revoked`: it can fetch nothing, so no rollout moves it or waits for it.
    pub revoked: bool,
}

/// Where the rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Devices are being moved to the update revision.
    Progressing,
    /// Waiting out a timed pause after `step`.
    Paused { step: usize, remaining: i64 },
    /// Waiting for `spec.resume` to name this revision and `step`.
    WaitingForResume { step: usize },
    /// `spec.paused`: nothing moves.
    FleetPaused,
    /// Every targetable device runs the update revision.
    Complete,
    /// Too many devices failed.
    Aborted,
}

/// Device counts, as `Fleet.status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub devices: usize,
    pub updated: usize,
    pub ready: usize,
    pub updating: usize,
    pub failed: usize,
    pub offline: usize,
    pub unsupported: usize,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// New targets, `(device, revision)`, in canary order.
    pub retarget: Vec<(String, String)>,
    /// What to remember.
    pub memory: RolloutMemory,
    /// Where the rollout stands.
    pub phase: Phase,
    /// The stable revision after this plan: the update revision once complete.
    pub stable_revision: Option<String>,
    /// Counts before the retargets take effect.
    pub counts: Counts,
    /// Plan again after this many seconds even if nothing changes (a pause or a deadline ends).
    pub requeue_after: Option<i64>,
}

#[cfg(test)]
impl DeviceView {
    /// An online, ready arm64 device that runs and targets `revision`: what tests vary.
    pub fn test(name: &str, revision: Option<&str>) -> DeviceView {
        DeviceView {
            name: name.to_string(),
            architecture: Some(Architecture::Arm64),
            target: revision.map(str::to_owned),
            current: revision.map(str::to_owned),
            update: None,
            targeted_at: Some(0),
            paused: false,
            pinned: None,
            online: true,
            ready: true,
            failed_revisions: vec![],
            revoked: false,
        }
    }
}

/// A stable 64-bit FNV-1a hash of a device name: the canary order. Written out rather than
/// taken from `std` because `DefaultHasher` may change between Rust releases, and the canaries
/// must not.
pub fn canary_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl DeviceView {
    fn supported(&self, fleet: &FleetView<'_>) -> bool {
        self.architecture
            .is_some_and(|a| fleet.supported.contains(&a))
    }

    fn targetable(&self, fleet: &FleetView<'_>) -> bool {
        self.supported(fleet) && self.pinned.is_none() && !self.paused && !self.revoked
    }

    /// Its update towards `revision` ended in failure.
    fn reported_failure(&self, revision: &str) -> bool {
        self.update
            .as_ref()
            .is_some_and(|u| u.revision == revision && u.status.is_failure())
            || self.failed_revisions.iter().any(|r| r == revision)
    }

    fn in_flight(&self) -> bool {
        match &self.target {
            Some(target) => self.current.as_ref() != Some(target) && !self.reported_failure(target),
            None => false,
        }
    }

    /// Seconds left before its update to `revision` counts as failed for taking too long.
    fn deadline_left(&self, revision: &str, deadline: i64, now: i64) -> Option<i64> {
        if self.target.as_deref() != Some(revision) || !self.in_flight() {
            return None;
        }
        let started = self
            .update
            .as_ref()
            .filter(|u| u.revision == revision)
            .and_then(|u| u.started_at)
            .or(self.targeted_at)?;
        Some(started + deadline - now)
    }

    /// Its update to `revision` failed: reported so (even after it was sent elsewhere, so an
    /// aborted rollout still counts the failures that stopped it), or out of time.
    fn failed(&self, revision: &str, deadline: i64, now: i64) -> bool {
        self.reported_failure(revision)
            || self
                .deadline_left(revision, deadline, now)
                .is_some_and(|left| left <= 0)
    }
}

/// Decides the next moves of a rollout. Pure: the same inputs give the same plan.
pub fn plan(fleet: &FleetView<'_>, memory: &RolloutMemory, devices: &[DeviceView]) -> Plan {
    let update = fleet.update_revision;
    let strategy = fleet.strategy;
    let deadline = i64::from(strategy.progress_deadline_seconds.max(1));
    let now = fleet.now;

    // Memory of another revision is about another rollout.
    let mut memory = if memory.revision.as_deref() == Some(update) {
        memory.clone()
    } else {
        RolloutMemory {
            revision: Some(update.to_string()),
            ..RolloutMemory::default()
        }
    };

    let targetable: Vec<&DeviceView> = devices.iter().filter(|d| d.targetable(fleet)).collect();
    let size = devices
        .iter()
        .filter(|d| d.supported(fleet) && d.pinned.is_none())
        .count();
    let failed = targetable
        .iter()
        .filter(|d| d.failed(update, deadline, now))
        .count();
    let counts = Counts {
        devices: devices.len(),
        updated: devices
            .iter()
            .filter(|d| d.current.as_deref() == Some(update))
            .count(),
        ready: devices
            .iter()
            .filter(|d| d.current.as_deref() == Some(update) && d.ready)
            .count(),
        updating: devices
            .iter()
            .filter(|d| {
                d.target.as_deref() == Some(update)
                    && d.in_flight()
                    && !d.failed(update, deadline, now)
            })
            .count(),
        failed,
        offline: devices.iter().filter(|d| !d.online).count(),
        unsupported: devices.iter().filter(|d| !d.supported(fleet)).count(),
    };
    let mut plan = Plan {
        retarget: Vec::new(),
        memory: memory.clone(),
        phase: Phase::Progressing,
        stable_revision: fleet.stable_revision.map(str::to_string),
        counts,
        requeue_after: None,
    };

    if fleet.paused {
        plan.phase = Phase::FleetPaused;
        return plan;
    }

    // People's overrides come first: a pinned device runs its pin (unless held).
    for device in devices.iter().filter(|d| !d.paused && d.supported(fleet)) {
        if let Some(pin) = &device.pinned
            && device.target.as_ref() != Some(pin)
        {
            plan.retarget.push((device.name.clone(), pin.clone()));
        }
    }

    let threshold = resolve(&strategy.failure_threshold, size, Round::Up);
    if memory.aborted || failed >= threshold {
        memory.aborted = true;
        memory.pause_started_at = None;
        plan.phase = Phase::Aborted;
        if strategy.auto_rollback
            && let Some(stable) = fleet.stable_revision.filter(|s| *s != update)
        {
            for device in targetable
                .iter()
                .filter(|d| d.target.as_deref() == Some(update))
            {
                plan.retarget
                    .push((device.name.clone(), stable.to_string()));
            }
        }
        plan.memory = memory;
        return plan;
    }

    let on_update = |d: &&&DeviceView| d.current.as_deref() == Some(update);
    let updated = targetable.iter().filter(on_update).count();
    // With no targetable device the rollout is vacuously complete, as a Deployment of zero
    // replicas is; but it has moved nobody, so it neither passes its steps nor makes the
    // revision stable: devices that appear later (or a cache still filling) start at step 0.
    if targetable.is_empty() {
        plan.phase = Phase::Complete;
        plan.memory = memory;
        return plan;
    }
    if updated == targetable.len() {
        plan.phase = Phase::Complete;
        plan.stable_revision = Some(update.to_string());
        memory.step = strategy.steps.len();
        memory.pause_started_at = None;
        plan.memory = memory;
        return plan;
    }

    // Walk the steps: a step is done when its devices run the update revision; its pause, if
    // any, must then end before the next step starts.
    let goal = loop {
        let Some(step) = strategy.steps.get(memory.step) else {
            break targetable.len();
        };
        let goal = resolve(&step.devices, size, Round::Up).min(targetable.len());
        if updated < goal {
            break goal;
        }
        if let Some(pause) = &step.pause {
            if let Some(seconds) = pause.duration_seconds {
                let started = *memory.pause_started_at.get_or_insert(now);
                let remaining = started + i64::from(seconds) - now;
                if remaining > 0 {
                    plan.phase = Phase::Paused {
                        step: memory.step,
                        remaining,
                    };
                    plan.requeue_after = Some(remaining);
                    plan.memory = memory;
                    return plan;
                }
            } else {
                let resumed = fleet.resume.is_some_and(|r| {
                    r.revision == update && usize::try_from(r.step).ok() == Some(memory.step)
                });
                if !resumed {
                    plan.phase = Phase::WaitingForResume { step: memory.step };
                    plan.memory = memory;
                    return plan;
                }
            }
        }
        memory.step += 1;
        memory.pause_started_at = None;
    };

    // Start as many devices as the goal still needs and the budget of unavailable devices allows.
    let max_unavailable = resolve(&strategy.max_unavailable, size, Round::Down);
    let mut in_flight = devices.iter().filter(|d| d.in_flight()).count()
        + plan
            .retarget
            .iter()
            .filter(|(name, _)| devices.iter().any(|d| &d.name == name && !d.in_flight()))
            .count();
    let targeted = targetable
        .iter()
        .filter(|d| d.target.as_deref() == Some(update))
        .count();
    let mut wanted = goal.saturating_sub(targeted);
    let mut candidates: Vec<&&DeviceView> = targetable
        .iter()
        .filter(|d| d.online && d.target.as_deref() != Some(update))
        .collect();
    candidates.sort_by_key(|d| (canary_key(&d.name), d.name.as_str()));
    for device in candidates {
        if wanted == 0 {
            break;
        }
        // A device already on its way elsewhere is unavailable anyway; turning it costs nothing.
        if !device.in_flight() {
            if in_flight >= max_unavailable {
                break;
            }
            in_flight += 1;
        }
        plan.retarget
            .push((device.name.clone(), update.to_string()));
        wanted -= 1;
    }

    plan.requeue_after = targetable
        .iter()
        .filter_map(|d| d.deadline_left(update, deadline, now))
        .filter(|left| *left > 0)
        .min();
    plan.memory = memory;
    plan
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
