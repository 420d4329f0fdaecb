//! The whole story with real devices, told by the end-to-end test (`tests/device_story.rs`) and
//! by the demo (`make demo`, the `demo-story` binary) alike: a real apiserver, registry,
//! controller and gateway, and five devices, each a real runtime (containers run by runc) and a
//! real agent in a network namespace of its own, reaching the gateway and the registry over a
//! bridge.
//!
//! 1. All five enroll with one bootstrap token and appear as Devices (amd64).
//! 2. Fleet v1 (two busybox containers) reaches every device: updates DONE, `Ready=True`,
//!    containers running (in `Device.status` and in the runtime itself).
//! 3. v2 with a canary step that waits to be resumed: one device goes first, alone; after the
//!    resume (`kubectl patch`), all five run v2.
//! 4. A broken v3 (a container exits 3): the canary tries it, rolls back to v2 by itself and
//!    reports `ERROR` with the cause; the rollout aborts and nobody else ever targets v3.
//! 5. A revoked device's credential is refused (403), and so is a device naming another.
//! 6. v4 changes one layer of one image: each device downloads that layer and no other.
//!
//! Every check fails [`run`] with an error that says what went wrong (and the state of the
//! Fleet and Devices, and the logs' tails, are printed on standard error). The figures a user
//! or a benchmark wants are in the [`Summary`]. Needs root (network namespaces, runc).
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use edgevisor_crds::{Device, Fleet, UpdateStatus};
use edgevisor_protocol::control::RunState;
use edgevisor_protocol::lifecycle::Status;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::Env;
use crate::controller::{self, Controller};
use crate::devices::{DeviceOptions, RealDevice, require_tools};
use crate::gateway::{self, BootstrapToken, Gateway, apply_bootstrap_token};
use crate::images::{AppImage, AppImageSpec, Registry, push_app_image};
use crate::netns::{Lan, TcpForward};
use crate::process::{free_port_on, log_tail};
use crate::tls::{TlsFiles, make_server_cert};

/// How many devices play.
pub const DEVICES: usize = 5;
/// The Fleet's name.
pub const FLEET: &str = "kiosks";
/// The label (`role=<ROLE>`) the bootstrap token puts on every Device, and the Fleet selects.
pub const ROLE: &str = "story-kiosk";
/// Size of the incompressible payload of the app layer: the layer a one-layer update moves.
pub const APP_PAYLOAD: usize = 256 * 1024;
/// Most bytes a device may download for a one-layer change, as a multiple of that layer.
pub const MAX_ONE_LAYER_RATIO: f64 = 1.02;
const APP_SCRIPT: &str = "#!/bin/sh\necho \"app $VERSION up\"\nwhile true; do sleep 1; done\n";
/// Longest wait for one phase.
const PHASE: Duration = Duration::from_secs(300);
const ENROLL: Duration = Duration::from_secs(90);

// === options and results ===

/// Where and how the story is told.
#[derive(Clone, Debug)]
pub struct StoryOptions {
    /// The namespace of the Devices and the Fleet (it must exist; see [`reset_namespace`]).
    pub namespace: String,
    /// The devices' LAN: names start with this prefix (see [`Lan`]), addresses are
    /// `10.213.<subnet>.0/24`.
    pub lan_prefix: String,
    pub subnet: u8,
    /// The bootstrap-token Secret (in the release namespace) the devices enroll with; one of
    /// [`crate::release::TOKEN_SECRETS`], which the chart lets the gateway read.
    pub token_secret: String,
    /// The controller's identity in its Lease.
    pub controller_identity: String,
    /// Certificates and other files of the cluster side (removed at the end unless it fails).
    pub work_dir: PathBuf,
    /// The devices' directories (`<device_dir>/<name>`; removed at the end unless it fails).
    /// Keep it short: a control socket's path must fit in 108 bytes.
    pub device_dir: PathBuf,
    /// Where the narration goes.
    pub narrator: Narrator,
    /// Print a line whenever a Device's or the Fleet's status changes (like `kubectl get -w`).
    pub live_view: bool,
    /// Write the controller's and the gateway's process ids here while they run (so that
    /// `e2e/env down` can stop what a killed demo left behind).
    pub pid_file: Option<PathBuf>,
}

impl StoryOptions {
    /// The story in `namespace`, on LAN `10.213.<subnet>.0/24`, with the test defaults: token
    /// Secret `e2e-token-story`, files under `target/e2e-env/story-<pid>` and
    /// `/tmp/edgevisor-e2e/story-<pid>`, narration on standard error, no live view.
    pub fn new(env: &Env, namespace: &str, lan_prefix: &str, subnet: u8) -> StoryOptions {
        let pid = std::process::id();
        StoryOptions {
            namespace: namespace.to_string(),
            lan_prefix: lan_prefix.to_string(),
            subnet,
            token_secret: "e2e-token-story".to_string(),
            controller_identity: "story".to_string(),
            work_dir: env.repo.join(format!("target/e2e-env/story-{pid}")),
            device_dir: PathBuf::from(format!("/tmp/edgevisor-e2e/story-{pid}")),
            narrator: Narrator::stderr(),
            live_view: false,
            pid_file: None,
        }
    }
}

/// The FleetRevision of each version of the Fleet.
#[derive(Clone, Debug, Default)]
pub struct Revisions {
    pub v1: String,
    pub v2: String,
    /// The broken one.
    pub v3: String,
    /// v2 with one layer changed.
    pub v4: String,
}

/// What one device fetched for the one-layer change.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub device: String,
    /// What it reported (`status.update.downloadedBytes`).
    pub downloaded_bytes: u64,
    /// What crossed the wire from the registry to it, HTTP included.
    pub from_registry: u64,
}

