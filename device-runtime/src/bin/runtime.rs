//! `runtime`: the device update manager. Thin: parse flags, then run the service
//! ([`device_runtime::service`]) until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use clap::Parser;
use device_runtime::cli::RuntimeArgs;
use device_runtime::signals::{run_daemon, terminated};

fn main() -> std::process::ExitCode {
    let args = RuntimeArgs::parse();
    let level: tracing::Level = args.log.parse().unwrap_or(tracing::Level::INFO);
    device_runtime::logging::StderrLogger::install(level);
    run_daemon("runtime", device_runtime::service::run(&args, terminated()))
}
