//! `Device`: one physical device, what it should run and what it reports.
// Each `printcolumn(...)` of the derive repeats the same keys; that is its syntax, not a mistake.
#![allow(clippy::duplicated_attributes)]
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Architecture, UpdateStatus, conditions_schema};

/// A Device is one physical device of the fleet. Its labels decide which Fleet selects it; the
/// controller writes its target revision into `spec.revision`; the device's agent reports
/// through the gateway into `status`. People may hold it (`paused`) or pin it to a revision.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "edgevisor.dev",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "dev",
    category = "edgevisor",
    doc = "A Device is one physical device: its target revision and what it reports.",
    printcolumn(
        name = "Arch",
        type_ = "string",
        json_path = ".status.architecture",
        description = "CPU architecture the device reported"
    ),
    printcolumn(
        name = "Current",
        type_ = "string",
        json_path = ".status.currentRevision",
        description = "The revision the device runs (committed)"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.revision",
        description = "The revision the device should run"
    ),
    printcolumn(
        name = "Update",
        type_ = "string",
        json_path = ".status.update.status",
        description = "Status of the latest update"
    ),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.update.progress",
        description = "Progress of the latest update, in percent"
    ),
    printcolumn(
        name = "Online",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Online\")].status",
        description = "Whether the device was heard from recently"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// The FleetRevision this device should run. Written by the controller (field manager
    /// `edgevisor-controller`); not for people to edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(crate::common::REVISION_NAME_RULE).message(crate::common::REVISION_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub revision: Option<String>,

    /// Hold this device: the controller does not change its target while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// Run this FleetRevision whatever its fleet rolls out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(crate::common::REVISION_NAME_RULE).message(crate::common::REVISION_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub pinned_revision: Option<String>,

    /// Set to true to refuse the device's credential on every gateway at once. The device must
    /// enroll again to be served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// What the device reported, and what the cluster concluded about it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How the device enrolled: the bootstrap token that admitted it and the hash of the
    /// credential the gateway issued. Written by the gateway (field manager
    /// `edgevisor-gateway-enrollment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    /// The CPU architecture, as reported at enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<Architecture>,
    /// What the device says of itself: OS, kernel, runtime version, model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub info: BTreeMap<String, String>,
    /// The committed revision the device runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub current_revision: Option<String>,
    /// The latest update, in progress or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateProgress>,
    /// Past updates and how they ended, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<HistoryEntry>,
    /// The containers of the running revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub containers: Vec<ContainerStatus>,
    /// When the device came online (written when its `Online` condition turns true, not on
    /// every heartbeat: which devices are alive goes out in each gateway's heard-from summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// `Ready`, `UpToDate`, `Online`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A device's enrollment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// The sha256 (hex) of the device's credential; the credential itself is never stored.
    #[schemars(length(min = 64, max = 64))]
    pub credential_sha256: String,
    /// The name of the bootstrap token Secret that admitted the device.
    #[schemars(length(max = 253))]
    pub bootstrap_token: String,
    pub enrolled_at: Time,
}

/// The progress of one update on the device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateProgress {
    /// The revision being installed.
    #[schemars(length(max = 253))]
    pub revision: String,
    /// Where the update is.
    pub status: UpdateStatus,
    /// Percent done.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub progress: i32,
    /// What is happening, or why it failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub message: Option<String>,
    /// Why it failed, as a CamelCase word (`ContainerExited`, `GoalTimeout`, `MissingObjects`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,
    /// Bytes downloaded so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<i64>,
    /// Bytes to download in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// When the device started the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the update ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// A past update.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The revision.
    #[schemars(length(max = 253))]
    pub revision: String,
    /// How it ended.
    pub status: UpdateStatus,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// A container on the device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    #[schemars(length(max = 63))]
    pub name: String,
    /// `created`, `running`, `stopped`, `restarting` or `failed`.
    #[schemars(length(max = 32))]
    pub state: String,
    /// Whether it reached its goal (running, healthy or signalled ready).
    #[serde(default)]
    pub ready: bool,
    /// How many times the runtime restarted it.
    #[serde(default)]
    pub restarts: i32,
    /// Its last exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// More about its state, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}