/// What happened, with the figures.
#[derive(Clone, Debug)]
pub struct Summary {
    pub namespace: String,
    pub fleet: String,
    /// The devices, in order.
    pub devices: Vec<String>,
    /// `<namespace>/<name>` of the bootstrap-token Secret they enrolled with.
    pub token_secret: String,
    pub revisions: Revisions,
    /// Bytes each device downloaded for v1 (the whole of both images).
    pub v1_downloaded: BTreeMap<String, u64>,
    /// The device that went first.
    pub canary: String,
    /// Why the canary's update to v3 failed, as it reported it.
    pub canary_failure: Failure,
    /// The Fleet's `Ready` message after the abort.
    pub abort_message: String,
    /// The Fleet's `RolloutAborted` event.
    pub abort_event: String,
    /// The revoked device, and what the gateway answered its credential afterwards.
    pub revoked: String,
    pub revoked_status: u16,
    /// The changed layer's and the new config's sizes.
    pub layer_bytes: u64,
    pub config_bytes: u64,
    /// Per remaining device, what the one-layer change cost.
    pub one_layer: Vec<Fetched>,
    /// The largest `downloadedBytes / layer_bytes`.
    pub ratio: f64,
    /// The largest `downloadedBytes`.
    pub downloaded_max: u64,
    /// How long each phase took.
    pub phases: Vec<(String, Duration)>,
    /// How long the whole story took.
    pub elapsed: Duration,
    /// The controller's and the gateway's logs.
    pub controller_log: PathBuf,
    pub gateway_log: PathBuf,
}

impl Summary {
    /// Fails when a device downloaded more than [`MAX_ONE_LAYER_RATIO`] times the changed layer.
    pub fn check_ratio(&self) -> anyhow::Result<()> {
        ensure!(
            self.ratio <= MAX_ONE_LAYER_RATIO,
            "a device downloaded {:.4}× the changed layer",
            self.ratio
        );
        Ok(())
    }
}

// === narration ===

/// Prints the story: headings, lines, and time-stamped events.
#[derive(Clone, Debug)]
pub struct Narrator {
    started: Instant,
    stdout: bool,
    bold: bool,
}

impl Narrator {
    /// On standard error, plain (tests: their standard output is for `bench:` lines).
    pub fn stderr() -> Narrator {
        Narrator {
            started: Instant::now(),
            stdout: false,
            bold: false,
        }
    }

    /// On standard output, headings in bold on a terminal (the demo).
    pub fn stdout() -> Narrator {
        Narrator {
            started: Instant::now(),
            stdout: true,
            bold: std::io::stdout().is_terminal(),
        }
    }

    /// Time since the narrator was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// A heading: `==> text`.
    pub fn step(&self, text: &str) {
        if self.bold {
            self.emit(&format!("\n\x1b[1m==> {text}\x1b[0m"));
        } else {
            self.emit(&format!("\n==> {text}"));
        }
    }

    /// Lines under a heading, indented.
    pub fn say(&self, text: &str) {
        self.emit(&indent(text, "    "));
    }

    /// A time-stamped line: `[ 12s] text`.
    pub fn event(&self, text: &str) {
        self.say(&format!("[{:3}s] {text}", self.started.elapsed().as_secs()));
    }

    /// Text as it is (tables).
    pub fn raw(&self, text: &str) {
        self.emit(text.trim_end());
    }

    fn emit(&self, text: &str) {
        // One write per call, so lines from the live view and the story do not mix.
        let line = format!("{text}\n");
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        } else {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// Every line of `text` prefixed with `prefix`.
pub fn indent(text: &str, prefix: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Short names of revisions (`v1`, …) for the live view.
#[derive(Clone, Debug, Default)]
struct Labels(Arc<Mutex<BTreeMap<String, String>>>);

impl Labels {
    fn set(&self, revision: &str, label: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(revision.to_string(), label.to_string());
    }

    fn of(&self, revision: &str) -> String {
        let labels = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match labels.get(revision) {
            Some(label) => label.clone(),
            None if revision.chars().count() > 12 => {
                format!("{}…", revision.chars().take(12).collect::<String>())
            }
            None => revision.to_string(),
        }
    }
}

/// The live view's line for a Device.
fn device_row(d: &Device, labels: &Labels) -> String {
    let status = d.status.as_ref();
    let arch = status
        .and_then(|s| s.architecture)
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let update = match update_of(d) {
        None => "-".to_string(),
        Some(u) => {
            let mut text = format!("{}: {}", labels.of(&u.revision), status_word(u.status));
            if !u.status.is_final() {
                text.push_str(&format!(" {}%", u.progress));
            }
            if u.status.is_failure()
                && let Some(reason) = &u.reason
            {
                text.push_str(&format!(" ({reason})"));
            }
            text
        }
    };
    let current = current(d)
        .map(|r| labels.of(r))
        .unwrap_or_else(|| "-".into());
    let target = target(d)
        .map(|r| labels.of(r))
        .unwrap_or_else(|| "-".into());
    let online = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Online"))
        .map(|c| {
            if c.status == "True" {
                "Online"
            } else {
                "Offline"
            }
        })
        .unwrap_or("-");
    let mut row = format!(
        "{:<7} {arch:<6} {update:<28} current {current:<3} target {target:<3} {online}",
        d.name_any()
    );
    if d.spec.revoked {
        row.push_str("  revoked");
    }
    row
}

/// The live view's line for the Fleet.
fn fleet_row(f: &Fleet, labels: &Labels) -> String {
    let Some(s) = f.status.as_ref() else {
        return format!("{} (no status yet)", f.name_any());
    };
    format!(
        "{} {:<3} step {:<7} updated {}/{}  updating {}  failed {}  {}",
        f.name_any(),
        s.update_revision
            .as_deref()
            .map(|r| labels.of(r))
            .unwrap_or_else(|| "-".into()),
        s.current_step.as_deref().unwrap_or("-"),
        s.updated,
        s.devices,
        s.updating,
        s.failed,
        ready_reason(f)
    )
}

fn status_word(status: UpdateStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status:?}"))
}

/// Watches Devices and Fleets of a namespace and prints a line when one's row changes; stops
/// when dropped.
struct LiveView {
    tasks: Vec<JoinHandle<()>>,
}

impl LiveView {
    fn start(client: &kube::Client, ns: &str, narrator: &Narrator, labels: &Labels) -> LiveView {
        let devices: Api<Device> = Api::namespaced(client.clone(), ns);
        let fleets: Api<Fleet> = Api::namespaced(client.clone(), ns);
        LiveView {
            tasks: vec![
                tokio::spawn(print_changes(
                    devices,
                    narrator.clone(),
                    labels.clone(),
                    device_row,
                )),
                tokio::spawn(print_changes(
                    fleets,
                    narrator.clone(),
                    labels.clone(),
                    fleet_row,
                )),
            ],
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn print_changes<K>(
    api: Api<K>,
    narrator: Narrator,
    labels: Labels,
    row: fn(&K, &Labels) -> String,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let line = row(&object, &labels);
                if shown.get(&object.name_any()) != Some(&line) {
                    narrator.event(&line);
                    shown.insert(object.name_any(), line);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                shown.remove(&object.name_any());
                narrator.event(&format!("{} deleted", object.name_any()));
            }
            _ => {}
        }
    }
}

// === what the story reads of Devices and Fleets ===

fn update_of(d: &Device) -> Option<&edgevisor_crds::device::UpdateProgress> {
    d.status.as_ref().and_then(|s| s.update.as_ref())
}

fn current(d: &Device) -> Option<&str> {
    d.status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
}

fn target(d: &Device) -> Option<&str> {
    d.spec.revision.as_deref()
}

/// The device runs `rev`, its update to it ended DONE, and both containers run.
fn done_on(d: &Device, rev: &str) -> bool {
    let update_done =
        update_of(d).is_some_and(|u| u.revision == rev && u.status == UpdateStatus::Done);
    let containers = d
        .status
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter(|c| c.state == "running")
                .map(|c| c.name.as_str())
                .collect::<BTreeSet<_>>()
        })
        .unwrap_or_default();
    current(d) == Some(rev) && update_done && containers == BTreeSet::from(["app", "side"])
}

/// Why a device's update failed, as it reported it.
#[derive(Clone, Debug, Default)]
pub struct Failure {
    /// `status.update.reason` (empty when only the history has the failure).
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reason.is_empty() {
            write!(f, "(history) message {:?}", self.message)
        } else {
            write!(f, "reason {:?}, message {:?}", self.reason, self.message)
        }
    }
}

