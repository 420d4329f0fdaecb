//! The agent crate's one error type: what stops the agent from starting. Once it runs,
//! nothing it receives makes it exit; those failures are retried and reported instead.
use std::path::PathBuf;

use crate::credential::CredentialError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{flag} {}: {source}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A flag or a file given by one that cannot be used.
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Http {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("enrollment refused: {why} ({status}: {message})")]
    EnrollmentRefused {
        why: &'static str,
        status: u16,
        message: String,
    },
    #[error(
        "enrolled, but could not store the credential: enroll again with a new bootstrap token: {0}"
    )]
    CredentialNotStored(#[source] CredentialError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
