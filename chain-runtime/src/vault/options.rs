//! Vault settings and the HTTP client the vault builds from them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::clock::{Clock, SystemClock};
use super::error::VaultError;

/// What a consent does when its upstream user is already connected to another principal on the
/// same connector (one person approving links for two principals, or a shared upstream login).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SharedSubjectPolicy {
    /// Refuse the consent with [`VaultError::SubjectAlreadyBound`], revoke the new grant and
    /// record the refusal in the audit trail (default).
    #[default]
    Refuse,
    /// Accept it, but log a warning and record an operator alert in the audit trail.
    Flag,
}

/// How the HTTP client the vault builds is configured (ignored when
/// [`VaultOptions::http_client`] supplies one).
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// Bound on establishing a connection; default: the vault's `http_timeout`.
    pub connect_timeout: Option<Duration>,
    /// How long an idle pooled connection is kept; default: the client library's (90 s).
    pub pool_idle_timeout: Option<Duration>,
    /// Most idle pooled connections per host; default: unbounded.
    pub pool_max_idle_per_host: Option<usize>,
    /// An HTTP(S) proxy URL every request goes through (e.g. `http://proxy.internal:3128`).
    pub proxy: Option<String>,
    /// The `User-Agent` header of every request.
    pub user_agent: Option<String>,
    /// Extra trusted root certificates, PEM encoded (e.g. a corporate CA), on top of the
    /// platform's.
    pub extra_root_certificates: Vec<Vec<u8>>,
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The proxy URL may carry credentials: only say whether there is one.
        f.debug_struct("HttpOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("proxy", &self.proxy.as_ref().map(|_| "<set>"))
            .field("user_agent", &self.user_agent)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates.len(),
            )
            .finish()
    }
}

/// Vault settings.
#[derive(Clone)]
pub struct VaultOptions {
    /// Bound on every HTTP call the vault makes (token, revocation, introspection, user info and
    /// API calls through [`AuthorizedClient`](super::AuthorizedClient)). Default 10 s.
    pub http_timeout: Duration,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// A preconfigured HTTP client. By default the vault builds one from [`VaultOptions::http`]
    /// (installing the `ring` rustls provider as the process default if none is installed).
    pub http_client: Option<reqwest::Client>,
    /// How the vault's own HTTP client is built.
    pub http: HttpOptions,
    /// The bounds on retries of step calls made with this vault's credentials (rate limits,
    /// server errors, transport failures), and of transient token-endpoint failures during a
    /// refresh. Default [`RetryPolicy::default`].
    ///
    /// [`RetryPolicy::default`]: crate::policy::RetryPolicy
    pub retry_policy: crate::policy::RetryPolicy,
    /// At most one proactive refresh per account per this interval (vault clock); a token that
    /// still looks expired right after a refresh (a clock leading the provider's) is used as it
    /// is. A refresh after the provider rejected the token is not bounded by it. Default 30 s.
    pub min_refresh_interval: Duration,
    /// What a consent does when its upstream user is already connected to another principal.
    pub shared_subject: SharedSubjectPolicy,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            http_client: None,
            http: HttpOptions::default(),
            retry_policy: crate::policy::RetryPolicy::default(),
            min_refresh_interval: Duration::from_secs(30),
            shared_subject: SharedSubjectPolicy::default(),
        }
    }
}

impl fmt::Debug for VaultOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultOptions")
            .field("http_timeout", &self.http_timeout)
            .field("http", &self.http)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("shared_subject", &self.shared_subject)
            .finish_non_exhaustive()
    }
}

/// Installs the `ring` rustls provider as the process default if none is installed yet, so
/// that building a client never panics (`reqwest` is built with `rustls-no-provider`).
pub(crate) fn ensure_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a provider is installed afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn config_error(reason: String) -> VaultError {
    VaultError::Config {
        connector: String::new(),
        reason,
    }
}

/// The vault's HTTP client: bounded timeouts, no redirects, and the [`HttpOptions`].
pub(super) fn build_http_client(
    timeout: Duration,
    options: &HttpOptions,
) -> Result<reqwest::Client, VaultError> {
    ensure_tls_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(options.connect_timeout.unwrap_or(timeout))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(idle) = options.pool_idle_timeout {
        builder = builder.pool_idle_timeout(idle);
    }
    if let Some(max) = options.pool_max_idle_per_host {
        builder = builder.pool_max_idle_per_host(max);
    }
    if let Some(proxy) = &options.proxy {
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|_| config_error("the HTTP proxy is not a valid proxy URL".into()))?;
        builder = builder.proxy(proxy);
    }
    if let Some(agent) = &options.user_agent {
        builder = builder.user_agent(agent.as_str());
    }
    for (i, pem) in options.extra_root_certificates.iter().enumerate() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let invalid = || {
            config_error(format!(
                "extra root certificate #{i} is not a PEM certificate"
            ))
        };
        let ders: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|_| invalid())?;
        if ders.is_empty() {
            return Err(invalid());
        }
        for der in ders {
            let cert = reqwest::Certificate::from_der(&der).map_err(|_| invalid())?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| config_error(format!("cannot build the HTTP client: {e}")))
}
