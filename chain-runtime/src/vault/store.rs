//! The storage interface of the vault, so that PostgreSQL can follow the embedded SQLite store.
//!
//! A store only ever sees ciphertext ([`Sealed`]) for secrets; encryption happens in the vault.
//! Every write that changes tokens is a compare-and-swap on the account's token version, which is
//! what makes refresh rotation-safe across processes sharing one database; the refresh lock
//! ([`AccountStore::refresh_lock`]) is what makes it single-flight across them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// A boxed future returned by [`AccountStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A storage backend failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend (database, file system, worker thread) failed.
    #[error("vault store failed: {0}")]
    Backend(String),
    /// A row could not be decoded (schema mismatch or corruption).
    #[error("vault store holds a row it cannot decode: {0}")]
    Corrupt(String),
}

/// An encrypted blob (format byte, nonce, ciphertext and tag). Its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// The lifecycle state of a connected account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Usable.
    Active,
    /// The provider rejected the refresh token (or none is left): the user must consent again.
    /// Never retried automatically.
    NeedsReauthorization,
    /// Disconnected: the grant was revoked at the provider (RFC 7009).
    Revoked,
}

impl AccountStatus {
    /// The stable text form stored in databases.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::NeedsReauthorization => "needs_reauthorization",
            AccountStatus::Revoked => "revoked",
        }
    }

    /// Parses [`AccountStatus::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(AccountStatus::Active),
            "needs_reauthorization" => Some(AccountStatus::NeedsReauthorization),
            "revoked" => Some(AccountStatus::Revoked),
            _ => None,
        }
    }
}

/// One connected account as stored: metadata in the clear, tokens sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAccount {
    /// Stable id of this connected account (kept across re-consent).
    pub account_id: String,
    /// The principal identifier that owns the account.
    pub principal_id: String,
    /// The connector (provider configuration name).
    pub connector: String,
    /// The provider's stable user id.
    pub upstream_subject: String,
    /// The scopes as the provider granted them.
    pub granted_scopes: Vec<String>,
    /// The sealed access token.
    pub access_token: Sealed,
    /// The sealed refresh token, if the provider issued one.
    pub refresh_token: Option<Sealed>,
    /// Absolute access-token expiry, unix seconds; `None` when unknown.
    pub expires_at: Option<i64>,
    /// Id of the grant (one per completed consent).
    pub grant_id: String,
    /// When the user consented, unix seconds.
    pub consented_at: i64,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Token version: incremented by every write of new tokens; the compare-and-swap key.
    pub rt_version: i64,
    /// Last write, unix seconds.
    pub updated_at: i64,
}

/// A pending consent (authorization request awaiting its callback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredConsent {
    /// SHA-256 of the `state` parameter (the state itself is not stored).
    pub state_hash: Vec<u8>,
    /// The principal the consent is for.
    pub principal_id: String,
    /// The connector.
    pub connector: String,
    /// The requested scopes.
    pub scopes: Vec<String>,
    /// The sealed PKCE code verifier.
    pub verifier: Sealed,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

/// One provider configuration as stored: the configuration (every field but the client secret)
/// as JSON in the clear, the client secret sealed.
///
/// The sealed secret's associated data binds it to the connector *and* to the exact
/// `config` text, so editing the configuration (say, pointing `token_url` elsewhere) or moving
/// the secret to another connector makes the row fail to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredProvider {
    /// The connector name (the key).
    pub connector: String,
    /// The configuration without the client secret, as JSON (stable field names, with a
    /// format version). A PostgreSQL store may keep it as `jsonb`, but must return the text
    /// exactly as it was put, since the secret's associated data covers it.
    pub config: String,
    /// The sealed client secret.
    pub client_secret: Sealed,
    /// Last write, unix seconds.
    pub updated_at: i64,
}

