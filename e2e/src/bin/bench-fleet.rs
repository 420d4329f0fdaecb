//! The fleet benchmark (`e2e/bench/fleet`): thousands of simulated agents in one process speak
//! the real device protocol (HTTPS, enrollment, long-poll, status) to a real gateway, with the
//! real controller rolling one Fleet out to them on the test apiserver. Runtimes are simulated:
//! an agent that sees a new target reports DOWNLOADING, INPROGRESS, TESTING and DONE.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use edgevisor_crds::{Device, Fleet, UpdateStatus};
use edgevisor_e2e::Env;
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway};
use edgevisor_e2e::measure::{
    apiserver_writes, apiserver_writes_by_resource, apply_bench_fleet, bench_controller, metric,
    rss_bytes, size_label, wait_ready,
};
use edgevisor_e2e::process::free_port;
use edgevisor_protocol::gateway::{
    ContainerReport, DeviceReport, EnrollRequest, EnrollResponse, Target, UpdateReport,
};
use edgevisor_protocol::lifecycle::Status;
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

/// Measure a rollout to many devices through the gateway, what each open connection costs it,
/// and the idle cost of a fleet.
#[derive(Parser)]
struct Args {
    /// Simulated agents: one run per count, each with its own gateway and namespace.
    #[arg(long, value_delimiter = ',', default_values_t = [2_000, 20_000])]
    devices: Vec<usize>,
    /// Seconds of idle polling measured after the rollout (scaled to an hour). One liveness
    /// interval (60 s by default: each gateway replica's heard-from summary) and a little is
    /// the shortest honest window.
    #[arg(long, default_value_t = 90)]
    idle_seconds: u64,
    /// Seconds a long-poll waits.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
    /// The gateway's liveness interval (its default is 60 s).
    #[arg(long)]
    liveness_interval_seconds: Option<u64>,
}

#[derive(Clone)]
struct Agent {
    http: reqwest::Client,
    base: String,
    credential: String,
    namespace: String,
    name: String,
}

/// When each agent first saw each target: `<device>/<revision>` → when.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

impl Agent {
    fn url(&self, what: &str) -> String {
        format!(
            "{}/v1/devices/{}/{}/{what}",
            self.base, self.namespace, self.name
        )
    }

    async fn report(&self, report: &DeviceReport) -> anyhow::Result<()> {
        let r = self
            .http
            .put(self.url("status"))
            .bearer_auth(&self.credential)
            .json(report)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("status: {}", r.status());
        }
        Ok(())
    }

    /// Long-polls and simulates updates until `stop`.
    async fn run(self, stop: Arc<AtomicBool>, seen: Seen, wait: u64) {
        let mut known: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            let mut url = format!("{}?waitSeconds={wait}", self.url("target"));
            if let Some(k) = &known {
                url.push_str(&format!("&known={k}"));
            }
            let response = match self
                .http
                .get(url)
                .bearer_auth(&self.credential)
                .send()
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if response.status() != reqwest::StatusCode::OK {
                if !response.status().is_success() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            let Ok(target) = response.json::<Target>().await else {
                continue;
            };
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(format!("{}/{}", self.name, target.revision))
                .or_insert_with(Instant::now);
            let _ = self.simulate(&target, known.as_deref()).await;
            known = Some(target.revision);
        }
    }

    async fn simulate(&self, target: &Target, current: Option<&str>) -> anyhow::Result<()> {
        let total: u64 = target.blobs.iter().map(|b| b.size).sum();
        let step =
            |status, progress, downloaded, current: Option<&str>, running: bool| DeviceReport {
                current_revision: current.map(str::to_string),
                update: Some(UpdateReport {
                    revision: target.revision.clone(),
                    status,
                    progress,
                    message: Some(format!("{status:?}").to_lowercase()),
                    reason: None,
                    downloaded_bytes: downloaded,
                    total_bytes: total,
                }),
                containers: vec![ContainerReport {
                    name: "app".into(),
                    state: if running { "running" } else { "stopped" }.into(),
                    ready: running,
                    restarts: 0,
                    exit_code: None,
                    message: None,
                }],
            };
        let pause = || tokio::time::sleep(Duration::from_millis(150));
        self.report(&step(Status::Downloading, 0, 0, current, true))
            .await?;
        pause().await;
        self.report(&step(Status::Downloading, 50, total / 2, current, true))
            .await?;
        pause().await;
        self.report(&step(Status::Inprogress, 80, total, current, false))
            .await?;
        pause().await;
        self.report(&step(
            Status::Testing,
            90,
            total,
            Some(&target.revision),
            true,
        ))
        .await?;
        pause().await;
        self.report(&step(
            Status::Done,
            100,
            total,
            Some(&target.revision),
            true,
        ))
        .await
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let env = Env::get();
    let client: Client = env.client().await?;
    // One socket per agent in this process and one in the gateway's: neither may pass its
    // limit of open files (kept free: a thousand for everything else).
    let most = open_file_limit()?.saturating_sub(1_000) / 1_000 * 1_000;
    for &n in &args.devices {
        let n = if n > most {
            eprintln!(
                "# {n} agents need more open files than this machine allows one process \
                 (`ulimit -Hn`); measuring {most}"
            );
            most
        } else {
            n
        };
        one_size(env, &client, n, &args).await?;
    }
    Ok(())
}

