//! The control socket: HTTP/1.1 over a UNIX socket, described in `openapi.yaml`.
//!
//! [`serve`] takes its listener and a shutdown future from the caller (tests bind a
//! socket in a temp dir). Every connection is tagged with its peer credentials
//! (SO_PEERCRED) once, and every request is authorised against them: management
//! callers (root or the manager group) may do everything; a process inside one of
//! our containers (found by its cgroup) may read and `POST /signal` for itself.
//! [`ROUTES`] is the single route table: the router uses it and the OpenAPI test
//! checks it against the document.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use crate::daemon::Daemon;
use crate::install::InstallError;
use crate::lifecycle::Status;
use crate::state::{is_sha256_hex, valid_name, valid_rev};
use crate::store::{MetaKind, Pointer, StoreError};

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

/// An error as the API reports it: `{"error": "…"}` plus optional fields.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub extra: Option<Value>,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }
    fn with(mut self, extra: Value) -> ApiError {
        self.extra = Some(extra);
        self
    }
    fn retry(mut self, secs: u32) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
    fn into_response(self) -> Response<Body> {
        let mut v = json!({"error": self.message});
        if let (Some(Value::Object(extra)), Some(o)) = (self.extra, v.as_object_mut()) {
            o.extend(extra);
        }
        let mut r = json_response(self.status, &v);
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

// === callers ===

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Manager,
    /// A process in one of our containers (the name, if it is a current one).
    Container(Option<String>),
    Other,
}

/// Pure: decide from what `/proc` says. `cgroup` is `/proc/<pid>/cgroup`.
pub fn classify(
    uid: u32,
    gids: &[u32],
    cgroup: &str,
    prefix: &str,
    manager_gid: Option<u32>,
) -> Caller {
    let marker = "/edgevisor/";
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        if let Some(pos) = path.find(marker) {
            let id = path[pos + marker.len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            let name = id
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .filter(|n| valid_name(n))
                .map(str::to_owned);
            return Caller::Container(name);
        }
    }
    if uid == 0 || manager_gid.is_some_and(|g| gids.contains(&g)) {
        Caller::Manager
    } else {
        Caller::Other
    }
}

fn identify(cred: Option<tokio::net::unix::UCred>, d: &Daemon) -> Caller {
    let Some(cred) = cred else {
        return Caller::Other;
    };
    let (cgroup, mut gids) = match cred.pid() {
        Some(pid) => {
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let gids: Vec<u32> = status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            (cg, gids)
        }
        None => (String::new(), Vec::new()),
    };
    gids.push(cred.gid());
    classify(cred.uid(), &gids, &cgroup, &d.prefix, d.cfg.manager_gid)
}

fn authorize(caller: &Caller, method: &Method, route: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Manager => Ok(()),
        Caller::Container(_) if method == Method::GET || route == "/signal" => Ok(()),
        Caller::Container(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "containers may only read and signal",
        )),
        Caller::Other => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "caller is neither a manager nor one of our containers",
        )),
    }
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

