//! The state document `edgevisor-state@1`: what a revision runs.
//!
//! A state is immutable and content-addressed: every artifact (image config, layers,
//! files) is pinned by sha256 digest and size, so the same JSON re-applied byte for
//! byte yields the same device. [`State::parse`] deserialises strictly (unknown fields
//! are refused, so a typo never silently drops a setting) and [`State::validate`]
//! checks everything the schema alone cannot say. Both are pure: no I/O happens before
//! a state has passed them.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only version this runtime understands.
pub const SPEC: &str = "edgevisor-state@1";
/// Used when a state does not say how long containers may take to reach their goal.
pub const DEFAULT_GOAL_TIMEOUT_SECS: u64 = 60;
/// Used when a state does not say how long the goal must hold before commit.
pub const DEFAULT_TEST_PERIOD_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state is not valid JSON for {SPEC}: {0}")]
    Parse(String),
    #[error("state is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// A device state: the containers and files of one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "edgevisor-state@1")]
pub struct State {
    /// Always `edgevisor-state@1`.
    #[serde(rename = "#spec")]
    pub spec: String,
    /// Seconds every container has to reach its goal (running, healthy or ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_timeout_seconds: Option<u64>,
    /// Seconds the goal must keep holding before the revision is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_period_seconds: Option<u64>,
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Files delivered with the state, mounted read-only at `/run/edgevisor/files`.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// A content-addressed blob: `sha256:<64 hex>` and its exact size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Image {
    /// The OCI image config blob (Env, Entrypoint, Cmd, WorkingDir, User are used).
    pub config: Descriptor,
    /// Layers, bottom first; tar, tar+gzip or tar+zstd (detected from content).
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// Share the device's network namespace.
    #[default]
    Host,
    /// A private network namespace with only loopback.
    Isolated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    /// Absolute path on the device.
    pub source: String,
    /// Absolute path in the container.
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A directory that survives revisions, kept per container and volume name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub destination: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum HealthCheck {
    /// Healthy while the command exits 0 (run inside the container).
    Exec {
        command: Vec<String>,
        #[serde(default)]
        interval_ms: Option<u64>,
    },
    /// Healthy while `GET http://127.0.0.1:<port><path>` answers 2xx (host network only).
    Http {
        port: u16,
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        interval_ms: Option<u64>,
    },
    /// Healthy while `127.0.0.1:<port>` accepts connections (host network only).
    Tcp {
        port: u16,
        #[serde(default)]
        interval_ms: Option<u64>,
    },
    /// Ready once the container calls `POST /signal` on the control socket.
    Signal {},
}

impl HealthCheck {
    pub fn interval_ms(&self) -> u64 {
        match self {
            HealthCheck::Exec { interval_ms, .. }
            | HealthCheck::Http { interval_ms, .. }
            | HealthCheck::Tcp { interval_ms, .. } => interval_ms.unwrap_or(1000),
            HealthCheck::Signal {} => 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core.
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub pids: Option<u64>,
    /// Size of each of the container's `/tmp` and `/run` (default 64 MiB; the device's
    /// policy bounds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    /// `[a-z0-9][a-z0-9-]*`, at most 32 characters, unique in the state.
    pub name: String,
    pub image: Image,
    /// Replaces the image's Entrypoint.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Added to (and overriding) the image's Env.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Numeric `uid` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Exit codes that count as success for `on-failure` (default `[0]`).
    #[serde(default)]
    pub success_exit_codes: Option<Vec<i32>>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub limits: Limits,
    /// Keep setuid/setgid bits from the image layers (stripped by default).
    #[serde(default)]
    pub allow_setuid: bool,
    /// Capabilities beyond the default set container engines grant (e.g. `CAP_NET_ADMIN`).
    /// The device's policy must allow each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Roles on the runtime's socket. `manager` lets the container manage the device
    /// (install, run, metadata) through its own socket; only the device's policy may
    /// allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// More paths in the container where the revision's files appear (read-only), besides
    /// `/run/edgevisor/files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_at: Vec<String>,
    /// Host device nodes (a serial port, a GPIO chip) the container may use, at the same
    /// path. The device's policy must allow each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceNode>,
}

/// A host device node given to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNode {
    /// A clean absolute path under `/dev/`, e.g. `/dev/ttyUSB0`. A symlink (such as
    /// `/dev/serial/by-id/…`) is judged, and given to the container, as the node it leads to.
    pub path: String,
    /// Read access only.
    #[serde(default)]
    pub read_only: bool,
}

/// Most device nodes one container may name.
pub const MAX_DEVICES: usize = 64;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything root on the management socket may do.
    Manager,
}

/// Every Linux capability a state may name.
pub const CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

impl Container {
    pub fn success_codes(&self) -> Vec<i32> {
        self.success_exit_codes.clone().unwrap_or_else(|| vec![0])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path under `/run/edgevisor/files`.
    pub path: String,
    pub digest: String,
    pub size: u64,
    /// Permission bits, e.g. 420 (0644). No setuid/setgid/sticky.
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

// === impl State ===

impl State {
    /// Parses and validates; the only way outside bytes become a `State`.
    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        let state: State =
            serde_json::from_slice(bytes).map_err(|e| StateError::Parse(e.to_string()))?;
        let problems = state.validate();
        if problems.is_empty() {
            Ok(state)
        } else {
            Err(StateError::Invalid(problems))
        }
    }

    /// Every object the state needs, as (`sha256:<hex>`, size): image configs, layers, files.
    /// Shared objects appear once per use.
    pub fn descriptors(&self) -> impl Iterator<Item = (&str, u64)> {
        self.containers
            .iter()
            .flat_map(|c| std::iter::once(&c.image.config).chain(&c.image.layers))
            .map(|d| (d.digest.as_str(), d.size))
            .chain(self.files.iter().map(|f| (f.digest.as_str(), f.size)))
    }

    pub fn goal_timeout_secs(&self) -> u64 {
        self.goal_timeout_seconds
            .unwrap_or(DEFAULT_GOAL_TIMEOUT_SECS)
    }

    pub fn test_period_secs(&self) -> u64 {
        self.test_period_seconds.unwrap_or(DEFAULT_TEST_PERIOD_SECS)
    }

    /// Every problem found, so that one round trip tells the author all of them.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.spec != SPEC {
            p.push(format!("#spec must be {SPEC:?}, got {:?}", self.spec));
        }
        if let Some(t) = self.goal_timeout_seconds
            && !(1..=3600).contains(&t)
        {
            p.push("goalTimeoutSeconds must be 1..=3600".into());
        }
        if let Some(t) = self.test_period_seconds
            && t > 3600
        {
            p.push("testPeriodSeconds must be 0..=3600".into());
        }
        let mut names = BTreeSet::new();
        for c in &self.containers {
            let at = format!("container {:?}", c.name);
            if !valid_name(&c.name) {
                p.push(format!("{at}: name must match [a-z0-9][a-z0-9-]{{0,31}}"));
            }
            if !names.insert(c.name.as_str()) {
                p.push(format!("{at}: duplicate name"));
            }
            check_descriptor(&mut p, &format!("{at} image config"), &c.image.config);
            if c.image.layers.is_empty() {
                p.push(format!("{at}: image has no layers"));
            }
            for (i, l) in c.image.layers.iter().enumerate() {
                check_descriptor(&mut p, &format!("{at} layer {i}"), l);
            }
            for v in [&c.command, &c.args].into_iter().flatten() {
                if v.iter().any(|s| s.contains('\0')) {
                    p.push(format!("{at}: command/args must not contain NUL"));
                }
            }
            if let Some(cmd) = &c.command
                && cmd.is_empty()
            {
                p.push(format!("{at}: command must not be empty when given"));
            }
            for (k, v) in &c.env {
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    p.push(format!("{at}: bad env name {k:?}"));
                }
            }
            if let Some(w) = &c.working_dir
                && !is_clean_abs(w)
            {
                p.push(format!("{at}: workingDir must be a clean absolute path"));
            }
            if let Some(u) = &c.user
                && parse_user(u).is_none()
            {
                p.push(format!("{at}: user must be numeric uid or uid:gid"));
            }
            let mut dests = BTreeSet::new();
            for m in &c.mounts {
                if !is_clean_abs(&m.source) || !is_clean_abs(&m.destination) {
                    p.push(format!(
                        "{at}: mount {:?} -> {:?}: paths must be clean and absolute",
                        m.source, m.destination
                    ));
                }
                if !dests.insert(m.destination.clone()) {
                    p.push(format!("{at}: two mounts at {:?}", m.destination));
                }
            }
            for f in &c.files_at {
                if !is_clean_abs(f) || f == "/" {
                    p.push(format!("{at}: filesAt {f:?} must be a clean absolute path"));
                }
                if !dests.insert(f.clone()) {
                    p.push(format!("{at}: two mounts at {f:?}"));
                }
            }
            let mut vnames = BTreeSet::new();
            for v in &c.volumes {
                if !valid_name(&v.name) || !vnames.insert(v.name.clone()) {
                    p.push(format!("{at}: bad or duplicate volume name {:?}", v.name));
                }
                if !is_clean_abs(&v.destination) || v.destination == "/" {
                    p.push(format!(
                        "{at}: volume destination must be a clean absolute path"
                    ));
                }
                if !dests.insert(v.destination.clone()) {
                    p.push(format!("{at}: two mounts at {:?}", v.destination));
                }
            }
            match &c.health {
                Some(HealthCheck::Exec { command, .. }) if command.is_empty() => {
                    p.push(format!("{at}: exec health check needs a command"));
                }
                Some(HealthCheck::Http { port, path, .. }) => {
                    if *port == 0 {
                        p.push(format!("{at}: health port must be 1..=65535"));
                    }
                    if let Some(path) = path
                        && (!path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace()))
                    {
                        p.push(format!(
                            "{at}: http health path must start with / and have no spaces"
                        ));
                    }
                    if c.network != Network::Host {
                        p.push(format!(
                            "{at}: http health checks need network host (use exec)"
                        ));
                    }
                }
                Some(HealthCheck::Tcp { port, .. }) => {
                    if *port == 0 {
                        p.push(format!("{at}: health port must be 1..=65535"));
                    }
                    if c.network != Network::Host {
                        p.push(format!(
                            "{at}: tcp health checks need network host (use exec)"
                        ));
                    }
                }
                _ => {}
            }
            if let Some(iv) = c.health.as_ref().map(HealthCheck::interval_ms)
                && !(10..=600_000).contains(&iv)
            {
                p.push(format!("{at}: health intervalMs must be 10..=600000"));
            }
            if c.limits.memory_bytes.is_some_and(|m| m < 1 << 20) {
                p.push(format!("{at}: memoryBytes below 1 MiB"));
            }
            if c.limits.cpu_millis.is_some_and(|m| m == 0)
                || c.limits.pids == Some(0)
                || c.limits.tmpfs_bytes == Some(0)
            {
                p.push(format!("{at}: limits must be positive"));
            }
            if c.devices.len() > MAX_DEVICES {
                p.push(format!("{at}: more than {MAX_DEVICES} devices"));
            }
            let mut nodes = BTreeSet::new();
            for d in &c.devices {
                if !is_clean_abs(&d.path) || !d.path.starts_with("/dev/") {
                    p.push(format!(
                        "{at}: device {:?} must be a clean absolute path under /dev/",
                        d.path
                    ));
                }
                if !nodes.insert(&d.path) {
                    p.push(format!("{at}: device {} named twice", d.path));
                }
            }
            let mut caps = BTreeSet::new();
            for cap in &c.capabilities {
                if !CAPABILITIES.contains(&cap.as_str()) {
                    p.push(format!(
                        "{at}: unknown capability {cap:?} (write it as CAP_NET_ADMIN)"
                    ));
                }
                if !caps.insert(cap) {
                    p.push(format!("{at}: capability {cap} named twice"));
                }
            }
        }
        let mut paths = BTreeSet::new();
        for f in &self.files {
            let at = format!("file {:?}", f.path);
            if crate::paths::clean_relative(&f.path).is_err() {
                p.push(format!("{at}: path must be relative without .. components"));
            }
            if !paths.insert(f.path.as_str()) {
                p.push(format!("{at}: duplicate path"));
            }
            if parse_digest(&f.digest).is_none() {
                p.push(format!("{at}: digest must be sha256:<64 lowercase hex>"));
            }
            if f.mode & !0o777 != 0 {
                p.push(format!(
                    "{at}: mode may only have permission bits (0..=0777)"
                ));
            }
        }
        p
    }

    /// Every object the state needs, as hex digests, deduplicated.
    pub fn objects(&self) -> BTreeSet<String> {
        self.descriptors()
            .filter_map(|(digest, _)| parse_digest(digest).map(str::to_string))
            .collect()
    }

    /// Total bytes of the objects, for the free-space check.
    pub fn total_size(&self) -> u64 {
        let mut seen = BTreeSet::new();
        self.descriptors()
            .filter(|(digest, _)| seen.insert(*digest))
            .fold(0u64, |total, (_, size)| total.saturating_add(size))
    }

    /// The JSON Schema of the document, as committed in `schema/`.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(State)).unwrap_or_default()
    }
}

