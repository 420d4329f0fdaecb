use std::collections::{BTreeMap, BTreeSet};

use edgevisor_crds::fleet::{Abort, Pause, Resume, Retry, RolloutStep, RolloutStrategy};
use edgevisor_crds::{Architecture, UpdateStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

use super::*;

const OLD: &str = "f-0000000000";
const NEW: &str = "f-1111111111";

fn device(name: &str) -> DeviceView {
    DeviceView::test(name, Some(OLD))
}

fn fleet_of(n: usize) -> Vec<DeviceView> {
    (0..n).map(|i| device(&format!("dev-{i:03}"))).collect()
}

fn strategy(max_unavailable: i32, steps: Vec<RolloutStep>) -> RolloutStrategy {
    RolloutStrategy {
        max_unavailable: IntOrString::Int(max_unavailable),
        steps,
        ..RolloutStrategy::default()
    }
}

fn step(devices: i32, pause: Option<Pause>) -> RolloutStep {
    RolloutStep {
        devices: IntOrString::Int(devices),
        pause,
    }
}

fn until_resumed() -> Option<Pause> {
    Some(Pause {
        duration_seconds: None,
        until_resumed: Some(true),
    })
}

fn supported() -> BTreeSet<Architecture> {
    [Architecture::Arm64, Architecture::Amd64].into()
}

struct World {
    strategy: RolloutStrategy,
    supported: BTreeSet<Architecture>,
    devices: Vec<DeviceView>,
    memory: RolloutMemory,
    resume: Option<Resume>,
    abort: Option<Abort>,
    retry: Option<Retry>,
    fast_track: bool,
    paused: bool,
    stable: Option<String>,
    update: String,
    now: i64,
    batch: usize,
    /// The devices as last planned and their tally, kept up by applying only what changed
    /// since: what the controller does with watch events.
    kept: std::cell::RefCell<(Vec<DeviceView>, Option<Tally>)>,
}

impl World {
    fn new(devices: Vec<DeviceView>, strategy: RolloutStrategy) -> Self {
        World {
            strategy,
            supported: supported(),
            devices,
            memory: RolloutMemory::default(),
            resume: None,
            abort: None,
            retry: None,
            fast_track: false,
            paused: false,
            stable: Some(OLD.into()),
            update: NEW.into(),
            now: 1_000,
            batch: usize::MAX,
            kept: Default::default(),
        }
    }

    fn plan(&self) -> Plan {
        let fleet = FleetView {
            strategy: &self.strategy,
            paused: self.paused,
            resume: self.resume.as_ref(),
            abort: self.abort.as_ref(),
            retry: self.retry.as_ref(),
            fast_track: self.fast_track,
            update_revision: &self.update,
            stable_revision: self.stable.as_deref(),
            supported: &self.supported,
            now: self.now,
            batch: self.batch,
        };
        let scratch = plan(&fleet, &self.memory, &self.devices);
        // The same plan from a tally kept up through every change the tests make, one device
        // event at a time, equal to one summed from scratch.
        let mut kept = self.kept.borrow_mut();
        let (before, tally) = &mut *kept;
        let tally = tally.get_or_insert_with(|| Tally::new(Basis::default(), self.now));
        let now_names: BTreeSet<&str> = self.devices.iter().map(|d| &*d.name).collect();
        for gone in before.iter().filter(|d| !now_names.contains(&*d.name)) {
            tally.remove(&gone.name);
        }
        for d in &self.devices {
            if before.iter().find(|b| b.name == d.name) != Some(d) {
                tally.upsert(Arc::new(d.clone()));
            }
        }
        *before = self.devices.clone();
        tally.rebase(Basis::of(&fleet, &self.memory), self.now);
        let scratch_tally = Tally::of(
            Basis::of(&fleet, &self.memory),
            self.now,
            self.devices.iter().cloned().map(Arc::new),
        );
        assert_eq!(
            *tally, scratch_tally,
            "a tally kept up equals one summed from scratch"
        );
        let refused: BTreeSet<&str> = self
            .devices
            .iter()
            .filter(|d| d.pin_refused)
            .map(|d| &*d.name)
            .collect();
        let incremental = plan_tally(&fleet, &self.memory, tally, |n| refused.contains(n));
        assert_eq!(
            incremental, scratch,
            "the kept tally plans as the devices do"
        );
        scratch
    }

    /// Plans and applies the retargets, as the controller does.
    fn step(&mut self) -> Plan {
        let plan = self.plan();
        for (name, revision) in &plan.retarget {
            let d = self
                .devices
                .iter_mut()
                .find(|d| &*d.name == name)
                .expect("planned device exists");
            d.target = Some(revision.as_str().into());
            d.targeted_at = Some(self.now);
        }
        self.memory = plan.memory.clone();
        self.stable = plan.stable_revision.clone();
        plan
    }

    /// Every in-flight device finishes: `ok` commits it, else it fails and stays where it was.
    fn finish(&mut self, ok: impl Fn(&str) -> bool) {
        for d in &mut self.devices {
            if let Some(target) = d.target.clone()
                && d.current.as_ref() != Some(&target)
            {
                let status = if ok(&d.name) {
                    UpdateStatus::Done
                } else {
                    UpdateStatus::Error
                };
                if status == UpdateStatus::Done {
                    d.current = Some(target.clone());
                }
                d.update = Some(UpdateReport {
                    revision: target,
                    status,
                    started_at: Some(self.now),
                });
            }
        }
    }

    fn judge(&self) -> Judge {
        Judge {
            timeout: i64::from(self.strategy.device_timeout_seconds),
            now: self.now,
            since: self.memory.failures_since,
        }
    }

    fn targets(&self, revision: &str) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.target.as_deref() == Some(revision))
            .map(|d| d.name.to_string())
            .collect()
    }
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.retarget.iter().map(|(n, _)| n.as_str()).collect()
}

