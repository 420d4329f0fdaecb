//! The `agent` binary end to end on one device: a real runtime (real runc) and a small
//! gateway served here (enroll, long-poll, status, files; registry blobs too) over plain
//! HTTP. It checks what only the whole program does: enrolling once and storing the
//! credential, refusing a bad bootstrap token with a clear exit, the long-poll loop,
//! throttled reports that pass the gateway's validation, and surviving a revoked
//! credential. (The end-to-end tests against the real gateway live in `e2e/`.)
#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use device_runtime::testkit;
use edgevisor_protocol::gateway::{
    BlobSource, DeviceReport, EnrollRequest, EnrollResponse, Target,
};
use edgevisor_protocol::lifecycle::Status;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

type Body = BoxBody<Bytes, std::io::Error>;

const TOKEN: &str = "bootstrap-1";
const CRED: &str = "cred-of-edge-1";
/// The namespace the gateway here enrolls into, which signatures are bound to.
const NAMESPACE: &str = "fleet";

/// The controller's signing key, as a test stands in for it.
fn signing_key() -> ring::signature::Ed25519KeyPair {
    let der =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    ring::signature::Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap()
}

/// Signs `t` as the controller would.
fn sign(key: &ring::signature::Ed25519KeyPair, t: &mut Target) {
    use base64::Engine as _;
    use ring::signature::KeyPair as _;
    let digest = t.state_digest.trim_start_matches("sha256:");
    let message =
        edgevisor_protocol::signature::message(NAMESPACE, &t.revision, &t.architecture, digest);
    t.signature = Some(edgevisor_protocol::signature::RevisionSignature {
        key_id: edgevisor_protocol::signature::key_id(key.public_key().as_ref()),
        value: base64::engine::general_purpose::STANDARD.encode(key.sign(&message).as_ref()),
    });
}

#[derive(Default)]
struct Gw {
    objects: HashMap<String, Vec<u8>>,
    target: Mutex<Option<Target>>,
    revoked: AtomicBool,
    enrolled: Mutex<Option<EnrollRequest>>,
    reports: Mutex<Vec<DeviceReport>>,
    polls: AtomicUsize,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    reply(status, json!({"error": msg}).to_string())
}

