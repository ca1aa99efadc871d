//! `chainctl`: the chain-runtime command-line tool, built with the example's chains
//! (`escalate_deal`, `escalate_and_note`) and the real credential vault.
//!
//! An application builds its own tool the same way, registering its chains. `runs resume`
//! drives the run through an engine whose credentials are the vault in the same database: the
//! provider configurations and connected accounts the application stored there, decrypted with
//! the key in `CHAIN_VAULT_KEY` (base64 of 32 bytes). No other command needs the key.
//!
//! ```text
//! chainctl --db chain.db runs list
//! CHAIN_VAULT_KEY=… chainctl --db chain.db runs resume run_…
//! chainctl --db chain.db audit verify --head > checkpoint.json
//! chainctl scopes escalate_deal
//! CHAIN_VAULT_KEY=… CHAIN_MCP_KEY=… chainctl --db chain.db serve --listen 127.0.0.1:8765
//! ```

use std::path::Path;
use std::process::ExitCode;

use chain_runtime::cli::CliSetup;
use chain_runtime::vault::VaultKey;
use chain_runtime::{Runtime, RuntimeBuilder};
use examples::escalate::{escalate_and_note, escalate_deal};

/// The environment variable holding the vault key, base64 (standard or URL-safe).
const VAULT_KEY_ENV: &str = "CHAIN_VAULT_KEY";

/// The runtime for `runs resume`: the vault on the database (its stored providers and
/// accounts) as the credentials, the example's chains registered.
fn runtime(db: &Path) -> Result<RuntimeBuilder, String> {
    let key = VaultKey::from_env(VAULT_KEY_ENV).map_err(|e| {
        format!(
            "`runs resume` calls the providers with the credentials in the vault, and needs the \
             key the application's vault was created with (a new key cannot open it): {e}"
        )
    })?;
    Ok(Runtime::at(&db.to_string_lossy())
        .vault_key(key)
        .chain::<escalate_deal>()
        .chain::<escalate_and_note>())
}

fn main() -> ExitCode {
    chain_runtime::cli::main(
        CliSetup::new("chainctl")
            .runtime(runtime)
            .mcp_tools(|b| b.chain::<escalate_deal>().chain::<escalate_and_note>()),
    )
}