fn canary_order(devices: &[DeviceView]) -> Vec<String> {
    let mut names: Vec<String> = devices.iter().map(|d| d.name.to_string()).collect();
    names.sort_by_key(|n| (canary_key(n), n.clone()));
    names
}

#[test]
fn never_more_than_max_unavailable_at_once() {
    let mut world = World::new(fleet_of(10), strategy(3, vec![]));
    let plan = world.step();
    assert_eq!(plan.retarget.len(), 3);
    assert_eq!(plan.phase, Phase::Progressing);
    // Nothing finished: nothing more starts.
    assert!(world.step().retarget.is_empty());
    world.finish(|_| true);
    assert_eq!(world.step().retarget.len(), 3);
}

#[test]
fn canaries_are_the_same_devices_every_time() {
    let first = World::new(fleet_of(20), strategy(2, vec![step(2, until_resumed())])).plan();
    let mut shuffled = fleet_of(20);
    shuffled.reverse();
    let again = World::new(shuffled, strategy(2, vec![step(2, until_resumed())])).plan();
    assert_eq!(names(&first), names(&again));
    assert_eq!(
        names(&first),
        canary_order(&fleet_of(20))[..2]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_step_waits_for_resume_then_the_rest_follow() {
    let mut world = World::new(fleet_of(6), strategy(6, vec![step(1, until_resumed())]));
    assert_eq!(world.step().retarget.len(), 1, "one canary");
    world.finish(|_| true);
    let plan = world.step();
    assert!(plan.retarget.is_empty());
    assert_eq!(plan.phase, Phase::WaitingForResume { step: 0 });
    // A resume for another revision or step does nothing.
    world.resume = Some(Resume {
        revision: OLD.into(),
        step: 0,
        full: false,
    });
    assert_eq!(world.step().phase, Phase::WaitingForResume { step: 0 });
    world.resume = Some(Resume {
        revision: NEW.into(),
        step: 0,
        full: false,
    });
    let plan = world.step();
    assert_eq!(plan.retarget.len(), 5);
    world.finish(|_| true);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Complete);
    assert_eq!(plan.stable_revision.as_deref(), Some(NEW));
}

#[test]
fn a_timed_pause_ends_by_itself() {
    let pause = Some(Pause {
        duration_seconds: Some(60),
        until_resumed: None,
    });
    let mut world = World::new(fleet_of(4), strategy(4, vec![step(1, pause)]));
    world.step();
    world.finish(|_| true);
    assert_eq!(
        world.step().phase,
        Phase::Paused {
            step: 0,
            remaining: 60
        }
    );
    world.now += 59;
    let plan = world.step();
    assert_eq!(
        plan.phase,
        Phase::Paused {
            step: 0,
            remaining: 1
        }
    );
    assert_eq!(plan.requeue_after, Some(1));
    world.now += 1;
    assert_eq!(world.step().retarget.len(), 3);
}

#[test]
fn crossing_the_failure_threshold_aborts_and_rolls_back() {
    let mut strategy = strategy(2, vec![]);
    strategy.failure_threshold = IntOrString::Int(1);
    let mut world = World::new(fleet_of(6), strategy);
    let first = world.step();
    let doomed = first.retarget[0].0.clone();
    world.finish(|name| name != doomed);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Aborted);
    assert!(plan.memory.aborted);
    // Everyone on the update revision goes back to the stable one, and nobody else moves.
    let back: BTreeSet<&str> = names(&plan).into_iter().collect();
    assert_eq!(back.len(), 2);
    assert!(plan.retarget.iter().all(|(_, r)| r == OLD));
    world.finish(|_| true);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Aborted, "an abort is remembered");
    assert!(plan.retarget.is_empty());
    assert!(world.targets(NEW).is_empty());
}

