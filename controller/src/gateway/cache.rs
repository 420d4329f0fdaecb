//! The gateway's view of Devices, fed by one watch: what authentication, targets and status
//! merging read, plus an index from credential hash to device and a wake-up per device for
//! target long-polls. Each watch event touches one entry, so a device event costs what one
//! device costs, whatever the fleet's size.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use edgevisor_crds::{Device, DeviceStatus};
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use tokio::sync::Notify;

/// `(namespace, name)`.
pub type Key = (String, String);

/// What the gateway keeps of a Device.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub uid: String,
    pub resource_version: String,
    pub revoked: bool,
    /// `spec.revision`: the target.
    pub target: Option<String>,
    pub status: DeviceStatus,
}

impl Entry {
    pub fn credential_sha256(&self) -> Option<&str> {
        self.status
            .enrollment
            .as_ref()
            .map(|e| e.credential_sha256.as_str())
    }
}

#[derive(Default)]
struct Inner {
    devices: HashMap<Key, Arc<Entry>>,
    by_credential: HashMap<String, Key>,
}

impl Inner {
    fn insert(&mut self, key: Key, entry: Arc<Entry>) -> Option<Arc<Entry>> {
        if let Some(hash) = entry.credential_sha256() {
            self.by_credential.insert(hash.to_string(), key.clone());
        }
        let old = self.devices.insert(key, entry.clone());
        if let Some(old_hash) = old.as_ref().and_then(|o| o.credential_sha256())
            && Some(old_hash) != entry.credential_sha256()
        {
            self.by_credential.remove(old_hash);
        }
        old
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Entry>> {
        let old = self.devices.remove(key);
        if let Some(hash) = old.as_ref().and_then(|o| o.credential_sha256()) {
            self.by_credential.remove(hash);
        }
        old
    }
}

/// Devices by key, with wake-ups for their target long-polls.
#[derive(Default)]
pub struct DeviceCache {
    inner: RwLock<Inner>,
    relist: Mutex<Option<Inner>>,
    waiters: Mutex<HashMap<Key, Arc<Poll>>>,
    ready: AtomicBool,
}

fn key_of(device: &Device) -> Key {
    (device.namespace().unwrap_or_default(), device.name_any())
}

fn entry_of(device: &Device) -> Arc<Entry> {
    Arc::new(Entry {
        uid: device.uid().unwrap_or_default(),
        resource_version: device.resource_version().unwrap_or_default(),
        revoked: device.spec.revoked,
        target: device.spec.revision.clone(),
        status: device.status.clone().unwrap_or_default(),
    })
}

impl DeviceCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one watch event, waking the long-polls of a device whose target changed.
    pub fn apply(&self, event: &Event<Device>) {
        match event {
            Event::Apply(device) => {
                let key = key_of(device);
                let entry = entry_of(device);
                let old = self.write().insert(key.clone(), entry.clone());
                if changed_for_device(old.as_deref(), Some(&entry)) {
                    self.wake(&key);
                }
            }
            Event::Delete(device) => {
                let key = key_of(device);
                self.write().remove(&key);
                self.wake(&key);
            }
            Event::Init => {
                *self.relist.lock().unwrap_or_else(|e| e.into_inner()) = Some(Inner::default())
            }
            Event::InitApply(device) => {
                self.relist
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(Inner::default)
                    .insert(key_of(device), entry_of(device));
            }
            Event::InitDone => {
                let fresh = self
                    .relist
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                *self.write() = fresh;
                self.ready.store(true, Ordering::Release);
                // A relist may have changed anything: let every waiter look again.
                self.wake_all();
            }
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.read().devices.get(key).cloned()
    }

    /// The device a credential hash belongs to.
    pub fn by_credential(&self, sha256: &str) -> Option<(Key, Arc<Entry>)> {
        let inner = self.read();
        let key = inner.by_credential.get(sha256)?;
        Some((key.clone(), inner.devices.get(key)?.clone()))
    }

    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a long-poll of one device and returns its ticket. Take it *before* reading
    /// the target, so a change between the read and the wait is not missed. A device has one
    /// long-poll per replica: registering a new one wakes the one before, which then sees
    /// itself [`Ticket::superseded`] and ends, so a leaked or copied credential cannot pile up
    /// waiting connections.
    pub fn waiter(&self, key: &Key) -> Ticket {
        let poll = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let generation = poll.latest.fetch_add(1, Ordering::SeqCst) + 1;
        poll.notify.notify_waiters();
        Ticket { poll, generation }
    }

    /// Drops the wake-up of a device nobody waits for.
    pub fn release(&self, key: &Key, ticket: Ticket) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and the ticket's, so no one else waits on it.
        if Arc::strong_count(&ticket.poll) <= 2 {
            waiters.remove(key);
        }
    }

