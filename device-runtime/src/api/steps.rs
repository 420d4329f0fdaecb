//! `/steps`: the revisions on disk, installing one, its progress.

use super::*;
use crate::control::Step;
use crate::install::InstallError;
use crate::lifecycle::Status;
use crate::store::Pointer;

pub(super) async fn list(d: &Daemon) -> ApiResult {
    let committed = d.store.pointer(Pointer::Committed);
    let trying = d.store.pointer(Pointer::Trying);
    let factory = d.store.pointer(Pointer::Factory);
    let running = d.running.lock().await.rev.clone();
    let mut out = Vec::new();
    for rev in d.store.list_revisions()? {
        let p = d.store.read_progress(&rev).ok();
        let is = |pointer: &Option<String>| pointer.as_ref() == Some(&rev);
        out.push(Step {
            status: p.as_ref().map(|p| p.status),
            status_msg: p.map(|p| p.status_msg),
            committed: is(&committed),
            trying: is(&trying),
            factory: is(&factory),
            running: is(&running),
            rev,
        });
    }
    Ok(json_response(StatusCode::OK, &out))
}

pub(super) fn get(d: &Daemon, rev: &str) -> ApiResult {
    let rev = check_rev(rev)?;
    Ok(raw_response(
        StatusCode::OK,
        "application/json",
        d.store.read_state(rev)?,
    ))
}

pub(super) fn progress(d: &Daemon, rev: &str) -> ApiResult {
    let rev = check_rev(rev)?;
    Ok(json_response(StatusCode::OK, &d.store.read_progress(rev)?))
}

pub(super) async fn put(d: &Arc<Daemon>, rev: &str, req: Request<Incoming>) -> ApiResult {
    check_rev(rev)?;
    let body = read_body(req, MAX_STATE_BYTES).await?;
    // Validating, checking every object and writing with fsync touch the disk: off the
    // thread that answers every other request.
    let (dd, r) = (d.clone(), rev.to_owned());
    let installed = tokio::task::spawn_blocking(move || dd.install(&r, &body))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match installed {
        Ok(true) => Ok(json_response(
            StatusCode::CREATED,
            &d.store.read_progress(rev)?,
        )),
        Ok(false) => Ok(json_response(StatusCode::OK, &d.store.read_progress(rev)?)),
        Err(e) => Err(install_error(e)),
    }
}

fn install_error(e: InstallError) -> ApiError {
    let wontgo = |e: &InstallError| {
        let mut a = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        a.body.status = Some(Status::Wontgo);
        a
    };
    match e {
        InstallError::BadName(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        InstallError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        InstallError::Missing(ref m) => {
            let mut a = wontgo(&e);
            a.body.missing = m.clone();
            a
        }
        InstallError::SizeMismatch(..) | InstallError::Policy(_) => wontgo(&e),
        InstallError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        InstallError::NoSpace { .. } => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
        }
        InstallError::Store(s) => s.into(),
    }
}
