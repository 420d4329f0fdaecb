//! The device API over HTTPS (HTTP/1.1, rustls), routes as in `controller/gateway-openapi.yaml`.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use edgevisor_crds::FleetRevision;
use edgevisor_protocol::gateway::{DeviceReport, EnrollRequest, MAX_WAIT_SECONDS, Target};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use kube::runtime::reflector::ObjectRef;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::Error;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::Gateway;
use super::auth;
use super::cache::{Entry, Key};
use super::enroll::{self, EnrollError};
use super::target;

type Reply = Response<Full<Bytes>>;

/// Every route, as `(method, path template)`; the OpenAPI document is checked against it.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/enroll"),
    ("GET", "/v1/devices/{namespace}/{name}/target"),
    ("PUT", "/v1/devices/{namespace}/{name}/status"),
    ("GET", "/v1/devices/{namespace}/{name}/files/{sha256}"),
];
const MAX_BODY: usize = 64 << 10;
const DEFAULT_WAIT_SECONDS: u64 = 30;

/// An error answer: `{"error": "..."}`.
struct Fail(StatusCode, String);

impl Fail {
    fn new(code: StatusCode, msg: impl Into<String>) -> Fail {
        Fail(code, msg.into())
    }
}

fn json_reply(code: StatusCode, body: &impl Serialize) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn empty(code: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// Per-connection limits: what one client, however slow or hostile, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections per replica; past it new connections are closed at once, so memory
    /// stays bounded whatever arrives.
    pub max_connections: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake: Duration,
    /// For a request's headers.
    pub headers: Duration,
    /// For a request's whole body, however it trickles in.
    pub body: Duration,
}

/// hyper's read buffer per connection (its floor is 8 KiB; the default is ~400 KiB): requests
/// here are small, and this is most of what an idle connection costs.
const READ_BUFFER: usize = 16 << 10;

/// Serves the device API until the process ends.
pub async fn serve(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    gw: Arc<Gateway>,
) -> Result<(), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            what: "the device API",
            addr,
            source,
        })?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let limits = gw.config.limits;
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    info!(%addr, max_connections = limits.max_connections, "serving the device API");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                debug!(%error, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            gw.metrics.connection_refused();
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let gw = gw.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let metrics = gw.metrics.clone();
            let _open = metrics.connection();
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, req).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.headers)
                .max_buf_size(READ_BUFFER)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, %error, "connection");
            }
        });
    }
}

async fn handle(gw: &Gateway, req: Request<Incoming>) -> Reply {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    // Each route's future is boxed: a request in flight then holds what its own route needs,
    // not the largest route's state (enrolling, with its API calls, is kilobytes); tens of
    // thousands of devices wait in a long-poll at any time.
    let (route, result) = match (method.clone(), segments.as_slice()) {
        (Method::POST, ["v1", "enroll"]) => ("enroll", Box::pin(enroll_route(gw, req)).await),
        (Method::GET, ["v1", "devices", ns, name, "target"]) => {
            ("target", Box::pin(target_route(gw, ns, name, req)).await)
        }
        (Method::PUT, ["v1", "devices", ns, name, "status"]) => {
            let key = (ns.to_string(), name.to_string());
            ("status", Box::pin(status_route(gw, key, req)).await)
        }
        (Method::GET, ["v1", "devices", ns, name, "files", hex]) => {
            ("files", files_route(gw, ns, name, hex, &req))
        }
        (_, ["v1", "enroll"])
        | (_, ["v1", "devices", _, _, "target" | "status"])
        | (_, ["v1", "devices", _, _, "files", _]) => (
            "other",
            Err(Fail::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}"),
            )),
        ),
        _ => (
            "other",
            Err(Fail::new(StatusCode::NOT_FOUND, format!("no route {path}"))),
        ),
    };
    let reply =
        result.unwrap_or_else(|Fail(code, error)| json_reply(code, &json!({ "error": error })));
    gw.metrics
        .request(route, reply.status().as_u16(), started.elapsed());
    reply
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes within the body time limit. Frames are
/// copied as they come: a body trickled a byte per TLS record arrives as thousands of frames,
/// each pinning a buffer of kilobytes if kept.
async fn body_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    within: Duration,
) -> Result<T, Fail> {
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Fail::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            })?;
            if let Some(data) = frame.data_ref() {
                if bytes.len() + data.len() > MAX_BODY {
                    return Err(Fail::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is larger than {MAX_BODY} bytes"),
                    ));
                }
                bytes.extend_from_slice(data);
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, read).await.map_err(|_| {
        Fail::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {}s", within.as_secs()),
        )
    })??;
    serde_json::from_slice(&bytes).map_err(|e| {
        Fail::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid: {e}"),
        )
    })
}

fn authorization(req: &Request<Incoming>) -> Option<&str> {
    auth::bearer(req.headers().get(header::AUTHORIZATION)?.to_str().ok())
}