    fn wake(&self, key: &Key) {
        if let Some(n) = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            n.notify.notify_waiters();
        }
    }

    /// Wakes every long-poll: a FleetRevision appeared or changed (rare).
    pub fn wake_all(&self) {
        for n in self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            n.notify.notify_waiters();
        }
    }
}

/// One device's long-polls: their wake-up and the newest one's number.
#[derive(Default)]
pub struct Poll {
    notify: Notify,
    latest: std::sync::atomic::AtomicU64,
}

/// One long-poll's registration.
pub struct Ticket {
    poll: Arc<Poll>,
    generation: u64,
}

impl Ticket {
    /// Woken by a target change or by a newer poll of the same device.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.poll.notify.notified()
    }

    /// Whether a newer long-poll of the same device has replaced this one.
    pub fn superseded(&self) -> bool {
        self.poll.latest.load(Ordering::SeqCst) != self.generation
    }
}

/// Whether a device's long-poll could answer differently: its target, revocation,
/// architecture or existence changed.
fn changed_for_device(old: Option<&Entry>, new: Option<&Entry>) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => {
            o.target != n.target
                || o.revoked != n.revoked
                || o.status.architecture != n.status.architecture
                || o.credential_sha256() != n.credential_sha256()
        }
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgevisor_crds::DeviceSpec;
    use edgevisor_crds::device::Enrollment;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn device(name: &str, hash: Option<&str>, target: Option<&str>) -> Device {
        let mut d = Device::new(
            name,
            DeviceSpec {
                revision: target.map(str::to_string),
                ..Default::default()
            },
        );
        d.metadata.namespace = Some("ns".into());
        d.status = Some(DeviceStatus {
            enrollment: hash.map(|h| Enrollment {
                credential_sha256: h.to_string(),
                bootstrap_token: "tok".into(),
                enrolled_at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }),
            ..Default::default()
        });
        d
    }

    #[test]
    fn the_credential_index_follows_the_devices() {
        let cache = DeviceCache::default();
        cache.apply(&Event::Apply(device("a", Some("h1"), None)));
        assert_eq!(cache.by_credential("h1").unwrap().0.1, "a");
        // Re-enrolled: the old credential stops working at once.
        cache.apply(&Event::Apply(device("a", Some("h2"), None)));
        assert!(cache.by_credential("h1").is_none());
        assert!(cache.by_credential("h2").is_some());
        cache.apply(&Event::Apply(device("b", Some("h3"), None)));
        cache.apply(&Event::Apply(device("c", None, None)));
        cache.apply(&Event::Delete(device("b", Some("h3"), None)));
        cache.apply(&Event::Delete(device("a", Some("h2"), None)));
        cache.apply(&Event::Delete(device("c", None, None)));
        assert!(cache.by_credential("h2").is_none());
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_target_change_wakes_only_that_device() {
        let cache = DeviceCache::default();
        cache.apply(&Event::Apply(device("a", Some("h1"), None)));
        cache.apply(&Event::Apply(device("b", Some("h2"), None)));
        let a = cache.waiter(&("ns".into(), "a".into()));
        let b = cache.waiter(&("ns".into(), "b".into()));
        let (wa, wb) = (a.notified(), b.notified());
        tokio::pin!(wa, wb);
        wa.as_mut().enable();
        wb.as_mut().enable();
        // A status-only change wakes nobody; a new target wakes its device.
        cache.apply(&Event::Apply(device("b", Some("h2"), None)));
        cache.apply(&Event::Apply(device("a", Some("h1"), Some("web-1"))));
        tokio::time::timeout(std::time::Duration::from_millis(100), wa)
            .await
            .expect("a is woken");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), wb)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_new_poll_of_a_device_replaces_the_one_before() {
        let cache = DeviceCache::default();
        let key: Key = ("ns".into(), "a".into());
        let first = cache.waiter(&key);
        {
            let woken = first.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            assert!(!first.superseded());
            let _ = cache.waiter(&key);
            tokio::time::timeout(std::time::Duration::from_millis(100), woken)
                .await
                .expect("the first poll is woken");
        }
        let second = cache.waiter(&key);
        assert!(first.superseded() && !second.superseded());
        cache.release(&key, first);
        cache.release(&key, second);
        assert!(cache.waiters.lock().unwrap().is_empty());
    }
}
