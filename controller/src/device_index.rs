//! The controller's cache of Devices, kept compact: a fleet of millions of devices must fit in
//! the controller's memory, and planning reads a dozen fields of each, not the whole object
//! (metadata, managed fields, container lists, history). The watch stream feeds it; each event
//! replaces one entry, so an update costs what one device costs.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use edgevisor_crds::Device;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::rollout::DeviceView;
use crate::views;

/// What the controller keeps of a Device.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedDevice {
    pub labels: BTreeMap<String, String>,
    pub view: DeviceView,
    /// `status.lastSeen`, seconds since the epoch.
    pub last_seen: Option<i64>,
}

impl CachedDevice {
    /// Whether the gateway's `Online=True` is out of date: not heard from within `window`.
    pub fn stale(&self, now: i64, window: i64) -> bool {
        self.last_seen.is_some_and(|t| now - t >= window)
    }
}

type Key = (String, String);

/// Devices by namespace and name.
#[derive(Default)]
pub struct DeviceIndex {
    devices: RwLock<HashMap<Key, Arc<CachedDevice>>>,
    /// A relist in progress: it replaces the whole index when it ends.
    relist: Mutex<Option<HashMap<Key, Arc<CachedDevice>>>>,
    ready: AtomicBool,
    /// When a gateway's summary last listed each device, seconds since the epoch.
    heard: RwLock<HashMap<Key, i64>>,
}

fn entry(device: &Device) -> (Key, Arc<CachedDevice>) {
    let key = (device.namespace().unwrap_or_default(), device.name_any());
    let cached = CachedDevice {
        labels: device.labels().clone(),
        view: views::device_view(device, None),
        last_seen: device
            .status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .map(|t| t.0.as_second()),
    };
    (key, Arc::new(cached))
}

impl DeviceIndex {
    /// Applies one watch event.
    pub fn apply(&self, event: &Event<Device>) {
        match event {
            Event::Apply(device) => {
                let (key, cached) = entry(device);
                self.write().insert(key, cached);
            }
            Event::Delete(device) => {
                self.write()
                    .remove(&(device.namespace().unwrap_or_default(), device.name_any()));
            }
            Event::Init => *self.relist() = Some(HashMap::new()),
            Event::InitApply(device) => {
                let (key, cached) = entry(device);
                self.relist()
                    .get_or_insert_with(HashMap::new)
                    .insert(key, cached);
            }
            Event::InitDone => {
                if let Some(fresh) = self.relist().take() {
                    *self.write() = fresh;
                }
                self.ready.store(true, Ordering::Release);
            }
        }
    }

    /// Whether the first full list has arrived.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The devices of a namespace.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<CachedDevice>> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, d)| d.clone())
            .collect()
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
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .filter(|(k, d)| d.view.online && d.stale(now, window) && !heard.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<CachedDevice>>> {
        self.devices.write().unwrap_or_else(|e| e.into_inner())
    }

    fn relist(&self) -> std::sync::MutexGuard<'_, Option<HashMap<Key, Arc<CachedDevice>>>> {
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

    #[test]
    fn events_keep_the_index_in_step_with_the_cluster() {
        let index = DeviceIndex::default();
        assert!(!index.is_ready());
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(device("a", "d1", None)));
        index.apply(&Event::InitApply(device("b", "d2", None)));
        assert!(
            index.in_namespace("a").is_empty(),
            "a relist shows only once complete"
        );
        index.apply(&Event::InitDone);
        assert!(index.is_ready());
        assert_eq!(index.in_namespace("a").len(), 1);
        index.apply(&Event::Apply(device("a", "d1", Some("f-0123456789"))));
        let d1 = &index.in_namespace("a")[0];
        assert_eq!(d1.view.target.as_deref(), Some("f-0123456789"));
        assert_eq!(d1.labels["role"], "kiosk");
        index.apply(&Event::Delete(device("a", "d1", None)));
        assert!(index.in_namespace("a").is_empty());
        // A relist after a lost watch replaces everything, dropping what was deleted meanwhile.
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(device("c", "d3", None)));
        index.apply(&Event::InitDone);
        assert!(index.in_namespace("b").is_empty());
        assert_eq!(index.in_namespace("c").len(), 1);
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