#[test]
fn without_auto_rollback_an_abort_only_stops() {
    let mut strategy = strategy(2, vec![]);
    strategy.auto_rollback = false;
    let mut world = World::new(fleet_of(4), strategy);
    world.step();
    world.finish(|_| false);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Aborted);
    assert!(plan.retarget.is_empty());
}

#[test]
fn a_device_that_never_finishes_fails_at_its_timeout() {
    let mut world = World::new(fleet_of(3), strategy(1, vec![]));
    world.strategy.failure_threshold = IntOrString::Int(1);
    world.strategy.device_timeout_seconds = 300;
    world.step();
    let plan = world.step();
    assert_eq!(plan.requeue_after, Some(300));
    world.now += 300;
    let plan = world.step();
    assert_eq!(plan.counts.failed, 1);
    assert_eq!(plan.phase, Phase::Aborted);
}

#[test]
fn paused_fleets_and_held_devices_are_never_touched() {
    let mut world = World::new(fleet_of(4), strategy(4, vec![]));
    world.paused = true;
    let plan = world.step();
    assert_eq!(plan.phase, Phase::FleetPaused);
    assert!(plan.retarget.is_empty());

    world.paused = false;
    world.devices[0].paused = true;
    let plan = world.step();
    assert!(!names(&plan).contains(&"dev-000"));
    assert_eq!(plan.retarget.len(), 3);
    world.finish(|_| true);
    assert_eq!(
        world.step().phase,
        Phase::Complete,
        "a held device does not block completion"
    );
}

#[test]
fn pinned_devices_get_their_pin_and_unsupported_ones_nothing() {
    let mut devices = fleet_of(3);
    devices[0].pinned = Some("f-2222222222".into());
    devices[1].architecture = Some(Architecture::Riscv64);
    let plan = World::new(devices, strategy(3, vec![])).plan();
    assert!(
        plan.retarget
            .contains(&("dev-000".to_string(), "f-2222222222".to_string()))
    );
    assert!(!names(&plan).contains(&"dev-001"));
    assert_eq!(plan.counts.unsupported, 1);
    assert!(
        plan.retarget
            .contains(&("dev-002".to_string(), NEW.to_string()))
    );
}

#[test]
fn a_new_revision_starts_a_new_rollout_at_step_zero() {
    let memory = RolloutMemory {
        revision: Some(OLD.into()),
        step: 3,
        pause_started_at: Some(5),
        aborted: true,
        ..RolloutMemory::default()
    };
    let mut world = World::new(fleet_of(4), strategy(1, vec![step(1, until_resumed())]));
    world.memory = memory;
    let plan = world.step();
    assert_eq!(
        RolloutMemory {
            progress: None,
            ..plan.memory
        },
        RolloutMemory {
            revision: Some(NEW.into()),
            ..RolloutMemory::default()
        }
    );
    assert_eq!(plan.retarget.len(), 1);
}

#[test]
fn offline_devices_are_not_started_and_devices_may_come_and_go() {
    let mut world = World::new(fleet_of(4), strategy(4, vec![]));
    world.devices[1].online = false;
    let plan = world.step();
    assert_eq!(plan.retarget.len(), 3);
    assert!(!names(&plan).contains(&"dev-001"));
    world.finish(|_| true);
    world.devices.push(device("dev-new"));
    world.devices.remove(0);
    world.devices[0].online = true;
    let plan = world.step();
    let mut started = names(&plan);
    started.sort();
    assert_eq!(started, ["dev-001", "dev-new"]);
}

// === Properties over random fleets and event sequences ===

