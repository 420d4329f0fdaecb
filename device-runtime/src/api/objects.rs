//! `/objects`: the content-addressed store, with resumable uploads.

use super::*;
use crate::control::{Object, ObjectUpload};
use edgevisor_protocol::Digest;
use http_body_util::StreamBody;
use hyper::body::Frame;

pub(super) fn list(d: &Daemon) -> ApiResult {
    let list: Vec<Object> = d
        .store
        .list_objects()?
        .into_iter()
        .filter_map(|(h, size)| {
            Some(Object {
                sha256: Digest::from_hex(&h).ok()?,
                size,
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &list))
}

fn digest_of(hex: &str) -> Result<Digest, ApiError> {
    Digest::from_hex(hex).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "object name must be 64 lowercase hex",
        )
    })
}

/// A blocking store operation, run off the thread that answers every other request.
async fn blocking<T: Send + 'static>(
    d: &Arc<Daemon>,
    f: impl FnOnce(&Daemon) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let d = d.clone();
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

pub(super) async fn get(d: &Daemon, hex: &str) -> ApiResult {
    let hex = digest_of(hex)?;
    let hex = hex.hex();
    if !d.store.has_object(hex) {
        return Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("no object sha256:{hex}"))
                .partial_bytes(d.store.partial_size(hex)),
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

pub(super) async fn put(d: &Arc<Daemon>, hex: &str, req: Request<Incoming>) -> ApiResult {
    let digest = digest_of(hex)?;
    let answer = |status: Option<&str>, size, partial_bytes| ObjectUpload {
        sha256: digest.clone(),
        status: status.map(str::to_owned),
        size,
        partial_bytes,
    };
    if d.store.has_object(hex) {
        return Ok(json_response(
            StatusCode::OK,
            &answer(Some("exists"), None, None),
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
    let _slot = UploadSlot(d.as_ref(), hex.to_owned());
    let have = d.store.partial_size(hex);
    if offset > have {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("resume at {offset}, but only {have} bytes were received"),
        )
        .partial_bytes(have));
    }
    let incoming = total.map(|t| t.saturating_sub(offset)).unwrap_or(0);
    let free = d.store.free_bytes()?;
    if free < incoming.saturating_add(d.cfg.reserve_bytes) {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("not enough space: {incoming} bytes to store, {free} free"),
        ));
    }
    // Resuming re-reads what arrived before, to go on hashing it.
    let mut up = {
        let hex = hex.to_owned();
        blocking(d, move |d| d.store.begin_upload(&hex, offset)).await?
    };
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
                .partial_bytes(up.written()));
            }
        }
    }
    if let Some(t) = total
        && up.written() < t
    {
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &answer(None, None, Some(up.written())),
        ));
    }
    let size = blocking(d, move |d| d.store.finish_upload(up, total)).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &answer(None, Some(size), None),
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
    fn content_range() {
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, Some(20))));
        assert_eq!(parse_content_range("bytes 0-*/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
