//! Downloading blobs: image layers and configs from OCI registries
//! (`GET {registry}/v2/{repository}/blobs/{digest}`), and file objects of a state from the
//! gateway. Both land in a spool file, `<state-dir>/downloads/<hex>.partial`, that survives
//! a cut connection, a restart of the agent and a reboot:
//!
//! - the body is written to the spool chunk by chunk as it arrives, so a blob of any size
//!   costs one chunk of memory;
//! - a later attempt asks only for the rest, `Range: bytes=<have>-`; a `206` whose
//!   `Content-Range` starts there is appended, a `200` means the server ignored the range
//!   and the spool starts over, a `416` means the spool is bogus and is dropped;
//! - nothing is trusted until the whole spool hashes to the digest and has the size the
//!   state names: a mismatch deletes the spool and fails the blob (retrying the same
//!   bytes would only fail again);
//! - network errors, `5xx`, `408` and `429` are retried with jittered backoff, a bounded
//!   number of times; `404`, refused credentials and corrupt content are not.
//!
//! Registry authentication follows the registry's challenge, as `docker pull` does:
//! anonymous first; on `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` a
//! token is fetched from the realm (with the `--registry-auth` credentials of that host,
//! if any) and cached per repository; on `Basic` the configured credentials are sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgevisor_protocol::registry_auth::{
    Challenge, Credentials, MAX_TOKEN_ANSWER_BYTES, check_transport, parse_challenge,
    token_from_answer,
};
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backoff::Backoff;

/// Where one object comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI registry: `base` is e.g. `https://registry.example:5000`.
    Registry { base: Url, repository: String },
    /// The gateway's files endpoint, with the device credential.
    Gateway { url: Url, credential: String },
}

/// One object to download: its sha256 (hex), exact size and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub hex: String,
    pub size: u64,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sha256:{hex}: {msg}")]
pub struct DownloadError {
    pub hex: String,
    pub msg: String,
    /// Worth another attempt (network, 5xx); false for 404, refused credentials, corrupt
    /// content, a full disk.
    pub retry: bool,
}

/// The host (and port, when not the scheme's default) of a registry URL.
pub fn url_host(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// What the downloader needs; the clients are built by the caller (TLS roots differ).
pub struct DownloaderConfig {
    pub registry_http: reqwest::Client,
    pub gateway_http: reqwest::Client,
    /// `Authorization` values by registry host (see [`parse_docker_config`]).
    pub registry_auth: HashMap<String, Credentials>,
    /// Hosts (`host[:port]`) that may be reached over plain http: registries and token
    /// services. Any other http URL is refused before a byte is sent.
    pub insecure_registries: Vec<String>,
    /// The spool directory, `<state-dir>/downloads`.
    pub spool_dir: PathBuf,
    /// Attempts per blob before giving up.
    pub max_attempts: u32,
    /// First retry delay (doubles, capped at 30 s).
    pub base_delay: Duration,
}

pub struct Downloader {
    cfg: DownloaderConfig,
    /// Authorization values by `registry|repository`, so one token serves every blob of
    /// a repository until it expires (a 401 then fetches a fresh one).
    tokens: Mutex<HashMap<String, String>>,
}

fn fail(hex: &str, msg: impl Into<String>) -> DownloadError {
    DownloadError {
        hex: hex.to_owned(),
        msg: msg.into(),
        retry: false,
    }
}

fn retry(hex: &str, msg: impl Into<String>) -> DownloadError {
    DownloadError {
        hex: hex.to_owned(),
        msg: msg.into(),
        retry: true,
    }
}

/// Whether a status is worth another attempt.
pub fn retryable_status(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// `bytes START-END/TOTAL` → START.
fn content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// Keeps the shared byte counter in step with what this blob's spool holds.
struct Counted<'a> {
    total: &'a AtomicU64,
    mine: u64,
}

impl Counted<'_> {
    fn set(&mut self, n: u64) {
        if n >= self.mine {
            self.total.fetch_add(n - self.mine, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.mine - n, Ordering::Relaxed);
        }
        self.mine = n;
    }
}

