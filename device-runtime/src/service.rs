//! The runtime as a service: open the store, recover from whatever the last run left,
//! bind the control socket, serve until `shutdown`, then stop the containers. The
//! binary's `main` only parses flags and hands this its shutdown.
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::RuntimeArgs;
use crate::daemon::{Config, Daemon};
use crate::policy::Policy;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("storage {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("recovery: {0}")]
    Recovery(#[source] StoreError),
    #[error("control socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--group {0:?}: no such group in /etc/group")]
    Group(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

/// A group given by number or by name (`/etc/group`).
fn resolve_group(g: &str) -> Result<u32, ServiceError> {
    if let Ok(gid) = g.parse() {
        return Ok(gid);
    }
    std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(g)).then(|| f.nth(1).and_then(|gid| gid.parse().ok()))?
        })
        .ok_or_else(|| ServiceError::Group(g.to_owned()))
}

/// The socket's absolute path (its directory is created): a relative one would change
/// meaning with the working directory of whoever connects.
fn socket_path(socket: &Path) -> std::io::Result<PathBuf> {
    match (socket.parent(), socket.file_name()) {
        (Some(p), Some(n)) if !p.as_os_str().is_empty() => {
            std::fs::create_dir_all(p)?;
            Ok(p.canonicalize()?.join(n))
        }
        _ => Ok(std::env::current_dir()?.join(socket)),
    }
}

pub async fn run(
    args: &RuntimeArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let store = Store::open(&args.storage).map_err(|source| ServiceError::Store {
        path: args.storage.clone(),
        source,
    })?;
    let wanted = args
        .socket
        .clone()
        .unwrap_or_else(|| store.root().join("control.sock"));
    let socket_err = |source| ServiceError::Socket {
        path: wanted.clone(),
        source,
    };
    let socket = socket_path(&wanted).map_err(socket_err)?;
    let gid = args.group.as_deref().map(resolve_group).transpose()?;
    let policy = match &args.policy {
        Some(p) => Policy::load(p, true)?,
        None => Policy::load(Path::new(crate::policy::DEFAULT_PATH), false)?,
    };
    let cfg = Config {
        oci_runtime: args.oci_runtime.clone(),
        socket: socket.clone(),
        reserve_bytes: args.reserve_bytes,
        retention: args.retention,
        log_max_bytes: args.log_max_bytes,
        stop_grace: Duration::from_secs(args.stop_grace_seconds),
        reboot_command: args.reboot_command.clone(),
        manager_gid: gid,
        policy,
    };
    let d = Daemon::new(store, cfg);
    let cli = crate::oci::RuncCli::new(args.oci_runtime.clone(), &d.store.path("runc"));
    match cli.version().await {
        Ok(v) => tracing::info!(oci = %args.oci_runtime, version = %v, "oci runtime"),
        Err(e) => tracing::warn!(error = %e, "oci runtime not usable"),
    }
    d.sockets.clear().map_err(|source| ServiceError::Socket {
        path: d.store.path("sockets"),
        source,
    })?;
    d.recover().await.map_err(ServiceError::Recovery)?;
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).map_err(socket_err)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))
        .map_err(socket_err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&socket, None, Some(gid)).map_err(socket_err)?;
    }
    tracing::info!(socket = %socket.display(), storage = %d.store.root().display(), "serving");
    crate::api::serve(listener, d.clone(), shutdown).await;
    tracing::info!("shutting down, stopping containers");
    d.stop_all().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
