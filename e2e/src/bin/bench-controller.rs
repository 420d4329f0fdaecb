//! The controller benchmark (`e2e/bench/controller`): at each size (10,000 and 100,000 Devices
//! in one Fleet by default) on the test apiserver, one rollout with `maxUnavailable: 100%`
//! against a plain loop of the same server-side-apply patches from one client at the same
//! concurrency; then a burst of device status events (devices reporting they run the revision),
//! and the controller's CPU time per event: the same at both sizes means a device event costs
//! what it changes, not what the fleet holds.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgevisor_crds::Device;
use edgevisor_e2e::Env;
use edgevisor_e2e::gateway_role::report_online;
use edgevisor_e2e::measure::{
    apiserver_writes, apply_bench_fleet, bench_controller, cpu_seconds, metric, rss_bytes,
    size_label,
};
use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Measure how fast and how cheaply the controller rolls a Fleet out, and what a device event
/// costs it, at each fleet size.
#[derive(Parser)]
struct Args {
    /// Devices in the fleet: one run per size, each in its own namespace.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000])]
    devices: Vec<usize>,
    /// Parallel writes, for the plain loop and the controller alike.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Device status events sent after each rollout.
    #[arg(long, default_value_t = 2_000)]
    events: usize,
}

/// Whether all `n` devices target `revision`, read in pages.
async fn all_targeted(api: &Api<Device>, revision: &str, n: usize) -> anyhow::Result<bool> {
    let mut count = 0;
    let mut params = ListParams::default().limit(5_000);
    loop {
        let page = api.list(&params).await?;
        count += page
            .items
            .iter()
            .filter(|d| d.spec.revision.as_deref() == Some(revision))
            .count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(count == n),
        }
    }
}

/// What one size measured.
struct Figures {
    rollout: f64,
    raw: f64,
    writes: f64,
    rss: u64,
    /// Controller CPU seconds per device status event.
    event_cpu: f64,
    /// What the apiserver's resident memory grew by while the devices were created.
    apiserver_growth: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = Env::get();
    let client: Client = env.client().await?;
    let mut by_size = BTreeMap::new();
    for &n in &args.devices {
        let f = one_size(env, &client, n, &args).await?;
        let l = size_label(n);
        println!("bench: rollout_seconds_{l} {:.2} s", f.rollout);
        println!("bench: raw_patch_seconds_{l} {:.2} s", f.raw);
        println!(
            "bench: rollout_speed_ratio_{l} {:.2} ratio",
            f.raw / f.rollout
        );
        println!(
            "bench: controller_rss_bytes_per_device_{l} {:.0} bytes",
            f.rss as f64 / n as f64
        );
        println!(
            "bench: apiserver_writes_per_device_{l} {:.3} writes",
            f.writes / n as f64
        );
        println!(
            "bench: device_event_cpu_microseconds_{l} {:.1} us",
            f.event_cpu * 1e6
        );
        println!(
            "bench: apiserver_rss_bytes_per_device_{l} {:.0} bytes",
            f.apiserver_growth as f64 / n as f64
        );
        by_size.insert(n, f);
    }
    let (Some((&small, s)), Some((&large, l))) =
        (by_size.first_key_value(), by_size.last_key_value())
    else {
        return Ok(());
    };
    if large > small {
        println!(
            "bench: device_event_cost_ratio_{}_over_{} {:.2} ratio",
            size_label(large),
            size_label(small),
            l.event_cpu / s.event_cpu
        );
    }
    Ok(())
}

async fn one_size(env: &Env, client: &Client, n: usize, args: &Args) -> anyhow::Result<Figures> {
    let ns = env.namespace(&format!("bench-{}", size_label(n)));
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..n).map(|i| format!("dev-{i:06}")).collect();
    let apiserver = apiserver_pid(env)?;
    let rss_before = rss_bytes(apiserver)?;
    create_devices(&devices, &names).await?;
    let apiserver_growth = rss_bytes(apiserver)? as i64 - rss_before as i64;
    let raw = baseline(&devices, &names, args.concurrency).await?;
    let (controller, image) = bench_controller(env, &ns, "bench").await?;
    let (rollout, writes, rss, revision) =
        controller_rollout(env, client, &ns, &devices, n, &controller, &image).await?;
    let event_cpu = event_cost(
        client,
        &ns,
        &devices,
        &names[..args.events.min(n)],
        &revision,
        &controller,
        args.concurrency,
    )
    .await?;
    drop(controller);
    edgevisor_e2e::measure::delete_devices(env, &devices, &ns).await;
    Ok(Figures {
        rollout,
        raw,
        writes,
        rss,
        event_cpu,
        apiserver_growth,
    })
}

