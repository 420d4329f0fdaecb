//! The wire types of the gateway's device API (`/v1`), shared by the agent that speaks it and
//! the gateway that serves it, so the two cannot drift. The API is described for other
//! clients in `controller/gateway-openapi.yaml`.
//!
//! - `POST /v1/enroll` — `Authorization: Bearer <bootstrap token>`, body [`EnrollRequest`],
//!   answer [`EnrollResponse`] (the per-device credential, shown once).
//! - `GET /v1/devices/{namespace}/{name}/target?known=<revision>&waitSeconds=<n>` — long-poll:
//!   answers [`Target`] as soon as the target differs from `known`, or `204 No Content` after
//!   `waitSeconds` (at most [`MAX_WAIT_SECONDS`]).
//! - `PUT /v1/devices/{namespace}/{name}/status` — body [`DeviceReport`], answer `202`.
//! - `GET /v1/devices/{namespace}/{name}/files/{sha256}` — the content of a file of the target.
//!
//! Every `/v1/devices` call carries `Authorization: Bearer <credential>`; a device may only
//! name itself (403 otherwise). Errors are `{"error": "..."}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lifecycle::Status;

/// The longest a target long-poll may wait.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// Bounds on what a device may report, so one device cannot bloat its Device object.
pub const MAX_NAME: usize = 63;
pub const MAX_MESSAGE: usize = 1024;
pub const MAX_REASON: usize = 128;
pub const MAX_INFO_ENTRIES: usize = 32;
pub const MAX_INFO_VALUE: usize = 256;
pub const MAX_CONTAINERS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnrollRequest {
    /// The Device's name: a DNS label.
    pub name: String,
    /// `amd64`, `arm64`, `arm/v7` or `riscv64`.
    pub architecture: String,
    /// Free-form device metadata (model, serial, OS), shown in `Device.status.info`.
    #[serde(default)]
    pub info: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnrollResponse {
    pub namespace: String,
    pub name: String,
    /// The device's credential; the gateway keeps only its sha256.
    pub credential: String,
}

/// Where to fetch one blob: `{registry}/v2/{repository}/blobs/{digest}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlobSource {
    /// `sha256:<64 hex>`.
    pub digest: String,
    pub size: u64,
    /// Base URL of the registry as the device reaches it, e.g. `https://registry.example:5000`.
    pub registry: String,
    pub repository: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    /// The FleetRevision name; the runtime installs the state under this name.
    pub revision: String,
    pub architecture: String,
    /// `sha256:<hex>` of `state`.
    pub state_digest: String,
    /// The `edgevisor-state@1` JSON, byte for byte as the FleetRevision holds it.
    pub state: String,
    /// Image configs and layers, each once.
    pub blobs: Vec<BlobSource>,
    /// The controller's signature of the state ([`crate::signature`]); a device that holds
    /// the controller's public key installs nothing without one that verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::signature::RevisionSignature>,
}

/// What a device tells the gateway: its revision, the update in progress and its containers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceReport {
    /// The committed revision running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
    #[serde(default)]
    pub containers: Vec<ContainerReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateReport {
    pub revision: String,
    pub status: Status,
    /// 0..=100.
    pub progress: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed (ERROR, WONTGO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub downloaded_bytes: u64,
    #[serde(default)]
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerReport {
    pub name: String,
    /// `running`, `exited`, `stopped`, ...
    pub state: String,
    pub ready: bool,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A DNS-1123 label, as Kubernetes object names of Devices and revisions are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_text(p: &mut Vec<String>, what: &str, s: &str, max: usize) {
    if s.len() > max {
        p.push(format!("{what} is longer than {max} bytes"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        p.push(format!("{what} contains control characters"));
    }
}

impl EnrollRequest {
    /// Every problem, empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !is_dns_label(&self.name) {
            p.push(format!(
                "name {:?} must be a DNS label: lowercase letters, digits and '-', at most {MAX_NAME}",
                self.name
            ));
        }
        if !matches!(
            self.architecture.as_str(),
            "amd64" | "arm64" | "arm/v7" | "riscv64"
        ) {
            p.push(format!(
                "architecture {:?} must be one of amd64, arm64, arm/v7, riscv64",
                self.architecture
            ));
        }
        if self.info.len() > MAX_INFO_ENTRIES {
            p.push(format!("info has more than {MAX_INFO_ENTRIES} entries"));
        }
        for (k, v) in &self.info {
            if k.is_empty() || k.len() > MAX_NAME {
                p.push(format!("info key {k:?} must be 1..={MAX_NAME} bytes"));
            }
            check_text(&mut p, &format!("info[{k}]"), v, MAX_INFO_VALUE);
        }
        p
    }
}

impl DeviceReport {
    /// Every problem, empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(r) = &self.current_revision
            && !is_dns_label(r)
        {
            p.push(format!("currentRevision {r:?} is not a revision name"));
        }
        if let Some(u) = &self.update {
            if !is_dns_label(&u.revision) {
                p.push(format!(
                    "update.revision {:?} is not a revision name",
                    u.revision
                ));
            }
            if u.progress > 100 {
                p.push("update.progress must be 0..=100".into());
            }
            if u.downloaded_bytes > u.total_bytes && u.total_bytes > 0 {
                p.push("update.downloadedBytes exceeds update.totalBytes".into());
            }
            if let Some(m) = &u.message {
                check_text(&mut p, "update.message", m, MAX_MESSAGE);
            }
            if let Some(r) = &u.reason {
                check_text(&mut p, "update.reason", r, MAX_REASON);
            }
        }
        if self.containers.len() > MAX_CONTAINERS {
            p.push(format!("more than {MAX_CONTAINERS} containers"));
        }
        for c in &self.containers {
            if !is_dns_label(&c.name) {
                p.push(format!("container name {:?} is not a DNS label", c.name));
            }
            check_text(&mut p, "container state", &c.state, 32);
            if let Some(m) = &c.message {
                check_text(&mut p, "container message", m, MAX_MESSAGE);
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_requests_are_checked_field_by_field() {
        let ok = EnrollRequest {
            name: "edge-1".into(),
            architecture: "arm/v7".into(),
            info: [("model".to_string(), "rpi3".to_string())].into(),
        };
        assert!(ok.validate().is_empty());
        let bad = EnrollRequest {
            name: "Edge_1".into(),
            architecture: "mips".into(),
            info: [("".to_string(), "x\u{7}".to_string())].into(),
        };
        let p = bad.validate();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("DNS label") && p[1].contains("mips"));
    }

    #[test]
    fn reports_are_bounded_and_strictly_parsed() {
        let r: DeviceReport = serde_json::from_str(
            r#"{"currentRevision":"web-0123456789","update":{"revision":"web-abc","status":"DOWNLOADING","progress":10,"downloadedBytes":5,"totalBytes":50},"containers":[{"name":"app","state":"running","ready":true}]}"#,
        )
        .unwrap();
        assert!(r.validate().is_empty());
        assert!(serde_json::from_str::<DeviceReport>(r#"{"currentRevison":"x"}"#).is_err());
        let mut long = r.clone();
        long.update.as_mut().unwrap().message = Some("m".repeat(MAX_MESSAGE + 1));
        long.update.as_mut().unwrap().downloaded_bytes = 51;
        assert_eq!(long.validate().len(), 2);
    }
}
