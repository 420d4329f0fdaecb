//! `Fleet`: the desired state of a set of devices, and how to roll it out.
// Each `printcolumn(...)` of the derive repeats the same keys; that is its syntax, not a mistake.
#![allow(clippy::duplicated_attributes)]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Architecture, conditions_schema, label_selector_schema};

/// A count of devices or a percentage of the fleet: `3` or `"25%"`.
const COUNT_OR_PERCENT_RULE: &str =
    "type(self) == int ? self > 0 : self.matches('^([1-9][0-9]?|100)%$')";
const COUNT_OR_PERCENT_MESSAGE: &str =
    "must be a positive number of devices (e.g. 2) or a percentage from 1% to 100% (e.g. \"25%\")";

/// A Fleet describes what every selected Device should run and how to get it there.
///
/// The controller renders `spec.template` into an immutable FleetRevision (one state per CPU
/// architecture, every image pinned by digest) and rolls it out to the selected Devices in
/// stages: never more than `strategy.maxUnavailable` updating at once, canary `steps` first,
/// stopping (and, with `autoRollback`, going back) when `failureThreshold` devices fail.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "edgevisor.dev",
    version = "v1alpha1",
    kind = "Fleet",
    namespaced,
    status = "FleetStatus",
    shortname = "flt",
    category = "edgevisor",
    doc = "A Fleet describes what a set of Devices runs and how updates roll out to them.",
    printcolumn(
        name = "Devices",
        type_ = "integer",
        json_path = ".status.devices",
        description = "Devices selected by the fleet"
    ),
    printcolumn(
        name = "Updated",
        type_ = "integer",
        json_path = ".status.updated",
        description = "Devices running the update revision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.ready",
        description = "Devices whose containers all reached their goal"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Devices whose update failed"
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.updateRevision",
        description = "The revision being rolled out"
    ),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.currentStep",
        description = "Rollout step (index into spec.strategy.steps)"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FleetSpec {
    /// Which Devices in this namespace belong to the fleet, by their labels. A Device selected by
    /// two fleets stays with the one that had it first (whose revision it targets, else the
    /// older fleet); both carry the condition `OverlappingSelectors` naming it.
    #[schemars(schema_with = "label_selector_schema")]
    pub selector: LabelSelector,

    /// What every device of the fleet runs. Any change here starts a new rollout.
    pub template: DeviceTemplate,

    /// How a new template reaches the devices.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// Holds the rollout where it is: no device is given a new revision while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// Lets a rollout waiting at a step with `pause.untilResumed` go on. Name the update revision
    /// and the step index shown in `status.currentStep`. A resume naming another revision has no
    /// effect, so a new template never inherits an old approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,

    /// Stops the rollout of the named revision now; with `autoRollback` its devices go back to
    /// the stable revision at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,

    /// Runs an aborted revision again from step 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,

    /// Roll the fleet to this retained FleetRevision instead of the template's: back to an older
    /// one or forward to a newer one (`kubectl edgevisor rollout undo`). A revision that already
    /// ran on the whole fleet goes back at once, without steps or pauses. Remove it to follow
    /// the template again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(crate::common::REVISION_NAME_RULE).message(crate::common::REVISION_NAME_MESSAGE))]
    #[schemars(length(max = 253))]
    pub rollback_to: Option<String>,

    /// How many old FleetRevisions to keep for roll back, besides those a device still uses.
    /// Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub revision_history_limit: Option<i32>,
}

/// Approval to continue a paused rollout step (`kubectl edgevisor rollout promote`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resume {
    /// The update revision whose rollout may continue.
    #[schemars(length(max = 253))]
    pub revision: String,
    /// The index of the step whose pause ends, timed or until resumed.
    #[schemars(range(min = 0, max = 31))]
    pub step: i32,
    /// Skip every remaining step and pause: the rest of the fleet follows at once, within
    /// `maxUnavailable`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

/// Stop the rollout of a revision now (`kubectl edgevisor rollout abort`). It has effect only
/// while that revision is the update revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    /// The update revision to abort.
    #[schemars(length(max = 253))]
    pub revision: String,
}

