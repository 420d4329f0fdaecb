//! `agent`: the device's cloud client. Thin: parse args, set up logging, run
//! [`agent::run`] until SIGTERM. Exits non-zero only when it cannot
//! start (bad flags, unreadable CA) or enrollment is refused.
#![forbid(unsafe_code)]

use agent::{AgentArgs, run};
use anyhow::Context;
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = AgentArgs::parse();
    let level: tracing::Level = args.log.parse().unwrap_or(tracing::Level::INFO);
    device_runtime::logging::StderrLogger::install(level);
    // One thread: the agent mostly waits on the network, and the device's memory is
    // for its containers.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
        .and_then(|rt| rt.block_on(run(args, device_runtime::signals::terminated())));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
