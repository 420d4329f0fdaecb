//! [`Tally`]: a fleet's devices summed up for the planner, kept up to date one device at a time.
//!
//! A plan needs counts (failed, on their way, offline…), the devices that may start next in
//! canary order, the first few failed and skipped names, the nearest device deadline and a
//! fingerprint of progress. Computed from scratch that is a pass over the fleet for every
//! device event; kept here, an event costs what the one device it changes costs (a few
//! ordered-set updates), and the plan reads the sums. The sums are exact: each device's
//! contribution is a pure function of the device, the [`Basis`] and the time, removed and added
//! again whenever one of them changes ([`Tally::upsert`], [`Tally::advance`], [`Tally::rebase`]).
//! A property test checks that a tally kept up through any event sequence equals one summed
//! from scratch, and that both plan the same.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edgevisor_crds::Architecture;

use super::plan::{DeviceView, canary_key};

/// A shared name: device and revision names are interned, so a fleet of a million devices
/// keeps one copy of each revision name.
pub type Name = Arc<str>;

/// What each device is judged against. When it changes (a new update revision, a retry, a new
/// device timeout or set of architectures), the whole fleet is summed again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Basis {
    /// The revision being rolled out.
    pub update: Name,
    /// The architectures it provides.
    pub supported: BTreeSet<Architecture>,
    /// `deviceTimeoutSeconds`.
    pub timeout: i64,
    /// Failures before this time are forgotten (the last retry).
    pub since: Option<i64>,
}

/// Device counts the plan reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub devices: usize,
    /// Running the update revision.
    pub updated: usize,
    /// Running it, every container at its goal.
    pub ready: usize,
    pub offline: usize,
    /// Of an architecture the update revision lacks (or none reported).
    pub unsupported: usize,
    /// Supported and not pinned: what percentages of the fleet are taken of.
    pub sized: usize,
    /// Supported, not pinned, held or revoked: the devices the rollout moves.
    pub targetable: usize,
    /// Targetable devices whose update to the update revision failed (reported, or timed out).
    pub failed: usize,
    /// Targetable devices running the update revision.
    pub succeeded: usize,
    /// Targetable devices targeting the update revision, not there yet and not failed.
    pub on_the_way: usize,
    /// Devices holding a `maxUnavailable` slot: in flight to any revision, within their time.
    pub occupying: usize,
}

/// One architecture's devices, for `Fleet.status.architectures`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchitectureTotals {
    pub devices: usize,
    pub updated: usize,
    pub ready: usize,
    /// Targeting the update revision, whose update to it reported a failure.
    pub failed: usize,
}

/// A fleet's devices, summed up. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    basis: Basis,
    now: i64,
    members: HashMap<Name, Arc<DeviceView>>,
    totals: Totals,
    /// Targetable, online devices that have neither the update revision as target nor run it
    /// nor failed it: who may start next, in canary order.
    candidates: BTreeSet<(u64, Name)>,
    /// The same, offline: skipped until they return.
    skipped: BTreeSet<Name>,
    failed: BTreeSet<Name>,
    /// Targetable devices targeting the update revision: where an abort's roll back goes.
    toward_update: BTreeSet<Name>,
    /// Targetable devices that never had a target.
    joined: BTreeSet<Name>,
    pinned: BTreeSet<Name>,
    /// In-flight devices whose deadline is still ahead: when it passes, they are judged again.
    pending: BTreeSet<(i64, Name)>,
    /// Of those, the targetable ones going to the update revision: the next requeue.
    update_deadlines: BTreeSet<(i64, Name)>,
    /// A sum of each progressing device's fingerprint; see [`progress_part`].
    progress: u64,
    architectures: BTreeMap<Option<Architecture>, ArchitectureTotals>,
    /// Devices by the revision they run.
    revisions: BTreeMap<Option<Name>, usize>,
    /// Devices by state: current, updating, failed.
    states: BTreeMap<&'static str, usize>,
}

/// What one device adds to the sums.
struct Part {
    totals: Totals,
    candidate: bool,
    skipped: bool,
    failed: bool,
    toward_update: bool,
    joined: bool,
    pinned: bool,
    pending: Option<i64>,
    update_deadline: Option<i64>,
    progress: Option<u64>,
    architecture_key: Option<Architecture>,
    architecture: ArchitectureTotals,
    revision: Option<Name>,
    state: &'static str,
}

/// A device's fingerprint in the progress mark: its name and how far it got to `update`.
pub fn progress_part(d: &DeviceView, update: &str) -> u64 {
    let at = if d.current.as_deref() == Some(update) {
        "done".to_string()
    } else {
        d.update
            .as_ref()
            .filter(|u| &*u.revision == update)
            .map(|u| format!("{:?}", u.status))
            .unwrap_or_default()
    };
    canary_key(&format!("{}={at}", d.name))
}