/// Run an aborted revision again from step 0, forgetting the failures of the aborted try
/// (`kubectl edgevisor rollout retry`). Raise `attempt` to retry again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// The update revision to retry.
    #[schemars(length(max = 253))]
    pub revision: String,
    /// Which try this is: a retry with an attempt the status has already seen does nothing.
    #[schemars(range(min = 1, max = 1000000))]
    pub attempt: i32,
}

/// What a device runs: a set of containers and the files delivered with them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTemplate {
    /// The containers of the device state. Names are unique.
    #[x_kube(validation = kube::core::Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("container names must be unique within the template"))]
    #[schemars(length(min = 1, max = 16))]
    pub containers: Vec<ContainerTemplate>,

    /// Volumes the containers may mount; persistent ones keep their content across revisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("volume names must be unique within the template"))]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,

    /// Configuration files delivered with the state, at a path relative to the device's
    /// configuration directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(f, self.exists_one(g, g.path == f.path))").message("file paths must be unique within the template"))]
    #[schemars(length(max = 64))]
    pub files: Vec<FileTemplate>,

    /// How long every container has, after start, to reach its goal (running, healthy or
    /// signalled ready). Defaults to 60 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub goal_timeout_seconds: Option<i32>,

    /// How long every container must then stay at its goal before the device commits the
    /// revision. Defaults to 10 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub test_period_seconds: Option<i32>,
}

/// One container of the device state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.healthCheck) || !(has(self.healthCheck.http) || has(self.healthCheck.tcp)) || (has(self.hostNetwork) && self.hostNetwork)").message("http and tcp health checks reach the container on the device's loopback: set hostNetwork: true, or use an exec check"))]
pub struct ContainerTemplate {
    /// The container's name: a DNS-1123 label of at most 32 characters, unique within the
    /// template.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("container name must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 32))]
    pub name: String,

    /// The image, by tag or digest: `registry.example.com/app:1.4` or
    /// `registry.example.com/app@sha256:<64 hex digits>`. A multi-architecture index gives each
    /// device the image of its architecture.
    #[x_kube(validation = kube::core::Rule::new(IMAGE_RULE).message(IMAGE_MESSAGE))]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Per-architecture images that replace `image` on devices of that architecture, for images
    /// not published as a multi-architecture index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(o, self.exists_one(p, p.architecture == o.architecture))").message("at most one image override per architecture"))]
    #[schemars(length(max = 8))]
    pub image_overrides: Vec<ImageOverride>,

    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,

    /// Replaces the image's command (the arguments to the entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// Environment variables, added to the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,

    /// The working directory; the image's when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub working_dir: Option<String>,

    /// The user to run as, `uid` or `uid:gid`; the image's when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+(:[0-9]+)?$')").message("user must be a numeric uid or uid:gid, e.g. 1000:1000"))]
    #[schemars(length(max = 32))]
    pub user: Option<String>,

    /// Volumes and files mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub mounts: Vec<Mount>,

    /// What the runtime does when the container exits. Defaults to Always.
    #[serde(default)]
    pub restart_policy: RestartPolicy,

    /// Run in the device's network namespace instead of an isolated one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,

    /// How the runtime tells the container is healthy. Without one, the goal is "running".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Resource limits enforced through cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

const IMAGE_RULE: &str = "self.matches('^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?|@sha256:[a-f0-9]{64})$')";
const IMAGE_MESSAGE: &str = "image must be a reference with a tag or a digest, e.g. registry.example.com/app:1.4 or registry.example.com/app@sha256:<64 lowercase hex digits>";

/// An image used instead of the container's `image` on one architecture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageOverride {
    /// The architecture this image is for.
    pub architecture: Architecture,
    /// The image for it, by tag or digest.
    #[x_kube(validation = kube::core::Rule::new(IMAGE_RULE).message(IMAGE_MESSAGE))]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
}

/// An environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// The variable's name.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("environment variable names are letters, digits and '_', not starting with a digit"))]
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// The variable's value.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// A volume of the device state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// The volume's name, referred to by container mounts.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("volume name must be a DNS-1123 label"))]
    #[schemars(length(min = 1, max = 32))]
    pub name: String,
    /// Keep the content across revisions and reboots (data), instead of starting empty with
    /// each revision (scratch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
}