/// The device's update to `rev` ended in ERROR: now, or in its history.
fn failed_on(d: &Device, rev: &str) -> Option<Failure> {
    if let Some(u) = update_of(d)
        && u.revision == rev
        && u.status == UpdateStatus::Error
    {
        return Some(Failure {
            reason: u.reason.clone().unwrap_or_default(),
            message: u.message.clone().unwrap_or_default(),
        });
    }
    d.status.as_ref().and_then(|s| {
        s.history
            .iter()
            .find(|h| h.revision == rev && h.status == UpdateStatus::Error)
            .map(|h| Failure {
                reason: String::new(),
                message: h.message.clone().unwrap_or_default(),
            })
    })
}

fn condition<'a>(
    fleet: &'a Fleet,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    fleet
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

fn ready_reason(fleet: &Fleet) -> String {
    condition(fleet, "Ready")
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

// === the fleet ===

fn template(app: &str, side: &str, version: &str, broken: bool) -> Value {
    let app_container = if broken {
        json!({"name": "app", "image": app, "restartPolicy": "Never",
               "command": ["/bin/sh", "-c", "echo \"app $VERSION: config missing\" >&2; exit 3"],
               "env": [{"name": "VERSION", "value": version}]})
    } else {
        json!({"name": "app", "image": app, "command": ["/bin/sh", "/app/run.sh"],
               "env": [{"name": "VERSION", "value": version}]})
    };
    json!({
        "containers": [
            app_container,
            {"name": "side", "image": side, "command": ["/bin/sh", "-c", "while true; do sleep 1; done"]}
        ],
        "goalTimeoutSeconds": 30,
        "testPeriodSeconds": 2
    })
}

fn fleet(template: &Value, canary_step: bool) -> Value {
    let mut strategy =
        json!({"maxUnavailable": DEVICES, "failureThreshold": 1, "autoRollback": true});
    if canary_step {
        strategy["maxUnavailable"] = json!(2);
        strategy["steps"] = json!([{"devices": 1, "pause": {"untilResumed": true}}]);
    }
    json!({
        "apiVersion": "edgevisor.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": FLEET},
        "spec": {
            "selector": {"matchLabels": {"role": ROLE}},
            "template": template,
            "strategy": strategy
        }
    })
}

/// The FleetRevision name the controller gives `template`.
fn revision_name(template: &Value) -> anyhow::Result<String> {
    let template = serde_json::from_value(template.clone()).context("a template")?;
    let hash = edgevisor_controller::render::template_hash(&template);
    edgevisor_controller::render::revision_name(FLEET, &hash).context("a revision name")
}

/// A GET or PUT to the gateway's device API with a bearer credential; the status code.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    credential: &str,
) -> anyhow::Result<u16> {
    let mut request = http.request(method.clone(), url).bearer_auth(credential);
    if method == reqwest::Method::PUT {
        request = request.json(&json!({"containers": []}));
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    Ok(response.status().as_u16())
}

/// Makes `namespace` ready for another run of the story: creates it if missing, deletes its
/// Fleets, FleetRevisions, Devices and events, and waits until they are gone.
pub async fn reset_namespace(env: &Env, namespace: &str) -> anyhow::Result<()> {
    let client = env.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))?;
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context(format!("creating namespace {namespace}")),
        }
    }
    let fleets: Api<Fleet> = Api::namespaced(client.clone(), namespace);
    let devices: Api<Device> = Api::namespaced(client.clone(), namespace);
    let revisions: Api<edgevisor_crds::FleetRevision> = Api::namespaced(client.clone(), namespace);
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), namespace);
    let (dp, lp) = (DeleteParams::default(), ListParams::default());
    fleets.delete_collection(&dp, &lp).await?;
    revisions.delete_collection(&dp, &lp).await?;
    devices.delete_collection(&dp, &lp).await?;
    events.delete_collection(&dp, &lp).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = fleets.list(&lp).await?.items.len()
            + revisions.list(&lp).await?.items.len()
            + devices.list(&lp).await?.items.len();
        if left == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{left} Fleets, FleetRevisions and Devices of {namespace} are still there a minute after deleting them"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// === the story's world ===

/// The images the Fleet's versions use.
struct Images {
    app_v1: AppImage,
    app_v2: AppImage,
    app_v4: AppImage,
    side: AppImage,
}

