//! [`plan`]: given a Fleet's rollout settings, what it remembers, and its Devices, which devices
//! get a new target now, and what the rollout's status is.
//!
//! Words used here:
//! - *targetable*: a device of a supported architecture, not pinned, not held (`spec.paused`);
//!   the only devices the rollout moves.
//! - *in flight*: a device whose target differs from what it runs and whose update has not
//!   failed; it is unavailable, and counts against `maxUnavailable` whatever revision it is
//!   going to.
//! - *failed*: its latest result for the update revision is `WONTGO`/`ERROR` (a device that
//!   later succeeds, or is trying again, is not failed), or, while targeted to it, it did not
//!   end within `progressDeadlineSeconds` of its start (or of being targeted, for a device that
//!   never started). A failed device has *finished* its part: it frees its `maxUnavailable`
//!   slot, counts toward a step's goal like a device that succeeded, and never holds up
//!   completion; only the failure threshold stops the rollout.
//! - *skipped*: offline when its turn comes. It is not started, and the rollout completes
//!   without it; when it comes back it catches up (within `maxUnavailable`).
//! - *joined*: a targetable device that has never had a target. While the rollout is paused,
//!   waiting or aborted it gets the stable revision at once; otherwise its turn comes.
//! - *canary order*: devices sorted by a stable hash of their name, so the same devices go first
//!   in every rollout of every fleet revision.
use std::collections::BTreeSet;
use std::sync::Arc;

use edgevisor_crds::fleet::{Abort, Resume, Retry, RolloutStrategy};
use edgevisor_crds::{Architecture, UpdateStatus};

use super::sizes::{Round, resolve};
use super::tally::{Basis, Name, Tally, progress_part};

/// The Fleet, as the plan needs it.
#[derive(Clone, Debug)]
pub struct FleetView<'a> {
    /// `spec.strategy`.
    pub strategy: &'a RolloutStrategy,
    /// `spec.paused`: nothing moves.
    pub paused: bool,
    /// `spec.resume`: ends the pause of the step it names (timed or until resumed); with
    /// `full`, every remaining step.
    pub resume: Option<&'a Resume>,
    /// `spec.abort`: stops the rollout of the revision it names.
    pub abort: Option<&'a Abort>,
    /// `spec.retry`: runs the revision it names again from step 0.
    pub retry: Option<&'a Retry>,
    /// The update revision already reached the whole fleet once. Going back to it (it is not
    /// the stable revision now) takes no steps, no pauses, no `maxUnavailable`, as an abort's way
    /// back; once it is stable again, devices that catch up or join go within `maxUnavailable`.
    pub fast_track: bool,
    /// The revision being rolled out (the template's, or `rollbackTo`).
    pub update_revision: &'a str,
    /// The last revision that reached every targetable device; where auto-rollback goes.
    pub stable_revision: Option<&'a str>,
    /// The architectures the update revision provides.
    pub supported: &'a BTreeSet<Architecture>,
    /// Now, in seconds since the epoch.
    pub now: i64,
    /// Most new targets one plan gives; the rest come in the next plan, asked for at once
    /// ([`Plan::more`]).
    pub batch: usize,
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
    /// The last `spec.retry.attempt` acted on.
    pub retry_attempt: Option<i32>,
    /// Failures before this time (seconds since the epoch) are forgotten: the last retry.
    pub failures_since: Option<i64>,
    /// What the rollout looked like when it last made progress ([`progress_mark`]), and when.
    pub progress: Option<(String, i64)>,
}

/// A device's latest update, as it reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// The revision it was installing.
    pub revision: Name,
    /// Where it got.
    pub status: UpdateStatus,
    /// When it started, seconds since the epoch.
    pub started_at: Option<i64>,
}