/// A mount of a volume, or of the delivered files, into a container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.volume) != has(self.files)").message("a mount takes either a volume or files, not both and not neither"))]
pub struct Mount {
    /// The name of a volume of the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub volume: Option<String>,
    /// Mount the template's delivered files (read-only) here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<bool>,
    /// Where in the container: an absolute path.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')").message("mountPath must be an absolute path without '..'"))]
    #[schemars(length(min = 1, max = 512))]
    pub mount_path: String,
    /// Mount read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// What the runtime does when a container exits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RestartPolicy {
    /// Restart it whatever its exit code, with backoff.
    #[default]
    Always,
    /// Restart it only when it exits non-zero, with backoff.
    OnFailure,
    /// Never restart it. A container that exits during the test period fails the update
    /// unless it exits zero.
    Never,
}

/// How the runtime checks that a container is healthy: exactly one of `exec`, `http`, `tcp` or
/// `signal`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.exec), has(self.http), has(self.tcp), has(self.signal) && self.signal].filter(x, x).size() == 1").message("a health check takes exactly one of exec, http, tcp or signal: true"))]
pub struct HealthCheck {
    /// Run a command in the container; healthy when it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    /// Send an HTTP GET to the container; healthy on a 2xx or 3xx answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Open a TCP connection to the container; healthy when it connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// The container reports ready itself with `POST /signal` on the control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<bool>,
    /// Seconds between checks. Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds before one check counts as failed. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: Option<i32>,
}

/// A command health check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ExecCheck {
    /// The command and its arguments.
    #[schemars(length(min = 1, max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
}

/// An HTTP health check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HttpCheck {
    /// The port, inside the container's network namespace.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The path. Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub path: Option<String>,
}

/// A TCP health check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TcpCheck {
    /// The port, inside the container's network namespace.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Resource limits of a container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory limit in bytes, with an optional suffix: `64Mi`, `1Gi`, `500M`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[1-9][0-9]*(Ki|Mi|Gi|K|M|G)?$')").message("memory must be a whole number of bytes with an optional suffix, e.g. 64Mi"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
    /// CPU limit in millicores (`500m`) or cores (`2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([1-9][0-9]*m|[1-9][0-9]*)$')").message("cpu must be millicores like 500m or whole cores like 2"))]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Most processes the container may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub pids: Option<i64>,
}

/// A configuration file delivered with the state: exactly one of `content`, `configMapKeyRef`
/// or `secretKeyRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.content), has(self.configMapKeyRef), has(self.secretKeyRef)].filter(x, x).size() == 1").message("a file takes exactly one of content, configMapKeyRef or secretKeyRef"))]
pub struct FileTemplate {
    /// Where the file goes, relative to the device's configuration directory: `app/config.yaml`.
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.split('/').exists(p, p == '..' || p == '.' || p == '')").message("path must be relative, without '.', '..' or empty components, e.g. app/config.yaml"))]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// The file's permission bits, as a decimal number (420 is 0644). Defaults to 420.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub mode: Option<i32>,
    /// The file's content, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub content: Option<String>,
    /// The file's content from a key of a ConfigMap in the fleet's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// The file's content from a key of a Secret in the fleet's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// A key of a ConfigMap or Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct KeyRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How a new template rolls out to the fleet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Most devices updating at once: a count or a percentage of the fleet (rounded down, at
    /// least 1). Defaults to 1.
    #[serde(default = "default_max_unavailable")]
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT_RULE).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 8))]
    pub max_unavailable: IntOrString,

    /// Canary stages, in order. Each stage updates devices until `devices` of them (a count, or
    /// a percentage of the fleet) run the new revision, then pauses if asked. After the last step
    /// the rest of the fleet follows. The same devices are always the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(concat!(
        // Counts sort before percentages: a canary of a few devices, then shares of the fleet.
        "self.map(s, type(s.devices) == int ? s.devices : 1000000000000 + int(s.devices.replace('%', ''))).isSorted()",
        " && self.all(a, self.exists_one(b, b.devices == a.devices))"
    )).message("steps must grow strictly: counts first, each larger than the one before, then percentages, each larger than the one before"))]
    #[schemars(length(max = 16))]
    pub steps: Vec<RolloutStep>,

    /// How many devices may fail before the rollout stops: a count or a percentage of the fleet.
    /// Defaults to 1: the first failure stops the rollout.
    #[serde(default = "default_failure_threshold")]
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT_RULE).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 8))]
    pub failure_threshold: IntOrString,

    /// When the rollout stops, send the devices that took the new revision back to the stable
    /// one. Defaults to true.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,

    /// Seconds the rollout may go without progress (a device starting, advancing or
    /// succeeding, or a step passing) before the Fleet says so: `Stalled=True`, reason
    /// `ProgressDeadlineExceeded`. It does not abort, and clears when progress resumes.
    /// Defaults to 600.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i32,

    /// Seconds a device has to finish its update after it started (or was targeted, if it
    /// never started) before it counts as failed and gives its place to the next device.
    /// Defaults to 3600.
    #[serde(default = "default_device_timeout")]
    #[schemars(range(min = 10, max = 604800))]
    pub device_timeout_seconds: i32,
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}
fn default_failure_threshold() -> IntOrString {
    IntOrString::Int(1)
}
fn default_true() -> bool {
    true
}
fn default_progress_deadline() -> i32 {
    600
}
fn default_device_timeout() -> i32 {
    3600
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            steps: Vec::new(),
            failure_threshold: default_failure_threshold(),
            auto_rollback: true,
            progress_deadline_seconds: default_progress_deadline(),
            device_timeout_seconds: default_device_timeout(),
        }
    }
}

