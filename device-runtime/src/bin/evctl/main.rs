//! `evctl`: the command line of the control socket. Human output by default,
//! `--json` for scripts.
#![forbid(unsafe_code)]

mod commands;

use clap::Parser;
use device_runtime::cli::EvctlArgs;

fn main() -> std::process::ExitCode {
    let args = EvctlArgs::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
