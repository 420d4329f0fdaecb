//! `runtime`: the device update manager. Thin: parse args, open the store, recover,
//! serve the control socket until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use device_runtime::cli::RuntimeArgs;
use device_runtime::daemon::{Config, Daemon};
use device_runtime::store::Store;

fn main() -> std::process::ExitCode {
    match main_inner() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runtime: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main_inner() -> Result<()> {
    let args = RuntimeArgs::parse();
    let level: tracing::Level = args.log.parse().unwrap_or(tracing::Level::INFO);
    device_runtime::logging::StderrLogger::install(level);
    // One thread: the runtime mostly waits, and a device has little memory to spare.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(run(args))
}

fn resolve_group(g: &str) -> Result<u32> {
    if let Ok(gid) = g.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("/etc/group")?;
    groups
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(g)).then(|| f.nth(1).and_then(|gid| gid.parse().ok()))?
        })
        .with_context(|| format!("no group {g:?}"))
}

async fn run(args: RuntimeArgs) -> Result<()> {
    let store = Store::open(&args.storage)
        .with_context(|| format!("storage {}", args.storage.display()))?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| store.root().join("control.sock"));
    let socket = match (socket.parent(), socket.file_name()) {
        (Some(p), Some(n)) if !p.as_os_str().is_empty() => {
            std::fs::create_dir_all(p)?;
            p.canonicalize()?.join(n)
        }
        _ => std::env::current_dir()?.join(&socket),
    };
    let gid = args.group.as_deref().map(resolve_group).transpose()?;
    let cfg = Config {
        oci_runtime: args.oci_runtime.clone(),
        socket: socket.clone(),
        reserve_bytes: args.reserve_bytes,
        retention: args.retention,
        log_max_bytes: args.log_max_bytes,
        stop_grace: Duration::from_secs(args.stop_grace_seconds),
        reboot_command: args.reboot_command.clone(),
        manager_gid: gid,
    };
    let d = Daemon::new(store, cfg);
    let cli = device_runtime::oci::RuncCli::new(args.oci_runtime.clone(), &d.store.path("runc"));
    match cli.version().await {
        Ok(v) => tracing::info!(oci = %args.oci_runtime, version = %v, "oci runtime"),
        Err(e) => tracing::warn!(error = %e, "oci runtime not usable"),
    }
    d.recover().await.context("recovery")?;
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("bind {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&socket, None, Some(gid))?;
    }
    tracing::info!(socket = %socket.display(), storage = %d.store.root().display(), "serving");
    device_runtime::api::serve(listener, d.clone(), device_runtime::signals::terminated()).await;
    tracing::info!("shutting down, stopping containers");
    d.stop_all().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