fn check_descriptor(p: &mut Vec<String>, at: &str, d: &Descriptor) {
    if parse_digest(&d.digest).is_none() {
        p.push(format!("{at}: digest must be sha256:<64 lowercase hex>"));
    }
}

/// `sha256:<hex>` → `<hex>`; anything else is refused.
pub fn parse_digest(d: &str) -> Option<&str> {
    let h = d.strip_prefix("sha256:")?;
    is_sha256_hex(h).then_some(h)
}

pub use crate::digest::is_sha256_hex;

pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Revision names appear in paths and URLs, so they are restricted.
pub fn valid_rev(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

/// An absolute path without empty, `.` or `..` components.
pub fn is_clean_abs(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains('\0')
        && (p == "/"
            || p[1..]
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."))
}

pub fn parse_user(u: &str) -> Option<(u32, u32)> {
    match u.split_once(':') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let uid = u.parse().ok()?;
            Some((uid, uid))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "#spec": SPEC,
            "containers": [{
                "name": "web",
                "image": {"config": {"digest": digest('a'), "size": 10},
                          "layers": [{"digest": digest('b'), "size": 20}]},
            }],
            "files": [{"path": "etc/app.conf", "digest": digest('c'), "size": 3}]
        })
    }

    fn parse(v: serde_json::Value) -> Result<State, StateError> {
        State::parse(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn minimal_state_is_valid_with_defaults() {
        let s = parse(minimal()).unwrap();
        assert_eq!(s.containers[0].restart_policy, RestartPolicy::Always);
        assert_eq!(s.goal_timeout_secs(), DEFAULT_GOAL_TIMEOUT_SECS);
        assert_eq!(s.objects().len(), 3);
        assert_eq!(s.total_size(), 33);
    }

    #[test]
    fn wrong_spec_is_refused() {
        let mut v = minimal();
        v["#spec"] = "edgevisor-state@2".into();
        assert!(matches!(parse(v), Err(StateError::Invalid(p)) if p[0].contains("#spec")));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = minimal();
        v["containers"][0]["restartPolicyy"] = "never".into();
        assert!(matches!(parse(v), Err(StateError::Parse(_))));
    }

    #[test]
    fn bad_digests_names_and_paths_are_all_reported() {
        let mut v = minimal();
        v["containers"][0]["name"] = "Web!".into();
        v["containers"][0]["image"]["layers"][0]["digest"] = "sha256:XYZ".into();
        v["files"][0]["path"] = "../etc/passwd".into();
        v["containers"][0]["mounts"] = serde_json::json!([{"source": "rel", "destination": "/x"}]);
        let Err(StateError::Invalid(p)) = parse(v) else {
            panic!("expected invalid")
        };
        assert_eq!(p.len(), 4, "{p:?}");
    }

    #[test]
    fn duplicate_containers_and_http_check_without_host_network() {
        let mut v = minimal();
        let mut c2 = v["containers"][0].clone();
        c2["network"] = "isolated".into();
        c2["health"] = serde_json::json!({"type": "http", "port": 80});
        v["containers"].as_array_mut().unwrap().push(c2);
        let Err(StateError::Invalid(p)) = parse(v) else {
            panic!("expected invalid")
        };
        assert!(p.iter().any(|m| m.contains("duplicate")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("network host")), "{p:?}");
    }

    #[test]
    fn health_variants_parse() {
        let mut v = minimal();
        for h in [
            serde_json::json!({"type": "exec", "command": ["true"]}),
            serde_json::json!({"type": "tcp", "port": 8080}),
            serde_json::json!({"type": "signal"}),
        ] {
            v["containers"][0]["health"] = h;
            parse(v.clone()).unwrap();
        }
    }

    #[test]
    fn rev_and_user_rules() {
        assert!(valid_rev("v1.2_rc-3"));
        assert!(!valid_rev("../x"));
        assert!(!valid_rev(".hidden"));
        assert!(!valid_rev(""));
        assert_eq!(parse_user("1000:100"), Some((1000, 100)));
        assert_eq!(parse_user("root"), None);
    }

    #[test]
    fn committed_schema_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schema/edgevisor-state@1.json"
        );
        let generated = serde_json::to_string_pretty(&State::json_schema()).unwrap() + "\n";
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            committed, generated,
            "schema/edgevisor-state@1.json is stale: run UPDATE_SCHEMA=1 cargo test -p edgevisor-protocol"
        );
    }
}
