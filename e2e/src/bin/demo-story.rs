//! `make demo`: the device story (`edgevisor_e2e::story`, the one `tests/device_story.rs`
//! checks) told to a user, with a live view of the Devices and the Fleet, and a summary.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edgevisor_e2e::Env;
use edgevisor_e2e::devices::require_tools;
use edgevisor_e2e::netns::remove_leftovers;
use edgevisor_e2e::story::{self, DEVICES, FLEET, Narrator, StoryOptions, Summary, indent};

/// The network prefix of the demo's LAN (namespaces `evdemo-<i>`, bridge `evdemobr`);
/// `e2e/env down` removes what a killed demo left of it.
const LAN_PREFIX: &str = "evdemo";
/// Where the devices keep their files while the demo runs.
const DEVICE_DIR: &str = "/tmp/edgevisor-demo";

/// Tell the edgevisor story with five real devices.
///
/// The chart is installed on the local node (Helm release `edgevisor-demo`, namespace
/// `edgevisor-demo-system`): the controller and the gateway run as pods of the image `make
/// image` builds. Five devices, each a real update runtime (containers run by runc) and a real
/// agent in a network namespace of its own, enroll through the gateway's Service with one
/// bootstrap token. The controller rolls a Fleet out to them: v1 to everyone (then the gateway's
/// pod is deleted and the agents reconnect to the new one); v2 to one canary first, then waits
/// until the rollout is resumed (`kubectl edgevisor rollout promote`, printed and run), and
/// finishes although the controller's pod is deleted mid-rollout; a broken v3 that the canary
/// rolls back by itself and that aborts the rollout. Then one device is revoked and the gateway
/// refuses it, and a one-layer change shows what a device downloads.
///
/// While it runs, a line is printed whenever a Device or the Fleet changes (like
/// `kubectl get -w`). At the end the devices (children of this program) are stopped; the
/// release, the Fleet, its FleetRevisions and the Devices stay in the cluster to be explored.
/// Needs root, the environment of `e2e/env up`, the image and the workspace built (`e2e/demo`
/// does all that: `make demo`). Safe to run again: the namespace's Fleets, FleetRevisions,
/// Devices and events are deleted first, and the release is upgraded.
#[derive(Parser)]
#[command(about, long_about)]
struct Cli {
    /// The namespace of the Devices and the Fleet (created if missing, emptied first).
    #[arg(long, default_value = "edgevisor-demo")]
    namespace: String,
    /// The devices' LAN is 10.213.<SUBNET>.0/24 (21, 31 and 32 are the tests').
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(50..=254))]
    subnet: u8,
    /// The Helm release of the controller and the gateway (in namespace `<RELEASE>-system`).
    #[arg(long, default_value = "edgevisor-demo", value_parser = release_name)]
    release: String,
    /// The bootstrap-token Secret (in the release's namespace) the devices enroll with.
    #[arg(long, default_value = "edgevisor-bootstrap-token")]
    token_secret: String,
    /// No live view: only the steps and the summary.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match demo(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A Helm release name short enough for the chart's object names (a DNS label).
fn release_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 30
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("{s:?}: lowercase letters, digits and '-', at most 30"))
}

