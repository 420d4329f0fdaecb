//! The whole story with real devices: a real apiserver, registry, controller and gateway, and
//! five devices, each a real runtime (containers run by runc) and a real agent in a network
//! namespace of its own, reaching the gateway and the registry over a bridge.
//!
//! 1. All five enroll with one bootstrap token and appear as Devices (amd64).
//! 2. Fleet v1 (two busybox containers) reaches every device: updates DONE, `Ready=True`,
//!    containers running (in `Device.status` and in the runtime itself).
//! 3. v2 with a canary step that waits to be resumed: one device goes first, alone; after the
//!    resume, all five run v2.
//! 4. A broken v3 (a container exits 3): the canary tries it, rolls back to v2 by itself and
//!    reports `ERROR` with the cause; the rollout aborts and nobody else ever targets v3.
//! 5. A revoked device's credential is refused (403), and so is a device naming another.
//! 6. v4 changes one layer of one image: each device downloads that layer and no other.
//!
//! Needs root (network namespaces, runc); skips without it.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgevisor_crds::{Device, Fleet, UpdateStatus};
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{self, Controller};
use edgevisor_e2e::devices::{DeviceOptions, RealDevice, require_tools};
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway, apply_bootstrap_token};
use edgevisor_e2e::images::{AppImage, AppImageSpec, Registry, push_app_image};
use edgevisor_e2e::netns::{Lan, TcpForward};
use edgevisor_e2e::process::{free_port_on, log_tail};
use edgevisor_e2e::tls::make_server_cert;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

const DEVICES: usize = 5;
const FLEET: &str = "kiosks";
const ROLE: &str = "story-kiosk";
/// Size of the incompressible payload of the app layer: the layer a one-layer update moves.
const APP_PAYLOAD: usize = 256 * 1024;
const APP_SCRIPT: &str = "#!/bin/sh\necho \"app $VERSION up\"\nwhile true; do sleep 1; done\n";
const PHASE: Duration = Duration::from_secs(300);
const ENROLL: Duration = Duration::from_secs(90);

// === what the test reads of Devices and Fleets ===

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

