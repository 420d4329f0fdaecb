//! The whole story with real devices (see `edgevisor_e2e::story`, which `make demo` tells too):
//! five devices, each a real runtime and a real agent in a network namespace of its own,
//! enroll through the real gateway, get a Fleet v1, a canary v2 that waits to be resumed, a
//! broken v3 the canary rolls back by itself and that aborts the rollout, a revocation, and a
//! one-layer change whose bytes are measured. Then every query of the chart's Grafana dashboard
//! returns data from the environment's Prometheus, which scraped the pods during the story.
//!
//! Prints `bench: one_layer_bytes_ratio …` (read by `e2e/bench/fleet`) and the canary's
//! memory after it all, `bench: device_rss_after_updates_bytes …` (read by `e2e/bench/device`). Needs root (network
//! namespaces, runc); skips without it.
use edgevisor_e2e::Env;
use edgevisor_e2e::story::{self, MAX_ONE_LAYER_RATIO, StoryOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_real_devices_enroll_roll_out_fail_a_canary_get_revoked_and_fetch_one_layer() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: real devices need root (network namespaces, runc)");
        return;
    }
    let env = Env::get();
    let ns = env.namespace("story");
    // Subnet 21 is the story test's (see netns.rs); the token Secret is its own (listed in
    // release::TOKEN_SECRETS), so tests that run at the same time do not replace each other's.
    let mut options = StoryOptions::new(env, &ns, "evstory", 21);
    // e2e/bench/device lets the devices rest before their memory is read.
    if let Some(s) = std::env::var("EDGEVISOR_STORY_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        options.idle = std::time::Duration::from_secs(s);
    }
    let started = std::time::SystemTime::now();
    let summary = match story::run(env, &options).await {
        Ok(summary) => summary,
        Err(e) => panic!("{e:#}"),
    };

    println!("bench: one_layer_bytes_ratio {:.4} ratio", summary.ratio);
    println!(
        "bench: one_layer_downloaded_bytes {} bytes",
        summary.downloaded_max
    );
    println!(
        "bench: one_layer_changed_layer_bytes {} bytes",
        summary.layer_bytes
    );
    let (runtime, agent) = summary.canary_rss;
    println!(
        "bench: device_rss_after_updates_bytes {} bytes",
        runtime + agent
    );
    println!("bench: device_runtime_rss_after_updates_bytes {runtime} bytes");
    println!("bench: device_agent_rss_after_updates_bytes {agent} bytes");
    eprintln!("==> the story took {:.1}s", summary.elapsed.as_secs_f64());

    assert_eq!(summary.devices.len(), story::DEVICES);
    assert_eq!(summary.one_layer.len(), story::DEVICES - 1);
    assert_ne!(summary.canary, summary.revoked);
    assert_eq!(summary.revoked_status, 403);
    assert!(
        summary.ratio <= MAX_ONE_LAYER_RATIO,
        "a device downloaded {:.4}× the changed layer",
        summary.ratio
    );

    // The environment's Prometheus scraped the controller and the gateway pods all along: every
    // query of the chart's dashboard, for this fleet, has data.
    let panels = edgevisor_e2e::dashboard::check(env, &ns, story::FLEET, started)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    for p in &panels {
        eprintln!("dashboard: {:>3} series  {}: {}", p.series, p.panel, p.expr);
    }
}