/// This process's limit of open files (raised to its hard limit by `e2e/bench/fleet`).
fn open_file_limit() -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .context("no open-file limit in /proc/self/limits")
}

async fn one_size(env: &Env, client: &Client, n: usize, args: &Args) -> anyhow::Result<()> {
    let ns = env.namespace(&format!("fleetbench-{}", size_label(n)));
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let dir = env.repo.join(format!(
        "target/e2e-env/bench-fleet-{}-{n}",
        std::process::id()
    ));
    let (gw, tls, token) = start_gateway(env, client, &ns, &dir, args).await?;
    let rss_empty = rss_bytes(gw.pid())?;
    let agents = enroll(&gw, &tls, &token, n).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Default::default();
    let tasks: Vec<_> = agents
        .iter()
        .cloned()
        .map(|a| tokio::spawn(a.run(stop.clone(), seen.clone(), args.wait_seconds)))
        .collect();
    wait_online(&devices, n, &gw).await?;
    let (controller, image) = bench_controller(env, &ns, "fleetbench").await?;
    let r = rollout(
        env,
        client,
        &ns,
        &devices,
        &image,
        &controller,
        &gw,
        &seen,
        n,
    )
    .await?;
    // Every agent has its new target and waits on its next long-poll.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gateway_rss = rss_bytes(gw.pid())?;
    let connections = open_connections(&gw).await?;
    let idle_writes = idle(env, args.idle_seconds).await?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    drop((controller, gw));
    let (f, l) = (n as f64, size_label(n));
    println!("bench: fleet_rollout_seconds_{l} {:.2} s", r.seconds);
    println!("bench: gateway_rss_bytes_{l} {gateway_rss} bytes");
    println!("bench: gateway_open_connections_{l} {connections} connections");
    // Everything the gateway grew by since it served nobody, over its open connections: each
    // connection's TLS and HTTP state, its parked long-poll, and its device's cache entry.
    println!(
        "bench: gateway_rss_bytes_per_connection_{l} {:.0} bytes",
        gateway_rss.saturating_sub(rss_empty) as f64 / connections.max(1) as f64
    );
    println!(
        "bench: apiserver_writes_per_device_update_{l} {:.2} writes",
        r.writes / f
    );
    println!(
        "bench: apiserver_writes_per_device_idle_hour_{l} {:.2} writes",
        idle_writes / f * 3600.0 / args.idle_seconds as f64
    );
    println!(
        "bench: target_delay_p99_seconds_{l} {:.3} s",
        percentile(r.delays, 0.99)
    );
    edgevisor_e2e::measure::delete_devices(env, &devices, &ns).await;
    let _ = std::fs::remove_dir_all(&dir).context("removing the TLS dir");
    Ok(())
}

