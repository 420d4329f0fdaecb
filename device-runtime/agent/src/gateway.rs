//! The HTTP client of the gateway's device API ([`crate::gateway_api`]).
//!
//! Errors are sorted by what the agent should do about them, not by where they came
//! from: [`GatewayError::Transient`] (network, 5xx, 429: retry with backoff),
//! [`GatewayError::Refused`] (401/403 on a device call: the credential was revoked or the
//! Device deleted; retry slowly, an operator may fix it) and [`GatewayError::Rejected`]
//! (any other 4xx: the request itself is wrong; retrying the same request is useless).

use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use super::credential::Credential;
use edgevisor_protocol::gateway::{DeviceReport, EnrollRequest, EnrollResponse, Target};

/// A target (the state JSON inside) or an error body larger than this is refused.
const MAX_BODY: usize = 8 << 20;
/// Time for a request that does not long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Transient(String),
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("{status}: {message}")]
    Rejected { status: u16, message: String },
}

impl GatewayError {
    fn net(e: reqwest::Error) -> GatewayError {
        GatewayError::Transient(format!("{e:#}"))
    }
}

/// Sorts an answer's status (pure, so the policy is tested).
pub fn classify(status: StatusCode, message: String) -> GatewayError {
    match status.as_u16() {
        401 | 403 => GatewayError::Refused {
            status: status.as_u16(),
            message,
        },
        408 | 429 => GatewayError::Transient(format!("{status}: {message}")),
        400..=499 => GatewayError::Rejected {
            status: status.as_u16(),
            message,
        },
        _ => GatewayError::Transient(format!("{status}: {message}")),
    }
}

/// The `error` of a `{"error": "..."}` body, else the body's start.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(e) = v["error"].as_str()
    {
        return e.to_owned();
    }
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None if s.is_empty() => "(no body)".into(),
        None => s.to_owned(),
    }
}

#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base: Url,
}

