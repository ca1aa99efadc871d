//! New tokens that could not be written yet.
//!
//! A refresh that rotated the refresh token must not lose it: the old one is dead at the
//! provider. When the write of the new tokens fails (disk full, database locked), the sealed
//! account is kept here and every later use of the account serves it and retries the write,
//! until it lands or another writer supersedes it.

use super::Vault;
use super::store::StoredAccount;

/// A sealed account whose write failed, with the token version the write expects to replace.
pub(super) struct Pending {
    account: StoredAccount,
    expected_version: i64,
}

/// What happened to a write of new tokens.
pub(super) enum Persisted {
    /// Written.
    Written,
    /// The store failed; the account is kept in memory and the write retried later.
    Retained,
    /// Another writer changed the account first; nothing was written.
    Superseded,
}

impl Vault {
    /// Writes `account` if the stored token version is still `expected_version`; keeps it in
    /// memory when the store fails.
    pub(super) async fn persist(&self, account: StoredAccount, expected_version: i64) -> Persisted {
        let account_id = account.account_id.clone();
        let written = self
            .inner
            .store
            .replace_account(account.clone(), expected_version)
            .await;
        self.forget(&account.principal_id, &account.connector);
        match written {
            Ok(true) => {
                self.pending_map().remove(&account_id);
                Persisted::Written
            }
            Ok(false) => {
                self.pending_map().remove(&account_id);
                Persisted::Superseded
            }
            Err(e) => {
                tracing::error!(
                    connector = %account.connector,
                    account_id = %account_id,
                    error = %e,
                    "vault could not write new tokens; keeping them in memory and retrying on next use"
                );
                self.pending_map().insert(
                    account_id,
                    Pending {
                        account,
                        expected_version,
                    },
                );
                Persisted::Retained
            }
        }
    }

    /// The account as it really is: `stored`, or the newer tokens kept in memory for it (whose
    /// write is retried now).
    pub(super) async fn with_pending(&self, stored: StoredAccount) -> StoredAccount {
        let pending = {
            let map = self.pending_map();
            match map.get(&stored.account_id) {
                Some(p) => (p.account.clone(), p.expected_version),
                None => return stored,
            }
        };
        let (account, expected_version) = pending;
        if stored.rt_version != expected_version {
            // Another writer changed the row since: its tokens win (ours can no longer land).
            self.pending_map().remove(&stored.account_id);
            return stored;
        }
        match self.persist(account.clone(), expected_version).await {
            Persisted::Written => {
                tracing::info!(account_id = %account.account_id, "vault wrote the retained tokens");
                account
            }
            Persisted::Retained => account,
            Persisted::Superseded => stored,
        }
    }

    /// Updates the retained account in place (e.g. with its expiry), if one is retained.
    pub(super) fn update_pending(&self, account: &StoredAccount) -> bool {
        match self.pending_map().get_mut(&account.account_id) {
            Some(p) => {
                p.account = account.clone();
                true
            }
            None => false,
        }
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}
