//! `POST /commands`: run a revision, collect garbage, reboot.

use super::*;
use crate::control::{Command, CommandAccepted};

pub(super) async fn post(d: &Arc<Daemon>, req: Request<Incoming>) -> ApiResult {
    let body = read_body(req, MAX_SMALL_BODY).await?;
    let cmd: Command = serde_json::from_slice(&body).map_err(|e| {
        let e = e.to_string();
        let msg = match e.strip_prefix("unknown variant ") {
            Some(rest) => format!("unknown op {rest}"),
            None => format!("bad command: {e}"),
        };
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    })?;
    match cmd {
        Command::Run(rev) => {
            check_rev(&rev)?;
            if !d.store.has_revision(&rev) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no revision {rev}"),
                ));
            }
            d.start_run(&rev).map_err(|other| {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    format!("update of {other} in progress"),
                );
                e.body.in_progress = Some(other);
                e
            })?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &CommandAccepted {
                    op: "run".into(),
                    rev: Some(rev),
                },
            ))
        }
        Command::Gc => {
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
        Command::Reboot => {
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
                &CommandAccepted {
                    op: "reboot".into(),
                    rev: None,
                },
            ))
        }
    }
}
