//! `FleetRevision`: one rendered, immutable snapshot of a Fleet's template.
// Each `printcolumn(...)` of the derive repeats the same keys; that is its syntax, not a mistake.
#![allow(clippy::duplicated_attributes)]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Architecture, conditions_schema};

/// A FleetRevision is what devices install: the Fleet's template rendered for each CPU
/// architecture, every image resolved to a manifest digest, every layer and file pinned by
/// digest. It is created by the controller, owned by its Fleet, named `<fleet>-<hash>` after the
/// template, and never changed: a new template makes a new revision.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "edgevisor.dev",
    version = "v1alpha1",
    kind = "FleetRevision",
    namespaced,
    status = "FleetRevisionStatus",
    shortname = "frev",
    category = "edgevisor",
    doc = "A FleetRevision is an immutable, rendered device state of a Fleet, per architecture.",
    printcolumn(
        name = "Fleet",
        type_ = "string",
        json_path = ".spec.fleet",
        description = "The Fleet this revision belongs to"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".spec.revision",
        description = "Sequence number within the Fleet"
    ),
    printcolumn(
        name = "Architectures",
        type_ = "string",
        json_path = ".status.architectures",
        description = "Architectures this revision provides"
    ),
    printcolumn(
        name = "Devices",
        type_ = "integer",
        json_path = ".status.devices",
        description = "Devices targeting this revision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("a FleetRevision's content is immutable; change the Fleet's template to make a new revision"))]
#[serde(rename_all = "camelCase")]
pub struct FleetRevisionSpec {
    /// The Fleet this revision was rendered from.
    #[schemars(length(min = 1, max = 253))]
    pub fleet: String,
    /// The sequence number of this revision within its Fleet, increasing with each new one.
    #[schemars(range(min = 1))]
    pub revision: i64,
    /// The sha256 of the template this revision was rendered from (hex).
    #[schemars(length(min = 64, max = 64))]
    pub template_hash: String,
    /// The rendered state for each architecture the images provide.
    #[x_kube(validation = kube::core::Rule::new("self.all(a, self.exists_one(b, b.architecture == a.architecture))").message("one state per architecture"))]
    #[schemars(length(max = 8))]
    pub architectures: Vec<ArchitectureState>,
    /// The configuration files delivered with the state (the same on every architecture), by
    /// digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub files: Vec<ResolvedFile>,
}

/// A configuration file of the template, resolved to its content's digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedFile {
    /// Where the file goes, relative to the device's configuration directory.
    #[schemars(length(max = 1024))]
    pub path: String,
    /// The digest of its content (`sha256:<hex>`).
    #[schemars(length(max = 71))]
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// Its permission bits.
    pub mode: i32,
    /// Its content, base64, so the gateway can serve it to devices. Absent for files from
    /// Secrets: a FleetRevision is readable by more people than the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1398104))]
    pub content: Option<String>,
}

impl FleetRevisionSpec {
    /// The architectures it provides, comma separated (`amd64,arm64`), as status shows them.
    pub fn architectures_label(&self) -> String {
        let names: Vec<&str> = self
            .architectures
            .iter()
            .map(|a| a.architecture.as_str())
            .collect();
        names.join(",")
    }
}

/// The device state of one architecture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchitectureState {
    /// The architecture.
    pub architecture: Architecture,
    /// The sha256 of `state` (hex): the revision's identity on the device.
    #[schemars(length(min = 64, max = 64))]
    pub state_digest: String,
    /// The `edgevisor-state@1` JSON document, exactly the bytes devices install.
    #[schemars(length(max = 262144))]
    pub state: String,
    /// The images it uses, resolved, for people and tools to read.
    #[schemars(length(max = 32))]
    pub images: Vec<ResolvedImage>,
    /// The controller's Ed25519 signature of the state for this namespace, revision and
    /// architecture; devices given the controller's public key refuse a state without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<edgevisor_protocol::signature::RevisionSignature>,
}

/// An image of the template resolved for one architecture.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedImage {
    /// The container using it.
    #[schemars(length(max = 63))]
    pub container: String,
    /// The reference as written in the template.
    #[schemars(length(max = 512))]
    pub image: String,
    /// The digest of the platform manifest (`sha256:<hex>`).
    #[schemars(length(max = 71))]
    pub manifest_digest: String,
    /// The digest of the image config.
    #[schemars(length(max = 71))]
    pub config_digest: String,
    /// Total bytes of the compressed layers.
    pub size: i64,
    /// The layers, in order.
    #[schemars(length(max = 128))]
    pub layers: Vec<Layer>,
}

/// A layer of an image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// The layer's digest (`sha256:<hex>`).
    #[schemars(length(max = 71))]
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// Its media type (gzip or zstd tar).
    #[schemars(length(max = 128))]
    pub media_type: String,
}

/// What the controller observed of a revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRevisionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The architectures this revision provides, comma separated, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub architectures: Option<String>,
    /// Devices whose target is this revision.
    #[serde(default)]
    pub devices: i32,
    /// When a rollout of this revision first reached every device of its fleet: going back to
    /// it later (`rollbackTo`, undo) is fast-tracked, without steps or pauses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// `Ready` once rendered and in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
