//! A CNCF distribution registry that wants Bearer tokens, with a small token service of
//! our own: the auth dance public registries use (Docker Hub, GHCR, Quay), run here.
//!
//! The token service checks Basic credentials and answers `{"token", "expires_in"}` with
//! an ES256 JWT whose `x5c` header carries a self-signed certificate; the registry trusts
//! that certificate (`rootcertbundle`), checks issuer and audience, and grants what the
//! token's `access` claim lists. Every token request is counted, so a test can tell a
//! client that reuses its token from one that asks for a new one per request.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

const ISSUER: &str = "edgevisor-e2e-token-service";
const SERVICE: &str = "edgevisor-e2e-registry";

/// The registry and its token service; both stop when this is dropped.
pub struct TokenRegistry {
    registry: Child,
    /// `127.0.0.1:port` of the registry.
    pub host: String,
    /// `http://127.0.0.1:port/token`.
    pub realm: String,
    token_requests: Arc<AtomicUsize>,
    signer: Arc<Signer>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.registry.kill();
        let _ = self.registry.wait();
        self.server.abort();
    }
}

struct Signer {
    key: EcdsaKeyPair,
    /// The certificate, DER, standard base64 (as `x5c` wants it).
    x5c: String,
    rng: SystemRandom,
}

impl Signer {
    /// A JWT granting `actions` on `repository` to `subject` for `ttl`.
    fn token(&self, subject: &str, repository: &str, actions: &[&str], ttl: Duration) -> String {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "iat": now, "nbf": now - 1, "exp": now + ttl.as_secs(),
            "jti": format!("{now}-{}", TOKENS.fetch_add(1, Ordering::Relaxed)),
            "access": [{"type": "repository", "name": repository, "actions": actions}],
        });
        let signing_input = format!(
            "{}.{}",
            url.encode(header.to_string()),
            url.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map(|s| url.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{signing_input}.{signature}")
    }
}

static TOKENS: AtomicUsize = AtomicUsize::new(0);

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl TokenRegistry {
    /// `127.0.0.1:port` of the token service: plain http, so a client must list it as
    /// insecure as it does the registry.
    pub fn token_host(&self) -> String {
        self.realm
            .trim_start_matches("http://")
            .trim_end_matches("/token")
            .to_owned()
    }

    /// Starts both; `users` are the `(user, password)` pairs the token service accepts.
    /// Anonymous token requests are refused, so nothing is readable without credentials.
    pub async fn start(users: &[(&str, &str)]) -> anyhow::Result<TokenRegistry> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "key.pem",
            ],
        )?;
        openssl(
            d,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out",
                "key.p8",
            ],
        )?;
        openssl(
            d,
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "key.pem",
                "-subj",
                "/CN=edgevisor-e2e-tokens",
                "-days",
                "2",
                "-out",
                "cert.pem",
            ],
        )?;
        openssl(
            d,
            &[
                "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
            ],
        )?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &std::fs::read(d.join("key.p8"))?,
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("token signing key: {e}"))?;
        let x5c =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(d.join("cert.der"))?);
        let signer = Arc::new(Signer { key, x5c, rng });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let token_addr: SocketAddr = listener.local_addr()?;
        let realm = format!("http://{token_addr}/token");
        let token_requests = Arc::new(AtomicUsize::new(0));
        let users: Arc<HashMap<String, String>> = Arc::new(
            users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        );
        let server = tokio::spawn(serve_tokens(
            listener,
            signer.clone(),
            users,
            token_requests.clone(),
        ));

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {root}}}}}\n\
             http: {{addr: 127.0.0.1:{port}}}\n\
             auth: {{token: {{realm: \"{realm}\", service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {cert}}}}}\n",
            root = d.join("data").display(),
            cert = d.join("cert.pem").display(),
        );
        std::fs::write(d.join("config.yml"), config)?;
        let registry = Command::new("/usr/bin/docker-registry")
            .args(["serve", &d.join("config.yml").to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let host = format!("127.0.0.1:{port}");
        let this = TokenRegistry {
            registry,
            host,
            realm,
            token_requests,
            signer,
            server,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&this.host).is_err() {
            if Instant::now() > deadline {
                bail!("the token registry did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(this)
    }

    /// A token for pushing test images, minted directly (not counted as a request).
    pub fn push_token(&self, repository: &str) -> String {
        self.signer.token(
            "e2e-pusher",
            repository,
            &["pull", "push"],
            Duration::from_secs(600),
        )
    }

    /// Token requests the service answered so far (granted or refused).
    pub fn token_requests(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }
}

async fn serve_tokens(
    listener: tokio::net::TcpListener,
    signer: Arc<Signer>,
    users: Arc<HashMap<String, String>>,
    count: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (signer, users, count) = (signer.clone(), users.clone(), count.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer_token_request(&req, &signer, &users);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer_token_request(
    req: &Request<hyper::body::Incoming>,
    signer: &Signer,
    users: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    let user = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (u, p) = pair.split_once(':')?;
            (users.get(u).map(String::as_str) == Some(p)).then(|| u.to_owned())
        });
    let Some(user) = user else {
        return reply(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"credentials"}"#.into(),
        );
    };
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    if query.get("service").map(String::as_str) != Some(SERVICE) {
        return reply(StatusCode::BAD_REQUEST, r#"{"error":"service"}"#.into());
    }
    // `repository:<name>:<actions>`; readers get pull only.
    let Some(repository) = query
        .get("scope")
        .and_then(|s| s.strip_prefix("repository:"))
        .and_then(|s| s.rsplit_once(':'))
        .map(|(name, _)| name.to_owned())
    else {
        return reply(StatusCode::BAD_REQUEST, r#"{"error":"scope"}"#.into());
    };
    let token = signer.token(&user, &repository, &["pull"], Duration::from_secs(300));
    reply(
        StatusCode::OK,
        serde_json::json!({"token": token, "expires_in": 300}).to_string(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