#[derive(Clone, Debug)]
enum Event {
    Finish { ok_mask: u64 },
    Advance(i64),
    Resume,
    Join,
    Leave(u16),
    Online(u16, bool),
    Hold(u16, bool),
    NewRevision,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => any::<u64>().prop_map(|ok_mask| Event::Finish { ok_mask }),
        2 => (1i64..900).prop_map(Event::Advance),
        1 => Just(Event::Resume),
        1 => Just(Event::Join),
        1 => any::<u16>().prop_map(Event::Leave),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(i, on)| Event::Online(i, on)),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(i, held)| Event::Hold(i, held)),
        1 => Just(Event::NewRevision),
    ]
}

fn random_strategy() -> impl Strategy<Value = RolloutStrategy> {
    let size = prop_oneof![
        (1i32..6).prop_map(IntOrString::Int),
        (1i32..=100).prop_map(|p| IntOrString::String(format!("{p}%")))
    ];
    let steps = proptest::collection::vec((1i32..8, 0u8..3), 0..4).prop_map(|raw| {
        let mut total = 0;
        raw.into_iter()
            .map(|(grow, pause)| {
                total += grow;
                let pause = match pause {
                    0 => None,
                    1 => Some(Pause {
                        duration_seconds: Some(120),
                        until_resumed: None,
                    }),
                    _ => until_resumed(),
                };
                step(total, pause)
            })
            .collect::<Vec<_>>()
    });
    (size.clone(), steps, size, any::<bool>()).prop_map(
        |(max_unavailable, steps, failure_threshold, auto_rollback)| RolloutStrategy {
            max_unavailable,
            steps,
            failure_threshold,
            auto_rollback,
            progress_deadline_seconds: 600,
            device_timeout_seconds: 600,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rollout_invariants_hold_over_any_event_sequence(
        size in 0usize..40,
        strategy in random_strategy(),
        events in proptest::collection::vec(event(), 1..40),
    ) {
        let mut world = World::new(fleet_of(size), strategy);
        // Every fifth device is of an architecture the revisions lack.
        for (i, d) in world.devices.iter_mut().enumerate() {
            if i % 5 == 4 {
                d.architecture = Some(Architecture::Riscv64);
            }
        }
        let mut given: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut joined = 0u32;
        for event in events {
            let occupying = |w: &World| { let j = w.judge(); w.devices.iter().filter(|d| j.occupying(d)).count() };
            let in_flight_before = occupying(&world);
            let total = world.devices.iter().filter(|d| d.pinned.is_none()).count();
            let max_unavailable = resolve(&world.strategy.max_unavailable, total, Round::Down);
            let held: BTreeSet<String> = world.devices.iter().filter(|d| d.paused).map(|d| d.name.to_string()).collect();
            let offline: BTreeSet<String> = world.devices.iter().filter(|d| !d.online).map(|d| d.name.to_string()).collect();
            let before = world.devices.clone();
            let plan = world.step();
            let revision = world.update.clone();

            for (name, rev) in &plan.retarget {
                // Held devices are never touched; offline ones are never started.
                prop_assert!(!held.contains(name), "held device {name} retargeted");
                // No device is given the revision it already has as target.
                let old = before.iter().find(|d| &*d.name == name).and_then(|d| d.target.clone());
                prop_assert_ne!(old.as_deref(), Some(rev.as_str()));
                if rev == &revision {
                    prop_assert!(!offline.contains(name), "offline device {name} started");
                    // Never a revision without the device's architecture.
                    let arch = before.iter().find(|d| &*d.name == name).and_then(|d| d.architecture);
                    prop_assert!(arch.is_some_and(|a| world.supported.contains(&a)), "{name} ({arch:?}) given {rev}");
                    // ...and never twice the same revision in one rollout.
                    let n = given.entry((name.clone(), rev.clone())).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "{} given {} twice", name, rev);
                }
            }
            if plan.phase != Phase::Aborted {
                // In flight (within its deadline) never grows past maxUnavailable.
                let in_flight = occupying(&world);
                prop_assert!(in_flight <= max_unavailable.max(in_flight_before),
                    "in flight {in_flight} > maxUnavailable {max_unavailable} (was {in_flight_before})");
                // Canaries first: what starts now is a prefix, in canary order, of the devices
                // that could start.
                let mut startable: Vec<&DeviceView> = before.iter()
                    .filter(|d| d.online && !d.paused && d.pinned.is_none() && d.target.as_deref() != Some(revision.as_str())
                        && d.current.as_deref() != Some(revision.as_str()) && !world.judge().failed(d, &revision)
                        && d.architecture.is_some_and(|a| world.supported.contains(&a)))
                    .collect();
                startable.sort_by_key(|d| (canary_key(&d.name), d.name.clone()));
                let started: Vec<&str> = plan.retarget.iter().filter(|(_, r)| r == &revision).map(|(n, _)| n.as_str()).collect();
                let prefix: Vec<&str> = startable.iter().take(started.len()).map(|d| &*d.name).collect();
                prop_assert_eq!(started, prefix);
            }

            match event {
                Event::Finish { ok_mask } => world.finish(|name| ok_mask & (1 << (canary_key(name) % 64)) != 0),
                Event::Advance(s) => world.now += s,
                Event::Resume => world.resume = Some(Resume { revision: world.update.clone(), step: i32::try_from(world.memory.step).unwrap_or(0), full: false }),
                Event::Join => { joined += 1; world.devices.push(device(&format!("joined-{joined}"))); }
                Event::Leave(i) => if !world.devices.is_empty() { let n = world.devices.len(); world.devices.remove(usize::from(i) % n); },
                Event::Online(i, on) => if !world.devices.is_empty() { let n = world.devices.len(); world.devices[usize::from(i) % n].online = on; },
                Event::Hold(i, held) => if !world.devices.is_empty() { let n = world.devices.len(); world.devices[usize::from(i) % n].paused = held; },
                // A new template mid-rollout: a new update revision.
                Event::NewRevision => world.update = format!("f-{:010}", given.len() + 2),
            }
        }
    }
}

#[test]
fn a_fleet_without_devices_passes_no_step() {
    let steps = vec![step(2, until_resumed()), step(4, None)];
    let mut world = World::new(vec![], strategy(3, steps));
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Complete);
    assert_eq!(plan.memory.step, 0, "no step is passed with nobody to move");
    assert_eq!(
        plan.stable_revision.as_deref(),
        Some(OLD),
        "nor is the revision made stable"
    );
    world.devices = fleet_of(6);
    let plan = world.step();
    assert_eq!(plan.retarget.len(), 2, "the first step still comes first");
}

