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
//! // ... the user visits link.url, the callback brings `state` and `code` ...
//! # let (state, code) = (String::new(), String::new());
//! vault.complete_consent(&state, &code).await?;
//! let client = vault.client("user-42", "acme");
//! let response = client.get("https://api.acme.test/me").send().await?;
//! # let _ = response; Ok(()) }
//! ```

mod client;
mod credentials;
mod crypto;
mod error;
mod oauth;
mod provider;
mod secret;
mod sqlite;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use secrecy::zeroize::Zeroizing;
use sha2::{Digest as _, Sha256};

pub use client::{AuthorizedClient, AuthorizedRequest};
pub use error::VaultError;
pub use oauth::{Introspection, TokenKind};
pub use provider::{ClientAuth, ProviderConfig, ScopeSeparator, SubjectSource};
pub use secret::{AccessToken, ClientSecret, KeyError, PkceVerifier, RefreshToken, VaultKey};
pub use sqlite::SqliteStore;
pub use store::{
    AccountStatus, AccountStore, Sealed, StoreError, StoreFuture, StoredAccount, StoredConsent,
    StoredProvider,
};

use crate::classify::FailureClass;
use crypto::{Cipher, aad};
use oauth::{TokenOutcome, TokenSet};

/// A source of the current time (unix seconds), so expiry can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Now, in unix seconds.
    fn now_unix(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// The system clock plus an adjustable offset (for tests and simulations).
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset: AtomicI64,
}

impl OffsetClock {
    /// Moves this clock forward.
    pub fn advance(&self, by: Duration) {
        self.offset.fetch_add(by.as_secs() as i64, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_unix(&self) -> i64 {
        SystemClock.now_unix() + self.offset.load(Ordering::SeqCst)
    }
}

/// Vault settings.
#[derive(Clone)]
pub struct VaultOptions {
    /// Bound on every HTTP call the vault makes (token, revocation, introspection, user info and
    /// API calls through [`AuthorizedClient`]). Default 10 s.
    pub http_timeout: Duration,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// A preconfigured HTTP client; by default one is built (installing the `ring` rustls
    /// provider as the process default if none is installed).
    pub http_client: Option<reqwest::Client>,
    /// The bounds on retries of step calls made with this vault's credentials (rate limits,
    /// server errors, transport failures). Default [`RetryPolicy::default`].
    ///
    /// [`RetryPolicy::default`]: crate::policy::RetryPolicy
    pub retry_policy: crate::policy::RetryPolicy,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            http_client: None,
            retry_policy: crate::policy::RetryPolicy::default(),
        }
    }
}

impl fmt::Debug for VaultOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultOptions")
            .field("http_timeout", &self.http_timeout)
            .finish_non_exhaustive()
    }
}

/// A consent link to send to the user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsentRequest {
    /// The authorization URL (with `state` and the PKCE S256 `code_challenge`).
    #[serde(serialize_with = "serialize_url")]
    pub url: url::Url,
    /// The `state` parameter; the callback must bring it back.
    pub state: String,
    /// When the link stops working, unix seconds.
    pub expires_at: i64,
    /// The requested scopes.
    pub scopes: Vec<String>,
    /// The principal the consent is for.
    pub principal_id: String,
    /// The connector.
    pub connector: String,
}

fn serialize_url<S: serde::Serializer>(url: &url::Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(url.as_str())
}

/// A connected account as the rest of the runtime sees it (no token inside), e.g. for audit records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AccountInfo {
    /// Stable id of the connected account.
    pub account_id: String,
    /// The owning principal.
    pub principal_id: String,
    /// The connector.
    pub connector: String,
    /// The provider's stable user id.
    pub upstream_subject: String,
    /// Scopes as granted.
    pub granted_scopes: Vec<String>,
    /// Access-token expiry, unix seconds (`None`: unknown).
    pub expires_at: Option<i64>,
    /// The grant (one per completed consent).
    pub grant_id: String,
    /// When the user consented, unix seconds.
    pub consented_at: i64,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Token version, incremented by every token write.
    pub token_version: i64,
}

impl From<&StoredAccount> for AccountInfo {
    fn from(a: &StoredAccount) -> Self {
        Self {
            account_id: a.account_id.clone(),
            principal_id: a.principal_id.clone(),
            connector: a.connector.clone(),
            upstream_subject: a.upstream_subject.clone(),
            granted_scopes: a.granted_scopes.clone(),
            expires_at: a.expires_at,
            grant_id: a.grant_id.clone(),
            consented_at: a.consented_at,
            status: a.status,
            token_version: a.rt_version,
        }
    }
}

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
    audit: RwLock<Option<Arc<dyn crate::audit::AuditStore>>>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// A registered connector: its configuration, or the fact that its stored row did not open.
