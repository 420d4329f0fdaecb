//! The whole story with real devices, told by the end-to-end test (`tests/device_story.rs`) and
//! by the demo (`make demo`, the `demo-story` binary) alike: a real apiserver, registry and node;
//! the controller and the gateway as pods of the image `make image` builds, installed with Helm;
//! and five devices, each a real runtime (containers run by runc) and a real agent in a network
//! namespace of its own, reaching the gateway through its Service and the registry over a bridge.
//!
//! 1. All five enroll with one bootstrap token and appear as Devices (amd64).
//! 2. Fleet v1 (two busybox containers) reaches every device: updates DONE, `Ready=True`,
//!    containers running (in `Device.status` and in the runtime itself). Then the gateway's pod
//!    is deleted; the agents reconnect to the new one.
//! 3. v2 with a canary step that waits to be resumed: one device goes first, alone; after
//!    `kubectl edgevisor rollout promote`, all five run v2, although the controller's pod is
//!    deleted mid-rollout: the new pod leads, and no device is retargeted twice.
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
use crate::devices::{DeviceOptions, RealDevice, require_tools};
use crate::gateway::{BootstrapToken, apply_bootstrap_token};
use crate::images::{AppImage, AppImageSpec, Registry, push_app_image};
use crate::netns::{Lan, TcpForward};
use crate::pods::PodRelease;
use crate::process::log_tail;
use crate::tls::TlsFiles;

mod broken_v3;
mod canary_v2;
mod enroll;
mod gateway_restart;
mod narration;
mod one_layer;
mod reads;
mod revoke;
mod roll_out_v1;
mod templates;

use narration::*;
pub use narration::{Narrator, indent};
use reads::*;
pub use templates::reset_namespace;
use templates::*;

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
    /// The Helm release of the controller and the gateway (installed, or upgraded, in
    /// namespace `<release>-system`, managing only `namespace`).
    pub release: String,
    /// The bootstrap-token Secret (in the release namespace) the devices enroll with; the
    /// release's gateway may read it.
    pub token_secret: String,
    /// Certificates and other files of the cluster side (removed at the end unless it fails).
    pub work_dir: PathBuf,
    /// The devices' directories (`<device_dir>/<name>`; removed at the end unless it fails).
    /// Keep it short: a control socket's path must fit in 108 bytes.
    pub device_dir: PathBuf,
    /// Where the narration goes.
    pub narrator: Narrator,
    /// Print a line whenever a Device's or the Fleet's status changes (like `kubectl get -w`).
    pub live_view: bool,
    /// How long the devices rest after the last chapter before the canary's memory is
    /// read (`e2e/bench/device` sets it; zero reads at once).
    pub idle: Duration,
}

