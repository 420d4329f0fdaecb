//! The gateway survives hostile clients, against a real replica over TLS: thousands of slow
//! connections (while a real agent keeps polling), a body trickled a byte at a time, a stalled body, a second long-poll with the
//! same credential, and a certificate rotated under it.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgevisor_e2e::Env;
use edgevisor_e2e::gateway::{self, BootstrapToken, Gateway};
use edgevisor_e2e::measure::rss_bytes;
use edgevisor_e2e::tls::TlsFiles;
use edgevisor_protocol::gateway::EnrollResponse;
use reqwest::StatusCode;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The chart's memory limit of a gateway replica.
const MEMORY_LIMIT: u64 = 256 << 20;
const SLOW_CONNECTIONS: usize = 5_000;
const CLIENT_TIMEOUT_SECONDS: u64 = 4;

/// The tests share one bootstrap-token Secret (the gateway may read only the ones the chart
/// names), and the slow-connection test measures a process's memory: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    gw: Gateway,
    tls: TlsFiles,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    ns: String,
    token: String,
}

impl Setup {
    async fn start(name: &str) -> Setup {
        let turn = ONE_AT_A_TIME.lock().await;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let env = Env::get();
        let client = env.client().await.unwrap();
        let ns = env.namespace(name);
        let dir = tempfile::tempdir().unwrap();
        let tls = edgevisor_e2e::tls::make_server_cert(&dir.path().join("first"), &[]).unwrap();
        let mut token = BootstrapToken::new(&ns).unwrap();
        token.secret = "e2e-token-hostile".into();
        gateway::apply_bootstrap_token(&client, &token)
            .await
            .unwrap();
        let mut options = gateway::Options::for_namespace(name, &tls, &ns, &token.secret).unwrap();
        options.args = vec![
            "--client-timeout-seconds".into(),
            CLIENT_TIMEOUT_SECONDS.to_string(),
        ];
        let gw = Gateway::start_ready(env, &options).await.unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&tls.ca_pem().unwrap()).unwrap()])
            .timeout(Duration::from_secs(90))
            // A connection per request: the gateway closes idle ones after the short client
            // timeout these tests give it, and a pooled one could be reused just as it closes.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Setup {
            _turn: turn,
            gw,
            tls,
            _dir: dir,
            http,
            ns,
            token: token.token,
        }
    }

    async fn enroll(&self, name: &str) -> EnrollResponse {
        let r = self
            .http
            .post(format!("{}/v1/enroll", self.gw.url))
            .bearer_auth(&self.token)
            .json(&json!({"name": name, "architecture": "amd64"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    fn target_url(&self, name: &str, wait: u64) -> String {
        format!(
            "{}/v1/devices/{}/{name}/target?waitSeconds={wait}",
            self.gw.url, self.ns
        )
    }

    /// A TLS connection made by hand, for requests no HTTP client would send.
    async fn raw(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(&self.tls.ca_pem().unwrap())
                    .unwrap(),
            )
            .unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.gw.listen).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap()
    }

    fn rss(&self) -> u64 {
        rss_bytes(self.gw.pid()).unwrap()
    }
}

/// Reads an HTTP/1.1 answer's status code (and whatever follows) until the server closes or
/// `within` passes.
async fn status_line(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    within: Duration,
) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// `edgevisor_gateway_requests_total{route="target",code="204"}`: answered long-polls.
async fn answered_polls(metrics: &str) -> u64 {
    let series = r#"edgevisor_gateway_requests_total{route="target",code="204"}"#;
    edgevisor_e2e::measure::metric(metrics, series)
        .await
        .unwrap()
        .unwrap_or(0.0) as u64
}

#[tokio::test]
async fn five_thousand_slow_connections_do_not_take_the_replica_down() {
    let s = Setup::start("slow").await;
    let device = s.enroll("steady").await;
    // A real device (runtime and agent) on the host's loopback, polling every two seconds.
    edgevisor_e2e::devices::require_tools().unwrap();
    let devices = tempfile::tempdir().unwrap();
    let mut options = edgevisor_e2e::devices::DeviceOptions::new(
        "agent",
        "",
        devices.path(),
        &s.gw.url,
        &s.tls.ca_cert,
        &s.token,
    );
    options.agent_args = vec!["--wait-seconds".into(), "2".into()];
    let mut agent = edgevisor_e2e::devices::RealDevice::start(Env::get(), &options).unwrap();
    agent.wait_enrolled(Duration::from_secs(60)).unwrap();
    let baseline = s.rss();
    let polls_before = answered_polls(&s.gw.metrics).await;
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let peak_open = Arc::new(AtomicUsize::new(0));
    // Each connection sends the start of a TLS record a byte every two seconds and reconnects
    // when the gateway gives up on it: the gateway must hold (or shed) them all at once.
    let attackers: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|_| {
            let (stop, open, peak_open, addr) =
                (stop.clone(), open.clone(), peak_open.clone(), s.gw.listen);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let now = open.fetch_add(1, Ordering::Relaxed) + 1;
                    peak_open.fetch_max(now, Ordering::Relaxed);
                    for byte in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01].iter().cycle() {
                        if stop.load(Ordering::Relaxed) || tcp.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Hold them for two client timeouts (so the gateway also sheds and takes them back), then
    // poll like a device while they are all open.
    let mut peak_rss = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2 * CLIENT_TIMEOUT_SECONDS + 2) {
        peak_rss = peak_rss.max(s.rss());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let polled = Instant::now();
    let r = s
        .http
        .get(s.target_url("steady", 0))
        .bearer_auth(&device.credential)
        .send()
        .await
        .expect("a device's poll during the attack");
    let took = polled.elapsed();
    peak_rss = peak_rss.max(s.rss());
    let during = open.load(Ordering::Relaxed);
    let agent_polls = answered_polls(&s.gw.metrics).await - polls_before;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    println!(
        "slow connections: {} open at the poll, {} at most; gateway RSS {} MiB before, {} MiB at most; the poll took {took:?}; the agent's polls answered meanwhile: {agent_polls}",
        during,
        peak_open.load(Ordering::Relaxed),
        baseline >> 20,
        peak_rss >> 20
    );
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "the device's poll failed"
    );
    // The agent polls every 2 s: during the attack its polls kept being answered.
    assert!(
        agent_polls >= 3,
        "the real agent's polls were answered {agent_polls} times during the attack:\n{}",
        agent.agent_log_tail(20)
    );
    assert!(
        peak_open.load(Ordering::Relaxed) >= SLOW_CONNECTIONS * 9 / 10,
        "the attack never had its connections open"
    );
    assert!(
        peak_rss < MEMORY_LIMIT,
        "the gateway grew to {} MiB under slow connections",
        peak_rss >> 20
    );
    let mut gw = s.gw;
    assert!(gw.running(), "the gateway died:\n{}", gw.log_tail());
}

#[tokio::test]
async fn a_trickled_body_costs_kilobytes_and_a_stalled_one_is_cut_off() {
    let s = Setup::start("trickle").await;
    let device = s.enroll("trickler").await;
    // Warm up: a connection and a request of each kind, so the allocator has its arenas.
    for _ in 0..3 {
        let r = s
            .http
            .get(s.target_url("trickler", 0))
            .bearer_auth(&device.credential)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = s.rss();

    // An authenticated device sends a 64 KiB status body one byte per TLS record.
    const BODY: usize = 64 << 10;
    let pad = "x".repeat(BODY - 40);
    let mut body = format!("{{\"containers\":[],\"padding\":\"{pad}\"}}").into_bytes();
    body.resize(BODY, b' ');
    let mut stream = s.raw().await;
    let head = format!(
        "PUT /v1/devices/{}/trickler/status HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {BODY}\r\n\r\n",
        s.ns, device.credential
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let sending = Instant::now();
    let mut peak = before;
    for (i, byte) in body.iter().enumerate() {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
        if i % 4096 == 0 {
            peak = peak.max(s.rss());
        }
    }
    peak = peak.max(s.rss());
    let code = status_line(&mut stream, Duration::from_secs(10)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.rss();
    println!(
        "trickled 64 KiB in {:?}: gateway RSS {} KiB before, +{} KiB at most, +{} KiB after close; answered {code:?}",
        sending.elapsed(),
        before >> 10,
        peak.saturating_sub(before) >> 10,
        after.saturating_sub(before) >> 10
    );
    assert!(code.is_some(), "no answer to the trickled body");
    assert!(
        peak.saturating_sub(before) < 1 << 20,
        "a trickled 64 KiB body cost {} KiB",
        peak.saturating_sub(before) >> 10
    );
    assert!(
        after.saturating_sub(before) < 1 << 20,
        "{} KiB stayed after the connection closed",
        after.saturating_sub(before) >> 10
    );

    // Without a valid token, an enrollment is refused before its body is read.
    let mut stream = s.raw().await;
    stream
        .write_all(
            b"POST /v1/enroll HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer not-a-token-at-all\r\ncontent-type: application/json\r\ncontent-length: 65536\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(
        status_line(&mut stream, Duration::from_secs(3)).await,
        Some(401),
        "an unknown token waited for its body"
    );

    // A body that stalls is cut off after the client timeout.
    let mut stream = s.raw().await;
    let head = format!(
        "PUT /v1/devices/{}/trickler/status HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"cont",
        s.ns, device.credential
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let stalled = Instant::now();
    assert_eq!(
        status_line(&mut stream, Duration::from_secs(CLIENT_TIMEOUT_SECONDS + 5)).await,
        Some(408),
        "a stalled body was not timed out"
    );
    assert!(stalled.elapsed() >= Duration::from_secs(CLIENT_TIMEOUT_SECONDS - 1));
}

#[tokio::test]
async fn a_second_long_poll_replaces_the_first_and_a_rotated_certificate_is_served() {
    let s = Setup::start("poll-tls").await;
    let device = s.enroll("poller").await;
    let first = tokio::spawn({
        let (http, url, credential) = (
            s.http.clone(),
            s.target_url("poller", 60),
            device.credential.clone(),
        );
        async move {
            let r = http.get(url).bearer_auth(credential).send().await;
            (r.map(|r| r.status()), Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::spawn({
        let (http, url, credential) = (
            s.http.clone(),
            s.target_url("poller", 2),
            device.credential.clone(),
        );
        async move {
            http.get(url)
                .bearer_auth(credential)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    let replaced_at = Instant::now();
    let (code, answered) = first.await.unwrap();
    assert_eq!(code.unwrap(), StatusCode::NO_CONTENT);
    assert!(
        answered.duration_since(replaced_at) < Duration::from_secs(2),
        "the first poll kept waiting after a second one came"
    );
    assert_eq!(second.await.unwrap().unwrap(), StatusCode::NO_CONTENT);

    // A new certificate (from a new CA) written over the files is served without a restart.
    let rotated =
        edgevisor_e2e::tls::make_server_cert(&s._dir.path().join("rotated"), &[]).unwrap();
    let trusting_new = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&rotated.ca_pem().unwrap()).unwrap()])
        .build()
        .unwrap();
    let url = s.target_url("poller", 0);
    assert!(
        trusting_new
            .get(&url)
            .bearer_auth(&device.credential)
            .send()
            .await
            .is_err(),
        "the new CA was trusted before the rotation"
    );
    std::fs::copy(&rotated.key, &s.tls.key).unwrap();
    std::fs::copy(&rotated.cert, &s.tls.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match trusting_new
            .get(&url)
            .bearer_auth(&device.credential)
            .send()
            .await
        {
            Ok(r) => {
                assert_eq!(r.status(), StatusCode::NO_CONTENT);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the rotated certificate was not served: {e}\n{}",
                s.gw.log_tail()
            ),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut gw = s.gw;
    assert!(gw.running(), "{}", gw.log_tail());
}
