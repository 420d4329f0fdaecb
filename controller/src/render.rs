//! Rendering a Fleet's template into FleetRevision content: one `edgevisor-state@1` document
//! per architecture, byte for byte deterministic. Pure: images arrive already resolved.
//!
//! The revision's name is the Fleet's name and the first ten hex digits of the sha256 of the
//! template's JSON, so the same template always names the same revision, and the state bytes
//! depend only on the template and the registry's content.
use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgevisor_crds::Architecture;
use edgevisor_crds::fleet::{ContainerTemplate, DeviceTemplate, HealthCheck, RestartPolicy};
use edgevisor_crds::fleet_revision::{ArchitectureState, Layer, ResolvedFile, ResolvedImage};
use edgevisor_protocol::state::{self, Descriptor, State};
use sha2::{Digest, Sha256};

use crate::registry::PlatformImage;

/// Where the runtime mounts a state's files inside every container.
pub const FILES_DIR: &str = "/run/edgevisor/files";

/// A template that cannot become a state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("container {container}: {what}")]
    Container { container: String, what: String },
    #[error("fleet name {0:?} is too long to name its revisions (at most 242 characters)")]
    NameTooLong(String),
    #[error("the rendered state for {arch} is invalid: {problems}")]
    InvalidState {
        arch: Architecture,
        problems: String,
    },
    #[error("the images of the template share no architecture: every device would be unsupported")]
    NoArchitecture,
}

/// The sha256 of the template (hex): what names its revision.
pub fn template_hash(template: &DeviceTemplate) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

/// `<fleet>-<first 10 hex digits of the template hash>`.
pub fn revision_name(fleet: &str, hash: &str) -> Result<String, RenderError> {
    if fleet.len() > 242 {
        return Err(RenderError::NameTooLong(fleet.to_string()));
    }
    Ok(format!("{fleet}-{}", &hash[..10.min(hash.len())]))
}

/// A file's content, resolved from inline text or a ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
    /// From a Secret: its content is not copied into the FleetRevision.
    pub secret: bool,
}

/// The content of one FleetRevision.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub architectures: Vec<ArchitectureState>,
    pub files: Vec<ResolvedFile>,
}

