//! The control socket: HTTP/1.1 over a UNIX socket, described in `openapi.yaml`.
//!
//! [`serve`] takes its listener and a shutdown future from the caller (tests bind a
//! socket in a temp dir). Every connection is tagged with who is calling
//! once, by the socket it came in on: on the management socket by its kernel-checked
//! credentials (SO_PEERCRED: root or the manager group may do everything, anyone else
//! nothing); on a container's own socket as that container, which may read its own
//! status and the device's metadata and `POST /signal` for itself ([`crate::sockets`]).
//! [`ROUTES`] is the single route table: the router uses it and the OpenAPI test
//! checks it against the document.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::control::{BuildInfo, ErrorBody};
use crate::daemon::Daemon;
use crate::state::valid_rev;
use crate::store::{MetaKind, StoreError};

mod caller;
mod commands;
mod containers;
mod meta;
mod objects;
mod steps;

pub use caller::{Caller, classify};
use caller::{authorize, identify};
pub(crate) use objects::file_frames;
pub use objects::parse_content_range;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Every endpoint, as `(method, path template)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/steps"),
    ("GET", "/steps/{rev}"),
    ("PUT", "/steps/{rev}"),
    ("GET", "/steps/{rev}/progress"),
    ("GET", "/objects"),
    ("GET", "/objects/{sha256}"),
    ("PUT", "/objects/{sha256}"),
    ("POST", "/commands"),
    ("GET", "/device-meta"),
    ("GET", "/device-meta/{key}"),
    ("PUT", "/device-meta/{key}"),
    ("DELETE", "/device-meta/{key}"),
    ("GET", "/user-meta"),
    ("GET", "/user-meta/{key}"),
    ("PUT", "/user-meta/{key}"),
    ("DELETE", "/user-meta/{key}"),
    ("GET", "/containers"),
    ("PUT", "/containers/{name}"),
    ("GET", "/containers/{name}/logs"),
    ("POST", "/signal"),
    ("GET", "/buildinfo"),
];

const MAX_STATE_BYTES: usize = 1 << 20;
const MAX_SMALL_BODY: usize = 64 << 10;

/// An error as the API reports it: an [`ErrorBody`] and its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                ..ErrorBody::default()
            },
            retry_after: None,
        }
    }
    fn partial_bytes(mut self, n: u64) -> ApiError {
        self.body.partial_bytes = Some(n);
        self
    }
    fn retry(mut self, secs: u32) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
    fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.status, &self.body);
        if let Some(s) = self.retry_after
            && let Ok(h) = header::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, h);
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(m) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("not found: {m}"))
            }
            StoreError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            StoreError::Locked(_) | StoreError::Io { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

type ApiResult = Result<Response<Body>, ApiError>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn raw_response(
    status: StatusCode,
    content_type: &'static str,
    b: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(full(b));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

// === routing ===

/// Finds the route for a path; `Err(true)` when the path exists with other methods.
pub fn route<'a>(method: &str, path: &'a str) -> Result<(&'static str, Vec<&'a str>), bool> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut path_known = false;
    for (m, tpl) in ROUTES {
        let tsegs: Vec<&str> = tpl.trim_start_matches('/').split('/').collect();
        if tsegs.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let ok = tsegs.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') {
                params.push(*s);
                !s.is_empty()
            } else {
                t == s
            }
        });
        if ok {
            if *m == method {
                return Ok((tpl, params));
            }
            path_known = true;
        }
    }
    Err(path_known)
}

/// Serves until `shutdown` resolves: the management socket (`listener`, the caller's) and
/// every container socket the daemon binds meanwhile ([`crate::sockets`]).
pub async fn serve(listener: UnixListener, d: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut containers = d.sockets.take_listeners();
    // Dropped on return: the container sockets' accept loops end with the server.
    let mut loops = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else {
                    accept_failed().await;
                    continue;
                };
                let caller = identify(stream.peer_cred().ok(), d.cfg.manager_gid);
                tokio::spawn(serve_connection(d.clone(), stream, caller));
            }
            Some((name, l)) = async { match containers.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            } } => {
                match UnixListener::from_std(l) {
                    Ok(l) => { loops.spawn(serve_container(l, d.clone(), name)); }
                    Err(e) => tracing::error!(container = name, error = %e, "container socket"),
                }
            }
        }
    }
}

/// Every connection on a container's socket is that container, or the manager if the
/// running revision's container of that name holds the role (which the device's policy
/// allowed before it could run).
///
/// A container may hold at most [`CONTAINER_CONNECTIONS`] connections at once; more are
/// closed as they come, so no container can use up the runtime's file descriptors.
async fn serve_container(listener: UnixListener, d: Arc<Daemon>, name: String) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONTAINER_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            accept_failed().await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                container = name,
                "too many connections to its socket; closing one"
            );
            continue;
        };
        let manager = d
            .running
            .lock()
            .await
            .specs
            .get(&name)
            .is_some_and(|p| p.container.roles.contains(&crate::state::Role::Manager));
        let caller = if manager {
            Caller::Manager
        } else {
            Caller::Container(name.clone())
        };
        let d = d.clone();
        tokio::spawn(async move {
            serve_connection(d, stream, caller).await;
            drop(slot);
        });
    }
}

/// Connections one container may hold open on its socket.
pub const CONTAINER_CONNECTIONS: usize = 16;

/// An accept that fails (out of descriptors, say) fails again at once: wait a little
/// rather than spin.
async fn accept_failed() {
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

async fn serve_connection(d: Arc<Daemon>, stream: tokio::net::UnixStream, caller: Caller) {
    let svc = hyper::service::service_fn(move |req| {
        let d = d.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(handle(d, caller, req).await) }
    });
    // Small buffers: uploads stream to disk anyway, and a device's memory is better
    // spent elsewhere.
    let _ = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

pub async fn handle(d: Arc<Daemon>, caller: Caller, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match route(method.as_str(), &path) {
        Err(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
        Err(true) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}"),
        )),
        Ok((tpl, params)) => match authorize(&caller, &method, tpl) {
            Err(e) => Err(e),
            Ok(()) => {
                let params: Vec<String> = params.into_iter().map(str::to_owned).collect();
                dispatch(&d, &caller, tpl, &params, req).await
            }
        },
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    // An upload answered before its body was read (exists, refused) leaves bytes on
    // the connection: close it so the client does not reuse a connection the server
    // is about to drop.
    if method == Method::PUT
        && path.starts_with("/objects/")
        && !matches!(resp.status(), StatusCode::CREATED | StatusCode::ACCEPTED)
    {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    tracing::debug!(%method, path, status = resp.status().as_u16(), "request");
    resp
}

fn param(p: &[String], i: usize) -> &str {
    p.get(i).map(String::as_str).unwrap_or_default()
}

async fn dispatch(
    d: &Arc<Daemon>,
    caller: &Caller,
    tpl: &str,
    p: &[String],
    req: Request<Incoming>,
) -> ApiResult {
    let get = req.method() == Method::GET;
    match tpl {
        "/steps" => steps::list(d).await,
        "/steps/{rev}" if get => steps::get(d, param(p, 0)),
        "/steps/{rev}" => steps::put(d, param(p, 0), req).await,
        "/steps/{rev}/progress" => steps::progress(d, param(p, 0)),
        "/objects" => objects::list(d),
        "/objects/{sha256}" if get => objects::get(d, param(p, 0)).await,
        "/objects/{sha256}" => objects::put(d, param(p, 0), req).await,
        "/commands" => commands::post(d, req).await,
        "/device-meta" | "/user-meta" => meta::list(d, meta_kind(tpl)),
        "/device-meta/{key}" | "/user-meta/{key}" => {
            meta::key(d, meta_kind(tpl), param(p, 0), req).await
        }
        "/containers" => {
            let mut all = d.containers().await;
            if let Caller::Container(own) = caller {
                all.retain(|c| c.name == *own);
            }
            Ok(json_response(StatusCode::OK, &all))
        }
        "/containers/{name}" => containers::action(d, param(p, 0), req).await,
        "/containers/{name}/logs" => containers::logs(d, param(p, 0), &req),
        "/signal" => containers::signal(d, caller, req).await,
        "/buildinfo" => Ok(json_response(
            StatusCode::OK,
            &BuildInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                git_commit: option_env!("EDGEVISOR_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .into(),
                state_spec: crate::state::SPEC.into(),
                oci_runtime: d.cfg.oci_runtime.clone(),
            },
        )),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
    }
}

fn meta_kind(tpl: &str) -> MetaKind {
    if tpl.starts_with("/device-meta") {
        MetaKind::Device
    } else {
        MetaKind::User
    }
}

fn check_rev(rev: &str) -> Result<&str, ApiError> {
    if valid_rev(rev) {
        Ok(rev)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad revision name {rev:?}"),
        ))
    }
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_params_and_report_wrong_methods() {
        assert_eq!(
            route("GET", "/steps/r1/progress"),
            Ok(("/steps/{rev}/progress", vec!["r1"]))
        );
        assert_eq!(route("DELETE", "/steps/r1"), Err(true));
        assert_eq!(route("GET", "/nope"), Err(false));
        assert_eq!(route("GET", "/steps/"), Err(false));
    }
}

#[cfg(test)]
mod in_process;