impl StoryOptions {
    /// The story in `namespace`, on LAN `10.213.<subnet>.0/24`, with the test defaults: release
    /// `evstory` (upgraded by each run: its Service keeps a fixed address), token Secret `e2e-token-story`, files under
    /// `target/e2e-env/story-<pid>` and `/tmp/edgevisor-e2e/story-<pid>`, narration on standard
    /// error, no live view.
    pub fn new(env: &Env, namespace: &str, lan_prefix: &str, subnet: u8) -> StoryOptions {
        let pid = std::process::id();
        StoryOptions {
            namespace: namespace.to_string(),
            lan_prefix: lan_prefix.to_string(),
            subnet,
            release: "evstory".to_string(),
            token_secret: "e2e-token-story".to_string(),
            work_dir: env.repo.join(format!("target/e2e-env/story-{pid}")),
            device_dir: PathBuf::from(format!("/tmp/edgevisor-e2e/story-{pid}")),
            narrator: Narrator::stderr(),
            idle: Duration::ZERO,
            live_view: false,
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
    /// The canary's runtime and agent resident memory, idle after all of it (several
    /// updates, a failed try and a rollback): bytes, after `idle` of rest.
    pub canary_rss: (u64, u64),
    pub idle: Duration,
    /// How long each phase took.
    pub phases: Vec<(String, Duration)>,
    /// How long the whole story took.
    pub elapsed: Duration,
    /// The commands that show the controller's and the gateway's logs.
    pub controller_logs: String,
    pub gateway_logs: String,
    /// The controller pod that was deleted mid-rollout, and the one that finished it.
    pub controller_pods: (String, String),
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
    release: PodRelease,
    /// The gateway's Service, as devices reach it.
    gateway_url: String,
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
    /// Log files printed when the story fails (the pods' logs are printed too).
    logs: Vec<(String, PathBuf)>,
    phases: Vec<(String, Duration)>,
    /// The controller pod deleted mid-rollout, and its successor.
    controller_pods: (String, String),
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
/// The devices are stopped at the end; the release and the Kubernetes objects stay.
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
    /// The LAN, the registry forwarded to it, the chart on the node (the controller and the
    /// gateway as pods), the bootstrap token and the images.
    async fn start(env: &'static Env, options: &StoryOptions) -> anyhow::Result<World> {
        let n = options.narrator.clone();
        let ns = options.namespace.clone();
        let started = Instant::now();
        let client = env.client().await?;
        n.step(&format!(
            "a LAN for {DEVICES} devices; the chart installed on the node: the controller and the gateway run as pods of the image"
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
        // Pods and devices reach the registry at the forward's address; the images are pushed
        // on loopback and named by that address in the Fleet.
        let registry_seen = forward.addr().to_string();
        let release_ns = format!("{}-system", options.release);
        let gateway_ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 213, options.subnet));
        let extra: Vec<String> = [
            (
                "gateway.bootstrapTokenSecrets",
                json!([options.token_secret]).to_string(),
            ),
            (
                "gateway.deviceRegistries",
                json!({&registry_seen: format!("http://{registry_seen}")}).to_string(),
            ),
            (
                "controller.insecureRegistries",
                json!([registry_seen]).to_string(),
            ),
            ("gateway.statusCoalesceMs", "500".to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["--set-json".to_string(), format!("{k}={v}")])
        .collect();
        let release = PodRelease::install(
            env,
            &options.release,
            &release_ns,
            &ns,
            gateway_ip,
            &options.work_dir,
            &extra,
        )
        .context("installing the chart on the node")?;
        let gateway_url = format!("https://{gateway_ip}");
        let tls = release.tls.clone();
        let mut token = BootstrapToken::new(&ns)?;
        token.secret = options.token_secret.clone();
        token.namespace = release_ns.clone();
        token.labels.insert("role".into(), ROLE.into());
        apply_bootstrap_token(&client, &token)
            .await
            .context("the bootstrap token")?;

        let registry = Registry::new(&env.registry);
        let push = |name: &'static str, tag: &'static str, seed: u64, payload: usize| {
            let registry = &registry;
            let repo = format!("e2e/{ns}/{name}");
            let registry_seen = &registry_seen;
            async move {
                let mut image = push_app_image(
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
                .with_context(|| format!("pushing {repo}:{tag}"))?;
                image.reference = image.reference.replacen(&env.registry, registry_seen, 1);
                anyhow::Ok(image)
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
            "$ helm upgrade --install {name} charts/edgevisor -n {release_ns} --wait --set image.digest=… --set watchNamespace={ns} …\n\
             controller: pod {controller} (Deployment {full}-controller), managing namespace {ns}\n\
             gateway:    pod {gateway}, Service {full}-gateway at {gateway_url}\n\
             registry:   {}, reached by the pods and the devices at http://{registry_seen}\n\
             images:     e2e/{ns}/app:v1, :v2, :v4 (busybox + a {} KiB app layer), e2e/{ns}/side:v1\n\
             ready in {:.1}s",
            env.registry,
            APP_PAYLOAD / 1024,
            started.elapsed().as_secs_f64(),
            name = release.name,
            full = release.fullname(),
            controller = release.pod(env, "controller")?,
            gateway = release.pod(env, "gateway")?,
        ));

        let labels = Labels::default();
        let live_view = options
            .live_view
            .then(|| LiveView::start(&client, &ns, &n, &labels));
        Ok(World {
            devices: Vec::new(),
            _live_view: live_view,
            release,
            gateway_url,
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
            logs: Vec::new(),
            phases: Vec::new(),
            controller_pods: Default::default(),
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

    /// Runs `kubectl edgevisor <args>` as a user would, shows the command and what it printed;
    /// `ok_codes` are the exit codes that are not an error (`rollout status` exits 2 while a
    /// rollout waits).
    fn plugin(&self, args: &[&str], what: &str, ok_codes: &[i32]) -> anyhow::Result<String> {
        self.n.say(&format!(
            "$ kubectl edgevisor -n {} {}",
            self.ns,
            args.join(" ")
        ));
        let run = crate::plugin::kubectl_edgevisor(self.env, &self.ns, args).run();
        anyhow::ensure!(
            run.code.is_some_and(|c| ok_codes.contains(&c)),
            "{what}: {} exited {:?}\n{}{}",
            run.command,
            run.code,
            run.stdout,
            run.stderr
        );
        for line in run.stdout.lines() {
            self.n.say(&format!("  {line}"));
        }
        Ok(run.stdout)
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
        for component in ["controller", "gateway"] {
            eprintln!(
                "==== {component} ({}) ====\n{}",
                self.release.logs_command(component),
                self.release.logs(self.env, component, 40)
            );
        }
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

    /// Stops the devices; on success, removes their files. The release stays installed (its
    /// pods manage only this story's namespace), as after `make demo`.
    fn stop(mut self, success: bool) {
        self._live_view = None;
        for mut device in std::mem::take(&mut self.devices) {
            device.shutdown();
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
        let idle = self.options.idle;
        if !idle.is_zero() {
            self.n.step(&format!(
                "resting {}s before measuring a device's memory",
                idle.as_secs()
            ));
            tokio::time::sleep(idle).await;
        }
        let canary_rss = self
            .devices
            .iter()
            .find(|d| d.name() == canary)
            .map(RealDevice::rss_bytes)
            .unwrap_or_default();
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
            canary_rss,
            idle,
            phases: self.phases.clone(),
            elapsed: self.started.elapsed(),
            controller_logs: self.release.logs_command("controller"),
            gateway_logs: self.release.logs_command("gateway"),
            controller_pods: self.controller_pods.clone(),
        })
    }
}