#[test]
fn a_canary_sent_back_after_failing_still_counts_as_failed() {
    let mut world = World::new(fleet_of(5), strategy(1, vec![]));
    // Sent back to the stable revision by the abort, it runs that again now.
    world.devices[0].target = Some(OLD.into());
    world.devices[0].failed_revisions = [NEW.into()].into();
    let plan = world.plan();
    assert_eq!(plan.counts.failed, 1);
    assert_eq!(plan.phase, Phase::Aborted);
}

#[test]
fn a_revoked_device_is_neither_moved_nor_waited_for() {
    let mut world = World::new(fleet_of(3), strategy(3, vec![]));
    world.devices[2].revoked = true;
    let plan = world.step();
    assert!(
        !plan
            .retarget
            .iter()
            .any(|(d, _)| **d == *world.devices[2].name)
    );
    for d in world.devices.iter_mut().take(2) {
        d.current = Some(NEW.into());
    }
    assert_eq!(world.plan().phase, Phase::Complete);
}

// === Rollouts that always end ===

#[test]
fn a_failure_below_the_threshold_finishes_its_part_and_the_rollout_completes() {
    let mut strategy = strategy(2, vec![]);
    strategy.failure_threshold = IntOrString::Int(3);
    let mut world = World::new(fleet_of(10), strategy);
    let doomed = world.step().retarget[0].0.clone();
    for _ in 0..10 {
        world.finish(|name| name != doomed);
        if world.step().phase == Phase::Complete {
            break;
        }
    }
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Complete);
    assert_eq!(plan.counts.failed, 1);
    assert_eq!(plan.failed_devices, vec![doomed]);
    assert_eq!(plan.counts.updated, 9);
    assert_eq!(plan.stable_revision.as_deref(), Some(NEW));
}

#[test]
fn a_failed_canary_moves_on_under_a_percentage_threshold() {
    let mut strategy = strategy(5, vec![step(1, None)]);
    strategy.failure_threshold = IntOrString::String("10%".into());
    let mut world = World::new(fleet_of(100), strategy);
    assert_eq!(world.step().retarget.len(), 1, "the canary");
    world.finish(|_| false);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Progressing);
    assert_eq!(plan.counts.failed, 1);
    assert_eq!(
        plan.memory.step, 1,
        "the failed canary finished the first step"
    );
    assert_eq!(
        plan.retarget.len(),
        5,
        "and the rest follow within maxUnavailable"
    );
}