/// Its state, for metrics: current, updating, failed.
pub fn state(d: &DeviceView) -> &'static str {
    match (&d.update, d.current == d.target) {
        (_, true) => "current",
        (Some(u), false) if u.status.is_failure() => "failed",
        (_, false) => "updating",
    }
}

impl DeviceView {
    pub(super) fn supported_by(&self, supported: &BTreeSet<Architecture>) -> bool {
        self.architecture.is_some_and(|a| supported.contains(&a))
    }

    pub(super) fn targetable_by(&self, supported: &BTreeSet<Architecture>) -> bool {
        self.supported_by(supported) && self.pinned.is_none() && !self.paused && !self.revoked
    }
}

impl Tally {
    /// An empty tally judging against `basis` at `now`.
    pub fn new(basis: Basis, now: i64) -> Tally {
        Tally {
            basis,
            now,
            ..Tally::default()
        }
    }

    /// A tally of `devices`, summed from scratch.
    pub fn of(basis: Basis, now: i64, devices: impl IntoIterator<Item = Arc<DeviceView>>) -> Tally {
        let mut tally = Tally::new(basis, now);
        for d in devices {
            tally.upsert(d);
        }
        tally
    }

    pub fn basis(&self) -> &Basis {
        &self.basis
    }

    /// The time every device is judged at.
    pub fn now(&self) -> i64 {
        self.now
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<DeviceView>> {
        self.members.get(name)
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn candidates(&self) -> impl Iterator<Item = &Name> {
        self.candidates.iter().map(|(_, n)| n)
    }

    pub fn candidate_count(&self) -> usize {
        self.candidates.len()
    }

    pub fn skipped(&self) -> &BTreeSet<Name> {
        &self.skipped
    }

    pub fn failed(&self) -> &BTreeSet<Name> {
        &self.failed
    }

    pub fn toward_update(&self) -> &BTreeSet<Name> {
        &self.toward_update
    }

    pub fn joined(&self) -> &BTreeSet<Name> {
        &self.joined
    }

    pub fn pinned(&self) -> &BTreeSet<Name> {
        &self.pinned
    }

    /// The nearest deadline of a device going to the update revision.
    pub fn next_update_deadline(&self) -> Option<i64> {
        self.update_deadlines.first().map(|(t, _)| *t)
    }

    pub fn progress(&self) -> u64 {
        self.progress
    }

    pub fn architectures(&self) -> &BTreeMap<Option<Architecture>, ArchitectureTotals> {
        &self.architectures
    }

    pub fn revisions(&self) -> &BTreeMap<Option<Name>, usize> {
        &self.revisions
    }

    pub fn states(&self) -> &BTreeMap<&'static str, usize> {
        &self.states
    }

    /// Adds a device, or replaces it.
    pub fn upsert(&mut self, device: Arc<DeviceView>) {
        let part = self.part(&device);
        if let Some(old) = self.members.insert(device.name.clone(), device.clone()) {
            let old_part = self.part(&old);
            self.account(&old.name, &old_part, false);
        }
        self.account(&device.name, &part, true);
    }

    /// Removes a device; a name not here changes nothing.
    pub fn remove(&mut self, name: &str) -> Option<Arc<DeviceView>> {
        let old = self.members.remove(name)?;
        let part = self.part(&old);
        self.account(&old.name, &part, false);
        Some(old)
    }

    /// Judges at `now`: devices whose deadline passed since are judged again. Time going
    /// backwards (a clock set back) sums everything again.
    pub fn advance(&mut self, now: i64) {
        if now < self.now {
            self.resum(now);
            return;
        }
        let expired: Vec<Arc<DeviceView>> = self
            .pending
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter_map(|(_, name)| self.members.get(name).cloned())
            .collect();
        for d in &expired {
            let part = self.part(d);
            self.account(&d.name, &part, false);
        }
        self.now = now;
        for d in &expired {
            let part = self.part(d);
            self.account(&d.name, &part, true);
        }
    }

    /// Judges against `basis` at `now`: summed again if the basis changed, else advanced.
    pub fn rebase(&mut self, basis: Basis, now: i64) {
        if basis == self.basis {
            self.advance(now);
        } else {
            self.basis = basis;
            self.resum(now);
        }
    }

    fn resum(&mut self, now: i64) {
        let members = std::mem::take(&mut self.members);
        *self = Tally::of(std::mem::take(&mut self.basis), now, members.into_values());
    }

    fn part(&self, d: &DeviceView) -> Part {
        let b = &self.basis;
        let update = &*b.update;
        let judge = b.judge(self.now);
        let supported = d.supported_by(&b.supported);
        let targetable = d.targetable_by(&b.supported);
        let on_update = d.current.as_deref() == Some(update);
        let targets_update = d.target.as_deref() == Some(update);
        let failed = targetable && judge.failed(d, update);
        let remaining = targetable && !on_update && !failed && !targets_update;
        let left = d
            .target
            .as_deref()
            .and_then(|target| judge.time_left(d, target))
            .filter(|left| *left > 0);
        let one = usize::from;
        Part {
            totals: Totals {
                devices: 1,
                updated: one(on_update),
                ready: one(on_update && d.ready),
                offline: one(!d.online),
                unsupported: one(!supported),
                sized: one(supported && d.pinned.is_none()),
                targetable: one(targetable),
                failed: one(failed),
                succeeded: one(targetable && on_update),
                on_the_way: one(targetable && targets_update && !on_update && !failed),
                occupying: one(judge.occupying(d)),
            },
            candidate: remaining && d.online,
            skipped: remaining && !d.online,
            failed,
            toward_update: targetable && targets_update,
            joined: targetable && d.target.is_none(),
            pinned: d.pinned.is_some(),
            pending: left.map(|left| self.now + left),
            update_deadline: left
                .filter(|_| targetable && targets_update)
                .map(|left| self.now + left),
            progress: (targetable && (targets_update || on_update) && !failed)
                .then(|| progress_part(d, update)),
            architecture: ArchitectureTotals {
                devices: 1,
                updated: one(on_update),
                ready: one(on_update && d.ready),
                failed: one(targets_update
                    && d.update
                        .as_ref()
                        .is_some_and(|u| &*u.revision == update && u.status.is_failure())),
            },
            architecture_key: d.architecture,
            revision: d.current.clone(),
            state: state(d),
        }
    }

    fn account(&mut self, name: &Name, part: &Part, add: bool) {
        fn count(total: &mut usize, n: usize, add: bool) {
            if add {
                *total += n;
            } else {
                *total -= n;
            }
        }
        fn member<T: Ord>(set: &mut BTreeSet<T>, item: T, is: bool, add: bool) {
            if is {
                if add {
                    set.insert(item);
                } else {
                    set.remove(&item);
                }
            }
        }
        let (t, p) = (&mut self.totals, &part.totals);
        count(&mut t.devices, p.devices, add);
        count(&mut t.updated, p.updated, add);
        count(&mut t.ready, p.ready, add);
        count(&mut t.offline, p.offline, add);
        count(&mut t.unsupported, p.unsupported, add);
        count(&mut t.sized, p.sized, add);
        count(&mut t.targetable, p.targetable, add);
        count(&mut t.failed, p.failed, add);
        count(&mut t.succeeded, p.succeeded, add);
        count(&mut t.on_the_way, p.on_the_way, add);
        count(&mut t.occupying, p.occupying, add);
        member(
            &mut self.candidates,
            (canary_key(name), name.clone()),
            part.candidate,
            add,
        );
        member(&mut self.skipped, name.clone(), part.skipped, add);
        member(&mut self.failed, name.clone(), part.failed, add);
        member(
            &mut self.toward_update,
            name.clone(),
            part.toward_update,
            add,
        );
        member(&mut self.joined, name.clone(), part.joined, add);
        member(&mut self.pinned, name.clone(), part.pinned, add);
        if let Some(at) = part.pending {
            member(&mut self.pending, (at, name.clone()), true, add);
        }
        if let Some(at) = part.update_deadline {
            member(&mut self.update_deadlines, (at, name.clone()), true, add);
        }
        if let Some(h) = part.progress {
            self.progress = if add {
                self.progress.wrapping_add(h)
            } else {
                self.progress.wrapping_sub(h)
            };
        }
        let arch = self.architectures.entry(part.architecture_key).or_default();
        let a = &part.architecture;
        count(&mut arch.devices, a.devices, add);
        count(&mut arch.updated, a.updated, add);
        count(&mut arch.ready, a.ready, add);
        count(&mut arch.failed, a.failed, add);
        if arch.devices == 0 {
            self.architectures.remove(&part.architecture_key);
        }
        keyed(&mut self.revisions, part.revision.clone(), add);
        keyed(&mut self.states, part.state, add);
    }
}

/// Counts by key, without zero entries: a tally kept up equals one summed from scratch.
fn keyed<K: Ord>(map: &mut BTreeMap<K, usize>, key: K, add: bool) {
    if add {
        *map.entry(key).or_default() += 1;
    } else if let std::collections::btree_map::Entry::Occupied(mut e) = map.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}
