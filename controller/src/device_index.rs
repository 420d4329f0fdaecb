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

    /// Devices the gateway last marked online but not heard from within `window` seconds.
    pub fn gone_quiet(&self, now: i64, window: i64) -> Vec<Key> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .filter(|(_, d)| d.view.online && d.stale(now, window))
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
}