/// Storage for connected accounts, pending consents and provider configurations.
///
/// Implementations must make [`AccountStore::replace_account`] an atomic compare-and-swap on
/// `rt_version`, and [`AccountStore::take_consent`] an atomic read-and-delete (single use).
pub trait AccountStore: Send + Sync + 'static {
    /// Stores `candidate` as the key-check value if none exists, and returns the stored one.
    fn init_key_check(&self, candidate: Sealed) -> StoreFuture<'_, Sealed>;

    /// The account of `principal_id` on `connector`, if any.
    fn get_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> StoreFuture<'_, Option<StoredAccount>>;

    /// [`AccountStore::get_account`] for a step's call, which the engine asks for right after
    /// it queues the step's intent: a store that applies its writes in queue order may read
    /// the row there, behind the intent (in its transaction, or right after it), instead of
    /// on a round trip of its own. The row is read from the store either way. The default is
    /// `get_account`.
    fn get_account_for_call(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> StoreFuture<'_, Option<StoredAccount>> {
        self.get_account(principal_id, connector)
    }

    /// The accounts of `principal_id` (any status), at least those on `connectors`, read
    /// together: what a run's preflight needs, in one round trip where the store can. The
    /// default reads them one by one with [`AccountStore::get_account`].
    fn principal_accounts<'a>(
        &'a self,
        principal_id: &'a str,
        connectors: &'a [String],
    ) -> StoreFuture<'a, Vec<StoredAccount>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for connector in connectors {
                if let Some(account) = self.get_account(principal_id, connector).await? {
                    out.push(account);
                }
            }
            Ok(out)
        })
    }

    /// Inserts a new account; returns `false` if one already exists for (principal, connector).
    fn insert_account(&self, account: StoredAccount) -> StoreFuture<'_, bool>;

    /// Replaces the account with the same (principal, connector) if its stored `rt_version` equals
    /// `expected_rt_version`; returns whether it did.
    fn replace_account(
        &self,
        account: StoredAccount,
        expected_rt_version: i64,
    ) -> StoreFuture<'_, bool>;

    /// Deletes the account of (principal, connector) if its stored `rt_version` equals
    /// `expected_rt_version`; returns whether it did.
    fn delete_account(
        &self,
        principal_id: &str,
        connector: &str,
        expected_rt_version: i64,
    ) -> StoreFuture<'_, bool>;

    /// Every account (any principal, any status) on `connector` bound to `upstream_subject`.
    fn accounts_with_subject(
        &self,
        connector: &str,
        upstream_subject: &str,
    ) -> StoreFuture<'_, Vec<StoredAccount>>;

    /// Stores a pending consent.
    fn put_consent(&self, consent: StoredConsent) -> StoreFuture<'_, ()>;

    /// Removes and returns the pending consent with this state hash (single use).
    fn take_consent(&self, state_hash: &[u8]) -> StoreFuture<'_, Option<StoredConsent>>;

    /// Deletes pending consents that expired before `now`; returns how many.
    fn purge_expired_consents(&self, now: i64) -> StoreFuture<'_, u64>;

    /// Stores a provider configuration, replacing any stored for the same connector
    /// (an upsert: `INSERT .. ON CONFLICT (connector) DO UPDATE` in PostgreSQL).
    fn put_provider(&self, provider: StoredProvider) -> StoreFuture<'_, ()>;

    /// Every stored provider configuration, ordered by connector.
    fn list_providers(&self) -> StoreFuture<'_, Vec<StoredProvider>>;

    /// Takes the refresh lock of `principal_id`'s account on `connector`, waiting while another
    /// holder (in any process sharing this store) has it; the lock is held until the returned
    /// guard is dropped. The vault takes it around a refresh, after its in-process lock, and
    /// re-reads the account once it holds it: a holder that refreshed before it has written the
    /// new tokens (and a rotated refresh token) before releasing, so the waiter uses them
    /// instead of refreshing again. That makes refresh single-flight across every process.
    ///
    /// Semantics an implementation must give: mutual exclusion per (principal, connector)
    /// among all processes on the store; a lock whose holder dies is released (the operating
    /// system's file lock, a database session's advisory lock — `pg_advisory_lock` on a
    /// connection held by the guard — or a row lock held in an open transaction); waiting is
    /// bounded (an error after a deadline, never a hang). The default is in-process only, for
    /// a store that one process uses.
    fn refresh_lock<'a>(
        &'a self,
        principal_id: &'a str,
        connector: &'a str,
    ) -> StoreFuture<'a, RefreshLock> {
        let _ = (principal_id, connector);
        Box::pin(async { Ok(RefreshLock::in_process_only()) })
    }
}

/// A held refresh lock of one account (see [`AccountStore::refresh_lock`]); dropping it
/// releases the lock.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RefreshLock {
    _held: Option<Box<dyn Send + Sync>>,
}

impl RefreshLock {
    /// A guard that holds something (a file lock, a database connection in a transaction, …)
    /// until it is dropped.
    pub fn holding(held: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Some(Box::new(held)),
        }
    }

    /// A guard that holds nothing: for a store that only one process uses (the vault's own
    /// in-process lock is enough).
    pub fn in_process_only() -> Self {
        Self { _held: None }
    }
}

impl fmt::Debug for RefreshLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshLock").finish_non_exhaustive()
    }
}
