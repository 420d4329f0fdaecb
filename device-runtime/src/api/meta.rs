//! `/device-meta` and `/user-meta`: small key-value stores.

use super::*;
use crate::control::{MetaDeleted, MetaWritten};

pub(super) fn list(d: &Daemon, kind: MetaKind) -> ApiResult {
    let m: std::collections::BTreeMap<String, String> =
        d.store.meta_list(kind)?.into_iter().collect();
    Ok(json_response(StatusCode::OK, &m))
}

pub(super) async fn key(
    d: &Daemon,
    kind: MetaKind,
    key: &str,
    req: Request<Incoming>,
) -> ApiResult {
    match *req.method() {
        Method::GET => Ok(raw_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            d.store.meta_get(kind, key)?,
        )),
        Method::PUT => {
            let body = read_body(req, MAX_SMALL_BODY).await?;
            d.store.meta_put(kind, key, &body)?;
            Ok(json_response(
                StatusCode::OK,
                &MetaWritten { key: key.into() },
            ))
        }
        _ => {
            d.store.meta_delete(kind, key)?;
            Ok(json_response(
                StatusCode::OK,
                &MetaDeleted {
                    deleted: key.into(),
                },
            ))
        }
    }
}