#[test]
fn a_device_quiet_past_its_deadline_gives_its_slot_back() {
    let mut strategy = strategy(1, vec![]);
    strategy.failure_threshold = IntOrString::Int(2);
    let mut world = World::new(fleet_of(3), strategy);
    let quiet = world.step().retarget[0].0.clone();
    assert!(world.step().retarget.is_empty(), "its slot is taken");
    world.now += 3600;
    let plan = world.step();
    assert_eq!(plan.failed_devices, vec![quiet.clone()]);
    assert_eq!(plan.retarget.len(), 1, "the next device takes the slot");
    assert_ne!(plan.retarget[0].0, quiet);
}

#[test]
fn offline_devices_are_skipped_and_catch_up_when_back() {
    let mut world = World::new(fleet_of(4), strategy(4, vec![]));
    world.devices[1].online = false;
    world.step();
    world.finish(|_| true);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Complete);
    assert_eq!(plan.skipped_offline, vec!["dev-001".to_string()]);
    assert_eq!(
        plan.stable_revision.as_deref(),
        Some(NEW),
        "the rest made it stable"
    );
    world.devices[1].online = true;
    let plan = world.step();
    assert_eq!(
        plan.retarget,
        vec![("dev-001".to_string(), NEW.to_string())]
    );
    world.finish(|_| true);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Complete);
    assert!(plan.skipped_offline.is_empty());
}

#[test]
fn the_latest_result_decides_whether_a_device_failed() {
    let mut world = World::new(fleet_of(3), strategy(3, vec![]));
    world.strategy.failure_threshold = IntOrString::Int(3);
    world.step();
    world.finish(|name| name != "dev-000");
    assert_eq!(world.plan().counts.failed, 1);
    // The agent tries again: in progress, not failed.
    let d = &mut world.devices[0];
    d.failed_revisions = [NEW.into()].into();
    d.update = Some(UpdateReport {
        revision: NEW.into(),
        status: UpdateStatus::Downloading,
        started_at: Some(world.now),
    });
    assert_eq!(world.plan().counts.failed, 0);
    assert_eq!(world.plan().counts.updating, 1);
    // ...and it succeeds: not failed either.
    world.devices[0].current = Some(NEW.into());
    world.devices[0].update = None;
    let plan = world.plan();
    assert_eq!((plan.counts.failed, plan.phase), (0, Phase::Complete));
}

#[test]
fn a_device_that_joins_while_the_rollout_waits_gets_the_stable_revision() {
    let mut world = World::new(fleet_of(3), strategy(3, vec![step(1, until_resumed())]));
    world.step();
    world.finish(|_| true);
    assert_eq!(world.step().phase, Phase::WaitingForResume { step: 0 });
    let mut joined = device("joined");
    joined.target = None;
    joined.current = None;
    world.devices.push(joined.clone());
    let plan = world.step();
    assert_eq!(plan.retarget, vec![("joined".to_string(), OLD.to_string())]);
    // Paused fleets and aborted rollouts too; without a stable revision, nothing.
    for (paused, aborted) in [(true, false), (false, true)] {
        let mut w = World::new(vec![joined.clone()], strategy(1, vec![]));
        w.paused = paused;
        w.memory = RolloutMemory {
            revision: Some(NEW.into()),
            aborted,
            ..RolloutMemory::default()
        };
        assert_eq!(
            w.plan().retarget,
            vec![("joined".to_string(), OLD.to_string())]
        );
        w.stable = None;
        assert!(w.plan().retarget.is_empty());
    }
}