#[derive(Clone)]
enum ProviderSlot {
    Ready(Arc<ProviderConfig>),
    /// The stored row failed to decrypt: every use is refused until it is registered again.
    Tampered,
}

const KEY_CHECK_PLAINTEXT: &[u8] = b"chain-vault key check v1";

fn random_b64(bytes: usize) -> String {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf[..])
}

fn random_id(prefix: &str) -> String {
    let mut buf = [0u8; 12];
    rand::fill(&mut buf);
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

fn token_aad(account_id: &str, principal_id: &str, connector: &str, field: &str) -> Vec<u8> {
    aad(&["account", account_id, principal_id, connector, field])
}

/// The associated data of a provider's sealed client secret: the connector and the exact stored
/// configuration JSON, so neither can be edited (nor the secret moved) without detection.
fn provider_aad(connector: &str, config_json: &str) -> Vec<u8> {
    aad(&["provider", connector, config_json, "client_secret"])
}

fn consent_aad(state_hash: &[u8], principal_id: &str, connector: &str) -> Vec<u8> {
    let hex: String = state_hash.iter().map(|b| format!("{b:02x}")).collect();
    aad(&["consent", &hex, principal_id, connector, "pkce_verifier"])
}

/// Installs the `ring` rustls provider as the process default if none is installed yet.
/// `reqwest` (built with `rustls-no-provider`) panics when building a client without one.
pub(crate) fn ensure_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a provider is installed afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn default_http_client(timeout: Duration) -> Result<reqwest::Client, VaultError> {
    ensure_tls_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| VaultError::Config {
            connector: String::new(),
            reason: format!("cannot build the HTTP client: {e}"),
        })
}

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
            None => default_http_client(options.http_timeout)?,
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
                audit: RwLock::new(None),
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

    /// Reads every stored provider configuration. A row whose client secret does not open under
    /// its associated data (connector and configuration) is kept as tampered: using that
    /// connector fails with [`VaultError::ProviderTampered`] until it is registered again.
    async fn load_providers(
        store: &dyn AccountStore,
        cipher: &Cipher,
    ) -> Result<HashMap<String, ProviderSlot>, VaultError> {
        let mut providers = HashMap::new();
        for row in store.list_providers().await? {
            let slot = match cipher.open_string(
                &provider_aad(&row.connector, &row.config),
                &row.client_secret,
            ) {
                Ok(secret) => {
                    let secret = ClientSecret::new(secret);
                    let config =
                        ProviderConfig::from_stored_json(&row.connector, &row.config, secret)?;
                    ProviderSlot::Ready(Arc::new(config))
                }
                Err(_) => {
                    tracing::error!(
                        connector = %row.connector,
                        "vault: the stored provider configuration does not decrypt (tampered or copied); \
                         the connector is unusable until it is registered again"
                    );
                    ProviderSlot::Tampered
                }
            };
            providers.insert(row.connector, slot);
        }
        Ok(providers)
    }

    /// Registers (or replaces) the configuration of a connector, and stores it so that every
    /// vault opened later on the same store (another process, with the same key) has it: the
    /// client secret sealed with the vault key, every other field as JSON in the clear.
    pub async fn register_provider(&self, config: ProviderConfig) -> Result<(), VaultError> {
        if config.connector.is_empty() {
            return Err(VaultError::Config {
                connector: String::new(),
                reason: "the connector name is empty".into(),
            });
        }
        if matches!(config.subject, SubjectSource::Introspection { .. })
            && config.introspection_url.is_none()
        {
            return Err(VaultError::Config {
                connector: config.connector.clone(),
                reason:
                    "the subject comes from introspection but no introspection_url is configured"
                        .into(),
            });
        }
        let json = config.to_stored_json()?;
        let client_secret = self.inner.cipher.seal(
            &provider_aad(&config.connector, &json),
            config.client_secret.expose().as_bytes(),
        );
        self.inner
            .store
            .put_provider(StoredProvider {
                connector: config.connector.clone(),
                config: json,
                client_secret,
                updated_at: self.now(),
            })
            .await?;
        tracing::info!(connector = %config.connector, "vault provider registered and stored");
        let mut providers = self
            .inner
            .providers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        providers.insert(
            config.connector.clone(),
            ProviderSlot::Ready(Arc::new(config)),
        );
        Ok(())
    }

    /// Records every completed consent and every token refresh (success or failure; never a
    /// token) in `audit`, beside the engine's records of the runs that use the accounts.
    pub fn attach_audit(&self, audit: Arc<dyn crate::audit::AuditStore>) {
        *self.inner.audit.write().unwrap_or_else(|e| e.into_inner()) = Some(audit);
    }

    /// Appends `event` about `account` to the attached audit trail, if any. A failing audit
    /// store is logged, not propagated: the credential operation already happened.
    async fn audit_account_event(
        &self,
        account: &StoredAccount,
        outcome: crate::audit::Outcome,
        event: crate::audit::AuditEvent,
    ) {
        let audit = self
            .inner
            .audit
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(audit) = audit else { return };
        let record = crate::audit::NewRecord::new(account.principal_id.clone(), outcome, event)
            .account(
                account.connector.clone(),
                account.account_id.clone(),
                account.upstream_subject.clone(),
                account.grant_id.clone(),
            )
            .scopes(account.granted_scopes.clone());
        if let Err(e) = audit.append(record).await {
            tracing::error!(connector = %account.connector, error = %e, "could not audit a vault event");
        }
    }

    /// The retry bounds of step calls made with this vault's credentials.
    pub fn retry_policy(&self) -> crate::policy::RetryPolicy {
        self.inner.retry_policy
    }

    /// The connectors with a registered provider configuration, sorted.
    pub fn connectors(&self) -> Vec<String> {
        let providers = self
            .inner
            .providers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = providers.keys().cloned().collect();
        names.sort();
        names
    }

    /// The provider name `connector`'s responses are classified as (see
    /// [`crate::classify::classify`]).
    pub fn provider_name(&self, connector: &str) -> Result<String, VaultError> {
        Ok(self.provider(connector)?.provider.clone())
    }

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

    fn provider(&self, connector: &str) -> Result<Arc<ProviderConfig>, VaultError> {
        let providers = self
            .inner
            .providers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match providers.get(connector) {
            Some(ProviderSlot::Ready(config)) => Ok(Arc::clone(config)),
            Some(ProviderSlot::Tampered) => Err(VaultError::ProviderTampered {
                connector: connector.to_owned(),
            }),
            None => Err(VaultError::UnknownConnector {
                connector: connector.to_owned(),
            }),
        }
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_unix()
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

    // ----- consent -----

    /// Creates a consent link for (principal, connector, scopes): PKCE S256 with the verifier kept
    /// encrypted server side, and a single-use `state` bound to the principal, connector, scopes
    /// and an expiry (stored as a hash only).
    pub async fn consent_link<S: AsRef<str>>(
        &self,
        principal_id: &str,
        connector: &str,
        scopes: &[S],
    ) -> Result<ConsentRequest, VaultError> {
        self.consent_link_with(principal_id, connector, scopes, &[])
            .await
    }

    /// [`Vault::consent_link`] with extra authorization-request parameters, such as the
    /// `acr_values` and `max_age` a step-up demands (RFC 9470). The OAuth parameters the vault
    /// sets itself (`state`, `code_challenge`, `redirect_uri`, …) cannot be overridden.
    pub async fn consent_link_with<S: AsRef<str>>(
        &self,
        principal_id: &str,
        connector: &str,
        scopes: &[S],
        params: &[(String, String)],
    ) -> Result<ConsentRequest, VaultError> {
        const RESERVED: [&str; 7] = [
            "response_type",
            "client_id",
            "redirect_uri",
            "state",
            "code_challenge",
            "code_challenge_method",
            "scope",
        ];
        let provider = self.provider(connector)?;
        let mut wanted: Vec<String> = Vec::new();
        for s in scopes
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
        {
            if !wanted.iter().any(|w| w == s) {
                wanted.push(s.to_owned());
            }
        }
        let state = random_b64(32);
        let verifier = PkceVerifier::new(random_b64(32));
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.expose().as_bytes()));
        let state_hash = Sha256::digest(state.as_bytes()).to_vec();
        let now = self.now();
        let expires_at = now + provider.consent_ttl.as_secs() as i64;

        let mut url = provider.authorize_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &provider.client_id)
                .append_pair("redirect_uri", &provider.redirect_uri)
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if !wanted.is_empty() {
                q.append_pair("scope", &wanted.join(provider.scope_separator.as_str()));
            }
            for (k, v) in &provider.extra_authorize_params {
                q.append_pair(k, v);
            }
            for (k, v) in params
                .iter()
                .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            {
                q.append_pair(k, v);
            }
        }
        let sealed = self.inner.cipher.seal(
            &consent_aad(&state_hash, principal_id, connector),
            verifier.expose().as_bytes(),
        );
        let _ = self.inner.store.purge_expired_consents(now).await;
        self.inner
            .store
            .put_consent(StoredConsent {
                state_hash,
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
                scopes: wanted.clone(),
                verifier: sealed,
                created_at: now,
                expires_at,
            })
            .await?;
        tracing::info!(principal_id, connector, scopes = %wanted.join(" "), expires_at, "vault consent link created");
        Ok(ConsentRequest {
            url,
            state,
            expires_at,
            scopes: wanted,
            principal_id: principal_id.to_owned(),
            connector: connector.to_owned(),
        })
    }

    /// Completes a consent callback: validates the single-use `state`, exchanges `code` with the
    /// PKCE verifier, determines the upstream subject and records the account with the scopes
    /// as granted. On re-consent a different upstream subject is refused
    /// ([`VaultError::IdentityDrift`]) and the stored account stays as it was.
    pub async fn complete_consent(
        &self,
        state: &str,
        code: &str,
    ) -> Result<AccountInfo, VaultError> {
        let state_hash = Sha256::digest(state.as_bytes()).to_vec();
        let Some(pending) = self.inner.store.take_consent(&state_hash).await? else {
            tracing::warn!("vault consent callback with an unknown, forged or replayed state");
            return Err(VaultError::UnknownConsentState);
        };
        let (principal_id, connector) = (pending.principal_id.as_str(), pending.connector.as_str());
        if pending.expires_at <= self.now() {
            tracing::warn!(
                principal_id,
                connector,
                "vault consent callback after the link expired"
            );
            return Err(VaultError::ConsentExpired {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        let provider = self.provider(connector)?;
        let verifier = self
            .inner
            .cipher
            .open_string(
                &consent_aad(&state_hash, principal_id, connector),
                &pending.verifier,
            )
            .map_err(|_| VaultError::Tampered {
                account_id: format!("consent of {principal_id}"),
                field: "pkce_verifier",
            })?;
        let verifier = Zeroizing::new(verifier);
        let form = vec![
            (
                "grant_type",
                Zeroizing::new("authorization_code".to_owned()),
            ),
            ("code", Zeroizing::new(code.to_owned())),
            (
                "redirect_uri",
                Zeroizing::new(provider.redirect_uri.clone()),
            ),
            ("code_verifier", verifier),
        ];
        let outcome = oauth::token_request(
            &self.inner.http,
            &provider,
            "code exchange",
            form,
            self.inner.timeout,
        )
        .await;
        let tokens = match outcome {
            Ok(TokenOutcome::Tokens(t)) => t,
            Ok(TokenOutcome::Rejected {
                status,
                class,
                error_code,
            }) => {
                tracing::warn!(
                    principal_id,
                    connector,
                    status,
                    ?class,
                    error_code,
                    "vault code exchange rejected"
                );
                return Err(match class {
                    FailureClass::InvalidClient => VaultError::InvalidClient {
                        connector: connector.to_owned(),
                        operation: "code exchange",
                        error_code,
                    },
                    _ => VaultError::TokenEndpoint {
                        connector: connector.to_owned(),
                        operation: "code exchange",
                        status,
                        class,
                        error_code,
                    },
                });
            }
            Err(e) => {
                tracing::warn!(principal_id, connector, error = %e, "vault code exchange failed");
                return Err(e);
            }
        };

        let subject = self.resolve_subject(&provider, &tokens).await?;
        let granted = match &tokens.scope {
            Some(s) => provider.scope_separator.split(s),
            None => pending.scopes.clone(),
        };
        let expires_at = self.compute_expiry(&provider, &tokens).await;
        let existing = self
            .inner
            .store
            .get_account(principal_id, connector)
            .await?;
        if let Some(existing) = &existing
            && existing.upstream_subject != subject
        {
            tracing::warn!(
                principal_id,
                connector,
                account_id = %existing.account_id,
                stored_subject = %existing.upstream_subject,
                new_subject = %subject,
                "vault re-consent refused: identity drift"
            );
            self.revoke_quietly(&provider, &tokens).await;
            return Err(VaultError::IdentityDrift {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
                stored_subject: existing.upstream_subject.clone(),
                new_subject: subject,
            });
        }
        let now = self.now();
        let account_id = existing
            .as_ref()
            .map(|a| a.account_id.clone())
            .unwrap_or_else(|| random_id("acct"));
        let version = existing.as_ref().map(|a| a.rt_version + 1).unwrap_or(1);
        let account = StoredAccount {
            access_token: self.inner.cipher.seal(
                &token_aad(&account_id, principal_id, connector, "access_token"),
                tokens.access_token.expose().as_bytes(),
            ),
            refresh_token: tokens.refresh_token.as_ref().map(|rt| {
                self.inner.cipher.seal(
                    &token_aad(&account_id, principal_id, connector, "refresh_token"),
                    rt.expose().as_bytes(),
                )
            }),
            account_id,
            principal_id: principal_id.to_owned(),
            connector: connector.to_owned(),
            upstream_subject: subject,
            granted_scopes: granted,
            expires_at,
            grant_id: random_id("grant"),
            consented_at: now,
            status: AccountStatus::Active,
            rt_version: version,
            updated_at: now,
        };
        let written = match &existing {
            Some(e) => {
                self.inner
                    .store
                    .replace_account(account.clone(), e.rt_version)
                    .await?
            }
            None => self.inner.store.insert_account(account.clone()).await?,
        };
        if !written {
            return Err(VaultError::Conflict {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        let requested = pending.scopes.join(" ");
        tracing::info!(
            principal_id,
            connector,
            account_id = %account.account_id,
            upstream_subject = %account.upstream_subject,
            granted_scopes = %account.granted_scopes.join(" "),
            requested_scopes = %requested,
            reconsent = existing.is_some(),
            "vault consent completed"
        );
        self.audit_account_event(
            &account,
            crate::audit::Outcome::Succeeded,
            crate::audit::AuditEvent::ConsentCompleted {
                requested_scopes: pending.scopes.clone(),
                reconsent: existing.is_some(),
            },
        )
        .await;
        Ok(AccountInfo::from(&account))
    }

    async fn revoke_quietly(&self, provider: &ProviderConfig, tokens: &TokenSet) {
        let Some(url) = &provider.revoke_url else {
            return;
        };
        let (token, kind) = match &tokens.refresh_token {
            Some(rt) => (rt.expose(), TokenKind::Refresh),
            None => (tokens.access_token.expose(), TokenKind::Access),
        };
        if let Err(e) = oauth::revoke(
            &self.inner.http,
            provider,
            url,
            token,
            kind,
            self.inner.timeout,
        )
        .await
        {
            tracing::warn!(connector = %provider.connector, error = %e, "vault could not revoke the refused grant");
        }
    }

    async fn resolve_subject(
        &self,
        provider: &ProviderConfig,
        tokens: &TokenSet,
    ) -> Result<String, VaultError> {
        let unavailable = |reason: String| VaultError::SubjectUnavailable {
            connector: provider.connector.clone(),
            reason,
        };
        match &provider.subject {
            SubjectSource::TokenResponse { pointers } => {
                oauth::subject_from(&tokens.body, pointers).map_err(unavailable)
            }
            SubjectSource::IdToken { pointers } => {
                let jwt = tokens
                    .body
                    .0
                    .get("id_token")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        unavailable(
                            "the token response has no id_token (request the openid scope)".into(),
                        )
                    })?;
                let claims = oauth::jwt_claims(jwt)
                    .ok_or_else(|| unavailable("the id_token is not a JWT".into()))?;
                oauth::subject_from(&claims, pointers).map_err(unavailable)
            }
            SubjectSource::UserInfo { url, pointers } => {
                let json = oauth::user_info(
                    &self.inner.http,
                    provider,
                    url,
                    &tokens.access_token,
                    self.inner.timeout,
                )
                .await?;
                oauth::subject_from(&json, pointers).map_err(unavailable)
            }
            SubjectSource::Introspection { pointers } => {
                let (info, raw) = oauth::introspect(
                    &self.inner.http,
                    provider,
                    tokens.access_token.expose(),
                    TokenKind::Access,
                    self.inner.timeout,
                )
                .await?;
                if !info.active {
                    return Err(unavailable(
                        "introspection says the new access token is not active".into(),
                    ));
                }
                oauth::subject_from(&raw, pointers).map_err(unavailable)
            }
        }
    }

    /// The subject, when the token response itself carries it (checked after every refresh).
    fn subject_in_response(provider: &ProviderConfig, tokens: &TokenSet) -> Option<String> {
        match &provider.subject {
            SubjectSource::TokenResponse { pointers } => {
                oauth::subject_from(&tokens.body, pointers).ok()
            }
            SubjectSource::IdToken { pointers } => {
                let jwt = tokens.body.0.get("id_token")?.as_str()?;
                oauth::subject_from(&oauth::jwt_claims(jwt)?, pointers).ok()
            }
            _ => None,
        }
    }

    async fn compute_expiry(&self, provider: &ProviderConfig, tokens: &TokenSet) -> Option<i64> {
        let now = self.now();
        if let Some(expires_in) = tokens.expires_in {
            return Some(now + expires_in);
        }
        if provider.introspection_url.is_some() {
            match oauth::introspect(
                &self.inner.http,
                provider,
                tokens.access_token.expose(),
                TokenKind::Access,
                self.inner.timeout,
            )
            .await
            {
                Ok((info, _)) if info.active && info.expires_at.is_some() => {
                    return info.expires_at;
                }
                Ok(_) => {
                    tracing::warn!(connector = %provider.connector, "introspection gave no expiry; using the default lifetime")
                }
                Err(e) => {
                    tracing::warn!(connector = %provider.connector, error = %e, "introspection for expiry failed; using the default lifetime")
                }
            }
        }
        let lifetime = provider.default_token_lifetime?.as_secs() as i64;
        // Salesforce: `issued_at` in milliseconds; trust it only when it is close to now.
        let base = tokens
            .issued_at_ms
            .map(|ms| ms / 1000)
            .filter(|issued| (issued - now).abs() < 24 * 3600)
            .unwrap_or(now);
        Some(base + lifetime)
    }

    // ----- token resolution and refresh -----

    fn check_status(&self, account: &StoredAccount) -> Result<(), VaultError> {
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
    async fn load_account(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<StoredAccount, VaultError> {
        self.inner
            .store
            .get_account(principal_id, connector)
            .await?
            .ok_or_else(|| VaultError::NotConnected {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            })
    }

    async fn load_active(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<StoredAccount, VaultError> {
        let account = self.load_account(principal_id, connector).await?;
        self.check_status(&account)?;
        Ok(account)
    }

    fn needs_refresh(
        &self,
        account: &StoredAccount,
        provider: &ProviderConfig,
        force_at_version: Option<i64>,
    ) -> bool {
        if force_at_version == Some(account.rt_version) {
            return true;
        }
        match account.expires_at {
            Some(expires_at) => expires_at - provider.refresh_margin.as_secs() as i64 <= self.now(),
            None => false,
        }
    }

    fn open_access(&self, account: &StoredAccount) -> Result<AccessToken, VaultError> {
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

    fn open_refresh(
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

    fn account_lock(&self, account_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(account_id.to_owned()).or_default())
    }

    /// An access token for (principal, connector), refreshed first if it expires within the
    /// margin (or if `force_at_version` is the current token version). Single-flight per account.
    pub(crate) async fn fresh_token(
        &self,
        principal_id: &str,
        connector: &str,
        force_at_version: Option<i64>,
    ) -> Result<(AccessToken, StoredAccount), VaultError> {
        let provider = self.provider(connector)?;
        let account = self.load_active(principal_id, connector).await?;
        if !self.needs_refresh(&account, &provider, force_at_version) {
            return Ok((self.open_access(&account)?, account));
        }
        let lock = self.account_lock(&account.account_id);
        let _guard = lock.lock().await;
        // Double-checked: whoever held the lock before us may have refreshed already.
        let account = self.load_active(principal_id, connector).await?;
        if !self.needs_refresh(&account, &provider, force_at_version) {
            return Ok((self.open_access(&account)?, account));
        }
        let result = self.refresh_locked(&provider, account.clone()).await;
        let (outcome, failure_class, expires_at_unix_ms) = match &result {
            Ok((_, refreshed)) => (
                crate::audit::Outcome::Succeeded,
                None,
                refreshed.expires_at.map(|s| s * 1000),
            ),
            Err(e) => (
                crate::audit::Outcome::Failed,
                Some(refresh_failure_class(e)),
                None,
            ),
        };
        let audited = match &result {
            Ok((_, refreshed)) => refreshed,
            Err(_) => &account,
        };
        self.audit_account_event(
            audited,
            outcome,
            crate::audit::AuditEvent::TokenRefresh {
                failure_class,
                expires_at_unix_ms,
            },
        )
        .await;
        result
    }

    async fn mark_needs_reauthorization(&self, account: &StoredAccount) -> Result<(), VaultError> {
        let mut updated = account.clone();
        updated.status = AccountStatus::NeedsReauthorization;
        updated.updated_at = self.now();
        self.inner
            .store
            .replace_account(updated, account.rt_version)
            .await?;
        Ok(())
    }

    async fn refresh_locked(
        &self,
        provider: &ProviderConfig,
        account: StoredAccount,
    ) -> Result<(AccessToken, StoredAccount), VaultError> {
        let (principal_id, connector, account_id) = (
            account.principal_id.as_str(),
            account.connector.as_str(),
            account.account_id.as_str(),
        );
        let Some(sealed_rt) = &account.refresh_token else {
            tracing::warn!(
                principal_id,
                connector,
                account_id,
                "vault token expired and no refresh token is stored"
            );
            self.mark_needs_reauthorization(&account).await?;
            return Err(VaultError::NeedsReauthorization {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
                scopes: account.granted_scopes.clone(),
            });
        };
        let refresh_token = self.open_refresh(&account, sealed_rt)?;
        tracing::debug!(
            principal_id,
            connector,
            account_id,
            version = account.rt_version,
            "vault refreshing access token"
        );
        let form = vec![
            ("grant_type", Zeroizing::new("refresh_token".to_owned())),
            (
                "refresh_token",
                Zeroizing::new(refresh_token.expose().to_owned()),
            ),
        ];
        let outcome = oauth::token_request(
            &self.inner.http,
            provider,
            "refresh",
            form,
            self.inner.timeout,
        )
        .await;
        let tokens = match outcome {
            Ok(TokenOutcome::Tokens(tokens)) => tokens,
            Ok(TokenOutcome::Rejected {
                status,
                class: FailureClass::GrantRevoked,
                error_code,
            }) => {
                // A lost race (another process rotated first) is not a revocation.
                if let Some(current) = self
                    .inner
                    .store
                    .get_account(principal_id, connector)
                    .await?
                    && current.rt_version > account.rt_version
                    && current.status == AccountStatus::Active
                {
                    tracing::info!(
                        principal_id,
                        connector,
                        account_id,
                        status,
                        "vault refresh lost a race with a newer refresh token; using the stored one"
                    );
                    return Ok((self.open_access(&current)?, current));
                }
                self.mark_needs_reauthorization(&account).await?;
                tracing::warn!(
                    principal_id,
                    connector,
                    account_id,
                    status,
                    error_code,
                    "vault refresh rejected: account needs re-authorization"
                );
                return Err(VaultError::GrantRevoked {
                    principal_id: principal_id.to_owned(),
                    connector: connector.to_owned(),
                    error_code,
                });
            }
            Ok(TokenOutcome::Rejected {
                status,
                class: FailureClass::InvalidClient,
                error_code,
            }) => {
                tracing::error!(
                    principal_id,
                    connector,
                    account_id,
                    status,
                    error_code,
                    "vault refresh: invalid client"
                );
                return Err(VaultError::InvalidClient {
                    connector: connector.to_owned(),
                    operation: "refresh",
                    error_code,
                });
            }
            Ok(TokenOutcome::Rejected {
                status,
                class,
                error_code,
            }) => {
                tracing::warn!(
                    principal_id,
                    connector,
                    account_id,
                    status,
                    ?class,
                    error_code,
                    "vault refresh failed; grant kept"
                );
                return Err(VaultError::TokenEndpoint {
                    connector: connector.to_owned(),
                    operation: "refresh",
                    status,
                    class,
                    error_code,
                });
            }
            Err(e) => {
                tracing::warn!(principal_id, connector, account_id, error = %e, "vault refresh failed; grant kept");
                return Err(e);
            }
        };

        if let Some(subject) = Self::subject_in_response(provider, &tokens)
            && subject != account.upstream_subject
        {
            tracing::warn!(
                principal_id,
                connector,
                account_id,
                "vault refresh returned another upstream subject"
            );
            self.mark_needs_reauthorization(&account).await?;
            return Err(VaultError::IdentityDrift {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
                stored_subject: account.upstream_subject.clone(),
                new_subject: subject,
            });
        }

        let expires_at = self.compute_expiry(provider, &tokens).await;
        let rotated = tokens.refresh_token.is_some();
        let mut updated = account.clone();
        updated.access_token = self.inner.cipher.seal(
            &token_aad(account_id, principal_id, connector, "access_token"),
            tokens.access_token.expose().as_bytes(),
        );
        if let Some(rt) = &tokens.refresh_token {
            // Persisted before the new access token is handed out (below).
            updated.refresh_token = Some(self.inner.cipher.seal(
                &token_aad(account_id, principal_id, connector, "refresh_token"),
                rt.expose().as_bytes(),
            ));
        }
        if let Some(scope) = &tokens.scope {
            updated.granted_scopes = provider.scope_separator.split(scope);
        }
        updated.expires_at = expires_at;
        updated.rt_version = account.rt_version + 1;
        updated.updated_at = self.now();
        if !self
            .inner
            .store
            .replace_account(updated.clone(), account.rt_version)
            .await?
        {
            // Another process wrote first (possible only without a shared lock): use its tokens.
            tracing::warn!(
                principal_id,
                connector,
                account_id,
                "vault refresh result superseded by a concurrent write"
            );
            let current = self.load_active(principal_id, connector).await?;
            return Ok((self.open_access(&current)?, current));
        }
        tracing::info!(
            principal_id,
            connector,
            account_id,
            version = updated.rt_version,
            rotated,
            expires_at,
            "vault access token refreshed"
        );
        Ok((tokens.access_token, updated))
    }

    // ----- disconnect and introspection -----

    /// Disconnects: revokes the grant at the provider (RFC 7009, the refresh token if there is
    /// one) and marks the account revoked, erasing its tokens. If revocation fails the account is
    /// left unchanged and the error says so (retry the disconnect).
    pub async fn disconnect(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<AccountInfo, VaultError> {
        let provider = self.provider(connector)?;
        let account = self.load_account(principal_id, connector).await?;
        let lock = self.account_lock(&account.account_id);
        let _guard = lock.lock().await;
        let account = self.load_account(principal_id, connector).await?;
        if account.status == AccountStatus::Revoked {
            return Ok(AccountInfo::from(&account));
        }
        match &provider.revoke_url {
            Some(url) => {
                let (token, kind) = match &account.refresh_token {
                    Some(sealed) => (
                        Zeroizing::new(self.open_refresh(&account, sealed)?.expose().to_owned()),
                        TokenKind::Refresh,
                    ),
                    None => (
                        Zeroizing::new(self.open_access(&account)?.expose().to_owned()),
                        TokenKind::Access,
                    ),
                };
                if let Err(e) = oauth::revoke(
                    &self.inner.http,
                    &provider,
                    url,
                    &token,
                    kind,
                    self.inner.timeout,
                )
                .await
                {
                    tracing::warn!(principal_id, connector, account_id = %account.account_id, error = %e, "vault revocation failed");
                    return Err(e);
                }
            }
            None => tracing::warn!(
                principal_id,
                connector,
                account_id = %account.account_id,
                "no revocation endpoint configured; the grant is only forgotten locally"
            ),
        }
        let mut updated = account.clone();
        updated.status = AccountStatus::Revoked;
        updated.access_token = self.inner.cipher.seal(
            &token_aad(&account.account_id, principal_id, connector, "access_token"),
            b"",
        );
        updated.refresh_token = None;
        updated.expires_at = None;
        updated.rt_version = account.rt_version + 1;
        updated.updated_at = self.now();
        if !self
            .inner
            .store
            .replace_account(updated.clone(), account.rt_version)
            .await?
        {
            return Err(VaultError::Conflict {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        tracing::info!(principal_id, connector, account_id = %account.account_id, "vault account disconnected and revoked");
        Ok(AccountInfo::from(&updated))
    }

    /// Introspects (RFC 7662) the stored access or refresh token; no refresh is attempted.
    pub async fn introspect(
        &self,
        principal_id: &str,
        connector: &str,
        kind: TokenKind,
    ) -> Result<Introspection, VaultError> {
        let provider = self.provider(connector)?;
        let account = self.load_account(principal_id, connector).await?;
        if account.status == AccountStatus::Revoked {
            return Err(VaultError::Revoked {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        let token = match kind {
            TokenKind::Access => Zeroizing::new(self.open_access(&account)?.expose().to_owned()),
            TokenKind::Refresh => match &account.refresh_token {
                Some(sealed) => {
                    Zeroizing::new(self.open_refresh(&account, sealed)?.expose().to_owned())
                }
                None => {
                    return Ok(Introspection {
                        active: false,
                        expires_at: None,
                        scopes: vec![],
                        subject: None,
                        client_id: None,
                    });
                }
            },
        };
        let (info, _) = oauth::introspect(
            &self.inner.http,
            &provider,
            &token,
            kind,
            self.inner.timeout,
        )
        .await?;
        Ok(info)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

/// The audit trail's name for why a refresh failed (snake_case, as `classify` names classes).
fn refresh_failure_class(error: &VaultError) -> String {
    let class = match error {
        VaultError::GrantRevoked { .. } | VaultError::NeedsReauthorization { .. } => {
            FailureClass::GrantRevoked
        }
        VaultError::InvalidClient { .. } => FailureClass::InvalidClient,
        VaultError::TokenEndpoint { class, .. } => *class,
        VaultError::Transport { .. } => FailureClass::ServerError,
        VaultError::IdentityDrift { .. } => return "identity_drift".to_owned(),
        _ => return "error".to_owned(),
    };
    serde_json::to_value(class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{class:?}"))
}
