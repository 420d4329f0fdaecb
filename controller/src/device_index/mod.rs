//! The controller's cache of Devices, kept compact and summed up as it changes: a fleet of a
//! million devices must fit in the controller's memory, planning reads a dozen fields of each
//! (not the whole object), and a device event must cost what one device costs, not what its
//! fleet does. The watch stream feeds it; each event replaces one device in its namespace
//! ([`Namespace`]), which keeps every fleet's tally up to date.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use edgevisor_crds::Device;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::rollout::DeviceView;
use crate::views;

pub mod intern;
pub mod namespace;

pub use intern::{Interner, Labels};
pub use namespace::{FleetDevices, Namespace, RevisionUse};

type Key = (String, String);

/// What the controller keeps of one Device from the cache.
struct Entry {
    namespace: String,
    labels: Arc<Labels>,
    view: Arc<DeviceView>,
    /// `status.lastSeen`, seconds since the epoch.
    last_seen: Option<i64>,
}

#[derive(Default)]
struct Namespaces {
    by_name: HashMap<String, Namespace>,
    interned: Interner,
}

impl Namespaces {
    fn upsert(&mut self, e: Entry) {
        self.by_name
            .entry(e.namespace)
            .or_default()
            .upsert(e.labels, e.view, e.last_seen);
    }
}

/// Devices by namespace.
#[derive(Default)]
pub struct DeviceIndex {
    namespaces: RwLock<Namespaces>,
    /// A relist in progress: it replaces the whole index when it ends.
    relist: Mutex<Option<Vec<Entry>>>,
    ready: AtomicBool,
    /// When a gateway's summary last listed each device, seconds since the epoch.
    heard: RwLock<HashMap<Key, i64>>,
}

fn entry(interned: &mut Interner, device: &Device) -> Entry {
    Entry {
        namespace: device.namespace().unwrap_or_default(),
        labels: interned.labels(device.labels()),
        view: Arc::new(views::device_view(device, interned)),
        last_seen: device
            .status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .map(|t| t.0.as_second()),
    }
}

impl DeviceIndex {
    /// Applies one watch event.
    pub fn apply(&self, event: &Event<Device>) {
        match event {
            Event::Apply(device) => {
                let mut all = self.write();
                let e = entry(&mut all.interned, device);
                all.upsert(e);
                all.interned.sweep();
            }
            Event::Delete(device) => {
                let mut all = self.write();
                if let Some(ns) = all
                    .by_name
                    .get_mut(device.namespace().unwrap_or_default().as_str())
                {
                    ns.remove(&device.name_any());
                }
            }
            Event::Init => *self.relist() = Some(Vec::new()),
            Event::InitApply(device) => {
                let e = entry(&mut self.write().interned, device);
                self.relist().get_or_insert_with(Vec::new).push(e);
            }
            Event::InitDone => {
                if let Some(fresh) = self.relist().take() {
                    let mut all = self.write();
                    let keep: std::collections::HashSet<(&str, &str)> = fresh
                        .iter()
                        .map(|e| (e.namespace.as_str(), &*e.view.name))
                        .collect();
                    for (name, ns) in all.by_name.iter_mut() {
                        let gone: Vec<_> = ns
                            .names()
                            .filter(|d| !keep.contains(&(name.as_str(), &***d)))
                            .cloned()
                            .collect();
                        for d in gone {
                            ns.remove(&d);
                        }
                    }
                    drop(keep);
                    for e in fresh {
                        all.upsert(e);
                    }
                    all.interned.sweep();
                }
                self.ready.store(true, Ordering::Release);
            }
        }
    }

    /// Whether the first full list has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Works on one namespace's devices (made if it has none yet), with the index locked.
    pub fn with_namespace<R>(&self, namespace: &str, f: impl FnOnce(&mut Namespace) -> R) -> R {
        let mut all = self.write();
        match all.by_name.get_mut(namespace) {
            Some(ns) => f(ns),
            None => f(all.by_name.entry(namespace.to_string()).or_default()),
        }
    }

    /// Forgets the fleets `keep` says are gone, in every namespace.
    pub fn retain_fleets(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut all = self.write();
        for (name, ns) in all.by_name.iter_mut() {
            let fleets = ns.fleet_selectors();
            if fleets.iter().any(|f| !keep(name, &f.name)) {
                ns.set_fleets(fleets.into_iter().filter(|f| keep(name, &f.name)).collect());
            }
        }
    }

