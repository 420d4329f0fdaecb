//! `config.json` for a container, from its state entry and its image config.
//!
//! Pure: [`build_config`] only assembles JSON, so every rule (what overrides what,
//! which namespaces, which limits) is tested without runc. The root filesystem is
//! shared between revisions and mounted read-only; `/tmp` and `/run` are tmpfs, and
//! persistent data lives in volumes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::{Container, Network, parse_user};

/// Where the control socket appears inside every container.
pub const SOCKET_IN_CONTAINER: &str = "/run/edgevisor/control.sock";
pub const FILES_IN_CONTAINER: &str = "/run/edgevisor/files";

/// The parts of an OCI image config we use.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: ImageRunConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("image config is not valid: {0}")]
    ImageConfig(String),
    #[error("container {0}: neither the state nor the image gives a command")]
    NoCommand(String),
    #[error("container {0}: image user {1:?} is not numeric; set user in the state")]
    User(String, String),
}

/// Host-side paths a bundle refers to.
#[derive(Debug, Clone)]
pub struct BundleCtx {
    pub rootfs: PathBuf,
    pub cgroups_path: String,
    pub socket: Option<PathBuf>,
    pub files_dir: Option<PathBuf>,
    /// Volume name → host directory.
    pub volumes: BTreeMap<String, PathBuf>,
}

pub fn parse_image_config(bytes: &[u8]) -> Result<ImageConfig, BundleError> {
    serde_json::from_slice(bytes).map_err(|e| BundleError::ImageConfig(e.to_string()))
}

/// The process the container runs: state `command`/`args` override the image's
/// `Entrypoint`/`Cmd` the way Kubernetes does.
pub fn process_args(c: &Container, img: &ImageRunConfig) -> Result<Vec<String>, BundleError> {
    let entry = c
        .command
        .clone()
        .or_else(|| img.entrypoint.clone())
        .unwrap_or_default();
    let args = match (&c.command, &c.args) {
        (_, Some(a)) => a.clone(),
        (Some(_), None) => Vec::new(),
        (None, None) => img.cmd.clone().unwrap_or_default(),
    };
    let all: Vec<String> = entry.into_iter().chain(args).collect();
    if all.is_empty() {
        return Err(BundleError::NoCommand(c.name.clone()));
    }
    Ok(all)
}

pub fn process_env(c: &Container, img: &ImageRunConfig) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for kv in img.env.iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.insert("EDGEVISOR_SOCKET".into(), SOCKET_IN_CONTAINER.into());
    env.insert("EDGEVISOR_CONTAINER".into(), c.name.clone());
    for (k, v) in &c.env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn bind(src: &std::path::Path, dest: &str, ro: bool) -> Value {
    let mut opts = vec!["rbind", "nosuid", "nodev"];
    if ro {
        opts.push("ro");
    }
    json!({"destination": dest, "type": "bind", "source": src, "options": opts})
}