#[test]
fn a_revision_that_failed_everywhere_below_the_threshold_is_not_made_stable() {
    let mut strategy = strategy(3, vec![]);
    strategy.failure_threshold = IntOrString::Int(10);
    let mut world = World::new(fleet_of(3), strategy);
    world.step();
    world.finish(|_| false);
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Complete);
    assert_eq!(plan.counts.failed, 3);
    assert_eq!(plan.stable_revision.as_deref(), Some(OLD));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever happened before, once devices stop coming, going and changing their minds,
    /// every rollout ends (complete or aborted) within a bounded number of plans, with each
    /// device either succeeding or failing every time it is asked.
    #[test]
    fn every_rollout_ends_once_devices_stop_changing(
        size in 0usize..30,
        strategy in random_strategy(),
        events in proptest::collection::vec(event(), 0..30),
        outcome in any::<u64>(),
    ) {
        let mut world = World::new(fleet_of(size), strategy);
        let mut joined = 0u32;
        for event in events {
            world.step();
            match event {
                Event::Finish { ok_mask } => world.finish(|name| ok_mask & (1 << (canary_key(name) % 64)) != 0),
                Event::Advance(s) => world.now += s,
                Event::Resume => world.resume = Some(Resume { revision: world.update.clone(), step: i32::try_from(world.memory.step).unwrap_or(0), full: false }),
                Event::Join => { joined += 1; let mut d = device(&format!("joined-{joined}")); d.target = None; d.current = None; world.devices.push(d); }
                Event::Leave(i) => if !world.devices.is_empty() { let n = world.devices.len(); world.devices.remove(usize::from(i) % n); },
                Event::Online(i, on) => if !world.devices.is_empty() { let n = world.devices.len(); world.devices[usize::from(i) % n].online = on; },
                Event::Hold(i, held) => if !world.devices.is_empty() { let n = world.devices.len(); world.devices[usize::from(i) % n].paused = held; },
                Event::NewRevision => world.update = format!("f-{:010}", u64::from(joined) + 7),
            }
        }
        // From here on devices only answer: each succeeds or fails (by `outcome`), time passes,
        // and a waiting step is resumed, as an operator would.
        let bound = 4 * (world.devices.len() + world.strategy.steps.len()) + 10;
        let mut ended = None;
        for _ in 0..bound {
            let plan = world.step();
            if matches!(plan.phase, Phase::Complete | Phase::Aborted) && plan.retarget.is_empty() {
                ended = Some(plan.phase);
                break;
            }
            world.finish(|name| outcome & (1 << (canary_key(name) % 64)) != 0);
            world.now += 601;
            world.resume = Some(Resume { revision: world.update.clone(), step: i32::try_from(world.memory.step).unwrap_or(0), full: false });
        }
        prop_assert!(ended.is_some(), "the rollout of {} did not end within {bound} plans: {:?}", world.update, world.plan());
    }
}

// === Operator verbs and the fleet's progress deadline ===

#[test]
fn abort_stops_now_and_sends_the_updated_devices_back() {
    let mut world = World::new(fleet_of(6), strategy(2, vec![]));
    world.step();
    world.finish(|_| true);
    world.abort = Some(Abort {
        revision: NEW.into(),
    });
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Aborted);
    assert_eq!(plan.retarget.len(), 2);
    assert!(plan.retarget.iter().all(|(_, r)| r == OLD));
    // An abort of another revision does nothing.
    let mut other = World::new(fleet_of(2), strategy(2, vec![]));
    other.abort = Some(Abort {
        revision: "f-9999999999".into(),
    });
    assert_eq!(other.step().phase, Phase::Progressing);
}

#[test]
fn retry_runs_an_aborted_revision_again_from_step_zero_forgetting_its_failures() {
    let steps = vec![step(1, until_resumed())];
    let mut world = World::new(fleet_of(4), strategy(2, steps));
    let canary = world.step().retarget[0].0.clone();
    world.finish(|_| false);
    world.now += 10;
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Aborted);
    world.finish(|_| true); // back on the stable revision
    world.now += 10;
    world.retry = Some(Retry {
        revision: NEW.into(),
        attempt: 1,
    });
    let plan = world.step();
    assert_eq!(
        plan.counts.failed, 0,
        "the aborted try's failure is forgotten"
    );
    assert_eq!(plan.phase, Phase::Progressing);
    assert_eq!(plan.memory.step, 0);
    assert_eq!(
        plan.retarget,
        vec![(canary.clone(), NEW.to_string())],
        "the same canary goes first again"
    );
    // The same attempt again does nothing more; a new failure counts.
    world.finish(|_| false);
    world.now += 10;
    assert_eq!(world.step().phase, Phase::Aborted);
}

#[test]
fn promote_ends_a_timed_pause_and_promote_full_skips_every_step() {
    let timed = Some(Pause {
        duration_seconds: Some(3600),
        until_resumed: None,
    });
    let steps = vec![step(1, timed), step(2, until_resumed()), step(3, None)];
    let mut world = World::new(fleet_of(10), strategy(10, steps));
    world.step();
    world.finish(|_| true);
    assert!(matches!(world.step().phase, Phase::Paused { step: 0, .. }));
    world.resume = Some(Resume {
        revision: NEW.into(),
        step: 0,
        full: false,
    });
    let plan = world.step();
    assert_eq!(plan.memory.step, 1);
    assert_eq!(plan.retarget.len(), 1, "on to the second step");
    world.finish(|_| true);
    assert_eq!(world.step().phase, Phase::WaitingForResume { step: 1 });
    world.resume = Some(Resume {
        revision: NEW.into(),
        step: 1,
        full: true,
    });
    let plan = world.step();
    assert_eq!(
        plan.retarget.len(),
        8,
        "everyone else, within maxUnavailable"
    );
}

