//! The device's own policy: what a revision may ask of this device, whoever signed it.
//!
//! The cloud decides *what* runs; the device's owner decides what anything may do to the
//! device. The policy is a JSON file the runtime reads once at start (`--policy`, default
//! [`DEFAULT_PATH`]); a state that asks for more than it allows is refused before
//! anything is stored or unpacked, `WONTGO` with reason `PolicyDenied` and a message that
//! names the field. Without a file the policy is the safe default: no host paths, no
//! setuid bits, no capabilities beyond the default set, no manager role, tmpfs of at
//! most 64 MiB. [`Policy::check`] is pure: the host's symlinks reach it through the
//! resolver its caller passes ([`resolve_host_path`] on a device), so a symlink under an
//! allowed directory (which a container with that directory mounted could plant) is judged
//! by where it leads, and the bundle binds the resolved path.

use std::path::Path;

use serde::Deserialize;

use crate::state::{Container, Network, Role, State};

pub const DEFAULT_PATH: &str = "/etc/edgevisor/policy.json";
/// The size of a container's `/tmp` and `/run` when the state does not say.
pub const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Host paths a state may bind-mount, each with everything below it.
    #[serde(default)]
    pub host_paths: Vec<HostPath>,
    /// Whether a container may share the device's network namespace.
    #[serde(default = "yes")]
    pub host_network: bool,
    /// Whether a state may keep setuid/setgid bits from its layers (`allowSetuid`).
    #[serde(default)]
    pub setuid: bool,
    /// Capabilities a state may add to the default set.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Containers (by name) that a state may give the `manager` role.
    #[serde(default)]
    pub manager_role: Vec<String>,
    /// Host device nodes a state may give a container, each path with everything below it
    /// (`/dev/serial` allows every serial port); `readOnly` allows read access only.
    #[serde(default)]
    pub devices: Vec<HostPath>,
    /// The largest `/tmp` or `/run` a container may ask for.
    #[serde(default = "default_max_tmpfs")]
    pub max_tmpfs_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostPath {
    /// A clean absolute path; `/` allows every path.
    pub path: String,
    /// Only read-only mounts of it.
    #[serde(default)]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

fn default_max_tmpfs() -> u64 {
    DEFAULT_TMPFS_BYTES
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            host_paths: Vec::new(),
            host_network: true,
            setuid: false,
            capabilities: Vec::new(),
            manager_role: Vec::new(),
            devices: Vec::new(),
            max_tmpfs_bytes: DEFAULT_TMPFS_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Why a state is refused: the first field the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("denied by the device's policy: {field}: {why}")]
pub struct PolicyDenied {
    /// Where in the state, e.g. `containers[web].mounts[0].source`.
    pub field: String,
    pub why: String,
}

impl Policy {
    /// Reads the policy. `explicit`: the path was given on the command line, so a
    /// missing file is an error rather than the default policy.
    pub fn load(path: &Path, explicit: bool) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Policy::default());
            }
            Err(e) => return Err(invalid(e.to_string())),
        };
        let mut p: Policy = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let problems = p.validate();
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }
        // The owner's paths as the host resolves them (`/lib64` → `/usr/lib64`), since
        // mount sources are compared resolved.
        for h in p.host_paths.iter_mut().chain(p.devices.iter_mut()) {
            h.path = resolve_host_path(&h.path);
        }
        Ok(p)
    }

    fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        for h in &self.host_paths {
            if !crate::state::is_clean_abs(&h.path) {
                out.push(format!(
                    "hostPaths: {:?} is not a clean absolute path",
                    h.path
                ));
            }
        }
        for d in &self.devices {
            if !crate::state::is_clean_abs(&d.path) || !d.path.starts_with("/dev") {
                out.push(format!("devices: {:?} is not a path under /dev", d.path));
            }
        }
        for c in &self.capabilities {
            if !crate::state::CAPABILITIES.contains(&c.as_str()) {
                out.push(format!("capabilities: unknown capability {c:?}"));
            }
        }
        out
    }

    /// Pure: whether the device lets `state` run, naming the first field it refuses.
    /// `resolve` maps a mount source to the path the host would bind.
    pub fn check(
        &self,
        state: &State,
        resolve: impl Fn(&str) -> String,
    ) -> Result<(), PolicyDenied> {
        for c in &state.containers {
            self.check_container(c, &resolve)?;
        }
        Ok(())
    }

    /// Pure: `state` as this device runs it, or the first field refused: checked, mount
    /// sources resolved (what was judged is what gets bound), and the tmpfs size the state
    /// left open set to the default or the policy's largest, whichever is smaller.
    pub fn admit(
        &self,
        mut state: State,
        resolve: impl Fn(&str) -> String,
    ) -> Result<State, PolicyDenied> {
        self.check(&state, &resolve)?;
        for c in &mut state.containers {
            for m in &mut c.mounts {
                m.source = resolve(&m.source);
            }
            for d in &mut c.devices {
                d.path = resolve(&d.path);
            }
            c.limits
                .tmpfs_bytes
                .get_or_insert(DEFAULT_TMPFS_BYTES.min(self.max_tmpfs_bytes));
        }
        Ok(state)
    }

    fn check_container(
        &self,
        c: &Container,
        resolve: &impl Fn(&str) -> String,
    ) -> Result<(), PolicyDenied> {
        let at = |field: String, why: String| PolicyDenied {
            field: format!("containers[{}].{field}", c.name),
            why,
        };
        for (i, m) in c.mounts.iter().enumerate() {
            let source = resolve(&m.source);
            let shown = if source == m.source {
                source.clone()
            } else {
                format!("{} (which leads to {source})", m.source)
            };
            let allowed = self
                .host_paths
                .iter()
                .find(|h| is_within(&source, &h.path) && (m.read_only || !h.read_only));
            if allowed.is_none() {
                let why = if self.host_paths.iter().any(|h| is_within(&source, &h.path)) {
                    format!("{shown} may only be mounted read-only")
                } else {
                    format!("host path {shown} is not allowed")
                };
                return Err(at(format!("mounts[{i}].source"), why));
            }
        }
        for (i, d) in c.devices.iter().enumerate() {
            let node = resolve(&d.path);
            let shown = if node == d.path {
                node.clone()
            } else {
                format!("{} (which leads to {node})", d.path)
            };
            // A symlink under /dev may lead anywhere: what it leads to must be a /dev path
            // the owner allowed.
            let allowed = node.starts_with("/dev/")
                && self
                    .devices
                    .iter()
                    .any(|h| is_within(&node, &h.path) && (d.read_only || !h.read_only));
            if !allowed {
                let why = if self.devices.iter().any(|h| is_within(&node, &h.path)) {
                    format!("device {shown} may only be read")
                } else {
                    format!("device {shown} is not allowed")
                };
                return Err(at(format!("devices[{i}].path"), why));
            }
        }
        if c.network == Network::Host && !self.host_network {
            return Err(at(
                "network".into(),
                "the host network is not allowed".into(),
            ));
        }
        if c.allow_setuid && !self.setuid {
            return Err(at(
                "allowSetuid".into(),
                "setuid bits are not allowed".into(),
            ));
        }
        if let Some(cap) = c
            .capabilities
            .iter()
            .find(|cap| !self.capabilities.contains(cap))
        {
            return Err(at("capabilities".into(), format!("{cap} is not allowed")));
        }
        if c.roles.contains(&Role::Manager) && !self.manager_role.contains(&c.name) {
            return Err(at(
                "roles".into(),
                "the manager role is not allowed for this container".into(),
            ));
        }
        // Only a size the state asks for: one it leaves open is the device's to choose.
        if let Some(tmpfs) = c.limits.tmpfs_bytes
            && tmpfs > self.max_tmpfs_bytes
        {
            return Err(at(
                "limits.tmpfsBytes".into(),
                format!(
                    "{tmpfs} is above the largest allowed, {}",
                    self.max_tmpfs_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Where the host would bind `path` from: every symlink followed. A path that does not
/// exist (yet) is taken as written; runc refuses a missing source anyway.
pub fn resolve_host_path(path: &str) -> String {
    std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| path.to_owned())
}

/// `path` is `root` or below it, component-wise (`/data2` is not within `/data`).
fn is_within(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(container: serde_json::Value) -> State {
        let mut c = json!({
            "name": "web",
            "image": {"config": {"digest": format!("sha256:{}", "a".repeat(64)), "size": 1},
                      "layers": [{"digest": format!("sha256:{}", "b".repeat(64)), "size": 1}]}
        });
        if let (Some(o), Some(e)) = (c.as_object_mut(), container.as_object()) {
            o.extend(e.clone());
        }
        let s = json!({"#spec": crate::state::SPEC, "containers": [c]});
        State::parse(&serde_json::to_vec(&s).expect("json")).expect("valid state")
    }

    fn policy(v: serde_json::Value) -> Policy {
        serde_json::from_value(v).expect("policy")
    }

    fn as_written(p: &str) -> String {
        p.to_owned()
    }

    #[test]
    fn the_default_refuses_host_paths_setuid_capabilities_and_the_manager_role() {
        let p = Policy::default();
        assert_eq!(p.check(&state(json!({})), as_written), Ok(()));
        for (extra, field) in [
            (
                json!({"mounts": [{"source": "/", "destination": "/host"}]}),
                "mounts[0].source",
            ),
            (json!({"allowSetuid": true}), "allowSetuid"),
            (json!({"capabilities": ["CAP_SYS_ADMIN"]}), "capabilities"),
            (json!({"roles": ["manager"]}), "roles"),
            (
                json!({"devices": [{"path": "/dev/ttyUSB0"}]}),
                "devices[0].path",
            ),
            (
                json!({"limits": {"tmpfsBytes": 1u64 << 30}}),
                "limits.tmpfsBytes",
            ),
        ] {
            let e = p
                .check(&state(extra.clone()), as_written)
                .expect_err("denied");
            assert_eq!(e.field, format!("containers[web].{field}"), "{extra}");
        }
    }

    #[test]
    fn what_the_policy_allows_runs() {
        let p = policy(json!({
            "hostPaths": [{"path": "/var/log", "readOnly": true}, {"path": "/data"}],
            "setuid": true,
            "capabilities": ["CAP_NET_ADMIN"],
            "managerRole": ["web"],
            "maxTmpfsBytes": 1u64 << 30
        }));
        let ok = state(json!({
            "mounts": [{"source": "/var/log/app", "destination": "/logs", "readOnly": true},
                       {"source": "/data", "destination": "/data"}],
            "allowSetuid": true,
            "capabilities": ["CAP_NET_ADMIN"],
            "roles": ["manager"],
            "limits": {"tmpfsBytes": 1u64 << 30}
        }));
        assert_eq!(p.check(&ok, as_written), Ok(()));
        let rw = state(json!({"mounts": [{"source": "/var/log", "destination": "/l"}]}));
        assert!(
            p.check(&rw, as_written)
                .expect_err("rw")
                .why
                .contains("read-only")
        );
        let sibling = state(json!({"mounts": [{"source": "/data2", "destination": "/d"}]}));
        assert!(p.check(&sibling, as_written).is_err());
        let other_cap = state(json!({"capabilities": ["CAP_SYS_ADMIN"]}));
        assert!(p.check(&other_cap, as_written).is_err());
    }

    #[test]
    fn a_symlink_under_an_allowed_path_is_judged_by_where_it_leads() {
        let p = policy(json!({"hostPaths": [{"path": "/srv/data"}]}));
        let planted = state(json!({"mounts": [{"source": "/srv/data/x", "destination": "/h"}]}));
        assert_eq!(p.check(&planted, as_written), Ok(()));
        let leads_to_root = |s: &str| {
            if s == "/srv/data/x" {
                "/".into()
            } else {
                s.into()
            }
        };
        let e = p.check(&planted, leads_to_root).expect_err("escapes");
        assert!(e.why.contains("which leads to /"), "{}", e.why);
    }

    #[test]
    fn a_state_is_admitted_with_its_mounts_resolved_and_its_tmpfs_size_chosen() {
        let p = policy(json!({"hostPaths": [{"path": "/srv"}], "maxTmpfsBytes": 1 << 20}));
        let s = state(json!({"mounts": [{"source": "/data", "destination": "/d"}]}));
        let to_srv = |s: &str| {
            if s == "/data" {
                "/srv/data".into()
            } else {
                s.into()
            }
        };
        let admitted = p.admit(s, to_srv).expect("admitted");
        let c = &admitted.containers[0];
        assert_eq!(c.mounts[0].source, "/srv/data");
        assert_eq!(c.limits.tmpfs_bytes, Some(1 << 20));
        let asked = state(json!({"limits": {"tmpfsBytes": 2u64 << 20}}));
        assert!(p.admit(asked, as_written).is_err());
    }

    #[test]
    fn devices_are_allowed_by_path_and_judged_where_their_symlinks_lead() {
        let p = policy(
            json!({"devices": [{"path": "/dev/serial"}, {"path": "/dev/gpiochip0", "readOnly": true}]}),
        );
        let by_id = |s: &str| match s {
            "/dev/serial/by-id/usb-1" => "/dev/serial/ttyUSB0".into(),
            "/dev/serial/evil" => "/dev/sda".into(),
            other => other.into(),
        };
        let ok = state(json!({"devices": [{"path": "/dev/serial/by-id/usb-1"},
                                          {"path": "/dev/gpiochip0", "readOnly": true}]}));
        let admitted = p.admit(ok, by_id).expect("allowed");
        assert_eq!(
            admitted.containers[0].devices[0].path,
            "/dev/serial/ttyUSB0"
        );
        let rw = state(json!({"devices": [{"path": "/dev/gpiochip0"}]}));
        assert!(
            p.check(&rw, by_id)
                .expect_err("rw")
                .why
                .contains("may only be read")
        );
        let escape = state(json!({"devices": [{"path": "/dev/serial/evil"}]}));
        let e = p.check(&escape, by_id).expect_err("escape");
        assert!(e.why.contains("which leads to /dev/sda"), "{}", e.why);
        let sibling = state(json!({"devices": [{"path": "/dev/serial2"}]}));
        assert!(p.check(&sibling, by_id).is_err());
    }

    #[test]
    fn host_network_can_be_forbidden() {
        let p = policy(json!({"hostNetwork": false}));
        assert_eq!(
            p.check(&state(json!({})), as_written)
                .expect_err("host")
                .field,
            "containers[web].network"
        );
        assert_eq!(
            p.check(&state(json!({"network": "isolated"})), as_written),
            Ok(())
        );
    }

    #[test]
    fn a_policy_file_is_read_strictly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.json");
        assert_eq!(
            Policy::load(&missing, false).expect("default"),
            Policy::default()
        );
        assert!(Policy::load(&missing, true).is_err());
        let f = dir.path().join("p.json");
        std::fs::write(&f, r#"{"hostPath": []}"#).expect("write");
        let e = Policy::load(&f, true).expect_err("typo").to_string();
        assert!(e.contains("hostPath"), "{e}");
        std::fs::write(&f, r#"{"capabilities": ["NET_ADMIN"]}"#).expect("write");
        assert!(Policy::load(&f, true).is_err());
        std::fs::write(&f, r#"{"hostPaths": [{"path": "/srv", "readOnly": true}]}"#)
            .expect("write");
        assert_eq!(Policy::load(&f, true).expect("ok").host_paths.len(), 1);
    }
}
