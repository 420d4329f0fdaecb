use std::collections::{BTreeMap, BTreeSet};

use edgevisor_crds::fleet::{Pause, Resume, RolloutStep, RolloutStrategy};
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
    paused: bool,
    stable: Option<String>,
    update: String,
    now: i64,
}

impl World {
    fn new(devices: Vec<DeviceView>, strategy: RolloutStrategy) -> Self {
        World {
            strategy,
            supported: supported(),
            devices,
            memory: RolloutMemory::default(),
            resume: None,
            paused: false,
            stable: Some(OLD.into()),
            update: NEW.into(),
            now: 1_000,
        }
    }

    fn plan(&self) -> Plan {
        let fleet = FleetView {
            strategy: &self.strategy,
            paused: self.paused,
            resume: self.resume.as_ref(),
            update_revision: &self.update,
            stable_revision: self.stable.as_deref(),
            supported: &self.supported,
            now: self.now,
        };
        plan(&fleet, &self.memory, &self.devices)
    }

    /// Plans and applies the retargets, as the controller does.
    fn step(&mut self) -> Plan {
        let plan = self.plan();
        for (name, revision) in &plan.retarget {
            let d = self
                .devices
                .iter_mut()
                .find(|d| &d.name == name)
                .expect("planned device exists");
            d.target = Some(revision.clone());
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

    fn targets(&self, revision: &str) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.target.as_deref() == Some(revision))
            .map(|d| d.name.clone())
            .collect()
    }
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.retarget.iter().map(|(n, _)| n.as_str()).collect()
}

fn canary_order(devices: &[DeviceView]) -> Vec<String> {
    let mut names: Vec<String> = devices.iter().map(|d| d.name.clone()).collect();
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
    });
    assert_eq!(world.step().phase, Phase::WaitingForResume { step: 0 });
    world.resume = Some(Resume {
        revision: NEW.into(),
        step: 0,
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
fn a_device_that_never_finishes_fails_at_its_deadline() {
    let mut world = World::new(fleet_of(3), strategy(1, vec![]));
    world.strategy.failure_threshold = IntOrString::Int(1);
    world.step();
    let plan = world.step();
    assert_eq!(plan.requeue_after, Some(600));
    world.now += 600;
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
    };
    let mut world = World::new(fleet_of(4), strategy(1, vec![step(1, until_resumed())]));
    world.memory = memory;
    let plan = world.step();
    assert_eq!(
        plan.memory,
        RolloutMemory {
            revision: Some(NEW.into()),
            step: 0,
            pause_started_at: None,
            aborted: false
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
        let mut given: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut joined = 0u32;
        for event in events {
            let in_flight_before = world.devices.iter().filter(|d| d.in_flight()).count();
            let total = world.devices.iter().filter(|d| d.pinned.is_none()).count();
            let max_unavailable = resolve(&world.strategy.max_unavailable, total, Round::Down);
            let held: BTreeSet<String> = world.devices.iter().filter(|d| d.paused).map(|d| d.name.clone()).collect();
            let offline: BTreeSet<String> = world.devices.iter().filter(|d| !d.online).map(|d| d.name.clone()).collect();
            let before = world.devices.clone();
            let plan = world.step();
            let revision = world.update.clone();

            for (name, rev) in &plan.retarget {
                // Held devices are never touched; offline ones are never started.
                prop_assert!(!held.contains(name), "held device {name} retargeted");
                // No device is given the revision it already has as target.
                let old = before.iter().find(|d| &d.name == name).and_then(|d| d.target.clone());
                prop_assert_ne!(old.as_deref(), Some(rev.as_str()));
                if rev == &revision {
                    prop_assert!(!offline.contains(name), "offline device {name} started");
                    // ...and never twice the same revision in one rollout.
                    let n = given.entry((name.clone(), rev.clone())).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "{} given {} twice", name, rev);
                }
            }
            if plan.phase != Phase::Aborted {
                // In flight never grows past maxUnavailable.
                let in_flight = world.devices.iter().filter(|d| d.in_flight()).count();
                prop_assert!(in_flight <= max_unavailable.max(in_flight_before),
                    "in flight {in_flight} > maxUnavailable {max_unavailable} (was {in_flight_before})");
                // Canaries first: what starts now is a prefix, in canary order, of the devices
                // that could start.
                let mut startable: Vec<&DeviceView> = before.iter()
                    .filter(|d| d.online && !d.paused && d.pinned.is_none() && d.target.as_deref() != Some(revision.as_str()))
                    .collect();
                startable.sort_by_key(|d| (canary_key(&d.name), d.name.clone()));
                let started: Vec<&str> = plan.retarget.iter().filter(|(_, r)| r == &revision).map(|(n, _)| n.as_str()).collect();
                let prefix: Vec<&str> = startable.iter().take(started.len()).map(|d| d.name.as_str()).collect();
                prop_assert_eq!(started, prefix);
            }

            match event {
                Event::Finish { ok_mask } => world.finish(|name| ok_mask & (1 << (canary_key(name) % 64)) != 0),
                Event::Advance(s) => world.now += s,
                Event::Resume => world.resume = Some(Resume { revision: world.update.clone(), step: i32::try_from(world.memory.step).unwrap_or(0) }),
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
    world.devices[0].failed_revisions = vec![NEW.into()];
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
            .any(|(d, _)| *d == world.devices[2].name)
    );
    for d in world.devices.iter_mut().take(2) {
        d.current = Some(NEW.into());
    }
    assert_eq!(world.plan().phase, Phase::Complete);
}