/// Renders the template for every architecture all its containers' images provide.
/// `images[i]` are the resolved platforms of `template.containers[i]` (its own image, and
/// per-architecture overrides already substituted by the caller).
pub fn render(
    template: &DeviceTemplate,
    images: &[BTreeMap<Architecture, PlatformImage>],
    files: &[FileContent],
) -> Result<Rendered, RenderError> {
    let mut arches: Option<BTreeSet<Architecture>> = None;
    for platforms in images {
        let these: BTreeSet<Architecture> = platforms.keys().copied().collect();
        arches = Some(match arches {
            None => these,
            Some(so_far) => so_far.intersection(&these).copied().collect(),
        });
    }
    let arches = arches.unwrap_or_default();
    if arches.is_empty() {
        return Err(RenderError::NoArchitecture);
    }
    let state_files: Vec<state::FileEntry> = files
        .iter()
        .map(|f| state::FileEntry {
            path: f.path.clone(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&f.bytes))),
            size: f.bytes.len() as u64,
            mode: f.mode,
        })
        .collect();
    let mut out = Vec::new();
    for arch in arches {
        let mut containers = Vec::new();
        let mut resolved = Vec::new();
        for (container, platforms) in template.containers.iter().zip(images) {
            let Some(image) = platforms.get(&arch) else {
                continue;
            };
            containers.push(container_state(template, container, image)?);
            resolved.push(ResolvedImage {
                container: container.name.clone(),
                image: image_for(container, arch).to_string(),
                manifest_digest: image.manifest_digest.clone(),
                config_digest: image.config.digest.clone(),
                size: image.layers.iter().map(|l| l.size as i64).sum(),
                layers: image
                    .layers
                    .iter()
                    .map(|l| Layer {
                        digest: l.digest.clone(),
                        size: l.size as i64,
                        media_type: l.media_type.clone().unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let state = State {
            spec: state::SPEC.to_string(),
            goal_timeout_seconds: template.goal_timeout_seconds.map(|s| s.max(1) as u64),
            test_period_seconds: template.test_period_seconds.map(|s| s.max(0) as u64),
            containers,
            files: state_files.clone(),
        };
        let problems = state.validate();
        if !problems.is_empty() {
            return Err(RenderError::InvalidState {
                arch,
                problems: problems.join("; "),
            });
        }
        let json = serde_json::to_string(&state).unwrap_or_default();
        out.push(ArchitectureState {
            architecture: arch,
            state_digest: hex::encode(Sha256::digest(json.as_bytes())),
            state: json,
            images: resolved,
            // Signed with the revision's name, once it has one.
            signature: None,
        });
    }
    let files = state_files
        .into_iter()
        .zip(files)
        .map(|(f, content)| ResolvedFile {
            path: f.path,
            digest: f.digest,
            size: f.size as i64,
            mode: f.mode as i32,
            content: (!content.secret).then(|| BASE64.encode(&content.bytes)),
        })
        .collect();
    Ok(Rendered {
        architectures: out,
        files,
    })
}

/// The image a container uses on `arch`: its override, or its own.
pub fn image_for(container: &ContainerTemplate, arch: Architecture) -> &str {
    container
        .image_overrides
        .iter()
        .find(|o| o.architecture == arch)
        .map(|o| o.image.as_str())
        .unwrap_or(&container.image)
}

fn container_state(
    template: &DeviceTemplate,
    c: &ContainerTemplate,
    image: &PlatformImage,
) -> Result<state::Container, RenderError> {
    let err = |what: String| RenderError::Container {
        container: c.name.clone(),
        what,
    };
    let descriptor = |digest: &str, size: u64| Descriptor {
        digest: digest.to_string(),
        size,
    };
    let mut volumes = Vec::new();
    let mut files_at = Vec::new();
    for m in &c.mounts {
        if let Some(name) = &m.volume {
            let volume = template
                .volumes
                .iter()
                .find(|v| &v.name == name)
                .ok_or_else(|| {
                    err(format!(
                        "mounts volume {name:?}, which the template does not declare"
                    ))
                })?;
            if !volume.persistent {
                return Err(err(format!(
                    "volume {name:?} is not persistent; only persistent volumes are supported yet"
                )));
            }
            volumes.push(state::Volume {
                name: name.clone(),
                destination: m.mount_path.clone(),
            });
        } else if m.mount_path != FILES_DIR {
            // The runtime delivers the revision's files at one place and binds them
            // wherever else the state asks; never a host path.
            files_at.push(m.mount_path.clone());
        }
    }
    let period = c
        .health_check
        .as_ref()
        .and_then(|h| h.period_seconds)
        .map(|s| s.max(1) as u64 * 1000);
    let health = c.health_check.as_ref().map(|h: &HealthCheck| {
        if let Some(exec) = &h.exec {
            state::HealthCheck::Exec {
                command: exec.command.clone(),
                interval_ms: period,
            }
        } else if let Some(http) = &h.http {
            state::HealthCheck::Http {
                port: http.port.clamp(1, 65535) as u16,
                path: http.path.clone(),
                interval_ms: period,
            }
        } else if let Some(tcp) = &h.tcp {
            state::HealthCheck::Tcp {
                port: tcp.port.clamp(1, 65535) as u16,
                interval_ms: period,
            }
        } else {
            state::HealthCheck::Signal {}
        }
    });
    let limits = match &c.resources {
        Some(r) => state::Limits {
            memory_bytes: r
                .memory
                .as_deref()
                .map(parse_memory)
                .transpose()
                .map_err(err)?,
            cpu_millis: r.cpu.as_deref().map(parse_cpu).transpose().map_err(err)?,
            pids: r.pids.map(|p| p.max(1) as u64),
            tmpfs_bytes: None,
        },
        None => state::Limits::default(),
    };
    Ok(state::Container {
        name: c.name.clone(),
        image: state::Image {
            config: descriptor(&image.config.digest, image.config.size),
            layers: image
                .layers
                .iter()
                .map(|l| descriptor(&l.digest, l.size))
                .collect(),
        },
        command: (!c.command.is_empty()).then(|| c.command.clone()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        env: c
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
        mounts: Vec::new(),
        volumes,
        network: if c.host_network {
            state::Network::Host
        } else {
            state::Network::Isolated
        },
        restart_policy: match c.restart_policy {
            RestartPolicy::Always => state::RestartPolicy::Always,
            RestartPolicy::OnFailure => state::RestartPolicy::OnFailure,
            RestartPolicy::Never => state::RestartPolicy::Never,
        },
        success_exit_codes: None,
        health,
        limits,
        allow_setuid: false,
        capabilities: Vec::new(),
        roles: Vec::new(),
        files_at,
        devices: Vec::new(),
    })
}

/// `64Mi`, `1G`, `1048576` → bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("memory {text:?} is not a number of bytes"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "K" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(format!("memory {text:?} has an unknown suffix")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("memory {text:?} is too large"))
}

/// `500m` → 500, `2` → 2000.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let bad = || format!("cpu {text:?} is neither millicores (500m) nor cores (2)");
    match text.strip_suffix('m') {
        Some(millis) => millis.parse().map_err(|_| bad()),
        None => text
            .parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(1000)
            .ok_or_else(bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Blob;

    fn blob(n: u8, size: u64) -> Blob {
        Blob {
            media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size,
        }
    }

    fn platform(n: u8) -> PlatformImage {
        PlatformImage {
            manifest_digest: format!("sha256:{}", hex::encode([n + 100; 32])),
            config: blob(n + 50, 300),
            layers: vec![blob(n, 1000)],
        }
    }

    fn template() -> DeviceTemplate {
        serde_json::from_value(serde_json::json!({
            "containers": [
                {"name": "web", "image": "r.example.com/web:1", "command": ["/bin/httpd", "-f"], "hostNetwork": true,
                 "healthCheck": {"http": {"port": 8080, "path": "/"}}, "resources": {"memory": "32Mi", "cpu": "250m", "pids": 64},
                 "mounts": [{"volume": "data", "mountPath": "/data"}, {"files": true, "mountPath": "/etc/web"}],
                 "env": [{"name": "MODE", "value": "kiosk"}]},
                {"name": "agent", "image": "r.example.com/agent:2", "restartPolicy": "OnFailure", "healthCheck": {"signal": true}}
            ],
            "volumes": [{"name": "data", "persistent": true}],
            "testPeriodSeconds": 5
        }))
        .unwrap()
    }

    fn images() -> Vec<BTreeMap<Architecture, PlatformImage>> {
        vec![
            [
                (Architecture::Amd64, platform(1)),
                (Architecture::Arm64, platform(2)),
                (Architecture::Riscv64, platform(3)),
            ]
            .into(),
            [
                (Architecture::Amd64, platform(4)),
                (Architecture::Arm64, platform(5)),
            ]
            .into(),
        ]
    }

    fn files() -> Vec<FileContent> {
        vec![FileContent {
            path: "web/site.conf".into(),
            mode: 0o644,
            bytes: b"greeting=hi\n".to_vec(),
            secret: false,
        }]
    }

    #[test]
    fn renders_a_state_per_architecture_all_images_provide() {
        let rendered = render(&template(), &images(), &files()).unwrap();
        let arches: Vec<Architecture> = rendered
            .architectures
            .iter()
            .map(|a| a.architecture)
            .collect();
        assert_eq!(
            arches,
            [Architecture::Amd64, Architecture::Arm64],
            "riscv64 lacks the agent image"
        );
        for a in &rendered.architectures {
            let state = State::parse(a.state.as_bytes())
                .expect("the runtime accepts what the controller renders");
            assert_eq!(state.containers.len(), 2);
            assert_eq!(
                a.state_digest,
                hex::encode(Sha256::digest(a.state.as_bytes()))
            );
            let web = &state.containers[0];
            assert_eq!(web.limits.memory_bytes, Some(32 << 20));
            assert_eq!(web.limits.cpu_millis, Some(250));
            assert_eq!(web.volumes[0].destination, "/data");
            assert!(web.mounts.is_empty(), "never a host path");
            assert_eq!(web.files_at, ["/etc/web"]);
            assert_eq!(state.files[0].size, 12);
        }
        assert_ne!(
            rendered.architectures[0].state,
            rendered.architectures[1].state
        );
    }

    #[test]
    fn same_template_and_registry_content_give_the_same_bytes() {
        let a = render(&template(), &images(), &files()).unwrap();
        let b = render(&template(), &images(), &files()).unwrap();
        assert_eq!(a, b);
        assert_eq!(template_hash(&template()), template_hash(&template()));
        let mut other = template();
        other.test_period_seconds = Some(6);
        assert_ne!(template_hash(&template()), template_hash(&other));
    }

    #[test]
    fn names_revisions_after_the_template() {
        let hash = template_hash(&template());
        let name = revision_name("kiosks", &hash).unwrap();
        assert_eq!(name.len(), "kiosks-".len() + 10);
        assert!(name.starts_with("kiosks-"));
        assert!(revision_name(&"x".repeat(243), &hash).is_err());
    }

    #[test]
    fn refuses_what_the_runtime_could_not_run() {
        let mut t = template();
        t.volumes[0].persistent = false;
        assert!(matches!(
            render(&t, &images(), &files()),
            Err(RenderError::Container { .. })
        ));
        let mut t = template();
        t.containers[0].resources.as_mut().unwrap().memory = Some("12Ti".into());
        assert!(render(&t, &images(), &files()).is_err());
        let disjoint = vec![
            images()[0].clone(),
            [(Architecture::S390x, platform(9))].into(),
        ];
        assert_eq!(
            render(&template(), &disjoint, &files()),
            Err(RenderError::NoArchitecture)
        );
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("500M"), Ok(500_000_000));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert!(parse_cpu("1.5").is_err());
        assert!(parse_memory("99999999999999999999Gi").is_err());
    }
}