/// Serves until `shutdown` resolves. The listener is the caller's.
pub async fn serve(listener: UnixListener, d: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let caller = identify(stream.peer_cred().ok(), &d);
                let d = d.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let d = d.clone();
                        let caller = caller.clone();
                        async move { Ok::<_, Infallible>(handle(d, caller, req).await) }
                    });
                    // Small buffers: uploads stream to disk anyway, and a device's
                        // memory is better spent elsewhere.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .max_buf_size(64 * 1024)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
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
    match tpl {
        "/steps" => list_steps(d).await,
        "/steps/{rev}" if req.method() == Method::GET => {
            let rev = check_rev(param(p, 0))?;
            Ok(raw_response(
                StatusCode::OK,
                "application/json",
                d.store.read_state(rev)?,
            ))
        }
        "/steps/{rev}" => put_step(d, param(p, 0), req).await,
        "/steps/{rev}/progress" => {
            let rev = check_rev(param(p, 0))?;
            Ok(json_response(StatusCode::OK, &d.store.read_progress(rev)?))
        }
        "/objects" => {
            let list: Vec<Value> = d
                .store
                .list_objects()?
                .into_iter()
                .map(|(h, s)| json!({"sha256": h, "size": s}))
                .collect();
            Ok(json_response(StatusCode::OK, &list))
        }
        "/objects/{sha256}" if req.method() == Method::GET => get_object(d, param(p, 0)).await,
        "/objects/{sha256}" => put_object(d, param(p, 0), req).await,
        "/commands" => command(d, req).await,
        "/device-meta" | "/user-meta" => {
            let kind = meta_kind(tpl);
            let m: BTreeMap<String, String> = d.store.meta_list(kind)?.into_iter().collect();
            Ok(json_response(StatusCode::OK, &m))
        }
        "/device-meta/{key}" | "/user-meta/{key}" => {
            meta(d, meta_kind(tpl), param(p, 0), req).await
        }
        "/containers" => Ok(json_response(StatusCode::OK, &d.containers().await)),
        "/containers/{name}" => container_action(d, param(p, 0), req).await,
        "/containers/{name}/logs" => {
            let name = param(p, 0);
            if !valid_name(name) {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad container name"));
            }
            let lines = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("lines=")))
                .and_then(|n| n.parse().ok())
                .unwrap_or(100usize);
            let log = d.log_path(name);
            if !log.exists() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no logs for {name}"),
                ));
            }
            let mut text = crate::supervisor::tail(&log, lines).join("\n");
            text.push('\n');
            Ok(raw_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                text,
            ))
        }
        "/signal" => signal(d, caller, req).await,
        "/buildinfo" => Ok(json_response(
            StatusCode::OK,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "gitCommit": option_env!("EDGEVISOR_GIT_COMMIT").unwrap_or("unknown"),
                "stateSpec": crate::state::SPEC,
                "ociRuntime": d.cfg.oci_runtime,
            }),
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

async fn list_steps(d: &Daemon) -> ApiResult {
    let committed = d.store.pointer(Pointer::Committed);
    let trying = d.store.pointer(Pointer::Trying);
    let factory = d.store.pointer(Pointer::Factory);
    let running = d.running.lock().await.rev.clone();
    let mut out = Vec::new();
    for rev in d.store.list_revisions()? {
        let p = d.store.read_progress(&rev).ok();
        out.push(json!({
            "rev": rev,
            "status": p.as_ref().map(|p| p.status.to_string()),
            "status-msg": p.as_ref().map(|p| p.status_msg.clone()),
            "committed": committed.as_ref() == Some(&rev),
            "trying": trying.as_ref() == Some(&rev),
            "factory": factory.as_ref() == Some(&rev),
            "running": running.as_ref() == Some(&rev),
        }));
    }
    Ok(json_response(StatusCode::OK, &out))
}

async fn put_step(d: &Daemon, rev: &str, req: Request<Incoming>) -> ApiResult {
    check_rev(rev)?;
    let body = read_body(req, MAX_STATE_BYTES).await?;
    match d.install(rev, &body) {
        Ok(true) => Ok(json_response(
            StatusCode::CREATED,
            &d.store.read_progress(rev)?,
        )),
        Ok(false) => Ok(json_response(StatusCode::OK, &d.store.read_progress(rev)?)),
        Err(e) => Err(match e {
            InstallError::BadName(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            InstallError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            InstallError::Missing(ref m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                    .with(json!({"status": Status::Wontgo, "missing": m}))
            }
            InstallError::SizeMismatch(..) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                    .with(json!({"status": Status::Wontgo}))
            }
            InstallError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            InstallError::NoSpace { .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            }
            InstallError::Store(s) => s.into(),
        }),
    }
}

async fn get_object(d: &Daemon, hex: &str) -> ApiResult {
    if !is_sha256_hex(hex) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "object name must be 64 lowercase hex",
        ));
    }
    if !d.store.has_object(hex) {
        return Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("no object sha256:{hex}"))
                .with(json!({"partialBytes": d.store.partial_size(hex)})),
        );
    }
    let file = tokio::fs::File::open(d.store.object_path(hex))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(file_frames(file))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

/// `Content-Range: bytes START-END/TOTAL` (END may be `*`) → (START, TOTAL).
pub fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split('-').next()?.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