async fn demo(cli: Cli) -> anyhow::Result<()> {
    require_tools()?;
    let env = Env::try_get()?;
    let n = Narrator::stdout();
    let env_dir = std::env::var_os("EDGEVISOR_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.repo.join("target/e2e-env"));
    let ns = cli.namespace.clone();

    n.step(&format!(
        "emptying namespace {ns} (Fleets, FleetRevisions, Devices and events of an earlier demo)"
    ));
    stop_leftovers()?;
    story::reset_namespace(env, &ns)
        .await
        .with_context(|| format!("emptying namespace {ns}"))?;

    let options = StoryOptions {
        namespace: ns.clone(),
        lan_prefix: LAN_PREFIX.to_string(),
        subnet: cli.subnet,
        release: cli.release.clone(),
        token_secret: cli.token_secret.clone(),
        work_dir: env_dir.join("demo"),
        device_dir: PathBuf::from(DEVICE_DIR),
        narrator: n.clone(),
        live_view: !cli.quiet,
        idle: std::time::Duration::ZERO,
    };
    // Ctrl-C, a closed terminal or `kill` stop the story: dropping it stops the devices (which
    // run in process groups of their own, out of the terminal's reach) and removes the LAN.
    let result = tokio::select! {
        result = story::run(env, &options) => result,
        signal = stop_signal() => Err(anyhow::anyhow!(
            "stopped by {signal}; the devices were stopped (the release stays installed)"
        )),
    };
    // Emptied by the devices as they stop, unless the story failed and they kept their logs.
    let _ = std::fs::remove_dir(DEVICE_DIR);
    let summary = result?;
    tell(env, &n, &summary);
    summary.check_ratio()
}

/// Waits for SIGINT, SIGTERM or SIGHUP; names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // Without handlers the default actions apply; nothing to wait for here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// What an earlier demo killed before it could clean up left running: whatever runs in its
/// network namespaces (runtimes, agents), which are then removed.
fn stop_leftovers() -> anyhow::Result<()> {
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    for line in String::from_utf8_lossy(&namespaces.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let ours = name
            .strip_prefix(LAN_PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            continue;
        }
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .context("running ip netns pids")?;
        for pid in String::from_utf8_lossy(&pids.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    remove_leftovers(LAN_PREFIX)
}

/// The summary: what happened at each step, the objects as kubectl shows them, and what to
/// try next.
fn tell(env: &Env, n: &Narrator, s: &Summary) {
    let r = &s.revisions;
    let ns = &s.namespace;
    let first = s.devices.first().map(String::as_str).unwrap_or("?");
    let last = s.devices.last().map(String::as_str).unwrap_or("?");
    let v1_bytes = s.v1_downloaded.values().max().copied().unwrap_or(0);
    let layer = s.layer_bytes;
    let fetched: Vec<u64> = s.one_layer.iter().map(|f| f.downloaded_bytes).collect();
    let same = fetched.windows(2).all(|w| w[0] == w[1]);
    let fetched = if same {
        format!(
            "each of the {} remaining devices downloaded {} bytes",
            s.one_layer.len(),
            fetched.first().copied().unwrap_or(0)
        )
    } else {
        format!(
            "the {} remaining devices downloaded {:?} bytes",
            s.one_layer.len(),
            fetched
        )
    };
    let failure = if s.canary_failure.reason.is_empty() {
        s.canary_failure.message.replace('\n', " ")
    } else {
        format!(
            "{}: {}",
            s.canary_failure.reason,
            s.canary_failure.message.replace('\n', " ")
        )
    };
    let steps = [
        format!(
            "Enrollment: {first} … {last} enrolled with one bootstrap token (Secret {token}) and \
             became Devices in {ns}; each got a credential of its own, the token was needed only \
             once.",
            token = s.token_secret,
        ),
        format!(
            "v1 ({v1}) went to all {DEVICES} at once; each device downloaded {v1_bytes} bytes: both \
             images, busybox and the app. Then the gateway's pod was deleted: the gateway keeps \
             no state, and every agent was back on its long-poll, with the new pod, within \
             seconds.",
            v1 = r.v1,
        ),
        format!(
            "v2 ({v2}) went to one canary first, {canary}; the rollout waited for a human until \
             `kubectl edgevisor rollout promote`, then the other {others} followed, 2 at a time. \
             Mid-rollout the controller's pod {old} was deleted; the new pod {new} took the Lease \
             and finished the rollout, and no device was retargeted twice.",
            v2 = r.v2,
            canary = s.canary,
            others = DEVICES - 1,
            old = s.controller_pods.0,
            new = s.controller_pods.1,
        ),
        format!(
            "v3 ({v3}) was broken: its app exits with code 3. The canary {canary} tried it, \
             reported ERROR ({failure}) and went back to v2 by itself. One failed device is the \
             fleet's failureThreshold: the rollout aborted, and no other device was ever sent v3. \
             The Fleet says: \"{abort}\".",
            v3 = r.v3,
            canary = s.canary,
            abort = s.abort_message,
        ),
        format!(
            "{revoked} was revoked (spec.revoked: true): the gateway answers its credential with \
             {code} Forbidden now, for its target and its status reports alike. It stays in the \
             fleet, but no rollout moves it or waits for it.",
            revoked = s.revoked,
            code = s.revoked_status,
        ),
        format!(
            "v4 ({v4}) changed one layer of the app image ({layer} bytes): {fetched} ({ratio:.3}× \
             the layer: that layer and the new {config}-byte image config), not the {v1_bytes} \
             bytes of a whole download.",
            v4 = r.v4,
            ratio = s.ratio,
            config = s.config_bytes,
        ),
    ];
    n.step("what happened");
    for (i, text) in steps.iter().enumerate() {
        n.say(&wrap(&format!("{}. {text}", i + 1), 92, "   "));
    }

    n.step("the Fleet and the Devices, as kubectl shows them");
    for args in [
        vec!["get", "fleet", FLEET, "-n", ns, "-o", "wide"],
        vec!["get", "devices", "-n", ns],
    ] {
        let run = env.kubectl(&args).run();
        n.raw(&format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        ));
    }

    n.raw(&format!(
        "\nThe story took {secs:.0}s. The devices ran as children of the demo and are stopped now;
the controller and the gateway still run as pods, and the Fleet, its FleetRevisions and the
Devices stay in the cluster (the Devices as they last reported) for you to explore:
{commands}
Logs: {controller}, {gateway}
Run it again with `make demo`; stop the cluster with `e2e/env down`.",
        secs = s.elapsed.as_secs_f64(),
        commands = indent(
            &format!(
                "eval \"$(e2e/env env)\"\n\
                 kubectl get devices -n {ns}\n\
                 kubectl describe fleet {FLEET} -n {ns}\n\
                 kubectl get fleetrevisions -n {ns}\n\
                 kubectl get events -n {ns} --sort-by=.lastTimestamp\n\
                 kubectl get pods -n {release_ns} -o wide\n\
                 kubectl get secret {secret} -n {release_ns} -o yaml",
                release_ns = s.token_secret.split('/').next().unwrap_or_default(),
                secret = s.token_secret.rsplit('/').next().unwrap_or_default(),
            ),
            "  "
        ),
        controller = s.controller_logs,
        gateway = s.gateway_logs,
    ));
}

/// `text` folded at `width` columns, lines after the first prefixed with `hang`.
fn wrap(text: &str, width: usize, hang: &str) -> String {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("a line");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(format!("{hang}{word}"));
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines.join("\n")
}
