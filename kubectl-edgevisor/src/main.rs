//! `kubectl-edgevisor`: on the PATH, `kubectl edgevisor …`. Thin: parse flags, read the
//! objects, call [`kubectl_edgevisor::verbs`] or [`kubectl_edgevisor::show`], write the patch or
//! print. Exit status: 0 done, 1 failed (or an error), 2 still in progress.
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use edgevisor_crds::{Device, Fleet, FleetRevision};
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use kubectl_edgevisor::show::{self, Outcome};
use kubectl_edgevisor::verbs;

/// The field manager of the plugin's patches, so `managedFields` says who paused or aborted.
const FIELD_MANAGER: &str = "kubectl-edgevisor";

#[derive(Parser)]
#[command(
    name = "kubectl edgevisor",
    about = "Watch and drive edgevisor Fleet rollouts; read Devices",
    long_about = "Watch and drive edgevisor Fleet rollouts; read Devices.\n\n\
        Every verb patches the Fleet's spec (paused, resume, abort, retry, rollbackTo), as \
        GitOps or kubectl patch could: the controller does the rest.",
    version
)]
struct Cli {
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A Fleet's rollout: its status, and the verbs that drive it.
    Rollout {
        #[command(subcommand)]
        verb: Rollout,
    },
    /// List resources.
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Show one resource in detail.
    Describe {
        #[command(subcommand)]
        what: Describe,
    },
}

#[derive(Subcommand)]
enum Rollout {
    /// Show the rollout: step, counts, devices in flight and failed. Exits 0 when complete,
    /// 1 when aborted or stalled, 2 when still in progress.
    Status {
        fleet: String,
        /// Watch until the rollout completes or fails.
        #[arg(short, long)]
        watch: bool,
        /// With --watch: give up after this long (e.g. 90s, 10m); 0 waits forever.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Hold the whole fleet where it is (spec.paused).
    Pause { fleet: String },
    /// Let a held fleet move again.
    Resume { fleet: String },
    /// End the current step's pause (timed or until resumed); --full skips every step left.
    Promote {
        fleet: String,
        #[arg(long)]
        full: bool,
    },
    /// Stop the rollout now; with autoRollback its devices go back to the stable revision.
    Abort { fleet: String },
    /// Run an aborted revision again from step 0, forgetting the aborted try's failures.
    Retry { fleet: String },
    /// Roll back to the previous revision, or to revision N (see `history`).
    Undo {
        fleet: String,
        #[arg(long = "to-revision")]
        to_revision: Option<i64>,
    },
    /// The fleet's retained revisions, newest first.
    History { fleet: String },
}

#[derive(Subcommand)]
enum Get {
    /// Devices: architecture, target, running revision, update, online.
    Devices {
        /// A label selector, as kubectl -l.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
}

#[derive(Subcommand)]
enum Describe {
    /// A Device: target, what it runs, its update or last failure and why, containers, history.
    Device {
        name: String,
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Yaml,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 10m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

async fn client(cli: &Cli) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match Kubeconfig::read() {
        Ok(kubeconfig) => Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .context("reading the kubeconfig")?,
        Err(_) if cli.context.is_none() => Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
        Err(e) => return Err(e).context("reading the kubeconfig"),
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, namespace))
}

fn print(value: &impl serde::Serialize, output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
    }
    Ok(())
}

async fn fleet(api: &Api<Fleet>, name: &str, ns: &str) -> Result<Fleet> {
    api.get_opt(name)
        .await
        .with_context(|| format!("reading fleet {ns}/{name}"))?
        .with_context(|| format!("fleet {name} not found in namespace {ns}"))
}

async fn patch_fleet(api: &Api<Fleet>, name: &str, patch: serde_json::Value) -> Result<()> {
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(patch),
    )
    .await
    .with_context(|| format!("patching fleet {name}"))?;
    Ok(())
}

async fn fleet_devices(client: &Client, ns: &str, fleet: &Fleet) -> Result<Vec<Device>> {
    let api: Api<Device> = Api::namespaced(client.clone(), ns);
    let selector = show::selector_string(&fleet.spec.selector);
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing the devices of fleet {}", fleet.name_any()))?
        .items)
}