#[test]
fn going_back_to_a_revision_the_fleet_ran_is_fast_tracked() {
    let steps = vec![step(1, until_resumed()), step(2, None)];
    let mut world = World::new(fleet_of(6), strategy(1, steps));
    world.fast_track = true;
    let plan = world.step();
    assert_eq!(
        plan.retarget.len(),
        6,
        "no steps, no pauses, no maxUnavailable"
    );
    // Once back and stable, devices that fall behind again go within maxUnavailable.
    world.finish(|_| true);
    assert_eq!(world.step().phase, Phase::Complete);
    for d in world.devices.iter_mut().take(3) {
        d.current = Some(OLD.into());
        d.target = Some(OLD.into());
    }
    assert_eq!(world.step().retarget.len(), 1);
}

#[test]
fn a_rollout_without_progress_for_its_deadline_is_stalled_until_progress_resumes() {
    let mut world = World::new(fleet_of(3), strategy(1, vec![]));
    world.strategy.progress_deadline_seconds = 600;
    world.strategy.device_timeout_seconds = 3600;
    world.step();
    world.now += 300;
    let plan = world.step();
    assert_eq!(plan.stalled_for, None);
    assert_eq!(
        plan.requeue_after,
        Some(300),
        "planned again when the deadline comes"
    );
    world.now += 300;
    let plan = world.step();
    assert_eq!(plan.stalled_for, Some(600));
    assert_eq!(plan.phase, Phase::Progressing, "a stall does not abort");
    // The device reports progress: no longer stalled.
    let d = world
        .devices
        .iter_mut()
        .find(|d| d.target.as_deref() == Some(NEW))
        .expect("one in flight");
    d.update = Some(UpdateReport {
        revision: NEW.into(),
        status: UpdateStatus::Downloading,
        started_at: Some(world.now),
    });
    world.now += 10;
    assert_eq!(world.step().stalled_for, None);
    // Waiting is not stalling.
    let mut waiting = World::new(fleet_of(3), strategy(1, vec![step(1, until_resumed())]));
    waiting.step();
    waiting.finish(|_| true);
    waiting.now += 10_000;
    let plan = waiting.step();
    assert_eq!(plan.phase, Phase::WaitingForResume { step: 0 });
    assert_eq!(plan.stalled_for, None);
}

#[test]
fn pausing_keeps_a_complete_rollout_complete_and_an_abort_an_abort() {
    let mut world = World::new(fleet_of(3), strategy(3, vec![]));
    world.step();
    world.finish(|_| true);
    assert_eq!(world.step().phase, Phase::Complete);
    world.paused = true;
    assert_eq!(
        world.step().phase,
        Phase::Complete,
        "still Ready while held"
    );

    let mut world = World::new(fleet_of(3), strategy(3, vec![]));
    world.step();
    world.finish(|_| false);
    assert_eq!(world.step().phase, Phase::Aborted);
    world.finish(|_| true);
    world.paused = true;
    let plan = world.step();
    assert_eq!(plan.phase, Phase::Aborted);
    assert!(plan.retarget.is_empty(), "nothing moves while held");
    world.paused = false;
    assert_eq!(
        world.step().phase,
        Phase::Aborted,
        "unpausing does not forget the abort"
    );
}

#[test]
fn a_refused_pin_is_not_applied() {
    let mut devices = fleet_of(2);
    devices[0].pinned = Some("f-2222222222".into());
    devices[0].pin_refused = true;
    let plan = World::new(devices, strategy(2, vec![])).plan();
    assert!(
        !plan
            .retarget
            .contains(&("dev-000".to_string(), "f-2222222222".to_string()))
    );
}

#[test]
fn a_large_move_comes_in_batches_each_counted_as_progress() {
    let mut world = World::new(fleet_of(10), strategy(10, vec![]));
    world.batch = 4;
    let first = world.step();
    assert_eq!((first.retarget.len(), first.more), (4, true));
    let mark = first.memory.progress.clone();
    world.now += 1;
    let second = world.step();
    assert_eq!((second.retarget.len(), second.more), (4, true));
    assert_ne!(second.memory.progress, mark, "a batch given is progress");
    let third = world.step();
    assert_eq!((third.retarget.len(), third.more), (2, false));
    assert_eq!(world.targets(NEW).len(), 10);
}
