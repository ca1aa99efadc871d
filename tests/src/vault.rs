//! Opening a vault on a SQLite file for a test.

use std::path::Path;

use chain_runtime::vault::{Vault, VaultKey, VaultOptions};

/// A vault with a fresh key and default options on the SQLite file `db` (created if missing).
pub async fn open_vault(db: &Path) -> Vault {
    open_vault_with(db, VaultOptions::default()).await
}

/// A vault with a fresh key and `options` on the SQLite file `db` (created if missing).
pub async fn open_vault_with(db: &Path, options: VaultOptions) -> Vault {
    crate::tls::install_tls_provider();
    Vault::open_sqlite(db, VaultKey::generate(), options)
        .await
        .unwrap_or_else(|e| panic!("the vault does not open on {}: {e}", db.display()))
}