    /// A gateway's summary taken at `at` listed `keys`, read at `now`. A summary dated in the
    /// future counts as taken now: its date must not keep a device online past the window.
    pub fn heard(&self, at: i64, now: i64, keys: Vec<Key>) {
        let at = at.min(now);
        let mut heard = self.heard.write().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let t = heard.entry(key).or_insert(at);
            *t = (*t).max(at);
        }
    }

    /// Devices the gateway last marked online but not heard from within `window` seconds:
    /// neither their `lastSeen` nor a summary is that recent. Forgets summaries older than
    /// the window (they can no longer keep a device online).
    pub fn gone_quiet(&self, now: i64, window: i64) -> Vec<Key> {
        let mut heard = self.heard.write().unwrap_or_else(|e| e.into_inner());
        heard.retain(|_, at| now - *at < window);
        // By namespace, in one pass: looked up without building a key per device.
        let mut by_namespace: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for (ns, device) in heard.keys() {
            by_namespace.entry(ns).or_default().insert(device);
        }
        let all = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (ns, devices) in &all.by_name {
            let heard_here = by_namespace.get(ns.as_str());
            out.extend(
                devices
                    .quiet(now, window, |d| heard_here.is_some_and(|h| h.contains(d)))
                    .map(|d| (ns.clone(), d.to_string())),
            );
        }
        out
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Namespaces> {
        self.namespaces.write().unwrap_or_else(|e| e.into_inner())
    }

    fn relist(&self) -> std::sync::MutexGuard<'_, Option<Vec<Entry>>> {
        self.relist.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(ns: &str, name: &str, revision: Option<&str>) -> Device {
        let mut d = Device::new(name, Default::default());
        d.metadata.namespace = Some(ns.into());
        d.metadata.labels = Some([("role".to_string(), "kiosk".to_string())].into());
        d.spec.revision = revision.map(String::from);
        d
    }

    fn names(index: &DeviceIndex, ns: &str) -> Vec<String> {
        let mut out: Vec<String> =
            index.with_namespace(ns, |n| n.names().map(|d| d.to_string()).collect());
        out.sort();
        out
    }

    #[test]
    fn events_keep_the_index_in_step_with_the_cluster() {
        let index = DeviceIndex::default();
        assert!(!index.is_ready());
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(device("a", "d1", None)));
        index.apply(&Event::InitApply(device("b", "d2", None)));
        assert!(
            names(&index, "a").is_empty(),
            "a relist shows only once complete"
        );
        index.apply(&Event::InitDone);
        assert!(index.is_ready());
        assert_eq!(names(&index, "a"), ["d1"]);
        index.with_namespace("a", |n| {
            n.set_fleets(vec![crate::reconcile::decide::FleetSelector {
                name: "f".into(),
                selector: kube::core::Selector::from_iter([("role", "kiosk")]),
                created: 0,
            }])
        });
        index.apply(&Event::Apply(device("a", "d1", Some("f-0123456789"))));
        let target = index.with_namespace("a", |n| {
            n.fleet("f")
                .and_then(|f| f.tally.get("d1"))
                .and_then(|d| d.target.clone())
        });
        assert_eq!(
            target.as_deref(),
            Some("f-0123456789"),
            "the fleet's tally has it"
        );
        index.apply(&Event::Delete(device("a", "d1", None)));
        assert!(names(&index, "a").is_empty());
        assert!(index.with_namespace("a", |n| n.fleet("f").is_some_and(|f| f.tally.is_empty())));
        // A relist after a lost watch replaces everything, dropping what was deleted meanwhile.
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(device("c", "d3", None)));
        index.apply(&Event::InitDone);
        assert!(names(&index, "b").is_empty());
        assert_eq!(names(&index, "c"), ["d3"]);
    }

    #[test]
    fn a_device_is_quiet_when_neither_its_last_seen_nor_a_summary_is_recent() {
        use edgevisor_crds::common::condition::ONLINE;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        use k8s_openapi::jiff::Timestamp;
        let online = |name: &str, last_seen: i64| {
            let mut d = device("a", name, None);
            let at = Time(Timestamp::from_second(last_seen).expect("a time"));
            d.status = Some(edgevisor_crds::DeviceStatus {
                last_seen: Some(at.clone()),
                conditions: vec![Condition {
                    type_: ONLINE.into(),
                    status: "True".into(),
                    reason: "Heartbeat".into(),
                    message: String::new(),
                    last_transition_time: at,
                    observed_generation: None,
                }],
                ..Default::default()
            });
            d
        };
        let index = DeviceIndex::default();
        // Both came online at 1000 (the gateway's one write); only d1 is in later summaries.
        index.apply(&Event::Apply(online("d1", 1000)));
        index.apply(&Event::Apply(online("d2", 1000)));
        let key = |n: &str| ("a".to_string(), n.to_string());
        index.heard(1500, 1500, vec![key("d1")]);
        index.heard(1400, 1500, vec![key("d1"), key("d2")]);
        assert!(index.gone_quiet(1100, 600).is_empty(), "within the window");
        // At 2050 with a 600 s window: d2 was last heard at 1400, d1 at 1500.
        assert_eq!(index.gone_quiet(2050, 600), vec![key("d2")]);
        let mut both = index.gone_quiet(2150, 600);
        both.sort();
        assert_eq!(both, vec![key("d1"), key("d2")]);
        // A summary dated far ahead keeps a device only for the window from when it was read.
        index.heard(1_000_000, 2200, vec![key("d1")]);
        assert_eq!(index.gone_quiet(2700, 600), vec![key("d2")]);
        assert_eq!(index.gone_quiet(2800, 600).len(), 2);
    }
}
