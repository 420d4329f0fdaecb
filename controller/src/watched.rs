//! Devices as the controller and the gateway watch them: decoded without
//! `metadata.managedFields`. Every Device change reaches both through a watch; the managed fields
//! (a nested map per field manager) are often the larger half of the object and neither reads
//! them, so they are skipped while parsing instead of being built and thrown away: less CPU per
//! device event, and no burst of short-lived allocations per event.
use std::borrow::Cow;
use std::collections::BTreeMap;

use edgevisor_crds::Device;
use edgevisor_crds::device::{DeviceSpec, DeviceStatus};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use kube::runtime::watcher::Event;
use serde::Deserialize;

/// A Device decoded without its managed fields.
#[derive(Clone, Debug)]
pub struct WatchedDevice(pub Device);

/// The metadata fields anything here reads; others (managed fields above all) are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
struct Object {
    metadata: Metadata,
    #[serde(default)]
    spec: DeviceSpec,
    #[serde(default)]
    status: Option<DeviceStatus>,
}

impl<'de> Deserialize<'de> for WatchedDevice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let o = Object::deserialize(d)?;
        let m = o.metadata;
        let metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            labels: m.labels,
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            owner_references: m.owner_references,
            ..ObjectMeta::default()
        };
        Ok(WatchedDevice(Device {
            metadata,
            spec: o.spec,
            status: o.status,
        }))
    }
}

impl Resource for WatchedDevice {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Device::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Device::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Device::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Device::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// A watch event of lean Devices as one of Devices.
pub fn into_devices(event: Event<WatchedDevice>) -> Event<Device> {
    match event {
        Event::Apply(d) => Event::Apply(d.0),
        Event::Delete(d) => Event::Delete(d.0),
        Event::Init => Event::Init,
        Event::InitApply(d) => Event::InitApply(d.0),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_decodes_without_its_managed_fields_and_with_everything_else() {
        let json = serde_json::json!({
            "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
            "metadata": {
                "name": "d", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "labels": {"site": "paris"}, "annotations": {"edgevisor.dev/targeted-at": "2026-01-01T00:00:00Z"},
                "managedFields": [{"manager": "m", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:revision": {}}}}]
            },
            "spec": {"revision": "f-0123456789"},
            "status": {"architecture": "arm64", "currentRevision": "f-0123456789"}
        });
        let WatchedDevice(lean) = serde_json::from_value(json.clone()).expect("a device");
        let mut full: Device = serde_json::from_value(json).expect("a device");
        assert!(full.metadata.managed_fields.take().is_some());
        let as_json = |d: &Device| serde_json::to_value(d).expect("a device encodes");
        assert_eq!(as_json(&lean), as_json(&full));
    }
}
