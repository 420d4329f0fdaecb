//! One namespace's devices, kept up one device event at a time: which fleet each belongs to,
//! how the planner sees it (this controller's own recent target writes laid over the cache),
//! each fleet's [`Tally`], which revisions are in use, and which devices left a fleet whose
//! revision they still target. Pure: no I/O, no clock (callers pass the time).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::SelectorExt;

use super::intern::Labels;
use crate::reconcile::decide::{self, FleetSelector};
use crate::rollout::{DeviceView, Name, Tally};
use crate::views::fleet_of_revision;

/// A target this controller wrote that the watch cache may not show yet: until it does (or
/// for a while at most), the planner sees it, so a quick second plan never starts a device
/// twice or one too many.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub revision: Name,
    /// When it was set, seconds since the epoch (the `targeted-at` annotation written with it).
    pub at: i64,
    /// When this process wrote it.
    pub when: Instant,
}

#[derive(Clone, Debug)]
struct Slot {
    labels: Arc<Labels>,
    /// As the cache has it.
    cached: Arc<DeviceView>,
    /// As the planner sees it: `cached` with `written` laid over.
    view: Arc<DeviceView>,
    /// Boxed: rare, and a slot is kept per device.
    written: Option<Box<Written>>,
    /// `status.lastSeen`, seconds since the epoch.
    last_seen: Option<i64>,
    owner: Option<Name>,
}

/// A fleet's devices.
#[derive(Debug)]
pub struct FleetDevices {
    pub selector: FleetSelector,
    pub tally: Tally,
    /// Its devices another fleet selects too (each stays with the fleet that had it first).
    pub overlapping: BTreeSet<Name>,
}

/// How the devices of the namespace use a revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionUse {
    /// Devices targeting it.
    pub targeted: usize,
    /// Devices targeting it, running it or pinned to it: a revision in use is not deleted.
    pub referenced: usize,
}

#[derive(Debug, Default)]
pub struct Namespace {
    devices: HashMap<Name, Slot>,
    fleets: BTreeMap<Name, FleetDevices>,
    revisions: HashMap<Name, RevisionUse>,
    /// (fleet, device): the device targets a revision of the fleet but is not its any more.
    released: BTreeSet<(Name, Name)>,
    /// Devices with a [`Written`] laid over.
    overlaid: BTreeSet<Name>,
}

