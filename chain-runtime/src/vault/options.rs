//! Vault settings and the HTTP client the vault builds when none is supplied.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::clock::{Clock, Sleeper, SystemClock, TokioSleeper};
use super::error::VaultError;

/// Vault settings.
#[derive(Clone)]
pub struct VaultOptions {
    /// Bound on every HTTP call the vault makes (token, revocation, introspection, user info and
    /// API calls through [`AuthorizedClient`](super::AuthorizedClient)). Default 10 s.
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
    /// How step calls wait between retries (default: the tokio timer). Tests inject one
    /// that records the waits instead of sleeping.
    pub sleeper: Arc<dyn Sleeper>,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            http_client: None,
            retry_policy: crate::policy::RetryPolicy::default(),
            sleeper: Arc::new(TokioSleeper),
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

/// Installs the `ring` rustls provider as the process default if none is installed yet.
/// `reqwest` (built with `rustls-no-provider`) panics when building a client without one.
pub fn ensure_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a provider is installed afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub(super) fn default_http_client(timeout: Duration) -> Result<reqwest::Client, VaultError> {
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