/// The environment's kube-apiserver, from the pid file `e2e/env` keeps beside the kubeconfig.
fn apiserver_pid(env: &Env) -> anyhow::Result<u32> {
    let dir = env
        .kubeconfig
        .parent()
        .context("a kubeconfig in a directory")?;
    let text = std::fs::read_to_string(dir.join("kube-apiserver.pid"))?;
    Ok(text.trim().parse()?)
}

/// The fleet's Devices, online, as the gateway would have them.
async fn create_devices(devices: &Api<Device>, names: &[String]) -> anyhow::Result<()> {
    let labels: BTreeMap<String, String> = [("role".to_string(), "bench".to_string())].into();
    eprintln!("# creating {} devices", names.len());
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let (devices, labels) = (devices.clone(), labels.clone());
            async move {
                let body = json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device", "metadata": {"name": name, "labels": labels}, "spec": {}});
                devices.patch(&name, &PatchParams::apply("bench-setup"), &Patch::Apply(body)).await?;
                report_online(&devices, &name, "amd64").await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    eprintln!("# created in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Seconds the same patch the controller makes takes in a plain loop.
async fn baseline(
    devices: &Api<Device>,
    names: &[String],
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let at = k8s_openapi::jiff::Timestamp::now().to_string();
    let results: Vec<kube::Result<Device>> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let (devices, at) = (devices.clone(), at.clone());
            async move {
                let body = json!({"apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                    "metadata": {"name": name, "annotations": {"edgevisor.dev/targeted-at": at}},
                    "spec": {"revision": "baseline-0000000000"}});
                devices
                    .patch(
                        &name,
                        &PatchParams::apply("edgevisor-controller").force(),
                        &Patch::Apply(body),
                    )
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<kube::Result<Vec<Device>>>()?;
    Ok(started.elapsed().as_secs_f64())
}

/// The controller, as the chart's ServiceAccount, rolls the fleet out: (seconds, apiserver
/// writes, its resident memory, the revision).
async fn controller_rollout(
    env: &Env,
    client: &Client,
    ns: &str,
    devices: &Api<Device>,
    n: usize,
    controller: &edgevisor_e2e::controller::Controller,
    image: &str,
) -> anyhow::Result<(f64, f64, u64, String)> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = apiserver_writes(env).await?;
    let fleets: Api<edgevisor_crds::Fleet> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let revision = apply_bench_fleet(&fleets, "bench", image, || controller.log_tail()).await?;
    // Watch the controller's own count of target writes (cheap), not every Device (a list
    // would load the apiserver the baseline did not have to share); then check them once.
    loop {
        if target_writes(controller).await? >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the rollout did not finish:\n{}", controller.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rollout = started.elapsed().as_secs_f64();
    if !all_targeted(devices, &revision, n).await? {
        bail!("the controller counted its writes but not every device has the revision");
    }
    // Let the status writes that follow the targets land before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = apiserver_writes(env).await? - writes_before;
    Ok((rollout, writes, rss_bytes(controller.pid())?, revision))
}

async fn target_writes(
    controller: &edgevisor_e2e::controller::Controller,
) -> anyhow::Result<usize> {
    let n = metric(&controller.metrics, "edgevisor_device_target_writes_total").await?;
    Ok(n.unwrap_or(0.0) as usize)
}

/// `names` report they run `revision`, ready: the controller's CPU seconds per event, counted
/// from the first report until the Fleet's status shows them all.
async fn event_cost(
    client: &Client,
    ns: &str,
    devices: &Api<Device>,
    names: &[String],
    revision: &str,
    controller: &edgevisor_e2e::controller::Controller,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let fleets: Api<edgevisor_crds::Fleet> = Api::namespaced(client.clone(), ns);
    // Settled: nothing left from the rollout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cpu_seconds(controller.pid())?;
    let started = Instant::now();
    let results: Vec<kube::Result<Device>> = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let devices = devices.clone();
            let status = json!({
                "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Device",
                "status": {"architecture": "amd64", "currentRevision": revision, "conditions": [
                    {"type": "Online", "status": "True", "reason": "Heartbeat", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "True", "reason": "AtGoal", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                ]}
            });
            async move {
                devices
                    .patch_status(&name, &PatchParams::apply("e2e-gateway").force(), &Patch::Apply(status))
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<kube::Result<Vec<Device>>>()?;
    loop {
        let updated = fleets
            .get("bench")
            .await?
            .status
            .map_or(0, |s| usize::try_from(s.updated).unwrap_or(0));
        if updated >= names.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the fleet never counted {} updated devices:\n{}",
                names.len(),
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spent = cpu_seconds(controller.pid())? - before;
    Ok(spent / names.len() as f64)
}