/// Everything the story runs; fields drop in order: devices first, the LAN last.
struct World {
    devices: Vec<RealDevice>,
    _live_view: Option<LiveView>,
    gateway: Gateway,
    gateway_options: gateway::Options,
    controller: Controller,
    forward: TcpForward,
    lan: Lan,
    env: &'static Env,
    options: StoryOptions,
    ns: String,
    n: Narrator,
    labels: Labels,
    devices_api: Api<Device>,
    fleets: Api<Fleet>,
    tls: TlsFiles,
    token: BootstrapToken,
    images: Images,
    /// Log files printed when the story fails.
    logs: Vec<(String, PathBuf)>,
    phases: Vec<(String, Duration)>,
    started: Instant,
}

/// One wait of the story, with its deadline.
struct Phase {
    what: String,
    started: Instant,
}

impl Phase {
    fn new(what: impl Into<String>) -> Phase {
        Phase {
            what: what.into(),
            started: Instant::now(),
        }
    }

    /// Sleeps a little, or fails if the phase took too long.
    async fn tick(&self, world: &World) -> anyhow::Result<()> {
        ensure!(
            self.started.elapsed() < PHASE,
            "timed out ({PHASE:?}) waiting for: {}\n{}",
            self.what,
            world.tables()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok(())
    }

    fn done(self, world: &mut World) {
        let took = self.started.elapsed();
        world
            .n
            .say(&format!("ok: {} ({:.1}s)", self.what, took.as_secs_f64()));
        world.phases.push((self.what, took));
    }
}

/// Runs the whole story in `options.namespace` (which must exist) and returns what happened.
/// The devices, the gateway and the controller are stopped at the end; the Kubernetes objects
/// stay.
pub async fn run(env: &'static Env, options: &StoryOptions) -> anyhow::Result<Summary> {
    require_tools()?;
    let mut world = World::start(env, options).await?;
    let result = world.play().await;
    if result.is_err() {
        world.dump();
    }
    world.stop(result.is_ok());
    result
}

impl World {
    /// The LAN, the registry forwarded to it, TLS, the chart, the bootstrap token, the
    /// controller, the gateway and the images.
    async fn start(env: &'static Env, options: &StoryOptions) -> anyhow::Result<World> {
        let n = options.narrator.clone();
        let ns = options.namespace.clone();
        let started = Instant::now();
        let client = env.client().await?;
        n.step(&format!(
            "installing the chart; starting the controller and the gateway as its ServiceAccounts, and a LAN for {DEVICES} devices"
        ));
        let lan =
            Lan::create(&options.lan_prefix, options.subnet, DEVICES).context("the device LAN")?;
        let registry_addr: SocketAddr = env
            .registry
            .to_socket_addrs()
            .context("the registry's address")?
            .next()
            .context("the registry does not resolve")?;
        let forward = TcpForward::start(SocketAddr::new(IpAddr::V4(lan.host()), 0), registry_addr)
            .context("forwarding the registry to the LAN")?;
        let tls = make_server_cert(&options.work_dir.join("tls"), &[IpAddr::V4(lan.host())])
            .context("certificates")?;
        crate::release::install_chart(env);
        let mut token = BootstrapToken::new(&ns)?;
        token.secret = options.token_secret.clone();
        token.labels.insert("role".into(), ROLE.into());
        apply_bootstrap_token(&client, &token)
            .await
            .context("the bootstrap token")?;

        let controller = Controller::start(
            env,
            &controller::Options {
                namespace: &ns,
                identity: &options.controller_identity,
                lease_seconds: 15,
                args: &[],
            },
        )
        .context("the controller")?;
        let listen = SocketAddr::new(
            IpAddr::V4(lan.host()),
            free_port_on(IpAddr::V4(lan.host())).context("a port")?,
        );
        let mut gateway_options = gateway::Options::new(&ns, listen, &tls);
        gateway_options.namespace = Some(ns.clone());
        gateway_options.bootstrap_token_secrets = vec![token.secret.clone()];
        gateway_options.device_registries =
            vec![(env.registry.clone(), format!("http://{}", forward.addr()))];
        gateway_options.status_coalesce_ms = Some(500);
        let gateway = Gateway::start(env, &gateway_options).context("the gateway")?;
        if let Some(pid_file) = &options.pid_file {
            std::fs::write(
                pid_file,
                format!("{}\n{}\n", controller.pid(), gateway.pid()),
            )
            .with_context(|| format!("writing {}", pid_file.display()))?;
        }

        let registry = Registry::new(&env.registry);
        let push = |name: &'static str, tag: &'static str, seed: u64, payload: usize| {
            let registry = &registry;
            let repo = format!("e2e/{ns}/{name}");
            async move {
                push_app_image(
                    registry,
                    &AppImageSpec {
                        repo: &repo,
                        tag,
                        architecture: "amd64",
                        script: APP_SCRIPT,
                        seed,
                        payload,
                    },
                )
                .await
                .with_context(|| format!("pushing {repo}:{tag}"))
            }
        };
        let images = Images {
            app_v1: push("app", "v1", 1, APP_PAYLOAD).await?,
            app_v2: push("app", "v2", 2, APP_PAYLOAD).await?,
            app_v4: push("app", "v4", 4, APP_PAYLOAD).await?,
            side: push("side", "v1", 100, 4096).await?,
        };
        ensure!(
            images.app_v2.base_layer_digest == images.app_v4.base_layer_digest,
            "app:v2 and app:v4 share their busybox layer"
        );
        ensure!(
            images.app_v2.app_layer_digest != images.app_v4.app_layer_digest,
            "app:v2 and app:v4 differ in their app layer"
        );
        n.say(&format!(
            "controller: as ServiceAccount {rns}/edgevisor-controller, watching namespace {ns}\n\
             gateway:    {} as ServiceAccount {rns}/{}\n\
             registry:   {}, reached by the devices at http://{}\n\
             images:     e2e/{ns}/app:v1, :v2, :v4 (busybox + a {} KiB app layer), e2e/{ns}/side:v1\n\
             ready in {:.1}s",
            gateway.url,
            gateway::SERVICE_ACCOUNT,
            env.registry,
            forward.addr(),
            APP_PAYLOAD / 1024,
            started.elapsed().as_secs_f64(),
            rns = crate::release::RELEASE_NAMESPACE,
        ));

        let labels = Labels::default();
        let live_view = options
            .live_view
            .then(|| LiveView::start(&client, &ns, &n, &labels));
        let logs = vec![
            ("controller".to_string(), controller.log.clone()),
            ("gateway".to_string(), gateway.log.clone()),
        ];
        Ok(World {
            devices: Vec::new(),
            _live_view: live_view,
            gateway,
            gateway_options,
            controller,
            forward,
            lan,
            env,
            options: options.clone(),
            devices_api: Api::namespaced(client.clone(), &ns),
            fleets: Api::namespaced(client, &ns),
            ns,
            n,
            labels,
            tls,
            token,
            images,
            logs,
            phases: Vec::new(),
            started,
        })
    }

