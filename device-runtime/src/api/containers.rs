//! `/containers` and `/signal`: the running revision's containers.

use super::*;
use crate::control::{
    ContainerAction, ContainerActionBody, ContainerActionDone, Signal, Signalled,
};
use crate::state::valid_name;

pub(super) async fn action(d: &Arc<Daemon>, name: &str, req: Request<Incoming>) -> ApiResult {
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let a: ContainerActionBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad body (action must be start, stop or restart): {e}"),
        )
    })?;
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
    if matches!(a.action, ContainerAction::Stop | ContainerAction::Restart)
        && let Some(h) = r.handles.remove(name)
    {
        h.stop().await;
    }
    if matches!(a.action, ContainerAction::Start | ContainerAction::Restart)
        && !r.handles.contains_key(name)
    {
        let h = crate::supervisor::Handle::start(d.oci.clone(), d.spec_for(&rev, &spec));
        r.handles.insert(name.to_owned(), h);
    }
    drop(r);
    Ok(json_response(
        StatusCode::OK,
        &ContainerActionDone {
            name: name.into(),
            action: a.action,
        },
    ))
}

/// `GET /containers/{name}/logs?lines=N`: the last lines of a container's log.
pub(super) fn logs(d: &Daemon, name: &str, req: &Request<Incoming>) -> ApiResult {
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

pub(super) async fn signal(d: &Daemon, caller: &Caller, req: Request<Incoming>) -> ApiResult {
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
        (Caller::Container(own), Some(other)) if *own != other => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a container may only signal for itself",
            ));
        }
        (Caller::Container(own), _) => own.clone(),
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
        &Signalled {
            container: name,
            ready: true,
        },
    ))
}