async fn serve(gw: Arc<Gw>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let method = req.method().clone();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if let Some(b) = gw.objects.get(&path) {
        return Ok(reply(StatusCode::OK, b.clone()));
    }
    if path == "/v1/enroll" && method == Method::POST {
        if auth != format!("Bearer {TOKEN}") {
            return Ok(error(StatusCode::UNAUTHORIZED, "unknown bootstrap token"));
        }
        let Ok(r) = serde_json::from_slice::<EnrollRequest>(&body) else {
            return Ok(error(StatusCode::UNPROCESSABLE_ENTITY, "bad request"));
        };
        let mut e = gw.enrolled.lock().unwrap();
        if e.is_some() {
            return Ok(error(StatusCode::CONFLICT, "already enrolled"));
        }
        let resp = EnrollResponse {
            namespace: NAMESPACE.into(),
            name: r.name.clone(),
            credential: CRED.into(),
        };
        *e = Some(r);
        return Ok(reply(
            StatusCode::CREATED,
            serde_json::to_vec(&resp).unwrap(),
        ));
    }
    let Some(rest) = path.strip_prefix("/v1/devices/fleet/edge-1/") else {
        return Ok(error(StatusCode::NOT_FOUND, "no route"));
    };
    if auth != format!("Bearer {CRED}") {
        return Ok(error(StatusCode::UNAUTHORIZED, "unknown credential"));
    }
    if gw.revoked.load(Ordering::SeqCst) {
        return Ok(error(StatusCode::FORBIDDEN, "credential revoked"));
    }
    match (method, rest) {
        (Method::GET, "target") => {
            gw.polls.fetch_add(1, Ordering::SeqCst);
            let known = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("known="))
                .map(str::to_owned);
            let wait: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("waitSeconds="))
                .and_then(|w| w.parse().ok())
                .unwrap_or(30);
            let until = Instant::now() + Duration::from_secs(wait);
            loop {
                let t = gw.target.lock().unwrap().clone();
                if let Some(t) = t
                    && Some(&t.revision) != known.as_ref()
                {
                    return Ok(reply(StatusCode::OK, serde_json::to_vec(&t).unwrap()));
                }
                if Instant::now() >= until {
                    return Ok(reply(StatusCode::NO_CONTENT, Bytes::new()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        (Method::PUT, "status") => match serde_json::from_slice::<DeviceReport>(&body) {
            Ok(r) if r.validate().is_empty() => {
                gw.reports.lock().unwrap().push(r);
                Ok(reply(StatusCode::ACCEPTED, Bytes::new()))
            }
            Ok(r) => Ok(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &r.validate().join("; "),
            )),
            Err(e) => Ok(error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())),
        },
        _ => Ok(error(StatusCode::NOT_FOUND, "no route")),
    }
}

async fn start(gw: Arc<Gw>) -> u16 {
    serve_loopback(gw, serve).await
}

struct Agent {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(dev: &Device, port: u16, token: &str, key: &ring::signature::Ed25519KeyPair) -> Agent {
        use ring::signature::KeyPair as _;
        let dir = dev.dir.path();
        std::fs::write(dir.join("token"), format!("  {token}\n")).unwrap();
        std::fs::write(
            dir.join("revision.pub"),
            edgevisor_protocol::signature::encode_public_key(key.public_key().as_ref()),
        )
        .unwrap();
        let log = dir.join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args(["--gateway", &format!("http://127.0.0.1:{port}")])
            .arg("--insecure-gateway")
            .args(["--insecure-registry", &format!("127.0.0.1:{port}")])
            .arg("--runtime-socket")
            .arg(dev.socket())
            .arg("--state-dir")
            .arg(dir.join("agent"))
            .args(["--name", "edge-1", "--architecture", "amd64"])
            .arg("--bootstrap-token-file")
            .arg(dir.join("token"))
            .arg("--revision-key")
            .arg(dir.join("revision.pub"))
            .args(["--info", "model=test-rig"])
            .args(["--wait-seconds", "2", "--status-interval-ms", "200"])
            .args(["--container-check-seconds", "1", "--log", "debug"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn term(&mut self) -> Option<std::process::ExitStatus> {
        let pid = rustix::process::Pid::from_raw(self.child.as_ref()?.id() as i32)?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(10)).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_for(what: &str, agent: &Agent, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Two threads: the gateway served here must answer while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_enrolls_follows_its_target_and_survives_revocation() {
    let dev = Device::new(&[]);
    let layer = testkit::busybox_layer().unwrap();
    let config = testkit::image_config(&["/bin/sh"]);
    let mut gw = Gw::default();
    for b in [&layer, &config] {
        gw.objects.insert(
            format!("/v2/library/busybox/blobs/sha256:{}", hex_of(b)),
            b.clone(),
        );
    }
    let gw = Arc::new(gw);
    let port = start(gw.clone()).await;
    let blobs: Vec<BlobSource> = [&config, &layer]
        .iter()
        .map(|b| BlobSource {
            digest: format!("sha256:{}", hex_of(b)),
            size: b.len() as u64,
            registry: format!("http://127.0.0.1:{port}"),
            repository: "library/busybox".into(),
        })
        .collect();
    let image =
        json!({"config": testkit::descriptor(&config), "layers": [testkit::descriptor(&layer)]});
    let key = signing_key();
    let unsigned = |rev: &str, script: &str| {
        let st = state(vec![container("app", &image, script)], 10, 1);
        Target {
            revision: rev.into(),
            architecture: "amd64".into(),
            state_digest: format!("sha256:{}", hex_of(&st)),
            state: String::from_utf8(st).unwrap(),
            blobs: blobs.clone(),
            signature: None,
        }
    };
    let target = |rev: &str, script: &str| {
        let mut t = unsigned(rev, script);
        sign(&key, &mut t);
        t
    };

    // A wrong bootstrap token: a clear message and a non-zero exit, no credential.
    let mut bad = Agent::start(&dev, port, "not-the-token", &key);
    let st = bad
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("agent exits");
    assert!(!st.success());
    assert!(
        bad.log()
            .contains("enrollment refused: the bootstrap token is invalid or expired"),
        "{}",
        bad.log()
    );
    assert!(!dev.dir.path().join("agent/credential.json").exists());

    // Enrolls once, stores the credential 0600, reports the (empty) device at once.
    let mut agent = Agent::start(&dev, port, TOKEN, &key);
    let cred_path = dev.dir.path().join("agent/credential.json");
    wait_for("the credential", &agent, || cred_path.exists()).await;
    let mode = std::fs::metadata(&cred_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let enrolled = gw.enrolled.lock().unwrap().clone().unwrap();
    assert_eq!(enrolled.info["model"], "test-rig");
    wait_for("a first report", &agent, || {
        !gw.reports.lock().unwrap().is_empty()
    })
    .await;

    // A target: downloaded, installed, committed, reported DONE with the containers.
    *gw.target.lock().unwrap() = Some(target("r1", "exec sleep 1000"));
    let done = |rev: &'static str| {
        let gw = gw.clone();
        move || {
            gw.reports.lock().unwrap().iter().any(|r| {
                r.current_revision.as_deref() == Some(rev)
                    && r.update
                        .as_ref()
                        .is_some_and(|u| u.revision == rev && u.status == Status::Done)
                    && r.containers.iter().any(|c| c.name == "app" && c.ready)
            })
        }
    };
    wait_for("r1 DONE", &agent, done("r1")).await;
    {
        let reports = gw.reports.lock().unwrap();
        let statuses: Vec<Status> = reports
            .iter()
            .filter_map(|r| r.update.as_ref())
            .filter(|u| u.revision == "r1")
            .map(|u| u.status)
            .collect();
        assert!(statuses.contains(&Status::Downloading), "{statuses:?}");
        let dl = reports
            .iter()
            .filter_map(|r| r.update.as_ref())
            .find(|u| u.status == Status::Downloading)
            .unwrap();
        assert_eq!(dl.total_bytes, (layer.len() + config.len()) as u64);
        // Only changes are reported: no two consecutive reports are the same.
        assert!(reports.windows(2).all(|w| w[0] != w[1]), "{reports:#?}");
    }

    // Quiet while nothing changes: long-polls go on, reports do not.
    let n = gw.reports.lock().unwrap().len();
    let polls = gw.polls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(gw.reports.lock().unwrap().len(), n, "{}", agent.log());
    assert!(
        gw.polls.load(Ordering::SeqCst) > polls,
        "long-polls are the heartbeat"
    );

    // Revoked: the agent says so and keeps trying, without exiting.
    gw.revoked.store(true, Ordering::SeqCst);
    wait_for("the refusal in the log", &agent, || {
        agent
            .log()
            .contains("credential refused: revoked or device deleted")
    })
    .await;
    assert!(agent.alive());
    gw.revoked.store(false, Ordering::SeqCst);

    // Back in service: the next target is carried out (nothing to download).
    *gw.target.lock().unwrap() = Some(target("r2", "echo r2; exec sleep 1000"));
    wait_for("r2 DONE", &agent, done("r2")).await;
    assert_eq!(
        running(&dev.client()).await,
        vec![("app".into(), "r2".into())]
    );

    // A gateway serving an altered state (the script changed after signing, its digest made
    // to match), or one signed by a key the device was not given: refused before the runtime
    // sees it, reported SignatureInvalid, and r2 keeps running.
    let mut altered = target("r3", "exec sleep 1000");
    let forged = unsigned("r3", "echo owned; exec sleep 1000");
    altered.state = forged.state;
    altered.state_digest = forged.state_digest;
    let mut stranger = unsigned("r4", "exec sleep 1000");
    sign(&signing_key(), &mut stranger);
    for (rev, t) in [("r3", altered), ("r4", stranger)] {
        *gw.target.lock().unwrap() = Some(t);
        wait_for("the refusal", &agent, || {
            gw.reports.lock().unwrap().iter().any(|r| {
                r.update.as_ref().is_some_and(|u| {
                    u.revision == rev
                        && u.status == Status::Wontgo
                        && u.reason.as_deref() == Some("SignatureInvalid")
                })
            })
        })
        .await;
        assert!(
            dev.client()
                .steps()
                .await
                .unwrap()
                .iter()
                .all(|s| s.rev != rev),
            "{rev} reached the runtime"
        );
        assert_eq!(
            running(&dev.client()).await,
            vec![("app".into(), "r2".into())]
        );
    }
    *gw.target.lock().unwrap() = Some(target("r2", "echo r2; exec sleep 1000"));

    // Restarted, it uses its stored credential (a second enrollment would get 409).
    assert!(
        agent.term().await.is_some_and(|s| s.success()),
        "{}",
        agent.log()
    );
    let before = gw.reports.lock().unwrap().len();
    let mut agent = Agent::start(&dev, port, "token-no-longer-needed", &key);
    wait_for("a report after restart", &agent, || {
        gw.reports.lock().unwrap().len() > before
    })
    .await;
    wait_for("r2 reported again", &agent, || {
        gw.reports.lock().unwrap()[before..].iter().any(|r| {
            r.update
                .as_ref()
                .is_some_and(|u| u.revision == "r2" && u.status == Status::Done)
        })
    })
    .await;
    assert!(agent.alive());
    assert!(agent.log().contains("enrolled as fleet/edge-1"));
}
