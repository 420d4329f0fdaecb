//! What the benchmarks measure from outside a process: the apiserver's write count, a
//! process's resident memory, and a component's readiness.
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Env;

/// Write requests the apiserver has served, from its own /metrics.
pub async fn apiserver_writes(env: &Env) -> anyhow::Result<f64> {
    Ok(apiserver_writes_by_resource(env).await?.values().sum())
}

/// Write requests the apiserver has served by `resource[/subresource]`, from its /metrics.
pub async fn apiserver_writes_by_resource(
    env: &Env,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = env
        .kubectl(["get", "--raw", "/metrics"])
        .run()
        .expect_ok("apiserver metrics");
    let label = |line: &str, name: &str| {
        line.split(&format!("{name}=\"")[..])
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string()
    };
    let mut out = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let verb = label(line, "verb");
        if !["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&verb.as_str()) {
            continue;
        }
        let mut resource = label(line, "resource");
        let sub = label(line, "subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        if let Some(value) = line.rsplit(' ').next() {
            *out.entry(resource).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(out)
}

/// A process's resident set, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Deletes a benchmark's devices and then their namespace: the control plane alone has no
/// namespace controller to delete a namespace's contents, and the next size must not share the
/// apiserver with them. A failure is said, not fatal (`e2e/env down` clears them anyway).
pub async fn delete_devices(env: &Env, devices: &kube::Api<edgevisor_crds::Device>, ns: &str) {
    if let Err(e) = devices
        .delete_collection(&Default::default(), &Default::default())
        .await
    {
        eprintln!("# deleting the devices of {ns}: {e} (they stay; `e2e/env down` clears them)");
    }
    env.kubectl(["delete", "namespace", ns, "--wait=false"])
        .run();
}

/// A process's CPU time so far (user and system), in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15: 11 and 12 after the command.
    let hz = 100.0; // USER_HZ, the same on every Linux architecture this runs on
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// A benchmark size in metric names: `10k` for 10,000.
pub fn size_label(n: usize) -> String {
    if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The value of one series (`name` with its labels, as printed) at `http://{metrics}/metrics`;
/// `None` when the series is absent.
pub async fn metric(metrics: &str, series: &str) -> anyhow::Result<Option<f64>> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await?
        .text()
        .await?;
    let prefix = format!("{series} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok()))
}

/// Waits until `http://{metrics}/readyz` answers 200.
pub async fn wait_ready(
    metrics: &str,
    timeout: Duration,
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !reqwest::get(format!("http://{metrics}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("{metrics} never became ready:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// What the benchmarks roll out: a tiny amd64 image pushed to the test registry, and the
/// controller (as the chart's ServiceAccount) started on `namespace` and ready.
pub async fn bench_controller(
    env: &Env,
    namespace: &str,
    identity: &str,
) -> anyhow::Result<(crate::controller::Controller, String)> {
    let registry = crate::images::Registry::new(&env.registry);
    let repo = format!("bench/{namespace}/app");
    registry
        .push_index(
            &repo,
            "v1",
            &[crate::images::tiny_image("amd64", None, identity)?],
        )
        .await?;
    let controller = crate::controller::Controller::start(
        env,
        &crate::controller::Options {
            namespace,
            identity,
            lease_seconds: 15,
            args: &[],
        },
    )?;
    wait_ready(&controller.metrics, Duration::from_secs(120), || {
        controller.log_tail()
    })
    .await?;
    Ok((controller, format!("{}/{repo}:v1", env.registry)))
}

/// Applies the benchmark Fleet `bench` (every device labelled `role=<role>`, all at once) and
/// returns its update revision once the controller has rendered it.
pub async fn apply_bench_fleet(
    fleets: &kube::Api<edgevisor_crds::Fleet>,
    role: &str,
    image: &str,
    log: impl Fn() -> String,
) -> anyhow::Result<String> {
    use kube::api::{Patch, PatchParams};
    let fleet = serde_json::json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "bench"},
        "spec": {"selector": {"matchLabels": {"role": role}},
                 "template": {"containers": [{"name": "app", "image": image}]},
                 "strategy": {"maxUnavailable": "100%", "failureThreshold": "100%"}}
    });
    let started = Instant::now();
    fleets
        .patch(
            "bench",
            &PatchParams::apply("bench-user"),
            &Patch::Apply(fleet),
        )
        .await?;
    loop {
        if let Some(r) = fleets
            .get("bench")
            .await?
            .status
            .and_then(|s| s.update_revision)
        {
            return Ok(r);
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("no update revision:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
