//! A client of the control socket, used by `evctl`, the cloud agent and the tests. Its
//! answers are the protocol crate's wire types, the same the server writes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde::de::DeserializeOwned;

use crate::api::Body;
use crate::control::{
    BuildInfo, Command, CommandAccepted, Container, ErrorBody, GcReport, Object, ObjectUpload, Step,
};
use crate::lifecycle::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the runtime at {socket}: {msg}")]
    Connect { socket: PathBuf, msg: String },
    #[error("{status}: {}", .body.error)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad response: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    inner: HyperClient<UnixConnector, Body>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as it is, for tools and tests that look at any answer, errors included.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as the wire type the route answers with.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Decode(format!(
                "{e}: {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            ))
        })
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_owned(),
            inner: HyperClient::unix(),
        }
    }

    /// Sends a request; any status is returned as is.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        headers: &[(&str, String)],
    ) -> Result<Reply, ClientError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, path).into();
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let req = b
            .body(body)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                socket: self.socket.clone(),
                msg: format!("{e:?}"),
            })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// Like [`send`](Self::send) but turns error statuses into [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, ClientError> {
        let r = self.send(method, path, full(body), &[]).await?;
        check(r)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, Bytes::new()).await?.decode()
    }

    pub async fn steps(&self) -> Result<Vec<Step>, ClientError> {
        self.get("/steps").await
    }

    pub async fn progress(&self, rev: &str) -> Result<Progress, ClientError> {
        self.get(&format!("/steps/{rev}/progress")).await
    }

    pub async fn objects(&self) -> Result<Vec<Object>, ClientError> {
        self.get("/objects").await
    }

    pub async fn containers(&self) -> Result<Vec<Container>, ClientError> {
        self.get("/containers").await
    }

    pub async fn buildinfo(&self) -> Result<BuildInfo, ClientError> {
        self.get("/buildinfo").await
    }

    /// Installs a state as revision `rev`; answers its progress (`QUEUED`).
    pub async fn put_step(&self, rev: &str, state: Vec<u8>) -> Result<Progress, ClientError> {
        self.call(Method::PUT, &format!("/steps/{rev}"), state)
            .await?
            .decode()
    }

    async fn command<T: DeserializeOwned>(&self, cmd: &Command) -> Result<T, ClientError> {
        let body = serde_json::to_vec(cmd).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.call(Method::POST, "/commands", body).await?.decode()
    }

    pub async fn run(&self, rev: &str) -> Result<CommandAccepted, ClientError> {
        self.command(&Command::Run(rev.to_owned())).await
    }

    pub async fn gc(&self) -> Result<GcReport, ClientError> {
        self.command(&Command::Gc).await
    }

    pub async fn reboot(&self) -> Result<CommandAccepted, ClientError> {
        self.command(&Command::Reboot).await
    }

    /// Streams a file to `PUT /objects/{sha256}`, resuming a partial upload if the
    /// runtime has one. The digest is computed here first (streaming, too).
    pub async fn put_object_file(&self, path: &Path) -> Result<ObjectUpload, ClientError> {
        use sha2::{Digest, Sha256};
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::open(path).await?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let hex = hex::encode(h.finalize());
        let size = f.metadata().await?.len();
        // Ask how much a previous attempt left.
        let probe = self
            .send(
                Method::GET,
                &format!("/objects/{hex}"),
                full(Bytes::new()),
                &[],
            )
            .await?;
        if probe.status == StatusCode::OK {
            return Ok(ObjectUpload {
                sha256: crate::control::Digest::from_hex(&hex)
                    .map_err(|e| ClientError::Decode(e.to_string()))?,
                status: Some("exists".into()),
                // As the runtime answers a PUT of an object it has: nothing was sent.
                size: None,
                partial_bytes: None,
            });
        }
        let offset = probe
            .decode::<ErrorBody>()
            .ok()
            .and_then(|b| b.partial_bytes)
            .unwrap_or(0)
            .min(size);
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let stream = crate::api::file_frames(f);
        let mut headers = vec![(header::CONTENT_LENGTH.as_str(), (size - offset).to_string())];
        if offset > 0 {
            headers.push((
                header::CONTENT_RANGE.as_str(),
                format!("bytes {offset}-{}/{size}", size.saturating_sub(1)),
            ));
        }
        let r = self
            .send(
                Method::PUT,
                &format!("/objects/{hex}"),
                BodyExt::boxed(StreamBody::new(stream)),
                &headers,
            )
            .await?;
        check(r)?.decode()
    }
}

fn check(r: Reply) -> Result<Reply, ClientError> {
    if r.status.is_success() {
        Ok(r)
    } else {
        let body = r.decode().unwrap_or_else(|_| ErrorBody {
            error: String::from_utf8_lossy(&r.body).into_owned(),
            ..ErrorBody::default()
        });
        Err(ClientError::Api {
            status: r.status,
            body,
        })
    }
}