impl Gateway {
    /// `base` is `https://host:port` (a path prefix is kept); `http://` only when
    /// `allow_http` (tests). `http` must trust the gateway's CA and have a read timeout
    /// longer than the long-poll wait.
    pub fn new(http: reqwest::Client, base: &str, allow_http: bool) -> Result<Gateway, String> {
        let mut base = Url::parse(base).map_err(|e| format!("--gateway {base:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(format!("--gateway {base} must be an https URL"));
        }
        if base.scheme() == "http" && !allow_http {
            return Err(format!(
                "--gateway {base} is plain http: the device's credential would cross the \
                 network in clear; use https (--insecure-gateway exists for tests only)"
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(Gateway { http, base })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `base` + path segments, each escaped.
    fn url(&self, segments: &[&str]) -> Result<Url, GatewayError> {
        let mut u = self.base.clone();
        {
            let mut s = u.path_segments_mut().map_err(|()| GatewayError::Rejected {
                status: 0,
                message: "gateway URL cannot take a path".into(),
            })?;
            s.pop_if_empty();
            s.extend(segments);
        }
        Ok(u)
    }

    fn device_url(&self, c: &Credential, rest: &[&str]) -> Result<Url, GatewayError> {
        let mut segs = vec!["v1", "devices", c.namespace.as_str(), c.name.as_str()];
        segs.extend_from_slice(rest);
        self.url(&segs)
    }

    /// The files endpoint for one object of the target's state.
    pub fn file_url(&self, c: &Credential, hex: &str) -> Result<Url, GatewayError> {
        self.device_url(c, &["files", hex])
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(
        &self,
        bootstrap_token: &str,
        req: &EnrollRequest,
    ) -> Result<EnrollResponse, GatewayError> {
        let url = self.url(&["v1", "enroll"])?;
        let resp = self
            .http
            .post(url)
            .header(AUTHORIZATION, format!("Bearer {bootstrap_token}"))
            .json(req)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(GatewayError::net)?;
        let (status, body) = read(resp).await?;
        if !status.is_success() {
            return Err(classify(status, error_message(&body)));
        }
        parse(&body)
    }

    /// `GET …/target`: the target when it differs from `known`, `None` when nothing
    /// changed within `wait` (204).
    pub async fn target(
        &self,
        c: &Credential,
        known: Option<&str>,
        wait: Duration,
    ) -> Result<Option<Target>, GatewayError> {
        let mut url = self.device_url(c, &["target"])?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(k) = known {
                q.append_pair("known", k);
            }
            q.append_pair("waitSeconds", &wait.as_secs().to_string());
        }
        let resp = self
            .http
            .get(url)
            .header(AUTHORIZATION, format!("Bearer {}", c.credential))
            // The gateway holds the request up to `wait`; a little more covers its answer.
            .timeout(wait + REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(GatewayError::net)?;
        let (status, body) = read(resp).await?;
        match status {
            StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => parse(&body).map(Some),
            s => Err(classify(s, error_message(&body))),
        }
    }

    /// `PUT …/status`.
    pub async fn report(&self, c: &Credential, r: &DeviceReport) -> Result<(), GatewayError> {
        let url = self.device_url(c, &["status"])?;
        let resp = self
            .http
            .put(url)
            .header(AUTHORIZATION, format!("Bearer {}", c.credential))
            .json(r)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(GatewayError::net)?;
        let (status, body) = read(resp).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(classify(status, error_message(&body)))
        }
    }
}

/// The whole body, capped at [`MAX_BODY`].
async fn read(mut resp: reqwest::Response) -> Result<(StatusCode, Vec<u8>), GatewayError> {
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(GatewayError::net)? {
        if body.len() + c.len() > MAX_BODY {
            return Err(GatewayError::Transient(format!(
                "{status} answer larger than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&c);
    }
    Ok((status, body))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    // A body we cannot read is the gateway's fault (or a proxy's), maybe passing: retry.
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::Transient(format!("malformed answer from the gateway: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted_by_what_to_do() {
        let m = || "m".to_string();
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, m()),
            GatewayError::Refused { status: 401, .. }
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, m()),
            GatewayError::Refused { status: 403, .. }
        ));
        assert!(matches!(
            classify(StatusCode::CONFLICT, m()),
            GatewayError::Rejected { status: 409, .. }
        ));
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, m()),
            GatewayError::Rejected { status: 422, .. }
        ));
        for s in [429, 500, 502, 503] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(
                matches!(classify(s, m()), GatewayError::Transient(_)),
                "{s}"
            );
        }
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"error":"token used up"}"#),
            "token used up"
        );
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        assert_eq!(error_message(b""), "(no body)");
        assert_eq!(error_message(&[b'x'; 1000]).chars().count(), 301);
    }

    #[test]
    fn urls_escape_segments_and_keep_prefixes() {
        let g = Gateway::new(reqwest_client(), "https://gw.example:8443/edge", false).unwrap();
        let c = Credential {
            namespace: "ns".into(),
            name: "dev/../x".into(),
            credential: "c".into(),
            gateway: g.base().into(),
        };
        assert_eq!(
            g.file_url(&c, "ab").unwrap().as_str(),
            "https://gw.example:8443/edge/v1/devices/ns/dev%2F..%2Fx/files/ab"
        );
        assert_eq!(g.base(), "https://gw.example:8443/edge");
        assert!(Gateway::new(reqwest_client(), "gw.example", false).is_err());
        assert!(Gateway::new(reqwest_client(), "ftp://gw.example", false).is_err());
        let e = Gateway::new(reqwest_client(), "http://gw.example", false)
            .err()
            .unwrap();
        assert!(e.contains("plain http"), "{e}");
        assert!(Gateway::new(reqwest_client(), "http://gw.example", true).is_ok());
    }

    fn reqwest_client() -> reqwest::Client {
        crate::install_crypto_provider();
        reqwest::Client::builder().build().unwrap()
    }
}