/// One canary stage of a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// How many devices run the new revision once this step is done: a count or a percentage.
    #[x_kube(validation = kube::core::Rule::new(COUNT_OR_PERCENT_RULE).message(COUNT_OR_PERCENT_MESSAGE))]
    #[schemars(extend("maxLength" = 8))]
    pub devices: IntOrString,
    /// Wait after this step: for a time, or until resumed with `spec.resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A pause after a rollout step: exactly one of `durationSeconds` or `untilResumed: true`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.durationSeconds) != (has(self.untilResumed) && self.untilResumed)").message("a pause either lasts durationSeconds or waits until resumed (untilResumed: true), not both and not neither"))]
pub struct Pause {
    /// Wait this many seconds, then go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub duration_seconds: Option<i32>,
    /// Wait until `spec.resume` names this revision and step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_resumed: Option<bool>,
}

/// What the controller observed of the fleet's rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The FleetRevision being rolled out (rendered from the current template, or `rollbackTo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub update_revision: Option<String>,
    /// The last FleetRevision that reached every targetable device; where `autoRollback` goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub stable_revision: Option<String>,
    /// The index of the step the rollout is at, or `done`/`paused`/`aborted` as a word when it
    /// is not moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub current_step: Option<String>,
    /// When the current step's pause started, for timed pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Devices selected by the fleet.
    #[serde(default)]
    pub devices: i32,
    /// Devices running the update revision.
    #[serde(default)]
    pub updated: i32,
    /// Devices running the update revision with every container at its goal.
    #[serde(default)]
    pub ready: i32,
    /// Devices updating now.
    #[serde(default)]
    pub updating: i32,
    /// Devices whose update to the update revision failed.
    #[serde(default)]
    pub failed: i32,
    /// Devices not heard from within the liveness window.
    #[serde(default)]
    pub offline: i32,
    /// Devices of an architecture the fleet's images do not provide; never targeted.
    #[serde(default)]
    pub unsupported: i32,
    /// The same counts per architecture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub architectures: Vec<ArchitectureCounts>,
    /// When the rollout last made progress; `Stalled` follows `progressDeadlineSeconds` after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// What the rollout looked like at `lastProgressTime` (opaque: a change is progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub progress_mark: Option<String>,
    /// The last `spec.retry.attempt` acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_attempt: Option<i32>,
    /// Since when failures count: the start of the last retry (failures before it are forgotten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// `Ready`, `Reconciling`, `Stalled`, `Progressing`, `RolloutAborted`,
    /// `OverlappingSelectors`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Device counts of one architecture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchitectureCounts {
    /// The architecture.
    pub architecture: Architecture,
    /// Devices of this architecture.
    pub devices: i32,
    /// Of them, running the update revision.
    pub updated: i32,
    /// Of them, ready on the update revision.
    pub ready: i32,
    /// Of them, failed.
    pub failed: i32,
    /// Whether the fleet's images provide this architecture.
    pub supported: bool,
}