async fn status(
    client: &Client,
    ns: &str,
    name: &str,
    watch: bool,
    timeout: Duration,
) -> Result<ExitCode> {
    let api: Api<Fleet> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let f = fleet(&api, name, ns).await?;
        let view = show::rollout_view(&f, &fleet_devices(client, ns, &f).await?);
        if view != last {
            if watch && !last.is_empty() {
                println!();
            }
            print!("{view}");
            last = view;
        }
        match show::outcome(&f) {
            Outcome::Complete(_) => return Ok(ExitCode::SUCCESS),
            Outcome::Failed(_) => return Ok(ExitCode::from(1)),
            Outcome::InProgress(_) if !watch => return Ok(ExitCode::from(2)),
            Outcome::InProgress(_) => {}
        }
        if !timeout.is_zero() && started.elapsed() >= timeout {
            eprintln!("timed out after {timeout:?} waiting for fleet {name}");
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let (client, ns) = client(&cli).await?;
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), &ns);
    match cli.command {
        Command::Rollout { verb } => {
            let (name, patch) = match verb {
                Rollout::Status {
                    fleet: name,
                    watch,
                    timeout,
                } => return status(&client, &ns, &name, watch, timeout).await,
                Rollout::History { fleet: name } => {
                    let f = fleet(&fleets, &name, &ns).await?;
                    let revisions: Api<FleetRevision> = Api::namespaced(client.clone(), &ns);
                    let all = revisions.list(&ListParams::default()).await?.items;
                    let status = f.status.clone().unwrap_or_default();
                    println!("REVISION  NAME                      DEVICES  NOTE");
                    for r in verbs::history(&f, &all) {
                        let rname = r.name_any();
                        let mut notes = Vec::new();
                        if status.update_revision.as_deref() == Some(rname.as_str()) {
                            notes.push("update");
                        }
                        if status.stable_revision.as_deref() == Some(rname.as_str()) {
                            notes.push("stable");
                        }
                        if r.status.as_ref().is_some_and(|s| s.completed_at.is_some()) {
                            notes.push("reached the fleet");
                        }
                        println!(
                            "{:<9} {:<25} {:<8} {}",
                            r.spec.revision,
                            rname,
                            r.status.as_ref().map_or(0, |s| s.devices),
                            notes.join(", ")
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Rollout::Pause { fleet: name } => (name, verbs::pause(true)),
                Rollout::Resume { fleet: name } => (name, verbs::pause(false)),
                Rollout::Promote { fleet: name, full } => {
                    let f = fleet(&fleets, &name, &ns).await?;
                    (name, verbs::promote(&f, full).map_err(anyhow::Error::msg)?)
                }
                Rollout::Abort { fleet: name } => {
                    let f = fleet(&fleets, &name, &ns).await?;
                    (name, verbs::abort(&f).map_err(anyhow::Error::msg)?)
                }
                Rollout::Retry { fleet: name } => {
                    let f = fleet(&fleets, &name, &ns).await?;
                    (name, verbs::retry(&f).map_err(anyhow::Error::msg)?)
                }
                Rollout::Undo {
                    fleet: name,
                    to_revision,
                } => {
                    let f = fleet(&fleets, &name, &ns).await?;
                    let revisions: Api<FleetRevision> = Api::namespaced(client.clone(), &ns);
                    let all = revisions.list(&ListParams::default()).await?.items;
                    (
                        name,
                        verbs::undo(&f, &all, to_revision).map_err(anyhow::Error::msg)?,
                    )
                }
            };
            patch_fleet(&fleets, &name, patch.clone()).await?;
            println!("fleet/{name} patched: {}", patch["spec"]);
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            what: Get::Devices { selector, output },
        } => {
            let api: Api<Device> = Api::namespaced(client.clone(), &ns);
            let mut params = ListParams::default();
            if let Some(s) = &selector {
                params = params.labels(s);
            }
            let devices = api
                .list(&params)
                .await
                .with_context(|| format!("listing devices in {ns}"))?
                .items;
            match output {
                Some(o) => print(&devices, o)?,
                None if devices.is_empty() => eprintln!("no devices in namespace {ns}"),
                None => print!("{}", show::devices_table(&devices)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe {
            what: Describe::Device { name, output },
        } => {
            let api: Api<Device> = Api::namespaced(client.clone(), &ns);
            let Some(device) = api
                .get_opt(&name)
                .await
                .with_context(|| format!("reading device {ns}/{name}"))?
            else {
                bail!("device {name} not found in namespace {ns}");
            };
            match output {
                Some(o) => print(&device, o)?,
                None => print!("{}", show::describe_device(&device)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
