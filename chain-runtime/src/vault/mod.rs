//! The credential vault: connected accounts keyed by (principal identifier, connector), tokens
//! encrypted at rest, proactive single-flight rotation-safe refresh, consent with PKCE, and an
//! HTTP client that injects the credential so step code never sees a token.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chain_runtime::vault::VaultError> {
//! use chain_runtime::vault::*;
//! let key = VaultKey::from_env("CHAIN_VAULT_KEY")?;
//! let vault = Vault::open_sqlite("chain.db", key, VaultOptions::default()).await?;
//! vault.register_provider(
//!     ProviderConfig::new("acme", "https://id.acme.test/authorize", "https://id.acme.test/token",
//!         "client-id", ClientSecret::new("from-your-secret-store"), "https://app.test/callback")?
//!         .with_revoke_url("https://id.acme.test/revoke")?,
//! ).await?;
//! let link = vault.consent_link("user-42", "acme", &["api"]).await?;
//! // ... the user visits link.url; the provider redirects them back to the callback, where
//! // your web framework has authenticated them as "user-42" ...
//! # let redirect = String::new();
//! vault.complete_consent_from_redirect("user-42", &redirect).await?;
//! let client = vault.client("user-42", "acme");
//! let response = client.get("https://api.acme.test/me").send().await?;
//! # let _ = response; Ok(()) }
//! ```

mod accounts;
mod bind;
mod client;
mod clock;
mod consent;
mod credentials;
mod crypto;
mod disconnect;
mod error;
mod expiry;
mod file_lock;
mod oauth;
mod options;
mod pending;
pub mod presets;
mod provider;
mod refresh;
mod registry;
pub(crate) mod rows;
mod secret;
mod seen;
mod sqlite;
mod store;
mod subject;
mod trail;
mod types;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use client::{AuthorizedClient, AuthorizedRequest};
pub use clock::{Clock, OffsetClock, Sleeper, SystemClock, TokioSleeper};
pub use error::VaultError;
pub use oauth::{Introspection, TokenKind};
#[cfg(any(feature = "mcp", feature = "test-util"))]
pub(crate) use options::ensure_tls_provider;
pub use options::{HttpOptions, SharedSubjectPolicy, VaultOptions};
pub use provider::{
    ClientAuth, DEFAULT_IDEMPOTENCY_HEADER, ProviderConfig, ScopeSeparator, SubjectSource,
};
pub use secret::{AccessToken, ClientSecret, KeyError, PkceVerifier, RefreshToken, VaultKey};
pub use sqlite::SqliteStore;
pub use store::{
    AccountStatus, AccountStore, RefreshLock, Sealed, StoreError, StoreFuture, StoredAccount,
    StoredConsent, StoredProvider,
};
pub use types::{AccountInfo, ConsentRequest};

use crypto::{Cipher, aad};
use options::build_http_client;
use registry::ProviderSlot;

/// The credential vault. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn AccountStore>,
    cipher: Cipher,
    providers: RwLock<HashMap<String, ProviderSlot>>,
    http: reqwest::Client,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    retry_policy: crate::policy::RetryPolicy,
    sleeper: Arc<dyn Sleeper>,
    audit: RwLock<Option<Arc<dyn crate::audit::AuditStore>>>,
    /// New tokens whose write failed, by account id (see `pending`).
    pending: Mutex<HashMap<String, pending::Pending>>,
    /// When this vault last refreshed each account, vault-clock seconds.
    last_refresh: Mutex<HashMap<String, i64>>,
    min_refresh_interval: Duration,
    shared_subject: SharedSubjectPolicy,
    /// Account labels for audit records (see `seen`).
    seen: seen::Seen,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

const KEY_CHECK_PLAINTEXT: &[u8] = b"chain-vault key check v1";

impl Vault {
    /// Opens a vault on `store` with `key`. A key other than the one the store was created with
    /// fails with [`VaultError::WrongKey`] before anything is read.
    pub async fn open(
        store: Arc<dyn AccountStore>,
        key: VaultKey,
        options: VaultOptions,
    ) -> Result<Self, VaultError> {
        let cipher = Cipher::new(&key);
        drop(key);
        let check_aad = aad(&["key-check"]);
        let stored = store
            .init_key_check(cipher.seal(&check_aad, KEY_CHECK_PLAINTEXT))
            .await?;
        match cipher.open(&check_aad, &stored) {
            Ok(plain) if plain.as_slice() == KEY_CHECK_PLAINTEXT => {}
            _ => {
                tracing::error!("vault key check failed: the supplied key is not this vault's key");
                return Err(VaultError::WrongKey);
            }
        }
        let http = match options.http_client {
            Some(client) => client,
            None => build_http_client(options.http_timeout, &options.http)?,
        };
        let providers = Self::load_providers(store.as_ref(), &cipher).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                cipher,
                providers: RwLock::new(providers),
                http,
                timeout: options.http_timeout,
                clock: options.clock,
                locks: Mutex::new(HashMap::new()),
                retry_policy: options.retry_policy,
                sleeper: options.sleeper,
                audit: RwLock::new(None),
                pending: Mutex::new(HashMap::new()),
                last_refresh: Mutex::new(HashMap::new()),
                min_refresh_interval: options.min_refresh_interval,
                shared_subject: options.shared_subject,
                seen: seen::Seen::default(),
            }),
        })
    }

    /// Opens (or creates) a vault in a SQLite file.
    pub async fn open_sqlite(
        path: impl AsRef<Path>,
        key: VaultKey,
        options: VaultOptions,
    ) -> Result<Self, VaultError> {
        let store = SqliteStore::open(path).await?;
        Self::open(Arc::new(store), key, options).await
    }

    /// The retry bounds of step calls made with this vault's credentials.
    pub fn retry_policy(&self) -> crate::policy::RetryPolicy {
        self.inner.retry_policy
    }

    /// How step calls made with this vault's credentials wait between retries.
    pub(crate) fn sleeper(&self) -> Arc<dyn Sleeper> {
        Arc::clone(&self.inner.sleeper)
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_unix()
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}