async fn enroll_route(gw: &Gateway, req: Request<Incoming>) -> Result<Reply, Fail> {
    let presented = authorization(&req)
        .ok_or_else(|| {
            Fail::new(
                StatusCode::UNAUTHORIZED,
                "enrollment needs Authorization: Bearer <bootstrap token>",
            )
        })?
        .to_string();
    // The token is checked before the body is read: a client without one gets nothing to
    // hold the connection open with.
    let secret =
        gw.tokens.find(gw, &presented).await.ok_or_else(|| {
            Fail::new(StatusCode::UNAUTHORIZED, auth::Refusal::Unknown.to_string())
        })?;
    let request: EnrollRequest = body_json(req, gw.config.limits.body).await?;
    match enroll::enroll(gw, &secret, &presented, &request).await {
        Ok(response) => Ok(json_reply(StatusCode::CREATED, &response)),
        Err(e) => {
            let code = match e {
                EnrollError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                EnrollError::Forbidden(_) => StatusCode::FORBIDDEN,
                EnrollError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                EnrollError::Conflict(_) => StatusCode::CONFLICT,
                EnrollError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            Err(Fail(code, e.to_string()))
        }
    }
}

/// The device a request's credential belongs to, if it may act as `ns/name`.
fn authenticate(
    gw: &Gateway,
    req: &Request<Incoming>,
    ns: &str,
    name: &str,
) -> Result<(Key, Arc<Entry>), Fail> {
    let credential = authorization(req).ok_or_else(|| {
        Fail::new(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <credential> required",
        )
    })?;
    let (key, entry) = gw
        .devices
        .by_credential(&auth::sha256_hex(credential.as_bytes()))
        .ok_or_else(|| Fail::new(StatusCode::UNAUTHORIZED, "unknown credential"))?;
    if entry.revoked {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            format!("device {}/{} is revoked", key.0, key.1),
        ));
    }
    if key.0 != ns || key.1 != name {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            format!("device {}/{} may not act for {ns}/{name}", key.0, key.1),
        ));
    }
    gw.writer.seen(&key);
    Ok((key, entry))
}

fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn revision_of(gw: &Gateway, ns: &str, name: &str) -> Option<Arc<FleetRevision>> {
    gw.revisions.get(&ObjectRef::new(name).within(ns))
}

fn current_target(gw: &Gateway, key: &Key, entry: &Entry) -> Option<Target> {
    let revision = revision_of(gw, &key.0, entry.target.as_deref()?)?;
    let arch = entry.status.architecture?;
    target::target(&revision, arch.as_str(), &gw.config.registries)
}

async fn target_route(
    gw: &Gateway,
    ns: &str,
    name: &str,
    req: Request<Incoming>,
) -> Result<Reply, Fail> {
    let (key, _) = authenticate(gw, &req, ns, name)?;
    let known = query(&req, "known").filter(|k| !k.is_empty());
    let wait = match query(&req, "waitSeconds") {
        None => DEFAULT_WAIT_SECONDS,
        Some(w) => w.parse::<u64>().map_err(|_| {
            Fail::new(
                StatusCode::BAD_REQUEST,
                format!("waitSeconds {w:?} is not a number"),
            )
        })?,
    }
    .min(MAX_WAIT_SECONDS);
    // The request's headers share hyper's read buffer: let it go before a wait of minutes, or
    // a parked poll holds two buffers (hyper reads on into a new one to see the peer leave).
    drop(req);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let ticket = gw.devices.waiter(&key);
    let _waiting = gw.metrics.waiting();
    // Alive while it waits: the heard-from summary lists devices in a long-poll.
    let _polling = gw.writer.polling(&key);
    let result = loop {
        let notified = ticket.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ticket.superseded() {
            break Ok(empty(StatusCode::NO_CONTENT));
        }
        let Some(entry) = gw.devices.get(&key) else {
            break Err(Fail::new(
                StatusCode::UNAUTHORIZED,
                "the device no longer exists",
            ));
        };
        if entry.revoked {
            break Err(Fail::new(
                StatusCode::FORBIDDEN,
                format!("device {ns}/{name} is revoked"),
            ));
        }
        // Most polls come from devices that have their target: compare names before building
        // (and parsing) the whole answer.
        if entry.target != known
            && let Some(t) = current_target(gw, &key, &entry)
        {
            break Ok(json_reply(StatusCode::OK, &t));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => break Ok(empty(StatusCode::NO_CONTENT)),
        }
    };
    gw.devices.release(&key, ticket);
    result
}

async fn status_route(gw: &Gateway, key: Key, req: Request<Incoming>) -> Result<Reply, Fail> {
    authenticate(gw, &req, &key.0, &key.1)?;
    let report: DeviceReport = body_json(req, gw.config.limits.body).await?;
    let problems = report.validate();
    if !problems.is_empty() {
        return Err(Fail::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            problems.join("; "),
        ));
    }
    gw.writer.report(&key, &report);
    Ok(empty(StatusCode::ACCEPTED))
}

fn files_route(
    gw: &Gateway,
    ns: &str,
    name: &str,
    hex: &str,
    req: &Request<Incoming>,
) -> Result<Reply, Fail> {
    let (key, entry) = authenticate(gw, req, ns, name)?;
    let not_found = || {
        Fail::new(
            StatusCode::NOT_FOUND,
            format!("no file sha256:{hex} in the target of {ns}/{name}"),
        )
    };
    let revision = entry
        .target
        .as_deref()
        .and_then(|r| revision_of(gw, &key.0, r))
        .ok_or_else(not_found)?;
    let digest = format!("sha256:{hex}");
    let file = revision
        .spec
        .files
        .iter()
        .find(|f| f.digest == digest)
        .ok_or_else(not_found)?;
    let content = file.content.as_deref().ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            format!(
                "file {} comes from a Secret; the gateway does not serve those",
                file.path
            ),
        )
    })?;
    let bytes = BASE64.decode(content).map_err(|e| {
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("file {}: {e}", file.path),
        )
    })?;
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::ROUTES;

    #[test]
    fn the_openapi_document_names_every_route_and_no_other() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway-openapi.yaml"))
                .expect("gateway-openapi.yaml");
        let doc: serde_json::Value = serde_norway::from_str(&text).expect("valid YAML");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