impl Namespace {
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.devices.keys()
    }

    /// A device as the cache has it now (added or changed). A target written here that the
    /// cache now shows stops being laid over.
    pub fn upsert(&mut self, labels: Arc<Labels>, cached: Arc<DeviceView>, last_seen: Option<i64>) {
        let written = self
            .devices
            .get(&cached.name)
            .and_then(|s| s.written.clone())
            .filter(|w| cached.target.as_ref() != Some(&w.revision));
        self.place(labels, cached, written, last_seen);
    }

    pub fn remove(&mut self, name: &str) {
        let Some(old) = self.devices.remove(name) else {
            return;
        };
        self.forget(&old);
        self.overlaid.remove(name);
    }

    /// This controller set `name`'s target to `revision` at `at`.
    pub fn wrote(&mut self, name: &str, revision: Name, at: i64, when: Instant) {
        let written = Box::new(Written { revision, at, when });
        self.lay_over(name, Some(written));
    }

    /// Stops laying over writes older than `ttl` at `now`: the cache should have shown them.
    pub fn expire_written(&mut self, now: Instant, ttl: Duration) {
        let old: Vec<Name> = self
            .overlaid
            .iter()
            .filter(|n| {
                self.devices
                    .get(*n)
                    .and_then(|s| s.written.as_ref())
                    .is_none_or(|w| now.duration_since(w.when) >= ttl)
            })
            .cloned()
            .collect();
        for name in old {
            if self.devices.contains_key(&name) {
                self.lay_over(&name, None);
            } else {
                self.overlaid.remove(&name);
            }
        }
    }

    /// Places device `name` again as the cache has it, with `written` laid over (or nothing).
    fn lay_over(&mut self, name: &str, written: Option<Box<Written>>) {
        let Some(slot) = self.devices.get(name) else {
            return;
        };
        let (labels, cached, last_seen) =
            (slot.labels.clone(), slot.cached.clone(), slot.last_seen);
        self.place(labels, cached, written, last_seen);
    }

    /// The fleets of the namespace. The same fleets again change nothing; others sort every
    /// device again (a fleet's selector changed, or a fleet came or went).
    pub fn set_fleets(&mut self, mut fleets: Vec<FleetSelector>) {
        fleets.sort_by(|a, b| a.name.cmp(&b.name));
        let same = fleets.len() == self.fleets.len()
            && fleets
                .iter()
                .zip(self.fleets.values())
                .all(|(a, b)| *a == b.selector);
        if same {
            return;
        }
        let mut old = std::mem::take(&mut self.fleets);
        for selector in fleets {
            let tally = old
                .remove(selector.name.as_str())
                .map(|f| Tally::new(f.tally.basis().clone(), f.tally.now()))
                .unwrap_or_default();
            self.fleets.insert(
                selector.name.as_str().into(),
                FleetDevices {
                    selector,
                    tally,
                    overlapping: BTreeSet::new(),
                },
            );
        }
        self.released.clear();
        let slots: Vec<Slot> = self.devices.values().cloned().collect();
        self.devices.clear();
        self.revisions.clear();
        for s in slots {
            self.place(s.labels, s.cached, s.written, s.last_seen);
        }
    }

    /// The fleets it was last given.
    pub fn fleet_selectors(&self) -> Vec<FleetSelector> {
        self.fleets.values().map(|f| f.selector.clone()).collect()
    }

    pub fn fleet(&self, name: &str) -> Option<&FleetDevices> {
        self.fleets.get(name)
    }

    pub fn fleet_mut(&mut self, name: &str) -> Option<&mut FleetDevices> {
        self.fleets.get_mut(name)
    }

    pub fn revision_use(&self, revision: &str) -> RevisionUse {
        self.revisions.get(revision).copied().unwrap_or_default()
    }

    /// Devices that left `fleet` but target one of its revisions, each said once.
    pub fn take_released(&mut self, fleet: &str) -> Vec<Name> {
        let start = (Name::from(fleet), Name::from(""));
        let mine: Vec<(Name, Name)> = self
            .released
            .range(start..)
            .take_while(|(f, _)| &**f == fleet)
            .cloned()
            .collect();
        for key in &mine {
            self.released.remove(key);
        }
        mine.into_iter().map(|(_, d)| d).collect()
    }

    /// Devices marked online whose `lastSeen` is at least `window` old at `now` and that
    /// `heard` does not know either.
    pub fn quiet<'a>(
        &'a self,
        now: i64,
        window: i64,
        heard: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Name> + 'a {
        self.devices
            .iter()
            .filter(move |(name, s)| {
                s.cached.online && s.last_seen.is_some_and(|t| now - t >= window) && !heard(name)
            })
            .map(|(name, _)| name)
    }

    fn place(
        &mut self,
        labels: Arc<Labels>,
        cached: Arc<DeviceView>,
        written: Option<Box<Written>>,
        last_seen: Option<i64>,
    ) {
        let name = cached.name.clone();
        let view = match &written {
            Some(w) => Arc::new(DeviceView {
                target: Some(w.revision.clone()),
                targeted_at: Some(w.at),
                ..(*cached).clone()
            }),
            None => cached.clone(),
        };
        if written.is_some() {
            self.overlaid.insert(name.clone());
        } else {
            self.overlaid.remove(&name);
        }
        if let Some(old) = self.devices.remove(&name) {
            self.forget(&old);
        }
        let owner = self.owner(&labels, &view);
        if let Some(f) = owner.as_ref().and_then(|o| self.fleets.get_mut(o)) {
            f.tally.upsert(view.clone());
        }
        if let Some(f) = view.target.as_deref().and_then(fleet_of_revision)
            && owner.as_deref() != Some(f)
            && self.fleets.contains_key(f)
        {
            self.released.insert((Name::from(f), name.clone()));
        }
        self.use_(&view);
        self.devices.insert(
            name,
            Slot {
                labels,
                cached,
                view,
                written,
                last_seen,
                owner,
            },
        );
    }

    /// The fleet a device belongs to, noting the fleets that select it together.
    fn owner(&mut self, labels: &Labels, view: &DeviceView) -> Option<Name> {
        let selecting: Vec<(&Name, &FleetSelector)> = self
            .fleets
            .iter()
            .filter(|(_, f)| f.selector.selector.matches(labels))
            .map(|(k, f)| (k, &f.selector))
            .collect();
        let selectors: Vec<&FleetSelector> = selecting.iter().map(|(_, s)| *s).collect();
        let owner =
            decide::owner(&selectors, view.target.as_deref()).map(|i| selecting[i].0.clone());
        if selecting.len() > 1 {
            let names: Vec<Name> = selecting.iter().map(|(k, _)| (*k).clone()).collect();
            for n in names {
                if let Some(f) = self.fleets.get_mut(&n) {
                    f.overlapping.insert(view.name.clone());
                }
            }
        }
        owner
    }

    /// Takes back everything `old` added; [`Namespace::place`] adds what the device adds now.
    fn forget(&mut self, old: &Slot) {
        self.unuse(&old.view);
        if let Some(f) = old.view.target.as_deref().and_then(fleet_of_revision) {
            self.released
                .remove(&(Name::from(f), old.cached.name.clone()));
        }
        for f in self.fleets.values_mut() {
            f.overlapping.remove(&old.cached.name);
        }
        if let Some(f) = old.owner.as_ref().and_then(|o| self.fleets.get_mut(o)) {
            f.tally.remove(&old.cached.name);
        }
    }

    fn use_(&mut self, view: &DeviceView) {
        self.count_use(view, true);
    }

    fn unuse(&mut self, view: &DeviceView) {
        self.count_use(view, false);
    }

    fn count_use(&mut self, view: &DeviceView, add: bool) {
        let refs: BTreeSet<&Name> = [&view.target, &view.current, &view.pinned]
            .into_iter()
            .flatten()
            .collect();
        for r in refs {
            let targeted = usize::from(view.target.as_ref() == Some(r));
            if add {
                let u = self.revisions.entry(r.clone()).or_default();
                u.targeted += targeted;
                u.referenced += 1;
            } else if let Some(u) = self.revisions.get_mut(r) {
                u.targeted -= targeted;
                u.referenced -= 1;
                if u.referenced == 0 {
                    self.revisions.remove(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use kube::core::Selector;
    use proptest::prelude::*;

    use super::*;
    use crate::rollout::Basis;

    const FLEETS: [&str; 3] = ["f", "g", "h"];
    const REVISIONS: [&str; 3] = ["f-0000000001", "g-0000000001", "k-0000000001"];

    #[derive(Clone, Debug)]
    enum Op {
        /// Device `i` as the cache has it: label choice, target choice.
        Upsert(u8, u8, Option<u8>),
        Remove(u8),
        /// Which of [`FLEETS`] exist (a bit each), and whether `g` selects by site instead.
        SetFleets(u8, bool),
        Wrote(u8, u8),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, 0u8..4, proptest::option::of(0u8..3)).prop_map(|(i, l, t)| Op::Upsert(i, l, t)),
            1 => (0u8..12).prop_map(Op::Remove),
            1 => (0u8..8, any::<bool>()).prop_map(|(m, s)| Op::SetFleets(m, s)),
            2 => (0u8..12, 0u8..3).prop_map(|(i, r)| Op::Wrote(i, r)),
            1 => Just(Op::Expire),
        ]
    }

    fn labels(choice: u8) -> Labels {
        let (role, site) =
            [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")][usize::from(choice % 4)];
        [
            ("role".to_string(), role.to_string()),
            ("site".to_string(), site.to_string()),
        ]
        .into()
    }

    fn selectors(mask: u8, by_site: bool) -> Vec<FleetSelector> {
        FLEETS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(i, name)| FleetSelector {
                name: name.to_string(),
                selector: match (i, by_site) {
                    (1, true) => Selector::from_iter([("site", "x")]),
                    (2, _) => Selector::from_iter([("role", "b")]),
                    _ => Selector::from_iter([("role", "a")]),
                },
                created: [30, 10, 20][i],
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Kept up one event at a time, each fleet's devices, tally, overlap and the revisions
        /// in use equal what the namespace's devices give when sorted from scratch.
        #[test]
        fn kept_up_equals_sorted_from_scratch(ops in proptest::collection::vec(op(), 1..60)) {
            let mut ns = Namespace::default();
            // The model: each device's labels, cached view and write laid over.
            let mut model: BTreeMap<u8, (Labels, DeviceView, Option<Name>)> = BTreeMap::new();
            let mut fleets: Vec<FleetSelector> = vec![];
            let basis = Basis {
                update: REVISIONS[0].into(),
                supported: [edgevisor_crds::Architecture::Arm64].into(),
                timeout: 600,
                since: None,
            };
            for op in ops {
                match op {
                    Op::Upsert(i, l, t) => {
                        let mut view = DeviceView::test(&format!("d{i}"), None);
                        view.target = t.map(|t| REVISIONS[usize::from(t)].into());
                        view.current = Some(REVISIONS[usize::from(i % 3)].into());
                        ns.upsert(Arc::new(labels(l)), Arc::new(view.clone()), None);
                        let written = model.get(&i).and_then(|m| m.2.clone())
                            .filter(|w| view.target.as_ref() != Some(w));
                        model.insert(i, (labels(l), view, written));
                    }
                    Op::Remove(i) => {
                        ns.remove(&format!("d{i}"));
                        model.remove(&i);
                    }
                    Op::SetFleets(mask, by_site) => {
                        fleets = selectors(mask, by_site);
                        ns.set_fleets(fleets.clone());
                        for f in FLEETS {
                            if let Some(f) = ns.fleet_mut(f) {
                                f.tally.rebase(basis.clone(), 0);
                            }
                        }
                    }
                    Op::Wrote(i, r) => {
                        ns.wrote(&format!("d{i}"), REVISIONS[usize::from(r)].into(), 5, Instant::now());
                        if let Some(m) = model.get_mut(&i) {
                            m.2 = Some(REVISIONS[usize::from(r)].into());
                        }
                    }
                    Op::Expire => {
                        ns.expire_written(Instant::now() + Duration::from_secs(3600), Duration::from_secs(120));
                        for m in model.values_mut() {
                            m.2 = None;
                        }
                    }
                }
                // From scratch.
                let mut members: HashMap<String, Vec<Arc<DeviceView>>> = HashMap::new();
                let mut overlapping: HashMap<String, BTreeSet<Name>> = HashMap::new();
                let mut uses: HashMap<Name, RevisionUse> = HashMap::new();
                for (labels, cached, written) in model.values() {
                    let mut view = cached.clone();
                    if let Some(w) = written {
                        view.target = Some(w.clone());
                        view.targeted_at = Some(5);
                    }
                    let selecting: Vec<&FleetSelector> =
                        fleets.iter().filter(|f| f.selector.matches(labels)).collect();
                    if selecting.len() > 1 {
                        for f in &selecting {
                            overlapping.entry(f.name.clone()).or_default().insert(view.name.clone());
                        }
                    }
                    if let Some(i) = decide::owner(&selecting, view.target.as_deref()) {
                        members.entry(selecting[i].name.clone()).or_default().push(Arc::new(view.clone()));
                    }
                    let refs: BTreeSet<&Name> = [&view.target, &view.current, &view.pinned].into_iter().flatten().collect();
                    for r in refs {
                        let u = uses.entry(r.clone()).or_default();
                        u.referenced += 1;
                        u.targeted += usize::from(view.target.as_ref() == Some(r));
                    }
                }
                for f in &fleets {
                    let kept = ns.fleet(&f.name).expect("every fleet set is kept");
                    let scratch = Tally::of(kept.tally.basis().clone(), kept.tally.now(),
                        members.remove(&f.name).unwrap_or_default());
                    prop_assert_eq!(&kept.tally, &scratch, "fleet {}", f.name);
                    prop_assert_eq!(&kept.overlapping, &overlapping.remove(&f.name).unwrap_or_default());
                }
                for r in REVISIONS {
                    prop_assert_eq!(ns.revision_use(r), uses.get(r).copied().unwrap_or_default(), "{}", r);
                }
                prop_assert_eq!(ns.len(), model.len());
            }
        }
    }

    #[test]
    fn a_device_leaving_its_fleet_while_it_targets_the_fleets_revision_is_released_once() {
        let mut ns = Namespace::default();
        ns.set_fleets(selectors(0b001, false));
        let mut view = DeviceView::test("d", None);
        view.target = Some(REVISIONS[0].into());
        ns.upsert(Arc::new(labels(0)), Arc::new(view.clone()), None);
        assert!(ns.take_released("f").is_empty(), "it is f's");
        // Relabelled out of the fleet: released, and said once.
        ns.upsert(Arc::new(labels(2)), Arc::new(view.clone()), None);
        assert_eq!(ns.take_released("f"), vec![Name::from("d")]);
        assert!(ns.take_released("f").is_empty());
        assert_eq!(
            ns.revision_use(REVISIONS[0]).targeted,
            1,
            "its revision stays in use"
        );
    }

    #[test]
    fn own_writes_show_until_the_cache_does_or_they_expire() {
        let mut ns = Namespace::default();
        ns.set_fleets(selectors(0b001, false));
        ns.upsert(
            Arc::new(labels(0)),
            Arc::new(DeviceView::test("d", None)),
            None,
        );
        ns.wrote("d", REVISIONS[0].into(), 50, Instant::now());
        let target = |ns: &Namespace| {
            ns.fleet("f")
                .and_then(|f| f.tally.get("d"))
                .and_then(|d| d.target.clone())
        };
        assert_eq!(
            target(&ns).as_deref(),
            Some(REVISIONS[0]),
            "not yet in the cache"
        );
        // The cache still shows the old target: the write stays laid over.
        ns.upsert(
            Arc::new(labels(0)),
            Arc::new(DeviceView::test("d", None)),
            None,
        );
        assert_eq!(target(&ns).as_deref(), Some(REVISIONS[0]));
        ns.expire_written(Instant::now(), Duration::from_secs(120));
        assert_eq!(
            target(&ns).as_deref(),
            Some(REVISIONS[0]),
            "young writes stay"
        );
        ns.expire_written(
            Instant::now() + Duration::from_secs(121),
            Duration::from_secs(120),
        );
        assert_eq!(target(&ns), None, "an expired write gives way to the cache");
    }
}
