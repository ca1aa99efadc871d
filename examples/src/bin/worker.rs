//! A worker process of the multi-process tests and the benchmark: drives runnable runs of the
//! escalate-deal chain on the database and emulators its parent names in its environment, or
//! makes many concurrent callers ask the vault for a fresh token. See `examples::workers`.
//! Not meant to be run by hand.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match examples::workers::worker_main(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::FAILURE
        }
    }
}