/// The gateway's open device connections, from its /metrics.
async fn open_connections(gw: &Gateway) -> anyhow::Result<u64> {
    metric(&gw.metrics, "edgevisor_gateway_connections")
        .await?
        .map(|v| v as u64)
        .context("no edgevisor_gateway_connections in the gateway's metrics")
}

/// A gateway for the namespace, with a bootstrap token of its own, ready to serve.
async fn start_gateway(
    env: &Env,
    client: &Client,
    ns: &str,
    dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<(Gateway, edgevisor_e2e::tls::TlsFiles, BootstrapToken)> {
    let tls = edgevisor_e2e::tls::make_server_cert(dir, &[])?;
    let mut token = BootstrapToken::new(ns)?;
    token.labels.insert("role".into(), "fleetbench".into());
    token.secret = "e2e-token-bench".into();
    gateway::apply_bootstrap_token(client, &token).await?;
    let listen = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut options = gateway::Options::new("bench", listen, &tls);
    options.namespace = Some(ns.to_owned());
    options.bootstrap_token_secrets = vec![token.secret.clone()];
    options.liveness_interval_seconds = args.liveness_interval_seconds;
    let mut gw = Gateway::start(env, &options)?;
    gw.wait_listening(Duration::from_secs(60))?;
    wait_ready(&gw.metrics, Duration::from_secs(60), || gw.log_tail()).await?;
    Ok((gw, tls, token))
}

/// Enrolls every agent, each with its own HTTPS connection.
async fn enroll(
    gw: &Gateway,
    tls: &edgevisor_e2e::tls::TlsFiles,
    token: &BootstrapToken,
    devices: usize,
) -> anyhow::Result<Vec<Agent>> {
    // Enroll every agent, each with its own HTTPS connection.
    eprintln!("# enrolling {devices} agents");
    let started = Instant::now();
    let ca = reqwest::Certificate::from_pem(&tls.ca_pem()?)?;
    let enrolled: Vec<anyhow::Result<Agent>> = futures::stream::iter(0..devices)
        .map(|i| {
            let (ca, base, token) = (ca.clone(), gw.url.clone(), token.token.clone());
            async move {
                let http = reqwest::Client::builder()
                    .tls_certs_only([ca])
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(90))
                    .build()?;
                let request = EnrollRequest {
                    name: format!("sim-{i:05}"),
                    architecture: "amd64".into(),
                    info: [("model".to_string(), "simulated".to_string())].into(),
                };
                let r = http
                    .post(format!("{base}/v1/enroll"))
                    .bearer_auth(&token)
                    .json(&request)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!(
                        "enrolling {}: {} {}",
                        request.name,
                        r.status(),
                        r.text().await?
                    );
                }
                let e: EnrollResponse = r.json().await?;
                Ok(Agent {
                    http,
                    base,
                    credential: e.credential,
                    namespace: e.namespace,
                    name: e.name,
                })
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let agents = enrolled
        .into_iter()
        .collect::<anyhow::Result<Vec<Agent>>>()?;
    eprintln!("# enrolled in {:.1}s", started.elapsed().as_secs_f64());

    Ok(agents)
}

/// Waits until every device is online: the gateway's liveness write has landed.
async fn wait_online(devices: &Api<Device>, n: usize, gw: &Gateway) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let online = devices
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Online" && c.status == "True")
                })
            })
            .count();
        if online == n {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {online} of {} devices came online:\n{}",
                n,
                gw.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    Ok(())
}