struct UploadSlot<'a>(&'a Daemon, String);

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.0.uploads.lock() {
            g.remove(&self.1);
        }
    }
}

async fn put_object(d: &Daemon, hex: &str, req: Request<Incoming>) -> ApiResult {
    if !is_sha256_hex(hex) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "object name must be 64 lowercase hex",
        ));
    }
    if d.store.has_object(hex) {
        return Ok(json_response(
            StatusCode::OK,
            &json!({"sha256": hex, "status": "exists"}),
        ));
    }
    let header_str = |h: header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (offset, total) = match header_str(header::CONTENT_RANGE) {
        Some(v) => parse_content_range(&v)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad Content-Range"))?,
        None => (0, None),
    };
    let length: Option<u64> = header_str(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let total = total.or(length.map(|l| l + offset));
    {
        let mut g = d
            .uploads
            .lock()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "poisoned"))?;
        if !g.insert(hex.to_owned()) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this object is being uploaded",
            )
            .retry(2));
        }
    }
    let _slot = UploadSlot(d, hex.to_owned());
    let have = d.store.partial_size(hex);
    if offset > have {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("resume at {offset}, but only {have} bytes were received"),
        )
        .with(json!({"partialBytes": have})));
    }
    let incoming = total.map(|t| t.saturating_sub(offset)).unwrap_or(0);
    let free = d.store.free_bytes()?;
    if free < incoming.saturating_add(d.cfg.reserve_bytes) {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("not enough space: {incoming} bytes to store, {free} free"),
        ));
    }
    let mut up = d.store.begin_upload(hex, offset)?;
    // Without a declared size (chunked upload) the space check happens as bytes come.
    let budget = free.saturating_sub(d.cfg.reserve_bytes);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref() {
                    if up.written() - offset + data.len() as u64 > budget {
                        drop(up);
                        // Leave the store as it was before this request.
                        let p = d.store.partial_path(hex);
                        if offset == 0 {
                            let _ = std::fs::remove_file(&p);
                        } else if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                            let _ = f.set_len(offset);
                        }
                        return Err(ApiError::new(
                            StatusCode::INSUFFICIENT_STORAGE,
                            format!("not enough space: {budget} bytes may be stored"),
                        ));
                    }
                    up.write(data)?;
                }
            }
            // The client went away: keep what arrived so it can resume.
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("upload interrupted: {e}"),
                )
                .with(json!({"partialBytes": up.written()})));
            }
        }
    }
    if let Some(t) = total
        && up.written() < t
    {
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({"sha256": hex, "partialBytes": up.written()}),
        ));
    }
    let size = d.store.finish_upload(up, total)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"sha256": hex, "size": size}),
    ))
}

#[derive(serde::Deserialize)]
struct Command {
    op: String,
    #[serde(default)]
    payload: Value,
}

async fn command(d: &Arc<Daemon>, req: Request<Incoming>) -> ApiResult {
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let cmd: Command = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad command: {e}")))?;
    match cmd.op.as_str() {
        "run" => {
            let rev = cmd.payload.as_str().ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "run needs the revision as payload")
            })?;
            check_rev(rev)?;
            if !d.store.has_revision(rev) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no revision {rev}"),
                ));
            }
            d.start_run(rev).map_err(|other| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("update of {other} in progress"),
                )
                .with(json!({"inProgress": other}))
            })?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"op": "run", "rev": rev}),
            ))
        }
        "gc" => {
            if let Some(other) = d.busy_with() {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("update of {other} in progress; collect later"),
                )
                .retry(10));
            }
            let report = d.gc().await?;
            Ok(json_response(StatusCode::OK, &report))
        }
        "reboot" => {
            let Some(cmdline) = d.cfg.reboot_command.clone() else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "reboot is not configured (--reboot-command)",
                ));
            };
            if let Some(other) = d.busy_with() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("update of {other} in progress"),
                ));
            }
            tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmdline)
                .spawn()
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"op": "reboot"}),
            ))
        }
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown op {other:?} (run, gc, reboot)"),
        )),
    }
}

