//! `runtime`: the device update manager. Thin: parse flags, then run the service
//! ([`device_runtime::service`]) until SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use clap::Parser;
use device_runtime::cli::RuntimeArgs;

fn main() -> std::process::ExitCode {
    let args = RuntimeArgs::parse();
    let level: tracing::Level = args.log.parse().unwrap_or(tracing::Level::INFO);
    device_runtime::logging::StderrLogger::install(level);
    // One thread: the runtime mostly waits, and a device has little memory to spare.
    // Blocking work (unpacking) goes to tokio's blocking pool.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(device_runtime::service::run(
                &args,
                device_runtime::signals::terminated(),
            ))
            // Each error's message includes its cause.
            .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