    async fn all_devices(&self) -> BTreeMap<String, Device> {
        match self.devices_api.list(&ListParams::default()).await {
            Ok(list) => list.items.into_iter().map(|d| (d.name_any(), d)).collect(),
            Err(e) => {
                eprintln!("listing devices: {e}");
                BTreeMap::new()
            }
        }
    }

    async fn fleet(&self) -> Option<Fleet> {
        self.fleets.get_opt(FLEET).await.ok().flatten()
    }

    fn tables(&self) -> String {
        let get = |what: &str| {
            let run = self
                .env
                .kubectl(["get", what, "-n", &self.ns, "-o", "wide"])
                .run();
            format!("{}{}", run.stdout, run.stderr)
        };
        format!("{}\n{}", get("fleets"), get("devices"))
    }

    async fn apply(&self, fleet: Value) -> anyhow::Result<()> {
        self.fleets
            .patch(
                FLEET,
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(fleet),
            )
            .await
            .context("applying the fleet")?;
        Ok(())
    }

    /// `kubectl <args>` as the admin, said first.
    fn kubectl(&self, args: &[&str], what: &str) -> anyhow::Result<String> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(['{', ' ', '"']) {
                    format!("'{a}'")
                } else {
                    a.to_string()
                }
            })
            .collect();
        self.n.say(&format!("$ kubectl {}", shown.join(" ")));
        self.env.kubectl(args).run().checked(what)
    }

    /// A new revision: its name, known to the live view as `label`.
    fn revision(&self, template: &Value, label: &str) -> anyhow::Result<String> {
        let name = revision_name(template)?;
        self.labels.set(&name, label);
        Ok(name)
    }

    /// Prints the state and the logs' tails, and keeps the devices' directories.
    fn dump(&mut self) {
        eprintln!("==== state at failure ====\n{}", self.tables());
        for (name, path) in &self.logs {
            eprintln!(
                "==== {name} ({}) ====\n{}",
                path.display(),
                log_tail(path, 40)
            );
        }
        for device in &mut self.devices {
            device.keep_dir();
        }
    }

    /// Stops the devices, the gateway and the controller; on success, removes their files.
    fn stop(mut self, success: bool) {
        self._live_view = None;
        for mut device in std::mem::take(&mut self.devices) {
            device.shutdown();
        }
        if let Err(e) = self.gateway.stop() {
            eprintln!("stopping the gateway: {e:#}");
        }
        if let Err(e) = self.controller.stop() {
            eprintln!("stopping the controller: {e:#}");
        }
        if let Some(pid_file) = &self.options.pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
        if success {
            let _ = std::fs::remove_dir_all(&self.options.device_dir);
            let _ = std::fs::remove_dir_all(&self.options.work_dir);
        }
    }

    async fn play(&mut self) -> anyhow::Result<Summary> {
        let devices = self.enroll().await?;
        let side_ref = self.images.side.reference.clone();
        let t1 = template(&self.images.app_v1.reference, &side_ref, "v1", false);
        let t2 = template(&self.images.app_v2.reference, &side_ref, "v2", false);
        let t3 = template(&self.images.app_v2.reference, &side_ref, "v3", true);
        let t4 = template(&self.images.app_v4.reference, &side_ref, "v2", false);
        let revisions = Revisions {
            v1: self.revision(&t1, "v1")?,
            v2: self.revision(&t2, "v2")?,
            v3: self.revision(&t3, "v3")?,
            v4: self.revision(&t4, "v4")?,
        };
        let v1_downloaded = self.roll_out_v1(&t1, &revisions.v1).await?;
        self.restart_gateway().await?;
        let canary = self.canary_v2(&t2, &revisions).await?;
        let (canary_failure, abort_message, abort_event) =
            self.broken_v3(&t3, &revisions, &canary).await?;
        let (revoked, revoked_status) = self.revoke(&revisions, &canary).await?;
        let (one_layer, ratio, downloaded_max) =
            self.one_layer(&t4, &revisions.v4, &revoked).await?;
        Ok(Summary {
            namespace: self.ns.clone(),
            fleet: FLEET.to_string(),
            devices,
            token_secret: format!("{}/{}", self.token.namespace, self.token.secret),
            revisions,
            v1_downloaded,
            canary,
            canary_failure,
            abort_message,
            abort_event,
            revoked,
            revoked_status,
            layer_bytes: self.images.app_v4.app_layer_size,
            config_bytes: self.images.app_v4.config_size,
            one_layer,
            ratio,
            downloaded_max,
            phases: self.phases.clone(),
            elapsed: self.started.elapsed(),
            controller_log: self.controller.log.clone(),
            gateway_log: self.gateway.log.clone(),
        })
    }

    /// Step 1: Five devices enroll with one token. Returns their names.
    async fn enroll(&mut self) -> anyhow::Result<Vec<String>> {
        let n = self.n.clone();
        n.step(&format!(
            "enrolling {DEVICES} devices with one bootstrap token"
        ));
        n.say(&format!(
            "Secret {}/{} holds the token; it enrolls devices into namespace {} with the label role={ROLE}.\n\
             Each device is a runtime (containers run by runc) and an agent, in a network namespace of\n\
             its own ({}-0 … {}-{}, 10.213.{}.10 …); only its agent holds the token.",
            self.token.namespace,
            self.token.secret,
            self.ns,
            self.lan.prefix(),
            self.lan.prefix(),
            DEVICES - 1,
            self.options.subnet,
        ));
        let phase = Phase::new(format!(
            "{DEVICES} devices enrolled and reported their architecture"
        ));
        for i in 0..DEVICES {
            let name = format!("edge-{i}");
            let mut o = DeviceOptions::new(
                &name,
                self.lan.netns(i),
                &self.options.device_dir,
                &self.gateway.url,
                &self.tls.ca_cert,
                &self.token.token,
            );
            o.info = vec![("model".into(), "e2e-netns".into())];
            let device =
                RealDevice::start(self.env, &o).with_context(|| format!("device {name}"))?;
            if i == 0 {
                self.logs
                    .push((format!("{name} agent"), device.agent_log()));
                self.logs
                    .push((format!("{name} runtime"), device.runtime_log()));
            }
            self.devices.push(device);
        }
        for device in &mut self.devices {
            let credential = device
                .wait_enrolled(ENROLL)
                .map_err(|e| anyhow!("{e:#}\ngateway:\n{}", self.gateway.log_tail()))?;
            ensure!(
                (credential.namespace.as_str(), credential.name.as_str())
                    == (self.ns.as_str(), device.name()),
                "{} enrolled as {}/{}",
                device.name(),
                credential.namespace,
                credential.name
            );
        }
        loop {
            let all = self.all_devices().await;
            let enrolled = all
                .values()
                .filter(|d| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.architecture)
                        .is_some_and(|a| a.as_str() == "amd64")
                        && d.labels().get("role").map(String::as_str) == Some(ROLE)
                })
                .count();
            if enrolled == DEVICES {
                for d in all.values() {
                    let info = &d
                        .status
                        .as_ref()
                        .context("an enrolled Device has a status")?
                        .info;
                    ensure!(
                        info.get("model").map(String::as_str) == Some("e2e-netns"),
                        "{info:?}"
                    );
                }
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        Ok(self.devices.iter().map(|d| d.name().to_string()).collect())
    }

    /// Step 2: v1 reaches every device. Returns what each downloaded.
    async fn roll_out_v1(&mut self, t1: &Value, v1: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        self.n.step(&format!(
            "rolling out v1 ({v1}) to all {DEVICES} devices at once"
        ));
        self.n.say(&format!(
            "Fleet {FLEET}: devices labelled role={ROLE}; containers app ({}) and side ({})",
            self.images.app_v1.reference, self.images.side.reference
        ));
        self.apply(fleet(t1, false)).await?;
        let phase = Phase::new(format!("{v1} runs on all {DEVICES} devices"));
        loop {
            let all = self.all_devices().await;
            let fleet = self.fleet().await;
            let ready = fleet
                .as_ref()
                .and_then(|f| condition(f, "Ready"))
                .is_some_and(|c| c.status == "True");
            if ready && all.len() == DEVICES && all.values().all(|d| done_on(d, v1)) {
                let status = fleet
                    .and_then(|f| f.status)
                    .context("the fleet has a status")?;
                ensure!(
                    status.update_revision.as_deref() == Some(v1),
                    "the fleet's updateRevision is {:?}, not {v1}",
                    status.update_revision
                );
                ensure!(
                    (status.updated, status.ready, status.failed) == (5, 5, 0),
                    "the fleet counts updated/ready/failed {:?}, not (5, 5, 0)",
                    (status.updated, status.ready, status.failed)
                );
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        let mut downloaded = BTreeMap::new();
        for d in self.all_devices().await.values() {
            let u = update_of(d).context("a device that ran v1 has an update")?;
            self.n.say(&format!(
                "{} downloaded {} of {} bytes for v1",
                d.name_any(),
                u.downloaded_bytes.unwrap_or(0),
                u.total_bytes.unwrap_or(0)
            ));
            downloaded.insert(d.name_any(), u.downloaded_bytes.unwrap_or(0) as u64);
        }
        // The runtime itself says so, on its control socket.
        let first = &self.devices[0];
        let running = first
            .client()
            .containers()
            .await
            .context("GET /containers")?;
        let running: BTreeSet<(String, String, String)> = running
            .iter()
            .map(|c| (c.name.clone(), c.state.to_string(), c.revision.clone()))
            .collect();
        let want = BTreeSet::from([
            ("app".to_string(), "running".to_string(), v1.to_string()),
            ("side".to_string(), "running".to_string(), v1.to_string()),
        ]);
        ensure!(
            running == want,
            "GET /containers on {}: {running:?}, not {want:?}",
            first.name()
        );
        Ok(downloaded)
    }

    /// Between steps: the gateway dies (SIGKILL) and comes back. It keeps no state, so the
    /// agents only have to reconnect, with the credentials they stored.
    async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        self.n
            .step("killing the gateway (SIGKILL) and starting it again");
        self.n.say("it keeps no state: the agents retry with backoff and long-poll again with their stored credentials");
        self.gateway.kill();
        self.gateway =
            Gateway::start(self.env, &self.gateway_options).context("restarting the gateway")?;
        if let Some(pid_file) = &self.options.pid_file {
            std::fs::write(
                pid_file,
                format!("{}\n{}\n", self.controller.pid(), self.gateway.pid()),
            )
            .with_context(|| format!("writing {}", pid_file.display()))?;
        }
        let phase = Phase::new(format!("all {DEVICES} agents long-poll the new gateway"));
        let metrics = format!("http://{}/metrics", self.gateway.metrics);
        loop {
            let waiting = match reqwest::get(&metrics).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
            .lines()
            .find_map(|l| l.strip_prefix("edgevisor_gateway_waiting_polls "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
            if waiting >= DEVICES {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        Ok(())
    }

    /// Step 3: v2: one canary, a pause until resumed, then everyone. Returns the canary.
    async fn canary_v2(&mut self, t2: &Value, r: &Revisions) -> anyhow::Result<String> {
        let (v1, v2) = (r.v1.as_str(), r.v2.as_str());
        self.n.step(&format!(
            "rolling out v2 ({v2}): one canary first, then wait for a human"
        ));
        self.n.say(
            "strategy: steps [{devices: 1, pause: {untilResumed: true}}], maxUnavailable 2, failureThreshold 1",
        );
        self.apply(fleet(t2, true)).await?;
        let phase = Phase::new(format!("the canary runs {v2}, the rollout waits"));
        let mut most_targeted = 0;
        let canary = loop {
            let all = self.all_devices().await;
            let on_v2: Vec<&Device> = all.values().filter(|d| target(d) == Some(v2)).collect();
            most_targeted = most_targeted.max(on_v2.len());
            let waiting = self
                .fleet()
                .await
                .is_some_and(|f| ready_reason(&f) == "WaitingForResume");
            if waiting && on_v2.len() == 1 && done_on(on_v2[0], v2) {
                break on_v2[0].name_any();
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        // Nothing else moves while the rollout waits.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for d in self.all_devices().await.values() {
            if d.name_any() == canary {
                continue;
            }
            ensure!(
                target(d) == Some(v1),
                "{} moved during the pause",
                d.name_any()
            );
            ensure!(
                current(d) == Some(v1),
                "{} runs {:?} during the pause, not {v1}",
                d.name_any(),
                current(d)
            );
        }
        ensure!(most_targeted == 1, "only the canary goes first");
        self.n.say(&format!(
            "canary: {canary} runs v2; the other {} wait on v1 until someone resumes the rollout:",
            DEVICES - 1
        ));
        let resume = json!({"spec": {"resume": {"revision": v2, "step": 0}}}).to_string();
        self.kubectl(
            &[
                "patch", "fleet", FLEET, "-n", &self.ns, "--type", "merge", "-p", &resume,
            ],
            "resume",
        )?;
        let phase = Phase::new(format!("resumed: {v2} on every device"));
        loop {
            let all = self.all_devices().await;
            let complete = self
                .fleet()
                .await
                .is_some_and(|f| ready_reason(&f) == "RolloutComplete");
            if complete && all.values().all(|d| done_on(d, v2)) {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        Ok(canary)
    }

    /// Step 4: A broken v3: the canary fails and rolls back by itself, the rollout aborts. Returns
    /// the canary's cause, the Fleet's Ready message and its RolloutAborted event.
    async fn broken_v3(
        &mut self,
        t3: &Value,
        r: &Revisions,
        canary: &str,
    ) -> anyhow::Result<(Failure, String, String)> {
        let (v2, v3) = (r.v2.as_str(), r.v3.as_str());
        self.n.step(&format!(
            "rolling out a broken v3 ({v3}, its app exits with code 3): the canary tries it first"
        ));
        self.apply(fleet(t3, true)).await?;
        let phase = Phase::new(format!("{canary} fails {v3} and the rollout aborts"));
        let mut moved: BTreeSet<String> = BTreeSet::new();
        let cause = loop {
            let all = self.all_devices().await;
            for d in all.values() {
                if d.name_any() != canary && target(d) == Some(v3) {
                    moved.insert(d.name_any());
                }
            }
            let aborted = self
                .fleet()
                .await
                .and_then(|f| condition(&f, "RolloutAborted").map(|c| c.status == "True"))
                .unwrap_or(false);
            if aborted && let Some(cause) = all.get(canary).and_then(|d| failed_on(d, v3)) {
                break cause;
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        self.n.say(&format!("{canary} reported: {cause}"));
        ensure!(
            cause.to_string().to_lowercase().contains("exit"),
            "the device says why it failed: {cause:?}"
        );
        // The device went back to v2 by itself, and the controller sends it back there too.
        let phase = Phase::new(format!("{canary} runs {v2} again"));
        loop {
            let all = self.all_devices().await;
            for d in all.values() {
                if d.name_any() != canary && target(d) == Some(v3) {
                    moved.insert(d.name_any());
                }
            }
            let back = all
                .get(canary)
                .is_some_and(|d| target(d) == Some(v2) && current(d) == Some(v2));
            if back {
                break;
            }
            phase.tick(self).await?;
        }
        phase.done(self);
        let canary_device = self
            .devices
            .iter()
            .find(|d| d.name() == canary)
            .context("the canary")?;
        let containers = canary_device
            .client()
            .containers()
            .await
            .context("GET /containers")?;
        for c in &containers {
            ensure!(c.revision == v2, "{canary} runs v2 again: {containers:?}");
            ensure!(c.state == RunState::Running, "{containers:?}");
        }
        // The runtime's own record: it tried v3, which failed, and went back to its committed v2.
        let steps = canary_device.client().steps().await.context("GET /steps")?;
        let step = |rev: &str| steps.iter().find(|x| x.rev == rev);
        let (tried, committed) = (step(v3), step(v2));
        ensure!(
            tried.is_some_and(|t| t.status == Some(Status::Error) && !t.committed),
            "{steps:?}"
        );
        ensure!(
            committed.is_some_and(|c| c.committed && c.running),
            "{steps:?}"
        );
        self.n.say(&format!(
            "{canary}'s runtime: {v3} ERROR, not committed; {v2} committed and running again"
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        for d in self.all_devices().await.values() {
            if d.name_any() != canary {
                ensure!(target(d) == Some(v2), "{} moved", d.name_any());
                ensure!(current(d) == Some(v2), "{} moved", d.name_any());
            }
        }
        ensure!(
            moved.is_empty(),
            "devices besides the canary were sent to v3: {moved:?}"
        );
        let table = self
            .env
            .kubectl(["get", "fleet", FLEET, "-n", &self.ns, "-o", "wide"])
            .run()
            .checked("kubectl get fleet")?;
        let why = self
            .env
            .kubectl([
                "get",
                "fleet",
                FLEET,
                "-n",
                &self.ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
            ])
            .run()
            .checked("the Ready message")?;
        self.n.say(&format!(
            "$ kubectl get fleet {FLEET} -n {} -o wide\n{}\nReady: {why}",
            self.ns,
            table.trim_end()
        ));
        ensure!(
            table.contains("RolloutAborted"),
            "kubectl get fleet shows the abort:\n{table}"
        );
        ensure!(
            why.contains("aborted") && why.contains(v3),
            "the Ready message says why: {why}"
        );
        let events = self
            .env
            .kubectl([
                "get",
                "events",
                "-n",
                &self.ns,
                "-o",
                "jsonpath={range .items[?(@.reason==\"RolloutAborted\")]}{.message}{\"\\n\"}{end}",
            ])
            .run()
            .checked("the Fleet's events")?;
        self.n
            .say(&format!("event RolloutAborted: {}", events.trim()));
        ensure!(
            events.contains(v3) && events.contains("1 devices failed"),
            "an event says how many devices failed: {events:?}"
        );
        Ok((cause, why, events.trim().to_string()))
    }

    /// Step 5: Revocation: a revoked credential, and a device naming another, are refused. Returns
    /// the revoked device and what its credential gets now.
    async fn revoke(&mut self, r: &Revisions, canary: &str) -> anyhow::Result<(String, u16)> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = reqwest::Certificate::from_pem(&self.tls.ca_pem()?).context("a CA certificate")?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(20))
            .build()
            .context("an HTTPS client")?;
        let victim = self
            .devices
            .iter()
            .rev()
            .find(|d| d.name() != canary)
            .context("a device that is not the canary")?;
        let victim_name = victim.name().to_string();
        let theirs = victim.credential().context("the victim's credential")?;
        let mine = self
            .devices
            .iter()
            .find(|d| d.name() == canary)
            .context("the canary")?
            .credential()
            .context("the canary's credential")?;
        let (ns, url) = (self.ns.clone(), self.gateway.url.clone());
        let target_url = |name: &str| format!("{url}/v1/devices/{ns}/{name}/target?waitSeconds=0");
        self.n.step(&format!(
            "revoking {victim_name}: the gateway refuses its credential from then on"
        ));
        let phase = Phase::new(format!("{victim_name} is refused"));
        let response = http
            .get(target_url(&victim_name))
            .bearer_auth(&theirs.credential)
            .send()
            .await
            .context("the victim's own target")?;
        ensure!(
            response.status().as_u16() == 200,
            "before revocation: {}",
            response.status()
        );
        let served: edgevisor_protocol::gateway::Target =
            response.json().await.context("a Target")?;
        ensure!(
            served.revision == r.v2,
            "{victim_name} is served {}, not {}",
            served.revision,
            r.v2
        );
        ensure!(
            served.architecture == "amd64",
            "{victim_name} is served {}",
            served.architecture
        );
        let cross = call(
            &http,
            reqwest::Method::GET,
            &target_url(&victim_name),
            &mine.credential,
        )
        .await?;
        ensure!(cross == 403, "{canary} asked for {victim_name}'s target");
        let unknown = call(
            &http,
            reqwest::Method::GET,
            &target_url(canary),
            "not-a-credential",
        )
        .await?;
        ensure!(unknown == 401, "an unknown credential");
        self.n.say(&format!(
            "before: {victim_name}'s credential gets its target (200, v2); {canary}'s credential asking for \
             {victim_name}'s target gets 403; a made-up credential gets 401"
        ));
        self.kubectl(
            &[
                "patch",
                "device",
                &victim_name,
                "-n",
                &ns,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"revoked":true}}"#,
            ],
            "revoking",
        )?;
        let refused = loop {
            let code = call(
                &http,
                reqwest::Method::GET,
                &target_url(&victim_name),
                &theirs.credential,
            )
            .await?;
            if code == 403 {
                break code;
            }
            phase.tick(self).await?;
        };
        let status_url = format!("{url}/v1/devices/{ns}/{victim_name}/status");
        let put = call(&http, reqwest::Method::PUT, &status_url, &theirs.credential).await?;
        ensure!(
            put == 403,
            "{victim_name} reported its status after revocation: {put}"
        );
        // The others are still served.
        let others = call(
            &http,
            reqwest::Method::GET,
            &target_url(canary),
            &mine.credential,
        )
        .await?;
        ensure!(others == 200, "{canary} is refused its target: {others}");
        self.n.say(&format!(
            "after: {victim_name}'s credential gets 403 for its target and for its status report; {canary} is still served (200)"
        ));
        phase.done(self);
        Ok((victim_name, refused))
    }

    /// Step 6: One changed layer: each device downloads only that layer. Returns what each fetched,
    /// the worst ratio to the layer and the most bytes downloaded.
    async fn one_layer(
        &mut self,
        t4: &Value,
        v4: &str,
        revoked: &str,
    ) -> anyhow::Result<(Vec<Fetched>, f64, u64)> {
        let layer = self.images.app_v4.app_layer_size;
        self.n.step(&format!(
            "rolling out v4 ({v4}): one layer of the app image changed ({layer} bytes); each device fetches only that"
        ));
        let served_before: BTreeMap<String, u64> = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    d.name().to_string(),
                    self.forward.bytes_to(IpAddr::V4(self.lan.address(i))),
                )
            })
            .collect();
        self.apply(fleet(t4, false)).await?;
        let phase = Phase::new(format!(
            "{v4} (one new layer) on the {} remaining devices",
            DEVICES - 1
        ));
        let updated = loop {
            let all = self.all_devices().await;
            let remaining: Vec<&Device> =
                all.values().filter(|d| d.name_any() != revoked).collect();
            let complete = self.fleet().await.is_some_and(|f| {
                ready_reason(&f) == "RolloutComplete"
                    // The revoked device is still selected, but not waited for.
                    && f.status.as_ref().is_some_and(|s| s.devices == DEVICES as i32)
            });
            if complete && remaining.iter().all(|d| done_on(d, v4)) {
                break remaining.into_iter().cloned().collect::<Vec<Device>>();
            }
            phase.tick(self).await?;
        };
        phase.done(self);
        let mut worst = 0.0f64;
        let mut fetched = Vec::new();
        for d in &updated {
            let name = d.name_any();
            let downloaded = update_of(d).and_then(|u| u.downloaded_bytes).unwrap_or(0) as u64;
            let i = self
                .devices
                .iter()
                .position(|x| x.name() == name)
                .with_context(|| format!("device {name}"))?;
            let over_the_wire =
                self.forward.bytes_to(IpAddr::V4(self.lan.address(i))) - served_before[&name];
            let ratio = downloaded as f64 / layer as f64;
            worst = worst.max(ratio);
            self.n.say(&format!(
                "{name}: downloadedBytes {downloaded}, from the registry {over_the_wire} (HTTP included), changed layer {layer}, config {}",
                self.images.app_v4.config_size
            ));
            ensure!(
                downloaded >= layer,
                "{name} reports {downloaded} bytes, less than the new layer's {layer}"
            );
            ensure!(
                over_the_wire >= layer && (over_the_wire as f64) < 1.25 * layer as f64,
                "{name} pulled {over_the_wire} bytes from the registry for a {layer}-byte layer"
            );
            fetched.push(Fetched {
                device: name,
                downloaded_bytes: downloaded,
                from_registry: over_the_wire,
            });
        }
        let downloaded_max = fetched
            .iter()
            .map(|f| f.downloaded_bytes)
            .max()
            .unwrap_or(0);
        Ok((fetched, worst, downloaded_max))
    }
}
