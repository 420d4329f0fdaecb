//! The agent's blob downloader against a registry served here, in-process, over real
//! HTTP: the first GET of a blob is cut half way through, and the retry must ask for
//! the rest with `Range`; the registry wants a Bearer token from its realm; one blob's
//! server ignores `Range` (the spool must start over); one serves corrupt bytes (the
//! download must fail and leave no spool behind).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::registry::{Downloader, DownloaderConfig, Fetch, Source};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};

type Body = BoxBody<Bytes, std::io::Error>;

const TOKEN: &str = "tok-123";

/// What a blob path serves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Cut the first GET half way, honour Range afterwards.
    CutThenResume,
    /// Cut the first GET half way, then ignore Range (answer 200 with everything).
    CutThenIgnoreRange,
    /// Serve other bytes of the right size.
    Corrupt,
    /// Redirect to `/plain/<hex>` on the registry of this port, as a registry redirects
    /// to its storage.
    RedirectTo(u16),
}

struct Blob {
    data: Vec<u8>,
    mode: Mode,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

#[derive(Default)]
struct Registry {
    blobs: HashMap<String, Blob>,
    seen: Mutex<Vec<Seen>>,
    gets: Mutex<HashMap<String, u32>>,
}

/// A registry serving `blobs`, each as its mode says, and its port.
async fn registry_with(blobs: &[(&Vec<u8>, Mode)]) -> (Arc<Registry>, u16) {
    let mut reg = Registry::default();
    for (data, mode) in blobs {
        reg.blobs.insert(
            hex_of(data),
            Blob {
                data: (*data).clone(),
                mode: *mode,
            },
        );
    }
    let reg = Arc::new(reg);
    let port = start(reg.clone()).await;
    (reg, port)
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn resp(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

/// The first half of `data`, then (after the half reached the client) a broken
/// connection: hyper aborts a response whose body stream fails.
fn cut(data: &[u8]) -> Body {
    let half = Bytes::copy_from_slice(&data[..data.len() / 2]);
    let s = futures::stream::iter([Ok(Frame::data(half))]).chain(futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(std::io::Error::other("cut"))
    }));
    BodyExt::boxed(StreamBody::new(s))
}

async fn serve(
    reg: Arc<Registry>,
    port: u16,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    reg.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: header("range"),
        auth: header("authorization"),
    });
    if let Some(hex) = path.strip_prefix("/plain/") {
        // Storage behind a redirect: the URL is the credential.
        return Ok(match reg.blobs.get(hex) {
            Some(b) => resp(StatusCode::OK, full(b.data.clone())),
            None => resp(StatusCode::NOT_FOUND, full("blob unknown")),
        });
    }
    if path == "/token" {
        let q = req.uri().query().unwrap_or_default();
        assert!(q.contains("service=test-registry"), "{q}");
        assert!(q.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{q}");
        return Ok(resp(
            StatusCode::OK,
            full(format!(r#"{{"token":"{TOKEN}"}}"#)),
        ));
    }
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        let mut r = resp(StatusCode::UNAUTHORIZED, full(r#"{"errors":[]}"#));
        r.headers_mut().insert(
            "www-authenticate",
            format!(
                r#"Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",scope="repository:team/app:pull""#
            )
            .parse()
            .unwrap(),
        );
        return Ok(r);
    }
    let Some(hex) = path.strip_prefix("/v2/team/app/blobs/sha256:") else {
        return Ok(resp(StatusCode::NOT_FOUND, full("no such path")));
    };
    let Some(blob) = reg.blobs.get(hex) else {
        return Ok(resp(StatusCode::NOT_FOUND, full("blob unknown")));
    };
    let n = {
        let mut g = reg.gets.lock().unwrap();
        let n = g.entry(hex.to_owned()).or_default();
        *n += 1;
        *n
    };
    let len = blob.data.len();
    let whole = |data: Vec<u8>| {
        let mut r = resp(StatusCode::OK, full(data));
        r.headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
        r
    };
    Ok(match blob.mode {
        Mode::RedirectTo(to) => {
            let mut r = resp(StatusCode::TEMPORARY_REDIRECT, full(""));
            r.headers_mut().insert(
                "location",
                format!("http://127.0.0.1:{to}/plain/{hex}")
                    .parse()
                    .unwrap(),
            );
            r
        }
        Mode::Corrupt => {
            let mut bad = blob.data.clone();
            bad[0] ^= 0xff;
            whole(bad)
        }
        _ if n == 1 => {
            let mut r = resp(StatusCode::OK, cut(&blob.data));
            r.headers_mut()
                .insert("content-length", len.to_string().parse().unwrap());
            r
        }
        Mode::CutThenIgnoreRange => whole(blob.data.clone()),
        Mode::CutThenResume => {
            let Some(start) = header("range")
                .and_then(|r| r.strip_prefix("bytes=").map(str::to_owned))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
            else {
                return Ok(whole(blob.data.clone()));
            };
            let mut r = resp(
                StatusCode::PARTIAL_CONTENT,
                full(blob.data[start..].to_vec()),
            );
            r.headers_mut().insert(
                "content-range",
                format!("bytes {start}-{}/{len}", len - 1).parse().unwrap(),
            );
            r
        }
    })
}

async fn start(reg: Arc<Registry>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let reg = reg.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| serve(reg.clone(), port, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

/// Incompressible-looking bytes, different per seed.
fn blob(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

fn hex_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A downloader that may reach the test registry on `port` over plain http.
fn downloader(spool: &std::path::Path, port: u16) -> Downloader {
    agent::install_crypto_provider();
    let http = || {
        reqwest::Client::builder()
            .tls_certs_only(Vec::new())
            .build()
            .unwrap()
    };
    Downloader::new(DownloaderConfig {
        registry_http: http(),
        gateway_http: http(),
        registry_auth: HashMap::new(),
        insecure_registries: vec![format!("127.0.0.1:{port}")],
        spool_dir: spool.to_owned(),
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
    })
}

fn fetch(port: u16, data: &[u8]) -> Fetch {
    Fetch {
        hex: hex_of(data),
        size: data.len() as u64,
        source: Source::Registry {
            base: format!("http://127.0.0.1:{port}").parse().unwrap(),
            repository: "team/app".into(),
        },
    }
}

#[tokio::test]
async fn a_plain_http_registry_is_refused_unless_listed_as_insecure() {
    let data = blob(9, 1000);
    let (reg, port) = registry_with(&[(&data, Mode::CutThenResume)]).await;
    let dir = tempfile::tempdir().unwrap();
    // Listed for another port only: this one is refused before a byte is sent.
    let d = downloader(dir.path(), port.wrapping_add(1));
    let progress = AtomicU64::new(0);
    let e = d
        .download(&fetch(port, &data), &progress)
        .await
        .unwrap_err();
    assert!(!e.retry && e.msg.contains("plain http"), "{}", e.msg);
    assert!(reg.gets.lock().unwrap().is_empty(), "a request was sent");
}

#[tokio::test]
async fn a_redirect_to_plain_http_is_refused_unless_its_host_is_listed() {
    let data = blob(10, 1000);
    let (storage, to) = registry_with(&[(&data, Mode::CutThenResume)]).await;
    let (_, from) = registry_with(&[(&data, Mode::RedirectTo(to))]).await;
    let dir = tempfile::tempdir().unwrap();
    // The agent's own clients, which carry its redirect rule.
    let with = |insecure: Vec<String>| {
        let (gateway_http, registry_http) =
            agent::http_clients(None, Duration::from_secs(10), &insecure).unwrap();
        Downloader::new(DownloaderConfig {
            registry_http,
            gateway_http,
            registry_auth: HashMap::new(),
            insecure_registries: insecure,
            spool_dir: dir.path().to_owned(),
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
        })
    };
    let progress = AtomicU64::new(0);
    let d = with(vec![format!("127.0.0.1:{from}")]);
    let e = d
        .download(&fetch(from, &data), &progress)
        .await
        .unwrap_err();
    assert!(
        storage.seen.lock().unwrap().is_empty(),
        "the redirect was followed: {}",
        e.msg
    );
    let d = with(vec![format!("127.0.0.1:{from}"), format!("127.0.0.1:{to}")]);
    let path = d.download(&fetch(from, &data), &progress).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
}

#[tokio::test]
async fn downloads_resume_after_a_cut_authenticate_and_verify() {
    let resumable = blob(1, 3 << 20);
    let ignores_range = blob(2, 1 << 20);
    let corrupt = blob(3, 100 << 10);
    let (reg, port) = registry_with(&[
        (&resumable, Mode::CutThenResume),
        (&ignores_range, Mode::CutThenIgnoreRange),
        (&corrupt, Mode::Corrupt),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("downloads");
    let d = downloader(&spool, port);

    // Cut half way, then resumed with Range; the token is fetched once and reused.
    let progress = AtomicU64::new(0);
    let f = fetch(port, &resumable);
    let path = d.download(&f, &progress).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), resumable);
    assert_eq!(path, spool.join(format!("{}.partial", f.hex)));
    assert_eq!(progress.load(Ordering::Relaxed), resumable.len() as u64);
    let seen: Vec<Seen> = reg.seen.lock().unwrap().clone();
    let blob_path = format!("/v2/team/app/blobs/sha256:{}", f.hex);
    let authed: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path == blob_path && s.auth.is_some())
        .collect();
    assert_eq!(authed.len(), 2, "{seen:?}");
    assert_eq!(authed[0].range, None);
    let half = resumable.len() / 2;
    assert_eq!(
        authed[1].range.as_deref(),
        Some(&*format!("bytes={half}-")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|s| s.path == "/token").count(),
        1,
        "{seen:?}"
    );
    assert_eq!(seen[0].auth, None, "anonymous first");

    // A server that ignores Range: the spool starts over and the result still verifies.
    let progress = AtomicU64::new(0);
    let f = fetch(port, &ignores_range);
    let path = d.download(&f, &progress).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), ignores_range);
    assert_eq!(progress.load(Ordering::Relaxed), ignores_range.len() as u64);

    // Corrupt content: refused without retrying, no spool left, progress taken back.
    let progress = AtomicU64::new(0);
    let f = fetch(port, &corrupt);
    let e = d.download(&f, &progress).await.unwrap_err();
    assert!(!e.retry && e.msg.contains("does not match"), "{e}");
    assert!(!d.spool_path(&f.hex).exists());
    assert_eq!(progress.load(Ordering::Relaxed), 0);
    assert_eq!(
        reg.gets.lock().unwrap()[&f.hex],
        1,
        "a corrupt blob is not fetched again"
    );

    // A blob the registry does not have: 404 is final too.
    let f = fetch(port, b"never uploaded");
    let e = d.download(&f, &AtomicU64::new(0)).await.unwrap_err();
    assert!(!e.retry && e.msg.contains("not found"), "{e}");
}

#[tokio::test]
async fn a_spool_left_by_an_earlier_run_is_resumed_not_refetched() {
    let data = blob(4, 1 << 20);
    let (reg, port) = registry_with(&[(&data, Mode::CutThenResume)]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(dir.path(), port);
    let f = fetch(port, &data);
    // What an agent killed mid-download leaves behind. The server's first GET would cut,
    // so count it as done: the spool must make the next request a Range request.
    std::fs::write(d.spool_path(&f.hex), &data[..1000]).unwrap();
    reg.gets.lock().unwrap().insert(f.hex.clone(), 1);
    let progress = AtomicU64::new(0);
    let path = d.download(&f, &progress).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    let seen = reg.seen.lock().unwrap().clone();
    let ranges: Vec<_> = seen.iter().filter_map(|s| s.range.clone()).collect();
    assert!(ranges.iter().all(|r| r == "bytes=1000-"), "{seen:?}");
    assert!(!ranges.is_empty());

    // A complete spool is verified and used without any request.
    let before = reg.seen.lock().unwrap().len();
    let path = d.download(&f, &AtomicU64::new(0)).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(reg.seen.lock().unwrap().len(), before);

    // A spool longer than the blob is junk: dropped and fetched again.
    std::fs::write(d.spool_path(&f.hex), vec![0u8; data.len() + 5]).unwrap();
    let path = d.download(&f, &AtomicU64::new(0)).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
}
