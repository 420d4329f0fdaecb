//! Types and rules shared by several kinds.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The form of a FleetRevision name: the Fleet's name, a dash, and the first ten hex digits of
/// the sha256 of the Fleet's template (`demo-3f9a1c2b7d`).
pub const REVISION_NAME_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9a-f]{10}$')";
/// The message shown when a revision name does not have that form.
pub const REVISION_NAME_MESSAGE: &str = "must name a FleetRevision as the controller names them: <fleet>-<10 hex digits>, e.g. demo-3f9a1c2b7d";

/// A CPU architecture, named as OCI image indexes name platforms (`architecture` or
/// `architecture/variant`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Architecture {
    #[serde(rename = "amd64")]
    Amd64,
    #[serde(rename = "arm64")]
    Arm64,
    #[serde(rename = "arm/v7")]
    ArmV7,
    #[serde(rename = "arm/v6")]
    ArmV6,
    #[serde(rename = "riscv64")]
    Riscv64,
    #[serde(rename = "386")]
    I386,
    #[serde(rename = "ppc64le")]
    Ppc64le,
    #[serde(rename = "s390x")]
    S390x,
}

impl Architecture {
    /// The name as it appears in the API and in OCI platforms.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
            Self::ArmV7 => "arm/v7",
            Self::ArmV6 => "arm/v6",
            Self::Riscv64 => "riscv64",
            Self::I386 => "386",
            Self::Ppc64le => "ppc64le",
            Self::S390x => "s390x",
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a device is in installing a revision: the device protocol's lifecycle status,
/// the same type on the device, in the gateway and in `Device.status`.
pub use edgevisor_protocol::lifecycle::Status as UpdateStatus;

/// Condition types, shared so every writer spells them the same.
pub mod condition {
    /// kstatus: the object reached its desired state.
    pub const READY: &str = "Ready";
    /// kstatus abnormal-true: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus abnormal-true: progress stopped and needs a human.
    pub const STALLED: &str = "Stalled";
    /// A Fleet's rollout is moving through its steps.
    pub const PROGRESSING: &str = "Progressing";
    /// A Fleet's rollout crossed its failure threshold and stopped.
    pub const ROLLOUT_ABORTED: &str = "RolloutAborted";
    /// A Fleet selects devices another fleet of the namespace selects too.
    pub const OVERLAPPING_SELECTORS: &str = "OverlappingSelectors";
    /// A Device runs its target revision.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// A Device was heard from within the liveness window.
    pub const ONLINE: &str = "Online";
}

/// Makes a `conditions` list a map keyed by `type`, so server-side apply merges conditions of
/// different writers instead of replacing the whole list; bounds every string of it.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    schema.insert("maxItems".into(), 16.into());
    for (field, max) in [
        ("type", 316),
        ("reason", 1024),
        ("message", 32768),
        ("status", 16),
    ] {
        if let Some(property) = schema.pointer_mut(&format!("/items/properties/{field}")) {
            property["maxLength"] = max.into();
        }
    }
    schema
}

/// A label selector with the bounds the apiserver's CEL cost estimation and a sane fleet need.
pub(crate) fn label_selector_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<LabelSelector>();
    let bounds = [
        ("/properties/matchLabels", "maxProperties", 64),
        (
            "/properties/matchLabels/additionalProperties",
            "maxLength",
            63,
        ),
        ("/properties/matchExpressions", "maxItems", 32),
        (
            "/properties/matchExpressions/items/properties/key",
            "maxLength",
            317,
        ),
        (
            "/properties/matchExpressions/items/properties/operator",
            "maxLength",
            16,
        ),
        (
            "/properties/matchExpressions/items/properties/values",
            "maxItems",
            64,
        ),
        (
            "/properties/matchExpressions/items/properties/values/items",
            "maxLength",
            63,
        ),
    ];
    for (pointer, keyword, max) in bounds {
        if let Some(node) = schema.pointer_mut(pointer) {
            node[keyword] = max.into();
        }
    }
    schema
}
