//! The controller crate's one error type. Each variant keeps its cause as a source, so a
//! log line or an event can say what went wrong underneath; `anyhow` is for `main` only.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A template that cannot become a state, with the message users see in the status.
    #[error("{0}")]
    Render(String),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("registry Secret {name}: {reason}")]
    RegistrySecret { name: String, reason: String },
    #[error("revision-signing key Secret {name}: {reason}")]
    SigningKey { name: String, reason: String },
    #[error("building the registry client: {0}")]
    RegistryClient(#[source] reqwest::Error),
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("watching {what}: {source}")]
    Watch {
        what: &'static str,
        #[source]
        source: kube::runtime::watcher::Error,
    },
}

impl Error {
    /// A label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Render(_) => "render",
            Error::NoNamespace => "no_namespace",
            Error::RegistrySecret { .. } | Error::RegistryClient(_) => "registry",
            Error::SigningKey { .. } => "signing",
            Error::File { .. } | Error::Tls(_) | Error::Listen { .. } => "io",
            Error::Watch { .. } => "watch",
        }
    }
}