impl Downloader {
    pub fn new(cfg: DownloaderConfig) -> Downloader {
        Downloader {
            cfg,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Deletes every spool file. Called when an update comes to rest: what a cancelled
    /// update left is then of no use, and the spool must not grow without bound.
    pub async fn clear_spool(&self) {
        let Ok(mut dir) = tokio::fs::read_dir(&self.cfg.spool_dir).await else {
            return;
        };
        while let Ok(Some(e)) = dir.next_entry().await {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                remove(&e.path()).await;
            }
        }
    }

    pub fn spool_path(&self, hex: &str) -> PathBuf {
        self.cfg.spool_dir.join(format!("{hex}.partial"))
    }

    /// Downloads `f` into its spool file and verifies it; returns the spool's path (the
    /// caller uploads it to the runtime and deletes it). `progress` counts the bytes of
    /// every blob sharing it (resumed bytes included; bytes thrown away are taken back).
    pub async fn download(
        &self,
        f: &Fetch,
        progress: &AtomicU64,
    ) -> Result<PathBuf, DownloadError> {
        if !edgevisor_protocol::state::is_sha256_hex(&f.hex) {
            return Err(fail(&f.hex, "not a sha256 digest"));
        }
        tokio::fs::create_dir_all(&self.cfg.spool_dir)
            .await
            .map_err(|e| fail(&f.hex, format!("{}: {e}", self.cfg.spool_dir.display())))?;
        let spool = self.spool_path(&f.hex);
        let mut counted = Counted {
            total: progress,
            mine: 0,
        };
        let mut backoff = Backoff::new(self.cfg.base_delay, Duration::from_secs(30));
        loop {
            match self.attempt(f, &spool, &mut counted).await {
                Ok(()) => return Ok(spool),
                Err(e) if e.retry && backoff.attempts() + 1 < self.cfg.max_attempts => {
                    let d = backoff.next_delay();
                    tracing::warn!(
                        "download of sha256:{} failed (attempt {}/{}), retrying in {d:?}: {}",
                        f.hex,
                        backoff.attempts(),
                        self.cfg.max_attempts,
                        e.msg
                    );
                    tokio::time::sleep(d).await;
                }
                Err(e) => {
                    // The bytes stay in the spool for a later try, but this update no
                    // longer counts them.
                    counted.set(0);
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(
        &self,
        f: &Fetch,
        spool: &Path,
        counted: &mut Counted<'_>,
    ) -> Result<(), DownloadError> {
        let hex = f.hex.as_str();
        let mut have = tokio::fs::metadata(spool)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have > f.size {
            remove(spool).await;
            have = 0;
        }
        counted.set(have);
        if have < f.size {
            self.fetch_rest(f, spool, &mut have, counted).await?;
        }
        let actual = hash_file(spool)
            .await
            .map_err(|e| retry(hex, format!("reading {}: {e}", spool.display())))?;
        if actual != (hex.to_owned(), f.size) {
            remove(spool).await;
            counted.set(0);
            return Err(fail(
                hex,
                format!(
                    "downloaded content does not match: got sha256:{} ({} bytes), expected {} bytes",
                    actual.0, actual.1, f.size
                ),
            ));
        }
        Ok(())
    }

    /// One GET of what the spool lacks, appended to it.
    async fn fetch_rest(
        &self,
        f: &Fetch,
        spool: &Path,
        have: &mut u64,
        counted: &mut Counted<'_>,
    ) -> Result<(), DownloadError> {
        let hex = f.hex.as_str();
        let mut resp = self.get(f, *have).await?;
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(*have) {
                    remove(spool).await;
                    counted.set(0);
                    return Err(retry(
                        hex,
                        format!("asked for bytes {have}-, got a range starting at {start:?}"),
                    ));
                }
            }
            StatusCode::OK => {
                if *have > 0 {
                    tracing::info!(
                        "sha256:{hex}: the server ignored Range; restarting from byte 0"
                    );
                    *have = 0;
                    counted.set(0);
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                remove(spool).await;
                counted.set(0);
                return Err(retry(hex, "the server refused to resume; starting over"));
            }
            StatusCode::NOT_FOUND => {
                return Err(fail(hex, format!("not found at {}", resp.url())));
            }
            s if retryable_status(s) => {
                return Err(retry(hex, format!("{s} from {}", resp.url())));
            }
            s => {
                let url = resp.url().to_string();
                let body = resp.text().await.unwrap_or_default();
                return Err(fail(hex, format!("{s} from {url}: {}", excerpt(&body))));
            }
        }
        if let Some(n) = resp.content_length()
            && have.saturating_add(n) > f.size
        {
            return Err(fail(
                hex,
                format!(
                    "the server sends {} bytes, more than the {} expected",
                    have.saturating_add(n),
                    f.size
                ),
            ));
        }
        let mut file = if *have == 0 {
            tokio::fs::File::create(spool).await
        } else {
            tokio::fs::OpenOptions::new().append(true).open(spool).await
        }
        .map_err(|e| fail(hex, format!("{}: {e}", spool.display())))?;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // What arrived is on disk; the next attempt resumes after it.
                    let _ = file.flush().await;
                    return Err(retry(
                        hex,
                        format!("connection lost after {have} of {} bytes: {e}", f.size),
                    ));
                }
            };
            let len = chunk.len() as u64;
            if have.saturating_add(len) > f.size {
                drop(file);
                remove(spool).await;
                counted.set(0);
                return Err(fail(
                    hex,
                    format!("the server sent more than the {} bytes expected", f.size),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| fail(hex, format!("{}: {e}", spool.display())))?;
            *have += len;
            counted.set(*have);
        }
        file.flush()
            .await
            .map_err(|e| fail(hex, format!("{}: {e}", spool.display())))?;
        if *have < f.size {
            return Err(retry(
                hex,
                format!("the body ended after {have} of {} bytes", f.size),
            ));
        }
        Ok(())
    }

    /// Sends the GET, answering a registry's authentication challenge once.
    async fn get(&self, f: &Fetch, from: u64) -> Result<reqwest::Response, DownloadError> {
        let hex = f.hex.as_str();
        let send = |http: &reqwest::Client, url: &Url, auth: Option<&str>| {
            let mut r = http.get(url.clone());
            if from > 0 {
                r = r.header(RANGE, format!("bytes={from}-"));
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r.send()
        };
        let net = |e: reqwest::Error| retry(hex, format!("{e:#}"));
        match &f.source {
            Source::Gateway { url, credential } => {
                let auth = format!("Bearer {credential}");
                send(&self.cfg.gateway_http, url, Some(&auth))
                    .await
                    .map_err(net)
            }
            Source::Registry { base, repository } => {
                let url = blob_url(base, repository, hex)
                    .ok_or_else(|| fail(hex, format!("bad registry URL {base}")))?;
                self.check_tls(hex, &url, "registry")?;
                let key = format!("{}|{repository}", url_host(base));
                let cached = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
                let resp = send(&self.cfg.registry_http, &url, cached.as_deref())
                    .await
                    .map_err(net)?;
                if resp.status() != StatusCode::UNAUTHORIZED {
                    return Ok(resp);
                }
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let auth = self.authorize(hex, base, repository, &challenge).await?;
                if let Ok(mut t) = self.tokens.lock() {
                    t.insert(key, auth.clone());
                }
                let resp = send(&self.cfg.registry_http, &url, Some(&auth))
                    .await
                    .map_err(net)?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    return Err(fail(
                        hex,
                        format!(
                            "the registry {} refused the credentials (check --registry-auth)",
                            url_host(base)
                        ),
                    ));
                }
                Ok(resp)
            }
        }
    }

    /// Refuses a plain-http URL whose host is not listed as insecure.
    fn check_tls(&self, hex: &str, url: &Url, what: &str) -> Result<(), DownloadError> {
        check_transport(url.as_str(), &self.cfg.insecure_registries).map_err(|host| {
            fail(
                hex,
                format!(
                    "the {what} {host} is plain http: refused (credentials and tokens go over \
                     TLS only; --insecure-registry {host} allows it, for tests and labs)"
                ),
            )
        })
    }

    /// The `Authorization` value a challenge asks for.
    async fn authorize(
        &self,
        hex: &str,
        base: &Url,
        repository: &str,
        challenge: &str,
    ) -> Result<String, DownloadError> {
        let host = url_host(base);
        let basic = self
            .cfg
            .registry_auth
            .get(&host)
            .map(|c| c.basic_header().to_owned());
        let (realm, query) = match parse_challenge(challenge) {
            Some(c @ Challenge::Bearer { .. }) => c.token_query(repository).unwrap_or_default(),
            Some(Challenge::Basic) => {
                return basic.ok_or_else(|| {
                    fail(
                        hex,
                        format!("the registry {host} wants credentials; pass --registry-auth"),
                    )
                });
            }
            None => {
                return Err(fail(
                    hex,
                    format!("401 from {host} without a usable challenge ({challenge:?})"),
                ));
            }
        };
        let mut url =
            Url::parse(&realm).map_err(|e| fail(hex, format!("bad token realm {realm:?}: {e}")))?;
        // Any host may issue tokens (that is how public registries work), but credentials
        // and tokens travel over TLS only.
        self.check_tls(hex, &url, "token service")?;
        url.query_pairs_mut().extend_pairs(query);
        let mut req = self.cfg.registry_http.get(url);
        if let Some(b) = &basic {
            req = req.header(AUTHORIZATION, b);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| retry(hex, format!("token request to {realm}: {e:#}")))?;
        let status = resp.status();
        if retryable_status(status) {
            return Err(retry(hex, format!("token request to {realm}: {status}")));
        }
        if !status.is_success() {
            return Err(fail(
                hex,
                format!("the token service {realm} refused: {status} (check --registry-auth)"),
            ));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) if body.len() + c.len() <= MAX_TOKEN_ANSWER_BYTES => {
                    body.extend_from_slice(&c)
                }
                Ok(Some(_)) => return Err(fail(hex, "token answer larger than 64 KiB")),
                Ok(None) => break,
                Err(e) => return Err(retry(hex, format!("token answer: {e:#}"))),
            }
        }
        token_from_answer(&body)
            .map(|t| format!("Bearer {}", t.token))
            .ok_or_else(|| fail(hex, format!("no token in the answer of {realm}")))
    }
}

/// `{base}/v2/{repository}/blobs/sha256:{hex}`, keeping any path prefix of `base`.
pub fn blob_url(base: &Url, repository: &str, hex: &str) -> Option<Url> {
    if !matches!(base.scheme(), "http" | "https") || repository.is_empty() {
        return None;
    }
    let s = format!(
        "{}/v2/{}/blobs/sha256:{hex}",
        base.as_str().trim_end_matches('/'),
        repository.trim_matches('/')
    );
    Url::parse(&s).ok()
}

fn excerpt(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

async fn remove(p: &Path) {
    let _ = tokio::fs::remove_file(p).await;
}

/// sha256 (hex) and size of a file, read in chunks.
pub async fn hash_file(p: &Path) -> std::io::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(p).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((hex::encode(h.finalize()), n_total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_blob_urls() {
        let u = Url::parse("http://LocalHost:5000").unwrap();
        assert_eq!(url_host(&u), "localhost:5000");
        assert_eq!(
            url_host(&Url::parse("https://r.example:443/").unwrap()),
            "r.example"
        );
        let hex = "a".repeat(64);
        assert_eq!(
            blob_url(
                &Url::parse("https://r.example/mirror/").unwrap(),
                "team/app",
                &hex
            )
            .unwrap()
            .as_str(),
            format!("https://r.example/mirror/v2/team/app/blobs/sha256:{hex}")
        );
        assert!(blob_url(&Url::parse("ftp://r.example").unwrap(), "a", &hex).is_none());
        assert!(blob_url(&u, "", &hex).is_none());
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 7-*/*"), Some(7));
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn retryable_statuses() {
        assert!(retryable_status(StatusCode::BAD_GATEWAY));
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable_status(StatusCode::NOT_FOUND));
        assert!(!retryable_status(StatusCode::FORBIDDEN));
    }
}