async fn meta(d: &Daemon, kind: MetaKind, key: &str, req: Request<Incoming>) -> ApiResult {
    match *req.method() {
        Method::GET => Ok(raw_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            d.store.meta_get(kind, key)?,
        )),
        Method::PUT => {
            let body = read_body(req, MAX_SMALL_BODY).await?;
            d.store.meta_put(kind, key, &body)?;
            Ok(json_response(StatusCode::OK, &json!({"key": key})))
        }
        _ => {
            d.store.meta_delete(kind, key)?;
            Ok(json_response(StatusCode::OK, &json!({"deleted": key})))
        }
    }
}

async fn container_action(d: &Arc<Daemon>, name: &str, req: Request<Incoming>) -> ApiResult {
    #[derive(serde::Deserialize)]
    struct Action {
        action: String,
    }
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let a: Action = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad body: {e}")))?;
    if !matches!(a.action.as_str(), "start" | "stop" | "restart") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "action must be start, stop or restart",
        ));
    }
    if let Some(other) = d.busy_with() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("update of {other} in progress"),
        ));
    }
    let mut r = d.running.lock().await;
    let Some(spec) = r.specs.get(name).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no container {name}"),
        ));
    };
    let rev = r.rev.clone().unwrap_or_default();
    if matches!(a.action.as_str(), "stop" | "restart")
        && let Some(h) = r.handles.remove(name)
    {
        h.stop().await;
    }
    if matches!(a.action.as_str(), "start" | "restart") && !r.handles.contains_key(name) {
        let h = crate::supervisor::Handle::start(d.oci.clone(), d.spec_for(&rev, &spec));
        r.handles.insert(name.to_owned(), h);
    }
    drop(r);
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": name, "action": a.action}),
    ))
}

async fn signal(d: &Daemon, caller: &Caller, req: Request<Incoming>) -> ApiResult {
    #[derive(serde::Deserialize, Default)]
    struct Signal {
        #[serde(default)]
        container: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
    }
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let s: Signal = if body.is_empty() {
        Signal::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad body: {e}")))?
    };
    if s.kind.as_deref().is_some_and(|k| k != "ready") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "only the ready signal exists",
        ));
    }
    let name = match (caller, s.container) {
        (Caller::Container(Some(own)), Some(other)) if *own != other => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a container may only signal for itself",
            ));
        }
        (Caller::Container(Some(own)), _) => own.clone(),
        (Caller::Container(None), _) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not a current container",
            ));
        }
        (_, Some(n)) => n,
        (_, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "say which container",
            ));
        }
    };
    let r = d.running.lock().await;
    let h = r.handles.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no running container {name}"),
        )
    })?;
    h.signal_ready();
    tracing::info!(container = %name, "ready signalled");
    Ok(json_response(
        StatusCode::OK,
        &json!({"container": name, "ready": true}),
    ))
}

/// A file as body frames of at most 64 KiB, read as they are sent: blobs never sit whole in
/// memory, in either direction of the socket.
pub(crate) fn file_frames(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
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

    #[test]
    fn callers_are_classified_by_cgroup_then_credentials() {
        let cg = "12:memory:/edgevisor/evabc-web\n0::/\n";
        assert_eq!(
            classify(0, &[0], cg, "evabc", None),
            Caller::Container(Some("web".into()))
        );
        assert_eq!(
            classify(0, &[0], cg, "evzzz", None),
            Caller::Container(None)
        );
        assert_eq!(
            classify(0, &[], "0::/user.slice\n", "evabc", None),
            Caller::Manager
        );
        assert_eq!(
            classify(1000, &[50], "", "evabc", Some(50)),
            Caller::Manager
        );
        assert_eq!(classify(1000, &[51], "", "evabc", Some(50)), Caller::Other);
    }

    #[test]
    fn containers_may_read_and_signal_only() {
        let c = Caller::Container(Some("web".into()));
        assert!(authorize(&c, &Method::GET, "/steps").is_ok());
        assert!(authorize(&c, &Method::POST, "/signal").is_ok());
        assert!(authorize(&c, &Method::PUT, "/steps/{rev}").is_err());
        assert!(authorize(&c, &Method::POST, "/commands").is_err());
        assert!(authorize(&Caller::Other, &Method::GET, "/steps").is_err());
    }

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, Some(20))));
        assert_eq!(parse_content_range("bytes 0-*/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