/// What one rollout to every agent cost.
struct Rollout {
    seconds: f64,
    writes: f64,
    /// Per device, from the watch seeing its new target to its agent seeing it.
    delays: Vec<f64>,
}

/// Rolls a fleet out to every agent, watching when each device's target changes.
#[allow(clippy::too_many_arguments)]
async fn rollout(
    env: &Env,
    client: &Client,
    ns: &str,
    devices: &Api<Device>,
    image: &str,
    controller: &edgevisor_e2e::controller::Controller,
    gw: &Gateway,
    seen: &Seen,
    n_devices: usize,
) -> anyhow::Result<Rollout> {
    let targeted: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let done: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let watch = {
        let (targeted, done) = (targeted.clone(), done.clone());
        tokio::spawn(
            watcher(devices.clone(), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .try_for_each(move |d: Device| {
                    let now = Instant::now();
                    if let Some(r) = &d.spec.revision {
                        targeted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(format!("{}/{r}", d.name_any()))
                            .or_insert(now);
                    }
                    if let Some(u) = d.status.as_ref().and_then(|s| s.update.as_ref())
                        && u.status == UpdateStatus::Done
                    {
                        done.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(format!("{}/{}", d.name_any(), u.revision))
                            .or_insert(now);
                    }
                    futures::future::ready(Ok(()))
                }),
        )
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let fleets: Api<Fleet> = Api::namespaced(client.clone(), ns);
    let writes_before = apiserver_writes(env).await?;
    let started = Instant::now();
    let revision =
        apply_bench_fleet(&fleets, "fleetbench", image, || controller.log_tail()).await?;
    let suffix = format!("/{revision}");
    loop {
        let n = done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|k| k.ends_with(&suffix))
            .count();
        if n >= n_devices {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "only {n} of {} devices reached DONE:\ngateway:\n{}\ncontroller:\n{}",
                n_devices,
                gw.log_tail(),
                controller.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rollout = started.elapsed().as_secs_f64();
    // Let the coalesced writes that follow DONE land before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let update_writes = apiserver_writes(env).await? - writes_before;

    // From the watch seeing a device's new target to its agent seeing it: the watch sees the
    // write a moment after it lands, so this slightly understates the delay.
    let delays: Vec<f64> = {
        let targeted = targeted.lock().unwrap_or_else(|e| e.into_inner());
        let seen_at = seen.lock().unwrap_or_else(|e| e.into_inner());
        targeted
            .iter()
            .filter(|(k, _)| k.ends_with(&suffix))
            .filter_map(|(k, t)| Some(seen_at.get(k)?.saturating_duration_since(*t).as_secs_f64()))
            .collect()
    };
    watch.abort();
    Ok(Rollout {
        seconds: rollout,
        writes: update_writes,
        delays,
    })
}

/// Apiserver writes while every agent polls and nothing changes.
async fn idle(env: &Env, seconds: u64) -> anyhow::Result<f64> {
    eprintln!("bench: idle for {} s with every agent polling", seconds);
    let idle_before = apiserver_writes_by_resource(env).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let idle_after = apiserver_writes_by_resource(env).await?;
    // What the cluster writes whatever the fleet (leader and node leases, node status, tokens
    // the kubelet requests for pods) is not a fleet's cost: the node of `e2e/env` and any
    // controller pods running elsewhere in it write those.
    const CLUSTER: &[&str] = &["leases", "nodes/status", "serviceaccounts/token"];
    let mut idle_writes = 0.0;
    for (resource, after) in &idle_after {
        let delta = after - idle_before.get(resource).copied().unwrap_or(0.0);
        if delta > 0.0 {
            let counted = !CLUSTER.contains(&resource.as_str());
            eprintln!(
                "# idle writes to {resource}: {delta}{}",
                if counted {
                    ""
                } else {
                    " (the cluster's, not counted)"
                }
            );
            if counted {
                idle_writes += delta;
            }
        }
    }

    Ok(idle_writes)
}