pub fn build_config(
    c: &Container,
    img: &ImageConfig,
    ctx: &BundleCtx,
) -> Result<Value, BundleError> {
    let img = &img.config;
    let args = process_args(c, img)?;
    let (uid, gid) = match (&c.user, &img.user) {
        (Some(u), _) => parse_user(u).unwrap_or((0, 0)),
        (None, Some(u)) if !u.is_empty() => {
            parse_user(u).ok_or_else(|| BundleError::User(c.name.clone(), u.clone()))?
        }
        _ => (0, 0),
    };
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| img.working_dir.clone().filter(|w| w.starts_with('/')))
        .unwrap_or_else(|| "/".into());

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=755"]}),
    ];
    if let Some(s) = &ctx.socket {
        mounts.push(bind(s, SOCKET_IN_CONTAINER, false));
    }
    if let Some(f) = &ctx.files_dir {
        mounts.push(bind(f, FILES_IN_CONTAINER, true));
    }
    for v in &c.volumes {
        if let Some(src) = ctx.volumes.get(&v.name) {
            mounts.push(bind(src, &v.destination, false));
        }
    }
    for m in &c.mounts {
        mounts.push(bind(
            std::path::Path::new(&m.source),
            &m.destination,
            m.read_only,
        ));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if c.network == Network::Isolated {
        namespaces.push(json!({"type": "network"}));
    }

    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(m) = c.limits.memory_bytes {
        resources["memory"] = json!({"limit": m});
    }
    if let Some(cpu) = c.limits.cpu_millis {
        resources["cpu"] = json!({"quota": cpu * 100, "period": 100_000});
    }
    if let Some(p) = c.limits.pids {
        resources["pids"] = json!({"limit": p});
    }

    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": process_env(c, img),
            "cwd": cwd,
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": ctx.rootfs, "readonly": true},
        "hostname": c.name,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": ctx.cgroups_path,
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(extra: Value) -> Container {
        let mut v = json!({
            "name": "web",
            "image": {"config": {"digest": format!("sha256:{}", "a".repeat(64)), "size": 1},
                      "layers": [{"digest": format!("sha256:{}", "b".repeat(64)), "size": 1}]}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn img(v: Value) -> ImageConfig {
        serde_json::from_value(v).unwrap()
    }

    fn ctx() -> BundleCtx {
        BundleCtx {
            rootfs: "/s/rootfs/x".into(),
            cgroups_path: "/edgevisor/ev1-web".into(),
            socket: Some("/s/control.sock".into()),
            files_dir: None,
            volumes: [("data".to_string(), PathBuf::from("/s/volumes/web/data"))].into(),
        }
    }

    #[test]
    fn image_entrypoint_and_cmd_are_used_and_overridden() {
        let i = img(json!({"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "x"]}}));
        let c = container(json!({}));
        assert_eq!(process_args(&c, &i.config).unwrap(), ["/bin/sh", "-c", "x"]);
        let c = container(json!({"args": ["-c", "y"]}));
        assert_eq!(process_args(&c, &i.config).unwrap(), ["/bin/sh", "-c", "y"]);
        let c = container(json!({"command": ["/bin/sleep"], "args": ["1"]}));
        assert_eq!(process_args(&c, &i.config).unwrap(), ["/bin/sleep", "1"]);
        // A state command drops the image Cmd, as in Kubernetes.
        let c = container(json!({"command": ["/bin/true"]}));
        assert_eq!(process_args(&c, &i.config).unwrap(), ["/bin/true"]);
        assert!(process_args(&container(json!({})), &ImageRunConfig::default()).is_err());
    }

    #[test]
    fn env_merges_with_state_winning() {
        let i = img(json!({"config": {"Env": ["PATH=/bin", "A=1"]}}));
        let c = container(json!({"env": {"A": "2"}}));
        let env = process_env(&c, &i.config);
        assert!(env.contains(&"A=2".into()) && env.contains(&"PATH=/bin".into()));
        assert!(env.contains(&format!("EDGEVISOR_SOCKET={SOCKET_IN_CONTAINER}")));
    }

    #[test]
    fn limits_network_user_and_mounts_are_applied() {
        let c = container(json!({
            "command": ["/bin/sh"], "user": "1000:100", "network": "isolated",
            "limits": {"memoryBytes": 16777216, "cpuMillis": 500, "pids": 64},
            "volumes": [{"name": "data", "destination": "/data"}],
            "mounts": [{"source": "/etc/hosts", "destination": "/etc/hosts", "readOnly": true}]
        }));
        let v = build_config(&c, &ImageConfig::default(), &ctx()).unwrap();
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 16777216);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
        let ns: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network"));
        let dests: Vec<_> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(dests.contains(&"/data") && dests.contains(&"/etc/hosts"));
        assert!(dests.contains(&SOCKET_IN_CONTAINER));
        assert_eq!(v["root"]["readonly"], true);
    }

    #[test]
    fn host_network_by_default_and_non_numeric_image_user_refused() {
        let c = container(json!({"command": ["/bin/sh"]}));
        let v = build_config(&c, &ImageConfig::default(), &ctx()).unwrap();
        assert!(!v.to_string().contains("\"network\""));
        let i = img(json!({"config": {"User": "nobody"}}));
        assert!(matches!(
            build_config(&c, &i, &ctx()),
            Err(BundleError::User(..))
        ));
    }
}
