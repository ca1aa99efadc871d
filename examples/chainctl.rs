//! `chainctl`: the chain-runtime command-line tool, built with the demo chain registered.
//!
//! An application builds its own tool the same way, registering its chains and passing its
//! credentials (the vault) instead of the demo's:
//!
//! ```text
//! chainctl --db chain.db runs list
//! chainctl --db chain.db audit verify --head > checkpoint.json
//! chainctl scopes escalate
//! ```

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;

use chain_runtime::cli::{CliSetup, CliStores};
use chain_runtime::engine::Engine;
use examples::demo_chain::{DemoCredentials, escalate};

fn main() -> ExitCode {
    chain_runtime::cli::main(
        CliSetup::new("chainctl").engine(|stores: CliStores| async move {
            let engine = Engine::new(stores.runs, stores.audit, Arc::new(DemoCredentials));
            engine.register::<escalate>();
            Ok::<_, Infallible>(engine)
        }),
    )
}
