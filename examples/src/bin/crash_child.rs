//! The child process of the crash test: runs (`start`) or recovers (`recover`) the
//! escalate-deal chain on the database and emulators its parent names in its environment.
//! See `examples::crash`. Not meant to be run by hand.

use std::process::ExitCode;

use examples::crash::{Phase, child_main};

#[tokio::main]
async fn main() -> ExitCode {
    let Some(phase) = std::env::args().nth(1).as_deref().and_then(Phase::parse) else {
        eprintln!("usage: crash_child start|recover (started by the crash test, not by hand)");
        return ExitCode::from(2);
    };
    match child_main(phase).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash child: {e}");
            ExitCode::FAILURE
        }
    }
}