/// The device's update to `rev` ended in ERROR: now, or in its history.
fn failed_on(d: &Device, rev: &str) -> Option<String> {
    if let Some(u) = update_of(d)
        && u.revision == rev
        && u.status == UpdateStatus::Error
    {
        return Some(format!(
            "reason {:?}, message {:?}",
            u.reason.clone().unwrap_or_default(),
            u.message.clone().unwrap_or_default()
        ));
    }
    d.status.as_ref().and_then(|s| {
        s.history
            .iter()
            .find(|h| h.revision == rev && h.status == UpdateStatus::Error)
            .map(|h| {
                format!(
                    "(history) message {:?}",
                    h.message.clone().unwrap_or_default()
                )
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

// === the story's world ===

struct Story {
    env: &'static Env,
    ns: String,
    devices: Api<Device>,
    fleets: Api<Fleet>,
    /// Log files printed when the test fails.
    logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Story {
    async fn devices(&self) -> BTreeMap<String, Device> {
        match self.devices.list(&ListParams::default()).await {
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

    fn deadline(&self, what: &str) -> Deadline<'_> {
        eprintln!("==> {what}");
        Deadline {
            story: self,
            what: what.to_string(),
            started: Instant::now(),
        }
    }

    async fn apply(&self, fleet: Value) {
        self.fleets
            .patch(
                FLEET,
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(fleet),
            )
            .await
            .expect("applying the fleet");
    }
}

impl Drop for Story {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("==== state at failure ====\n{}", self.tables());
        for (name, path) in self.logs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            eprintln!(
                "==== {name} ({}) ====\n{}",
                path.display(),
                log_tail(path, 40)
            );
        }
    }
}

struct Deadline<'a> {
    story: &'a Story,
    what: String,
    started: Instant,
}

impl Deadline<'_> {
    /// Sleeps a little, or fails if the phase took too long.
    async fn tick(&self) {
        assert!(
            self.started.elapsed() < PHASE,
            "timed out ({PHASE:?}) waiting for: {}\n{}",
            self.what,
            self.story.tables()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    fn done(&self) {
        eprintln!(
            "    {} ({:.1}s)",
            self.what,
            self.started.elapsed().as_secs_f64()
        );
    }
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
fn revision_name(template: &Value) -> String {
    let template = serde_json::from_value(template.clone()).expect("a template");
    let hash = edgevisor_controller::render::template_hash(&template);
    edgevisor_controller::render::revision_name(FLEET, &hash).expect("a revision name")
}

async fn push(
    registry: &Registry,
    ns: &str,
    name: &str,
    tag: &str,
    seed: u64,
    payload: usize,
) -> AppImage {
    push_app_image(
        registry,
        &AppImageSpec {
            repo: &format!("e2e/{ns}/{name}"),
            tag,
            architecture: "amd64",
            script: APP_SCRIPT,
            seed,
            payload,
        },
    )
    .await
    .expect("pushing an image")
}

/// A GET or PUT to the gateway's device API with a bearer credential; the status code.
async fn call(http: &reqwest::Client, method: reqwest::Method, url: &str, credential: &str) -> u16 {
    let mut request = http.request(method.clone(), url).bearer_auth(credential);
    if method == reqwest::Method::PUT {
        request = request.json(&json!({"containers": []}));
    }
    match request.send().await {
        Ok(response) => response.status().as_u16(),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_real_devices_enroll_roll_out_fail_a_canary_get_revoked_and_fetch_one_layer() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: real devices need root (network namespaces, runc)");
        return;
    }
    require_tools().expect("tools for real devices");
    let env = Env::get();
    let ns = env.namespace("story");
    let client = env.client().await.expect("client");
    let story = Story {
        env,
        ns: ns.clone(),
        devices: Api::namespaced(client.clone(), &ns),
        fleets: Api::namespaced(client.clone(), &ns),
        logs: Mutex::new(Vec::new()),
    };
    let started = Instant::now();

    // --- the world: a LAN of five hosts, the registry reachable from it, TLS, the chart ---
    let lan = Lan::create("evstory", 21, DEVICES).expect("the device LAN");
    let registry_addr: SocketAddr = env
        .registry
        .to_socket_addrs()
        .expect("the registry's address")
        .next()
        .expect("the registry resolves");
    let forward = TcpForward::start(SocketAddr::new(IpAddr::V4(lan.host()), 0), registry_addr)
        .expect("forwarding the registry to the LAN");
    let work = env
        .repo
        .join(format!("target/e2e-env/story-{}", std::process::id()));
    let tls = make_server_cert(&work.join("tls"), &[IpAddr::V4(lan.host())]).expect("certificates");
    edgevisor_e2e::release::install_chart(env);
    let mut token = BootstrapToken::new(&ns).expect("a token");
    // A Secret of its own (listed in release::TOKEN_SECRETS), so tests that run at the same
    // time do not replace each other's token.
    token.secret = "e2e-token-story".into();
    token.labels.insert("role".into(), ROLE.into());
    apply_bootstrap_token(&client, &token)
        .await
        .expect("the bootstrap token");

    let mut controller = Controller::start(
        env,
        &controller::Options {
            namespace: &ns,
            identity: "story",
            lease_seconds: 15,
            args: &[],
        },
    )
    .expect("the controller");
    story
        .logs
        .lock()
        .unwrap()
        .push(("controller".into(), controller.log.clone()));
    let listen = SocketAddr::new(
        IpAddr::V4(lan.host()),
        free_port_on(IpAddr::V4(lan.host())).expect("a port"),
    );
    let mut options = gateway::Options::new(&ns, listen, &tls);
    options.namespace = Some(ns.clone());
    options.bootstrap_token_secrets = vec![token.secret.clone()];
    options.device_registries = vec![(env.registry.clone(), format!("http://{}", forward.addr()))];
    options.status_coalesce_ms = Some(500);
    let mut gateway =
        Gateway::start(env, &options).unwrap_or_else(|e| panic!("the gateway: {e:#}"));
    story
        .logs
        .lock()
        .unwrap()
        .push(("gateway".into(), gateway.log.clone()));

    let registry = Registry::new(&env.registry);
    let app_v1 = push(&registry, &ns, "app", "v1", 1, APP_PAYLOAD).await;
    let app_v2 = push(&registry, &ns, "app", "v2", 2, APP_PAYLOAD).await;
    let app_v4 = push(&registry, &ns, "app", "v4", 4, APP_PAYLOAD).await;
    let side = push(&registry, &ns, "side", "v1", 100, 4096).await;
    assert_eq!(app_v2.base_layer_digest, app_v4.base_layer_digest);
    assert_ne!(app_v2.app_layer_digest, app_v4.app_layer_digest);
    eprintln!(
        "    world ready in {:.1}s: gateway {}, registry for devices http://{}",
        started.elapsed().as_secs_f64(),
        gateway.url,
        forward.addr()
    );

    // --- 1. five devices enroll with one token ---
    let base = PathBuf::from(format!("/tmp/edgevisor-e2e/story-{}", std::process::id()));
    let deadline = story.deadline("1. five devices enroll with one bootstrap token");
    let mut devices: Vec<RealDevice> = Vec::new();
    for i in 0..DEVICES {
        let name = format!("edge-{i}");
        let mut o = DeviceOptions::new(
            &name,
            lan.netns(i),
            &base,
            &gateway.url,
            &tls.ca_cert,
            &token.token,
        );
        o.info = vec![("model".into(), "e2e-netns".into())];
        let device = RealDevice::start(env, &o).unwrap_or_else(|e| panic!("device {name}: {e:#}"));
        let mut logs = story.logs.lock().unwrap();
        if i == 0 {
            logs.push((format!("{name} agent"), device.agent_log()));
            logs.push((format!("{name} runtime"), device.runtime_log()));
        }
        devices.push(device);
    }
    for device in &mut devices {
        let credential = device
            .wait_enrolled(ENROLL)
            .unwrap_or_else(|e| panic!("{e:#}\ngateway:\n{}", gateway.log_tail()));
        assert_eq!(
            (credential.namespace.as_str(), credential.name.as_str()),
            (ns.as_str(), device.name())
        );
    }
    loop {
        let all = story.devices().await;
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
                let info = &d.status.as_ref().unwrap().info;
                assert_eq!(
                    info.get("model").map(String::as_str),
                    Some("e2e-netns"),
                    "{info:?}"
                );
            }
            break;
        }
        deadline.tick().await;
    }
    deadline.done();

    // --- 2. v1 reaches every device ---
    let side_ref = side.reference.as_str();
    let t1 = template(&app_v1.reference, side_ref, "v1", false);
    let v1 = revision_name(&t1);
    story.apply(fleet(&t1, false)).await;
    let deadline = story.deadline(&format!("2. {v1} runs on all {DEVICES} devices"));
    loop {
        let all = story.devices().await;
        let fleet = story.fleet().await;
        let ready = fleet
            .as_ref()
            .and_then(|f| condition(f, "Ready"))
            .is_some_and(|c| c.status == "True");
        if ready && all.len() == DEVICES && all.values().all(|d| done_on(d, &v1)) {
            let status = fleet.unwrap().status.unwrap();
            assert_eq!(status.update_revision.as_deref(), Some(v1.as_str()));
            assert_eq!((status.updated, status.ready, status.failed), (5, 5, 0));
            break;
        }
        deadline.tick().await;
    }
    deadline.done();
    for d in story.devices().await.values() {
        let u = update_of(d).unwrap();
        eprintln!(
            "    {} downloaded {:?} of {:?} bytes for v1",
            d.name_any(),
            u.downloaded_bytes,
            u.total_bytes
        );
    }
    // The runtime itself says so, on its control socket.
    let running = devices[0]
        .client()
        .get_json("/containers")
        .await
        .expect("GET /containers");
    let running: BTreeSet<(String, String, String)> = running
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("state"), s("revision"))
        })
        .collect();
    assert_eq!(
        running,
        BTreeSet::from([
            ("app".into(), "running".into(), v1.clone()),
            ("side".into(), "running".into(), v1.clone())
        ]),
        "GET /containers on {}",
        devices[0].name()
    );

    // --- 3. v2: one canary, a pause until resumed, then everyone ---
    let t2 = template(&app_v2.reference, side_ref, "v2", false);
    let v2 = revision_name(&t2);
    story.apply(fleet(&t2, true)).await;
    let deadline = story.deadline(&format!("3. the canary runs {v2}, the rollout waits"));
    let mut most_targeted = 0;
    let canary = loop {
        let all = story.devices().await;
        let on_v2: Vec<&Device> = all
            .values()
            .filter(|d| target(d) == Some(v2.as_str()))
            .collect();
        most_targeted = most_targeted.max(on_v2.len());
        let waiting = story
            .fleet()
            .await
            .is_some_and(|f| ready_reason(&f) == "WaitingForResume");
        if waiting && on_v2.len() == 1 && done_on(on_v2[0], &v2) {
            break on_v2[0].name_any();
        }
        deadline.tick().await;
    };
    deadline.done();
    // Nothing else moves while the rollout waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for d in story.devices().await.values() {
        if d.name_any() == canary {
            continue;
        }
        assert_eq!(
            target(d),
            Some(v1.as_str()),
            "{} moved during the pause",
            d.name_any()
        );
        assert_eq!(current(d), Some(v1.as_str()));
    }
    assert_eq!(most_targeted, 1, "only the canary goes first");
    eprintln!("    canary: {canary}");
    let resume = json!({"spec": {"resume": {"revision": v2, "step": 0}}});
    story
        .fleets
        .patch(FLEET, &PatchParams::default(), &Patch::Merge(resume))
        .await
        .expect("resume");
    let deadline = story.deadline(&format!("3. resumed: {v2} on every device"));
    loop {
        let all = story.devices().await;
        let complete = story
            .fleet()
            .await
            .is_some_and(|f| ready_reason(&f) == "RolloutComplete");
        if complete && all.values().all(|d| done_on(d, &v2)) {
            break;
        }
        deadline.tick().await;
    }
    deadline.done();

    // --- 4. a broken v3: the canary fails and rolls back by itself, the rollout aborts ---
    let t3 = template(&app_v2.reference, side_ref, "v3", true);
    let v3 = revision_name(&t3);
    story.apply(fleet(&t3, true)).await;
    let deadline = story.deadline(&format!("4. {canary} fails {v3} and the rollout aborts"));
    let mut moved: BTreeSet<String> = BTreeSet::new();
    let cause = loop {
        let all = story.devices().await;
        for d in all.values() {
            if d.name_any() != canary && target(d) == Some(v3.as_str()) {
                moved.insert(d.name_any());
            }
        }
        let aborted = story
            .fleet()
            .await
            .and_then(|f| condition(&f, "RolloutAborted").map(|c| c.status == "True"))
            .unwrap_or(false);
        if aborted && let Some(cause) = all.get(&canary).and_then(|d| failed_on(d, &v3)) {
            break cause;
        }
        deadline.tick().await;
    };
    deadline.done();
    eprintln!("    {canary} reported: {cause}");
    assert!(
        cause.to_lowercase().contains("exit"),
        "the device says why it failed: {cause:?}"
    );
    // The device went back to v2 by itself, and the controller sends it back there too.
    let deadline = story.deadline(&format!("4. {canary} runs {v2} again"));
    loop {
        let all = story.devices().await;
        for d in all.values() {
            if d.name_any() != canary && target(d) == Some(v3.as_str()) {
                moved.insert(d.name_any());
            }
        }
        let back = all
            .get(&canary)
            .is_some_and(|d| target(d) == Some(v2.as_str()) && current(d) == Some(v2.as_str()));
        if back {
            break;
        }
        deadline.tick().await;
    }
    deadline.done();
    let canary_device = devices
        .iter()
        .find(|d| d.name() == canary)
        .expect("the canary");
    let containers = canary_device
        .client()
        .get_json("/containers")
        .await
        .expect("GET /containers");
    for c in containers.as_array().expect("a list") {
        assert_eq!(
            c["revision"].as_str(),
            Some(v2.as_str()),
            "{canary} runs v2 again: {containers}"
        );
        assert_eq!(c["state"].as_str(), Some("running"), "{containers}");
    }
    // The runtime's own record: it tried v3, which failed, and went back to its committed v2.
    let steps = canary_device.client().steps().await.expect("GET /steps");
    let step = |rev: &str| {
        steps
            .as_array()
            .and_then(|s| s.iter().find(|x| x["rev"].as_str() == Some(rev)))
            .cloned()
            .unwrap_or_default()
    };
    let (tried, committed) = (step(&v3), step(&v2));
    assert_eq!(tried["status"].as_str(), Some("ERROR"), "{steps}");
    assert_eq!(tried["committed"].as_bool(), Some(false), "{steps}");
    assert_eq!(committed["committed"].as_bool(), Some(true), "{steps}");
    assert_eq!(committed["running"].as_bool(), Some(true), "{steps}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for d in story.devices().await.values() {
        if d.name_any() != canary {
            assert_eq!(target(d), Some(v2.as_str()), "{} moved", d.name_any());
            assert_eq!(current(d), Some(v2.as_str()), "{} moved", d.name_any());
        }
    }
    assert!(
        moved.is_empty(),
        "devices besides the canary were sent to v3: {moved:?}"
    );
    let table = env
        .kubectl(["get", "fleet", FLEET, "-n", &ns, "-o", "wide"])
        .run()
        .expect_ok("kubectl get fleet");
    let why = env
        .kubectl([
            "get",
            "fleet",
            FLEET,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
        ])
        .run()
        .expect_ok("the Ready message");
    eprintln!("{table}    Ready: {why}");
    assert!(
        table.contains("RolloutAborted"),
        "kubectl get fleet shows the abort:\n{table}"
    );
    assert!(
        why.contains("aborted") && why.contains(&v3),
        "the Ready message says why: {why}"
    );
    let events = env
        .kubectl([
            "get",
            "events",
            "-n",
            &ns,
            "-o",
            "jsonpath={range .items[?(@.reason==\"RolloutAborted\")]}{.message}{\"\\n\"}{end}",
        ])
        .run()
        .expect_ok("the Fleet's events");
    eprintln!("    event RolloutAborted: {}", events.trim());
    assert!(
        events.contains(&v3) && events.contains("1 devices failed"),
        "an event says how many devices failed: {events:?}"
    );

    // --- 5. revocation: a revoked credential, and a device naming another, are refused ---
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca =
        reqwest::Certificate::from_pem(&tls.ca_pem().expect("the CA")).expect("a CA certificate");
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTPS client");
    let victim = devices
        .iter()
        .rev()
        .find(|d| d.name() != canary)
        .expect("a device that is not the canary");
    let victim_name = victim.name().to_string();
    let theirs = victim.credential().expect("the victim's credential");
    let mine = canary_device.credential().expect("the canary's credential");
    let target_url = |name: &str| {
        format!(
            "{}/v1/devices/{ns}/{name}/target?waitSeconds=0",
            gateway.url
        )
    };
    let deadline = story.deadline(&format!("5. revoking {victim_name}"));
    let response = http
        .get(target_url(&victim_name))
        .bearer_auth(&theirs.credential)
        .send()
        .await
        .expect("the victim's own target");
    assert_eq!(response.status().as_u16(), 200, "before revocation");
    let served: device_runtime::gateway_api::Target = response.json().await.expect("a Target");
    assert_eq!(served.revision, v2);
    assert_eq!(served.architecture, "amd64");
    assert_eq!(
        call(
            &http,
            reqwest::Method::GET,
            &target_url(&victim_name),
            &mine.credential
        )
        .await,
        403,
        "{canary} asked for {victim_name}'s target"
    );
    assert_eq!(
        call(
            &http,
            reqwest::Method::GET,
            &target_url(&canary),
            "not-a-credential"
        )
        .await,
        401,
        "an unknown credential"
    );
    env.kubectl([
        "patch",
        "device",
        &victim_name,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"revoked":true}}"#,
    ])
    .run()
    .expect_ok("revoking");
    loop {
        if call(
            &http,
            reqwest::Method::GET,
            &target_url(&victim_name),
            &theirs.credential,
        )
        .await
            == 403
        {
            break;
        }
        deadline.tick().await;
    }
    let status_url = format!("{}/v1/devices/{ns}/{victim_name}/status", gateway.url);
    assert_eq!(
        call(&http, reqwest::Method::PUT, &status_url, &theirs.credential).await,
        403
    );
    // The others are still served.
    assert_eq!(
        call(
            &http,
            reqwest::Method::GET,
            &target_url(&canary),
            &mine.credential
        )
        .await,
        200
    );
    deadline.done();
    // A revoked device is retired from its fleet by its owner.
    env.kubectl(["label", "device", &victim_name, "-n", &ns, "role-"])
        .run()
        .expect_ok("taking the revoked device out of the fleet");

    // --- 6. one changed layer: each device downloads only that layer ---
    let served_before: BTreeMap<String, u64> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                d.name().to_string(),
                forward.bytes_to(IpAddr::V4(lan.address(i))),
            )
        })
        .collect();
    let t4 = template(&app_v4.reference, side_ref, "v2", false);
    let v4 = revision_name(&t4);
    story.apply(fleet(&t4, false)).await;
    let deadline = story.deadline(&format!(
        "6. {v4} (one new layer) on the {} remaining devices",
        DEVICES - 1
    ));
    let updated = loop {
        let all = story.devices().await;
        let remaining: Vec<&Device> = all
            .values()
            .filter(|d| d.name_any() != victim_name)
            .collect();
        let complete = story.fleet().await.is_some_and(|f| {
            ready_reason(&f) == "RolloutComplete"
                && f.status.as_ref().is_some_and(|s| s.devices == 4)
        });
        if complete && remaining.iter().all(|d| done_on(d, &v4)) {
            break remaining.into_iter().cloned().collect::<Vec<Device>>();
        }
        deadline.tick().await;
    };
    deadline.done();
    let layer = app_v4.app_layer_size;
    let mut worst = 0.0f64;
    for d in &updated {
        let name = d.name_any();
        let downloaded = update_of(d).and_then(|u| u.downloaded_bytes).unwrap_or(0) as u64;
        let i = devices
            .iter()
            .position(|x| x.name() == name)
            .expect("a device");
        let over_the_wire = forward.bytes_to(IpAddr::V4(lan.address(i))) - served_before[&name];
        let ratio = downloaded as f64 / layer as f64;
        worst = worst.max(ratio);
        eprintln!(
            "    {name}: downloadedBytes {downloaded}, from the registry {over_the_wire} (HTTP included), changed layer {layer}, config {}",
            app_v4.config_size
        );
        assert!(
            downloaded >= layer,
            "{name} reports {downloaded} bytes, less than the new layer's {layer}"
        );
        assert!(
            over_the_wire >= layer && (over_the_wire as f64) < 1.25 * layer as f64,
            "{name} pulled {over_the_wire} bytes from the registry for a {layer}-byte layer"
        );
    }
    let downloaded_max = updated
        .iter()
        .map(|d| update_of(d).and_then(|u| u.downloaded_bytes).unwrap_or(0))
        .max()
        .unwrap_or(0);
    println!("bench: one_layer_bytes_ratio {worst:.4} ratio");
    println!("bench: one_layer_downloaded_bytes {downloaded_max} bytes");
    println!("bench: one_layer_changed_layer_bytes {layer} bytes");
    assert!(
        worst <= 1.02,
        "a device downloaded {worst:.4}× the changed layer"
    );

    eprintln!("==> the story took {:.1}s", started.elapsed().as_secs_f64());
    gateway.stop().expect("stopping the gateway");
    controller.stop().expect("stopping the controller");
    drop(devices);
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&work);
}
