//! Liveness that costs nothing while nothing changes, against the real apiserver with a real
//! gateway and controller (as the chart's ServiceAccounts): a device that keeps polling gets
//! `Online=True` written once and then no write at all; it is listed in its gateway's
//! heard-from summary; when it falls silent the controller marks it offline within its offline
//! time; when it comes back the gateway marks it online again, with one write.
use std::time::{Duration, Instant};

use edgevisor_crds::Device;
use edgevisor_e2e::Env;
use edgevisor_e2e::controller::{self, Controller};
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway};
use kube::{Api, ResourceExt};
use serde_json::json;

/// The controller's `--offline-after-seconds` here (its least).
const OFFLINE_AFTER: u64 = 10;
/// The gateway's `--liveness-interval-seconds` here.
const INTERVAL: u64 = 2;

fn online(d: &Device) -> Option<String> {
    d.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Online")
        .map(|c| c.status.clone())
}

/// Polls its target (one-second long-polls) until dropped: a device that is alive.
fn keep_polling(
    http: reqwest::Client,
    url: String,
    credential: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = http
                .get(format!("{url}?waitSeconds=1"))
                .bearer_auth(&credential)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn wait_for(
    devices: &Api<Device>,
    name: &str,
    want: &str,
    timeout: Duration,
) -> (Duration, Device) {
    let started = Instant::now();
    loop {
        let d = devices.get(name).await.expect("the Device");
        if online(&d).as_deref() == Some(want) {
            return (started.elapsed(), d);
        }
        assert!(
            started.elapsed() < timeout,
            "{name} not Online={want} within {timeout:?}: {:?}",
            d.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_is_written_on_transitions_only_and_a_silent_device_goes_offline_in_time() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::get();
    let client = env.client().await.expect("client");
    let ns = env.namespace("liveness");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = edgevisor_e2e::tls::make_server_cert(dir.path(), &[]).expect("certificates");
    let mut token = BootstrapToken::new(&ns).expect("a token");
    token.secret = "e2e-token-liveness".into();
    gateway::apply_bootstrap_token(&client, &token)
        .await
        .expect("the token Secret");
    let mut options =
        gateway::Options::for_namespace("liveness", &tls, &ns, &token.secret).expect("options");
    options.liveness_interval_seconds = Some(INTERVAL);
    let gw = Gateway::start_ready(env, &options).await.expect("gateway");
    let offline_after = OFFLINE_AFTER.to_string();
    let _controller = Controller::start(
        env,
        &controller::Options {
            namespace: &ns,
            identity: "liveness",
            lease_seconds: 15,
            args: &["--offline-after-seconds", &offline_after],
        },
    )
    .expect("controller");

    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&tls.ca_pem().expect("CA")).expect("PEM")])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let enrolled: serde_json::Value = http
        .post(format!("{}/v1/enroll", gw.url))
        .bearer_auth(&token.token)
        .json(&json!({"name": "quiet-1", "architecture": "amd64"}))
        .send()
        .await
        .expect("enroll")
        .json()
        .await
        .expect("an enrollment answer");
    let credential = enrolled["credential"]
        .as_str()
        .unwrap_or_else(|| panic!("no credential: {enrolled}"))
        .to_string();
    let target = format!("{}/v1/devices/{ns}/quiet-1/target", gw.url);

    // Alive: Online=True is written once, then nothing while it keeps polling, for longer
    // than the offline time (the summaries keep it online).
    let poller = keep_polling(http.clone(), target.clone(), credential.clone());
    let (took, d) = wait_for(&devices, "quiet-1", "True", Duration::from_secs(30)).await;
    eprintln!("online after {took:?}");
    let version = d.resource_version();
    tokio::time::sleep(Duration::from_secs(OFFLINE_AFTER + 8)).await;
    let d = devices.get("quiet-1").await.expect("the Device");
    assert_eq!(online(&d).as_deref(), Some("True"), "{:?}", d.status);
    assert_eq!(
        d.resource_version(),
        version,
        "the Device was written while its device stayed online"
    );
    // The gateway's summary lists it.
    let summaries: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), edgevisor_e2e::release::RELEASE_NAMESPACE);
    let listed = summaries
        .list(&kube::api::ListParams::default().labels(edgevisor_controller::heard::LABEL))
        .await
        .expect("the summaries")
        .items
        .iter()
        .filter_map(|cm| edgevisor_controller::heard::read(cm).ok())
        .any(|(_, keys)| keys.contains(&(ns.clone(), "quiet-1".to_string())));
    assert!(listed, "no heard-from summary lists the device");

    // Silent: the controller marks it offline within its offline time (plus its check period
    // of 5 s and a summary interval).
    poller.abort();
    let (took, _) = wait_for(&devices, "quiet-1", "False", Duration::from_secs(40)).await;
    eprintln!("offline after {took:?} of silence (offline time {OFFLINE_AFTER} s)");
    assert!(
        took <= Duration::from_secs(OFFLINE_AFTER + 5 + INTERVAL + 2 + 3),
        "offline only after {took:?}"
    );

    // Back: online again, with one write.
    let poller = keep_polling(http, target, credential);
    let (took, _) = wait_for(&devices, "quiet-1", "True", Duration::from_secs(30)).await;
    eprintln!("online again after {took:?}");
    poller.abort();
}