/// A Device, as the plan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// `metadata.name`.
    pub name: Name,
    /// The architecture it reported; unknown devices are never targeted.
    pub architecture: Option<Architecture>,
    /// `spec.revision`.
    pub target: Option<Name>,
    /// `status.currentRevision`: what it runs, committed.
    pub current: Option<Name>,
    /// `status.update`.
    pub update: Option<UpdateReport>,
    /// When the controller set `target` (it records this beside the target).
    pub targeted_at: Option<i64>,
    /// `spec.paused`.
    pub paused: bool,
    /// `spec.pinnedRevision`.
    pub pinned: Option<Name>,
    /// The pinned revision does not exist or has no state for the device's architecture: the
    /// pin is refused (and the device told why) rather than sending it something it cannot run.
    pub pin_refused: bool,
    /// Heard from within the liveness window.
    pub online: bool,
    /// Every container at its goal.
    pub ready: bool,
    /// Revisions whose update ended in failure on it, from its history: a device sent back
    /// after failing still counts as failed for that revision.
    pub failed_revisions: Box<[Name]>,
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
    /// Of the offline devices, those the rollout skipped: not started, to catch up when back.
    pub skipped: usize,
}

/// At most this many device names are kept in a plan's lists (they go into messages).
pub const NAMES_SHOWN: usize = 10;

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Devices whose update to the update revision failed (the first [`NAMES_SHOWN`], in name
    /// order).
    pub failed_devices: Vec<String>,
    /// Devices skipped because they are offline (the first [`NAMES_SHOWN`], in name order).
    pub skipped_offline: Vec<String>,
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
    /// Moving, but nothing has progressed for `progressDeadlineSeconds`: how long, in seconds.
    pub stalled_for: Option<i64>,
    /// More targets were due than [`FleetView::batch`]: plan again at once.
    pub more: bool,
}

