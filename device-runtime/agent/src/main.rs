//! `agent`: the device's cloud client. Thin: parse flags, set up logging, run
//! [`agent::run`] until SIGTERM. Exits non-zero only when it cannot start (bad flags,
//! unreadable CA) or enrollment is refused.
#![forbid(unsafe_code)]

use agent::{AgentArgs, run};
use clap::Parser;
use device_runtime::signals::{run_daemon, terminated};

fn main() -> std::process::ExitCode {
    let args = AgentArgs::parse();
    let level: tracing::Level = args.log.parse().unwrap_or(tracing::Level::INFO);
    device_runtime::logging::StderrLogger::install(level);
    run_daemon("agent", run(args, terminated()))
}
