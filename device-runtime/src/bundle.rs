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

/// Where the container's own socket appears inside it (never the management socket).
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
    /// The container's device nodes as the host has them (see [`HostDevice::stat`]).
    pub devices: Vec<HostDevice>,
}

/// A host device node, as `stat` shows it: what runc needs to create it in the container and
/// to let the container's cgroup use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: String,
    /// `c` (character) or `b` (block).
    pub kind: &'static str,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    pub read_only: bool,
}

impl HostDevice {
    /// The node at `node.path` (already resolved and allowed by the policy).
    pub fn stat(node: &crate::state::DeviceNode) -> Result<HostDevice, String> {
        use rustix::fs::FileType;
        let st = rustix::fs::stat(node.path.as_str()).map_err(|e| format!("{}: {e}", node.path))?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::CharacterDevice => "c",
            FileType::BlockDevice => "b",
            _ => return Err(format!("{} is not a device node", node.path)),
        };
        Ok(HostDevice {
            path: node.path.clone(),
            kind,
            major: rustix::fs::major(st.st_rdev),
            minor: rustix::fs::minor(st.st_rdev),
            mode: st.st_mode & 0o777,
            read_only: node.read_only,
        })
    }
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

/// The capabilities container engines grant by default (Docker, containerd, Podman); a
/// state adds to them only what the device's policy allows.
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

/// The syscalls the common default profiles (Docker's, containerd's) refuse a container,
/// each with the capability that gives it back. Refusing rather than allowing by list
/// keeps every ordinary program working while closing the kernel interfaces that
/// container escapes go through (module loading, kexec, `open_by_handle_at`, keyrings,
/// new namespaces, mounts, bpf, userfaultfd).
const DENIED_SYSCALLS: &[(&str, Option<&str>)] = &[
    ("acct", Some("CAP_SYS_PACCT")),
    ("add_key", None),
    ("bpf", Some("CAP_BPF")),
    ("clock_adjtime", Some("CAP_SYS_TIME")),
    ("clock_settime", Some("CAP_SYS_TIME")),
    ("create_module", Some("CAP_SYS_MODULE")),
    ("delete_module", Some("CAP_SYS_MODULE")),
    ("finit_module", Some("CAP_SYS_MODULE")),
    ("fsconfig", Some("CAP_SYS_ADMIN")),
    ("fsmount", Some("CAP_SYS_ADMIN")),
    ("fsopen", Some("CAP_SYS_ADMIN")),
    ("fspick", Some("CAP_SYS_ADMIN")),
    ("get_kernel_syms", Some("CAP_SYS_MODULE")),
    ("get_mempolicy", Some("CAP_SYS_NICE")),
    ("init_module", Some("CAP_SYS_MODULE")),
    ("ioperm", Some("CAP_SYS_RAWIO")),
    ("iopl", Some("CAP_SYS_RAWIO")),
    ("kcmp", Some("CAP_SYS_PTRACE")),
    ("kexec_file_load", Some("CAP_SYS_BOOT")),
    ("kexec_load", Some("CAP_SYS_BOOT")),
    ("keyctl", None),
    ("lookup_dcookie", Some("CAP_SYS_ADMIN")),
    ("mbind", Some("CAP_SYS_NICE")),
    ("mount", Some("CAP_SYS_ADMIN")),
    ("mount_setattr", Some("CAP_SYS_ADMIN")),
    ("move_mount", Some("CAP_SYS_ADMIN")),
    ("move_pages", Some("CAP_SYS_NICE")),
    ("name_to_handle_at", Some("CAP_DAC_READ_SEARCH")),
    ("nfsservctl", None),
    ("open_by_handle_at", Some("CAP_DAC_READ_SEARCH")),
    ("open_tree", Some("CAP_SYS_ADMIN")),
    ("perf_event_open", Some("CAP_PERFMON")),
    ("pivot_root", Some("CAP_SYS_ADMIN")),
    ("process_vm_readv", Some("CAP_SYS_PTRACE")),
    ("process_vm_writev", Some("CAP_SYS_PTRACE")),
    ("ptrace", Some("CAP_SYS_PTRACE")),
    ("query_module", Some("CAP_SYS_MODULE")),
    ("quotactl", Some("CAP_SYS_ADMIN")),
    ("reboot", Some("CAP_SYS_BOOT")),
    ("request_key", None),
    ("set_mempolicy", Some("CAP_SYS_NICE")),
    ("setns", Some("CAP_SYS_ADMIN")),
    ("settimeofday", Some("CAP_SYS_TIME")),
    ("stime", Some("CAP_SYS_TIME")),
    ("swapoff", Some("CAP_SYS_ADMIN")),
    ("swapon", Some("CAP_SYS_ADMIN")),
    ("sysfs", None),
    ("umount", Some("CAP_SYS_ADMIN")),
    ("umount2", Some("CAP_SYS_ADMIN")),
    ("unshare", Some("CAP_SYS_ADMIN")),
    ("uselib", None),
    ("userfaultfd", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// The seccomp filter for a container with `caps`: every syscall allowed but those a
/// default profile refuses and no granted capability gives back; refused ones fail
/// with EPERM, as in Docker, so programs that probe for them carry on.
fn seccomp(caps: &[&str]) -> Value {
    let denied: Vec<&str> = DENIED_SYSCALLS
        .iter()
        .filter(|(_, cap)| cap.is_none_or(|cap| !caps.contains(&cap)))
        .map(|(name, _)| *name)
        .collect();
    let architectures: &[&str] = match std::env::consts::ARCH {
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "arm" => &["SCMP_ARCH_ARM"],
        "riscv64" => &["SCMP_ARCH_RISCV64"],
        _ => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    };
    let mut syscalls = vec![json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1})];
    // `unshare` and `setns` alone would leave `clone` with namespace flags open (a user
    // namespace needs no capability): refuse each such flag, and `clone3`, whose flags
    // live in memory a filter cannot read, with ENOSYS so that libc falls back to `clone`.
    if !caps.contains(&"CAP_SYS_ADMIN") {
        for flag in CLONE_NAMESPACE_FLAGS {
            syscalls.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]
            }));
        }
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": syscalls
    })
}

/// CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
/// CLONE_NEWNET.
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

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

    let tmpfs_size = format!(
        "size={}",
        c.limits
            .tmpfs_bytes
            .unwrap_or(crate::policy::DEFAULT_TMPFS_BYTES)
    );
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
               "options": ["nosuid", "nodev", "mode=1777", tmpfs_size.as_str()]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=755", tmpfs_size.as_str()]}),
    ];
    if let Some(s) = &ctx.socket {
        mounts.push(bind(s, SOCKET_IN_CONTAINER, false));
    }
    if let Some(f) = &ctx.files_dir {
        mounts.push(bind(f, FILES_IN_CONTAINER, true));
        for at in &c.files_at {
            mounts.push(bind(f, at, true));
        }
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

    // Everything denied, then each given node: read (and write unless read-only), never mknod.
    let mut allowed = vec![json!({"allow": false, "access": "rwm"})];
    let mut devices = Vec::new();
    for d in &ctx.devices {
        devices.push(
            json!({"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor,
                            "fileMode": d.mode, "uid": 0, "gid": 0}),
        );
        allowed.push(
            json!({"allow": true, "type": d.kind, "major": d.major, "minor": d.minor,
                            "access": if d.read_only { "r" } else { "rw" }}),
        );
    }
    let mut resources = json!({ "devices": allowed });
    if let Some(m) = c.limits.memory_bytes {
        resources["memory"] = json!({"limit": m});
    }
    if let Some(cpu) = c.limits.cpu_millis {
        resources["cpu"] = json!({"quota": cpu * 100, "period": 100_000});
    }
    if let Some(p) = c.limits.pids {
        resources["pids"] = json!({"limit": p});
    }

    let mut caps: Vec<&str> = CAPS.to_vec();
    for extra in &c.capabilities {
        if !caps.contains(&extra.as_str()) {
            caps.push(extra);
        }
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": process_env(c, img),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": ctx.rootfs, "readonly": true},
        "hostname": c.name,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": ctx.cgroups_path,
            "resources": resources,
            "devices": devices,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"],
            "seccomp": seccomp(&caps)
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
            devices: Vec::new(),
        }
    }

    #[test]
    fn a_given_device_is_created_and_allowed_and_nothing_else() {
        let i = img(json!({"config": {"Cmd": ["/bin/sh"]}}));
        let c = container(json!({}));
        let mut ctx = ctx();
        let none = build_config(&c, &i, &ctx).unwrap();
        assert_eq!(none["linux"]["devices"], json!([]));
        assert_eq!(
            none["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        // /dev/kmsg exists on any Linux host: a character device.
        let node = crate::state::DeviceNode {
            path: "/dev/kmsg".into(),
            read_only: true,
        };
        let kmsg = HostDevice::stat(&node).unwrap();
        assert_eq!((kmsg.kind, kmsg.major, kmsg.minor), ("c", 1, 11));
        ctx.devices.push(kmsg);
        let v = build_config(&c, &i, &ctx).unwrap();
        assert_eq!(v["linux"]["devices"][0]["path"], "/dev/kmsg");
        assert_eq!(
            v["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"})
        );
        let not_a_node = crate::state::DeviceNode {
            path: "/dev/shm".into(),
            read_only: false,
        };
        assert!(
            HostDevice::stat(&not_a_node)
                .unwrap_err()
                .contains("not a device node")
        );
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
    fn default_capabilities_seccomp_and_tmpfs_sizes_with_what_a_state_adds() {
        let c = container(json!({"command": ["/bin/sh"]}));
        let v = build_config(&c, &ImageConfig::default(), &ctx()).unwrap();
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        let denied = v["linux"]["seccomp"]["syscalls"][0]["names"].to_string();
        assert!(denied.contains("\"mount\"") && denied.contains("open_by_handle_at"));
        let rules = v["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        let clone_user = rules.iter().any(|r| {
            r["names"] == json!(["clone"]) && r["args"][0]["value"] == json!(0x1000_0000u64)
        });
        assert!(clone_user, "clone(CLONE_NEWUSER) is allowed");
        assert!(rules.iter().any(|r| r["names"] == json!(["clone3"])));
        let tmp = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/tmp");
        assert!(
            tmp.unwrap()["options"]
                .to_string()
                .contains("size=67108864")
        );

        let c = container(
            json!({"command": ["/bin/sh"], "capabilities": ["CAP_SYS_ADMIN"],
                                  "limits": {"tmpfsBytes": 1048576}}),
        );
        let v = build_config(&c, &ImageConfig::default(), &ctx()).unwrap();
        let caps = v["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
        let denied = v["linux"]["seccomp"]["syscalls"][0]["names"].to_string();
        assert!(!denied.contains("\"mount\"") && denied.contains("keyctl"));
        assert!(!v["linux"]["seccomp"].to_string().contains("clone"));
        assert!(v["mounts"].to_string().contains("size=1048576"));
    }

    #[test]
    fn files_appear_where_the_state_asks_too() {
        let c = container(json!({"command": ["/bin/sh"], "filesAt": ["/etc/app"]}));
        let mut cx = ctx();
        cx.files_dir = Some("/s/revisions/r1/files".into());
        let v = build_config(&c, &ImageConfig::default(), &cx).unwrap();
        let sources: Vec<_> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/etc/app" || m["destination"] == FILES_IN_CONTAINER)
            .map(|m| m["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources, ["/s/revisions/r1/files", "/s/revisions/r1/files"]);
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
