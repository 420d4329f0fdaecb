//! The controller benchmark (`e2e/bench/controller`): 10,000 Devices in one Fleet on the test
//! apiserver, one rollout with `maxUnavailable: 100%`, against a plain loop of the same
//! server-side-apply patches from one client at the same concurrency.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use edgevisor_crds::Device;
use edgevisor_e2e::Env;
use edgevisor_e2e::gateway_role::report_online;
use edgevisor_e2e::measure::{apiserver_writes, apply_bench_fleet, bench_controller, rss_bytes};
use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Measure how fast and how cheaply the controller rolls a Fleet out.
#[derive(Parser)]
struct Args {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Parallel writes, for the plain loop and the controller alike.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

async fn all_targeted(api: &Api<Device>, revision: &str, n: usize) -> anyhow::Result<bool> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|d| d.spec.revision.as_deref() == Some(revision))
        .count()
        == n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = Env::get();
    let client: Client = env.client().await?;
    let ns = env.namespace("bench");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..args.devices).map(|i| format!("dev-{i:05}")).collect();
    create_devices(&devices, &names).await?;
    let raw = baseline(&devices, &names, args.concurrency).await?;
    let (rollout, writes, rss) =
        controller_rollout(env, &client, &ns, &devices, args.devices).await?;

    println!("bench: rollout_seconds {rollout:.2} s");
    println!("bench: raw_patch_seconds {raw:.2} s");
    println!("bench: rollout_speed_ratio {:.2} ratio", raw / rollout);
    println!(
        "bench: controller_rss_bytes_per_device {:.0} bytes",
        rss as f64 / args.devices as f64
    );
    println!(
        "bench: apiserver_writes_per_device {:.3} writes",
        writes / args.devices as f64
    );
    Ok(())
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
/// writes, its resident memory).
async fn controller_rollout(
    env: &Env,
    client: &Client,
    ns: &str,
    devices: &Api<Device>,
    n: usize,
) -> anyhow::Result<(f64, f64, u64)> {
    let (controller, image) = bench_controller(env, ns, "bench").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let writes_before = apiserver_writes(env).await?;
    let fleets: Api<edgevisor_crds::Fleet> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let revision = apply_bench_fleet(&fleets, "bench", &image, || controller.log_tail()).await?;
    // Watch the controller's own count of target writes (cheap), not 10,000 Devices (a list
    // would load the apiserver the baseline did not have to share); then check them once.
    let writes_metric = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("edgevisor_device_target_writes_total "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    loop {
        let text = reqwest::get(format!("http://{}/metrics", controller.metrics))
            .await?
            .text()
            .await?;
        if writes_metric(&text) >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
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
    Ok((rollout, writes, rss_bytes(controller.pid())?))
}
