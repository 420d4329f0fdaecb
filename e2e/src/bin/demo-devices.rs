//! Stand-ins for the demo until real devices report through the gateway: pushes demo images to
//! the local registry, and plays the devices of a namespace (status written as the gateway
//! will: architecture, online, update progress).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgevisor_crds::{Device, FleetRevision};
use edgevisor_e2e::gateway_role::{Behaviour, create_devices, report_online, simulate};
use edgevisor_e2e::images::{Image, Registry, busybox_layer, layer};
use kube::Api;
use kube::api::ListParams;

/// Demo helpers: images and simulated devices.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push a busybox image for amd64 and arm64 as `<registry>/<repo>:<tag>`.
    Push {
        #[arg(long)]
        registry: String,
        #[arg(long)]
        repo: String,
        #[arg(long)]
        tag: String,
    },
    /// Create `--count` more devices labelled `role=<role>` and play every device of the
    /// namespace: each update takes a few seconds; images tagged `broken` fail.
    Simulate {
        #[arg(long)]
        namespace: String,
        #[arg(long, default_value = "kiosk")]
        role: String,
        #[arg(long, default_value_t = 7)]
        count: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Push {
            registry,
            repo,
            tag,
        } => {
            let base = busybox_layer()?;
            let www = layer(&[(
                "www/index.html",
                format!("hello from edgevisor {tag}\n").as_bytes(),
                0o644,
            )])?;
            let images: Vec<Image> = [("amd64", None), ("arm64", None)]
                .into_iter()
                .map(|(arch, variant): (&str, Option<String>)| Image {
                    layers: vec![base.clone(), www.clone()],
                    architecture: arch.into(),
                    variant,
                    cmd: vec![
                        "/bin/httpd".into(),
                        "-f".into(),
                        "-p".into(),
                        "8080".into(),
                        "-h".into(),
                        "/www".into(),
                    ],
                })
                .collect();
            let (digest, _) = Registry::new(&registry)
                .push_index(&repo, &tag, &images)
                .await?;
            println!("pushed {registry}/{repo}:{tag} ({digest})");
        }
        Command::Simulate {
            namespace,
            role,
            count,
        } => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the cluster")?;
            let devices: Api<Device> = Api::namespaced(client.clone(), &namespace);
            let labels: BTreeMap<String, String> = [("role".to_string(), role.clone())].into();
            // The examples' devices come online first, then more of their kind join.
            for existing in devices
                .list(&ListParams::default().labels(&format!("role={role}")))
                .await?
            {
                if existing
                    .status
                    .as_ref()
                    .and_then(|s| s.architecture)
                    .is_none()
                {
                    report_online(
                        &devices,
                        existing.metadata.name.as_deref().unwrap_or_default(),
                        "amd64",
                    )
                    .await?;
                }
            }
            create_devices(&devices, "kiosk-sim", count, &labels, &["amd64", "arm64"]).await?;
            // A revision fails on every device when its image is tagged `broken`.
            let revisions: Api<FleetRevision> = Api::namespaced(client, &namespace);
            let broken: Arc<Mutex<Vec<String>>> = Arc::default();
            let watch_broken = broken.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(list) = revisions.list(&ListParams::default()).await {
                        let names = list
                            .items
                            .iter()
                            .filter(|r| {
                                r.spec
                                    .architectures
                                    .iter()
                                    .flat_map(|a| &a.images)
                                    .any(|i| i.image.ends_with(":broken"))
                            })
                            .filter_map(|r| r.metadata.name.clone())
                            .collect();
                        *watch_broken.lock().unwrap_or_else(|e| e.into_inner()) = names;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            });
            let fails = move |_: &str, revision: &str| {
                broken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|b| b == revision)
            };
            let behaviour = Behaviour {
                fails: Arc::new(fails),
                polls_to_finish: 12,
            };
            simulate(devices, behaviour, Arc::default()).await?;
        }
    }
    Ok(())
}