#[cfg(test)]
impl DeviceView {
    /// An online, ready arm64 device that runs and targets `revision`: what tests vary.
    pub fn test(name: &str, revision: Option<&str>) -> DeviceView {
        DeviceView {
            name: name.into(),
            architecture: Some(Architecture::Arm64),
            target: revision.map(Name::from),
            current: revision.map(Name::from),
            update: None,
            targeted_at: Some(0),
            paused: false,
            pinned: None,
            pin_refused: false,
            online: true,
            ready: true,
            failed_revisions: Box::default(),
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

/// How devices' updates are judged in one plan: against the per-device timeout, the time now,
/// and the last retry (failures before it are forgotten).
#[derive(Clone, Copy, Debug)]
pub struct Judge {
    /// `deviceTimeoutSeconds`.
    pub timeout: i64,
    pub now: i64,
    /// `RolloutMemory::failures_since`.
    pub since: Option<i64>,
}

impl Judge {
    /// Its latest result for `revision` is a failure: the update it reports, when that is about
    /// `revision`, else its history (a device sent back after failing still counts). A device
    /// that runs `revision` now has not failed it; after a retry only results of updates started
    /// since count.
    pub fn reported_failure(&self, d: &DeviceView, revision: &str) -> bool {
        if d.current.as_deref() == Some(revision) {
            return false;
        }
        match (&d.update, self.since) {
            (Some(u), None) if &*u.revision == revision => u.status.is_failure(),
            (Some(u), Some(since)) if &*u.revision == revision => {
                u.status.is_failure() && u.started_at.is_some_and(|t| t >= since)
            }
            (_, None) => d.failed_revisions.iter().any(|r| &**r == revision),
            (_, Some(_)) => false,
        }
    }

    /// On its way to its target: not there and not failed there.
    pub fn in_flight(&self, d: &DeviceView) -> bool {
        match &d.target {
            Some(target) => d.current.as_ref() != Some(target) && !self.reported_failure(d, target),
            None => false,
        }
    }

    /// Seconds left before its update to `revision` counts as failed for taking too long.
    pub fn time_left(&self, d: &DeviceView, revision: &str) -> Option<i64> {
        if d.target.as_deref() != Some(revision) || !self.in_flight(d) {
            return None;
        }
        let started = d
            .update
            .as_ref()
            .filter(|u| &*u.revision == revision)
            .and_then(|u| u.started_at)
            .or(d.targeted_at)?;
        let started = self.since.map_or(started, |since| started.max(since));
        Some(started + self.timeout - self.now)
    }

    /// Its update to `revision` failed: reported so, or out of time.
    pub fn failed(&self, d: &DeviceView, revision: &str) -> bool {
        self.reported_failure(d, revision)
            || self.time_left(d, revision).is_some_and(|left| left <= 0)
    }

    /// In flight and within its time: it holds a `maxUnavailable` slot. A device out of time
    /// has failed and gives its slot back.
    pub fn occupying(&self, d: &DeviceView) -> bool {
        let Some(target) = d.target.as_deref() else {
            return false;
        };
        self.in_flight(d) && self.time_left(d, target).is_none_or(|left| left > 0)
    }
}

/// What counts as progress, as a short string: the step, and a fingerprint of each device on
/// its way to (or at) the update revision with the status it reports ([`Tally::progress`]),
/// `retarget` counted as already given (so the next plan does not see its own moves as
/// progress again). A device starting, advancing or succeeding changes it; a device failing
/// does not (failing is not progress).
fn progress_mark(
    fleet: &FleetView<'_>,
    step: usize,
    judge: &Judge,
    tally: &Tally,
    retarget: &[(String, String)],
) -> String {
    let update = fleet.update_revision;
    let mut sum = tally.progress();
    for (name, revision) in retarget {
        let Some(d) = tally.get(name) else { continue };
        if !d.targetable_by(fleet.supported) || judge.failed(d, update) {
            continue;
        }
        let on_update = d.current.as_deref() == Some(update);
        let before = on_update || d.target.as_deref() == Some(update);
        let after = on_update || revision == update;
        match (before, after) {
            (false, true) => sum = sum.wrapping_add(progress_part(d, update)),
            (true, false) => sum = sum.wrapping_sub(progress_part(d, update)),
            _ => {}
        }
    }
    format!("{:016x}", canary_key(&format!("{step}|{sum:016x}")))
}

/// The memory a plan starts from: memory of another revision forgotten (it is about another
/// rollout), and a retry not acted on yet applied (from step 0, the failures so far forgotten).
pub fn effective_memory(fleet: &FleetView<'_>, memory: &RolloutMemory) -> RolloutMemory {
    let update = fleet.update_revision;
    let mut memory = if memory.revision.as_deref() == Some(update) {
        memory.clone()
    } else {
        RolloutMemory {
            revision: Some(update.to_string()),
            ..RolloutMemory::default()
        }
    };
    if let Some(retry) = fleet.retry.filter(|r| r.revision == update)
        && memory.retry_attempt.is_none_or(|seen| retry.attempt > seen)
    {
        memory = RolloutMemory {
            revision: Some(update.to_string()),
            retry_attempt: Some(retry.attempt),
            failures_since: Some(fleet.now),
            ..RolloutMemory::default()
        };
    }
    memory
}

impl Basis {
    /// What a plan of `fleet` from `memory` judges devices against.
    pub fn of(fleet: &FleetView<'_>, memory: &RolloutMemory) -> Basis {
        Basis {
            update: fleet.update_revision.into(),
            supported: fleet.supported.clone(),
            timeout: i64::from(fleet.strategy.device_timeout_seconds.max(1)),
            since: effective_memory(fleet, memory).failures_since,
        }
    }

    /// How devices are judged against it at `now`.
    pub fn judge(&self, now: i64) -> Judge {
        Judge {
            timeout: self.timeout,
            now,
            since: self.since,
        }
    }
}

/// Decides the next moves of a rollout, from the fleet's devices. Pure: the same inputs give
/// the same plan. Sums the devices up first; a controller keeps the sums instead
/// ([`plan_tally`]).
pub fn plan(fleet: &FleetView<'_>, memory: &RolloutMemory, devices: &[DeviceView]) -> Plan {
    let tally = Tally::of(
        Basis::of(fleet, memory),
        fleet.now,
        devices.iter().cloned().map(Arc::new),
    );
    let refused: BTreeSet<&str> = devices
        .iter()
        .filter(|d| d.pin_refused)
        .map(|d| &*d.name)
        .collect();
    plan_tally(fleet, memory, &tally, |name| refused.contains(name))
}

/// Decides the next moves of a rollout from its devices' [`Tally`], which must judge against
/// [`Basis::of`] `fleet` and `memory`, at `fleet.now`. `pin_refused` says which pinned devices
/// may not have their pin. Costs what the moves cost, not what the fleet's size does.
pub fn plan_tally(
    fleet: &FleetView<'_>,
    memory: &RolloutMemory,
    tally: &Tally,
    pin_refused: impl Fn(&str) -> bool,
) -> Plan {
    debug_assert_eq!(tally.basis(), &Basis::of(fleet, memory));
    debug_assert_eq!(tally.now(), fleet.now);
    let mut plan = plan_moves(fleet, effective_memory(fleet, memory), tally, pin_refused);
    give_joined_the_stable_revision(fleet, tally, &mut plan);
    // Only what is given counts as given in the progress mark.
    plan.more = plan.retarget.len() > fleet.batch.max(1);
    plan.retarget.truncate(fleet.batch.max(1));
    track_progress(fleet, tally, &mut plan);
    plan
}

/// Notes progress, and says when a moving rollout has had none for `progressDeadlineSeconds`.
/// Waiting (a pause, a resume, a held fleet) is not a stall; nor is an end.
fn track_progress(fleet: &FleetView<'_>, tally: &Tally, plan: &mut Plan) {
    let judge = tally.basis().judge(fleet.now);
    let mark = progress_mark(fleet, plan.memory.step, &judge, tally, &plan.retarget);
    let since = match &plan.memory.progress {
        Some((old, at)) if *old == mark => *at,
        _ => fleet.now,
    };
    plan.memory.progress = Some((mark, since));
    if plan.phase != Phase::Progressing {
        return;
    }
    let deadline = i64::from(fleet.strategy.progress_deadline_seconds.max(1));
    let quiet = fleet.now - since;
    if quiet >= deadline {
        plan.stalled_for = Some(quiet);
    } else {
        let left = deadline - quiet;
        plan.requeue_after = Some(plan.requeue_after.map_or(left, |r| r.min(left)));
    }
}

/// Devices that never had a target get the stable revision while the rollout does not move
/// (paused, waiting, aborted), rather than nothing until it moves again.
fn give_joined_the_stable_revision(fleet: &FleetView<'_>, tally: &Tally, plan: &mut Plan) {
    if matches!(plan.phase, Phase::Progressing | Phase::Complete) {
        return;
    }
    let Some(stable) = plan
        .stable_revision
        .clone()
        .filter(|s| s != fleet.update_revision)
    else {
        return;
    };
    let moved: BTreeSet<String> = plan.retarget.iter().map(|(n, _)| n.clone()).collect();
    for name in tally.joined() {
        if !moved.contains(&**name) {
            plan.retarget.push((name.to_string(), stable.clone()));
        }
    }
}

/// The first [`NAMES_SHOWN`] names, in name order.
fn shown(names: &BTreeSet<Name>) -> Vec<String> {
    names
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| n.to_string())
        .collect()
}

fn plan_moves(
    fleet: &FleetView<'_>,
    mut memory: RolloutMemory,
    tally: &Tally,
    pin_refused: impl Fn(&str) -> bool,
) -> Plan {
    let update = fleet.update_revision;
    let strategy = fleet.strategy;
    let now = fleet.now;
    let judge = tally.basis().judge(now);
    let totals = tally.totals();
    let size = totals.sized;
    let failed = totals.failed;
    let succeeded = totals.succeeded;
    // Finished: succeeded or failed. Remaining (not finished, not on its way): the candidates
    // online, the skipped offline.
    let finished = succeeded + failed;
    let on_the_way = totals.on_the_way;
    let online_remaining = tally.candidate_count();
    let counts = Counts {
        devices: totals.devices,
        updated: totals.updated,
        ready: totals.ready,
        updating: on_the_way,
        failed,
        offline: totals.offline,
        unsupported: totals.unsupported,
        skipped: tally.skipped().len(),
    };
    let mut plan = Plan {
        failed_devices: shown(tally.failed()),
        skipped_offline: shown(tally.skipped()),
        retarget: Vec::new(),
        memory: memory.clone(),
        phase: Phase::Progressing,
        stable_revision: fleet.stable_revision.map(str::to_string),
        counts,
        requeue_after: None,
        stalled_for: None,
        more: false,
    };

    // A held fleet moves nobody, but keeps what it is: an abort stays an abort (unpausing must
    // not forget it) and a complete rollout stays complete (Ready).
    if fleet.paused {
        let threshold = resolve(&strategy.failure_threshold, size, Round::Up);
        let asked_to_abort = fleet.abort.is_some_and(|a| a.revision == update);
        plan.phase = if memory.aborted || asked_to_abort || failed >= threshold {
            memory.aborted = true;
            Phase::Aborted
        } else if online_remaining == 0 && on_the_way == 0 && finished > 0 {
            Phase::Complete
        } else {
            Phase::FleetPaused
        };
        plan.memory = memory;
        return plan;
    }

    // People's overrides come first: a pinned device runs its pin (unless held).
    for name in tally.pinned() {
        let Some(device) = tally.get(name) else {
            continue;
        };
        if let Some(pin) = &device.pinned
            && !device.paused
            && !pin_refused(name)
            && device.target.as_ref() != Some(pin)
        {
            plan.retarget.push((name.to_string(), pin.to_string()));
        }
    }

    let threshold = resolve(&strategy.failure_threshold, size, Round::Up);
    let asked_to_abort = fleet.abort.is_some_and(|a| a.revision == update);
    if memory.aborted || asked_to_abort || failed >= threshold {
        memory.aborted = true;
        memory.pause_started_at = None;
        plan.phase = Phase::Aborted;
        if strategy.auto_rollback
            && let Some(stable) = fleet.stable_revision.filter(|s| *s != update)
        {
            for name in tally.toward_update() {
                plan.retarget.push((name.to_string(), stable.to_string()));
            }
        }
        plan.memory = memory;
        return plan;
    }

    // Nothing left to start among online devices and nothing on its way: complete. Devices
    // skipped as offline catch up when they return, which reopens the rollout.
    if online_remaining == 0 && on_the_way == 0 {
        plan.phase = Phase::Complete;
        // With nobody finished (no targetable device, or all of them offline) the rollout is
        // vacuously complete, as a Deployment of zero replicas is; but it has moved nobody, so
        // it neither passes its steps nor makes the revision stable: devices that appear later
        // (or a cache still filling) start at step 0. Nor does a revision that failed everywhere
        // it went become stable.
        if succeeded > 0 {
            plan.stable_revision = Some(update.to_string());
        }
        if finished > 0 {
            memory.step = strategy.steps.len();
            memory.pause_started_at = None;
        }
        plan.memory = memory;
        return plan;
    }

    // Walk the steps: a step is done when its share of devices has finished (succeeded or
    // failed); its pause, if any, must then end before the next step starts. Going back to a
    // revision the whole fleet ran, or a promotion in full, skips them.
    let promoted_in_full = fleet.resume.is_some_and(|r| r.revision == update && r.full);
    let going_back = fleet.fast_track && fleet.stable_revision != Some(update);
    if going_back || promoted_in_full {
        memory.step = memory.step.max(strategy.steps.len());
        memory.pause_started_at = None;
    }
    let resumed_at = |step: usize| {
        fleet
            .resume
            .is_some_and(|r| r.revision == update && usize::try_from(r.step).ok() == Some(step))
    };
    let targetable = totals.targetable;
    let goal = loop {
        let Some(step) = strategy.steps.get(memory.step) else {
            break targetable;
        };
        let goal = resolve(&step.devices, size, Round::Up).min(targetable);
        if finished < goal {
            break goal;
        }
        if let Some(pause) = step.pause.as_ref().filter(|_| !resumed_at(memory.step)) {
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
                plan.phase = Phase::WaitingForResume { step: memory.step };
                plan.memory = memory;
                return plan;
            }
        }
        memory.step += 1;
        memory.pause_started_at = None;
    };

    // Start as many devices as the goal still needs and the budget of unavailable devices
    // allows. Devices that failed (also by their deadline) hold no slot.
    let max_unavailable = if going_back {
        usize::MAX
    } else {
        resolve(&strategy.max_unavailable, size, Round::Down)
    };
    let mut in_flight = totals.occupying
        + plan
            .retarget
            .iter()
            .filter(|(name, _)| tally.get(name).is_some_and(|d| !judge.occupying(d)))
            .count();
    let mut wanted = goal.saturating_sub(finished + on_the_way);
    for name in tally.candidates() {
        if wanted == 0 {
            break;
        }
        let Some(device) = tally.get(name) else {
            continue;
        };
        // A device already on its way elsewhere is unavailable anyway; turning it costs nothing.
        if !judge.occupying(device) {
            if in_flight >= max_unavailable {
                break;
            }
            in_flight += 1;
        }
        plan.retarget.push((name.to_string(), update.to_string()));
        wanted -= 1;
    }

    plan.requeue_after = tally.next_update_deadline().map(|at| at - now);
    plan.memory = memory;
    plan
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
