//! Connected accounts: lookup, status checks, opening sealed tokens, and the public accessors.

use super::client::AuthorizedClient;
use super::crypto::aad;
use super::secret::{AccessToken, RefreshToken};
use super::store::{AccountStatus, Sealed, StoredAccount};
use super::types::AccountInfo;
use super::{Vault, VaultError};

pub(super) fn token_aad(
    account_id: &str,
    principal_id: &str,
    connector: &str,
    field: &str,
) -> Vec<u8> {
    aad(&["account", account_id, principal_id, connector, field])
}

impl Vault {
    /// Marks `principal_id`'s account on `connector` as needing a new consent, after the
    /// provider rejected an API call as revoked (or demanded a stronger authentication). It is
    /// not refreshed again automatically.
    pub async fn require_reauthorization(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<(), VaultError> {
        let account = self.load_account(principal_id, connector).await?;
        self.mark_needs_reauthorization(&account).await
    }

    /// An HTTP client for `principal_id`'s account on `connector`: every request gets
    /// `Authorization: Bearer` from the vault, refreshed first when it expires within the margin.
    pub fn client(&self, principal_id: &str, connector: &str) -> AuthorizedClient {
        AuthorizedClient::new(self.clone(), principal_id.to_owned(), connector.to_owned())
    }

    /// The connected account of `principal_id` on `connector` (any status), without tokens.
    pub async fn account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<AccountInfo, VaultError> {
        let account = self.load_account(principal_id, connector).await?;
        Ok(AccountInfo::from(&account))
    }

    /// Makes sure the account has an access token that does not expire within the margin
    /// (refreshing if needed, single-flight) and returns the account.
    pub async fn ensure_fresh(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<AccountInfo, VaultError> {
        let (_, account) = self.fresh_token(principal_id, connector, None).await?;
        Ok(AccountInfo::from(&account))
    }

    /// Refreshes after the provider rejected an access token as expired, unless the stored token
    /// version is already newer than `seen_version` (another caller refreshed meanwhile).
    pub async fn refresh_after_expiry(
        &self,
        principal_id: &str,
        connector: &str,
        seen_version: i64,
    ) -> Result<AccountInfo, VaultError> {
        let (_, account) = self
            .fresh_token(principal_id, connector, Some(seen_version))
            .await?;
        Ok(AccountInfo::from(&account))
    }

    pub(super) fn check_status(&self, account: &StoredAccount) -> Result<(), VaultError> {
        match account.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::NeedsReauthorization => Err(VaultError::NeedsReauthorization {
                principal_id: account.principal_id.clone(),
                connector: account.connector.clone(),
                scopes: account.granted_scopes.clone(),
            }),
            AccountStatus::Revoked => Err(VaultError::Revoked {
                principal_id: account.principal_id.clone(),
                connector: account.connector.clone(),
            }),
        }
    }

    /// The stored account of `principal_id` on `connector` (any status), or `NotConnected`.
    pub(super) async fn load_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<StoredAccount, VaultError> {
        let stored = self
            .inner
            .store
            .get_account(principal_id, connector)
            .await?;
        self.loaded(stored, principal_id, connector).await
    }

    /// [`Vault::load_active`] for a step's call: read as the store reads a row right behind
    /// the intent the engine just queued (see [`AccountStore::get_account_for_call`]).
    ///
    /// [`AccountStore::get_account_for_call`]: super::AccountStore::get_account_for_call
    pub(super) async fn load_active_for_call(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<StoredAccount, VaultError> {
        let stored = self
            .inner
            .store
            .get_account_for_call(principal_id, connector)
            .await?;
        let account = self.loaded(stored, principal_id, connector).await?;
        self.check_status(&account)?;
        Ok(account)
    }

    /// The account just read from the store, with the tokens this vault retained for it
    /// (see `pending`), noted as seen; `NotConnected` when there is none.
    async fn loaded(
        &self,
        stored: Option<StoredAccount>,
        principal_id: &str,
        connector: &str,
    ) -> Result<StoredAccount, VaultError> {
        let stored = stored.ok_or_else(|| VaultError::NotConnected {
            principal_id: principal_id.to_owned(),
            connector: connector.to_owned(),
        })?;
        let account = self.with_pending(stored).await;
        self.saw(&account);
        Ok(account)
    }

    pub(super) async fn load_active(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<StoredAccount, VaultError> {
        let account = self.load_account(principal_id, connector).await?;
        self.check_status(&account)?;
        Ok(account)
    }

    pub(super) fn open_access(&self, account: &StoredAccount) -> Result<AccessToken, VaultError> {
        self.inner
            .cipher
            .open_string(
                &token_aad(
                    &account.account_id,
                    &account.principal_id,
                    &account.connector,
                    "access_token",
                ),
                &account.access_token,
            )
            .map(AccessToken::new)
            .map_err(|_| VaultError::Tampered {
                account_id: account.account_id.clone(),
                field: "access_token",
            })
    }

    pub(super) fn open_refresh(
        &self,
        account: &StoredAccount,
        sealed: &Sealed,
    ) -> Result<RefreshToken, VaultError> {
        self.inner
            .cipher
            .open_string(
                &token_aad(
                    &account.account_id,
                    &account.principal_id,
                    &account.connector,
                    "refresh_token",
                ),
                sealed,
            )
            .map(RefreshToken::new)
            .map_err(|_| VaultError::Tampered {
                account_id: account.account_id.clone(),
                field: "refresh_token",
            })
    }

    pub(super) async fn mark_needs_reauthorization(
        &self,
        account: &StoredAccount,
    ) -> Result<(), VaultError> {
        let mut updated = account.clone();
        updated.status = AccountStatus::NeedsReauthorization;
        updated.updated_at = self.now();
        let written = self
            .inner
            .store
            .replace_account(updated, account.rt_version)
            .await;
        self.forget(&account.principal_id, &account.connector);
        written?;
        Ok(())
    }
}
