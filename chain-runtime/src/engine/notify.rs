//! Operator alerts: the [`Notifier`] interface, a tracing notifier (the default) and a
//! webhook notifier. The engine stores every alert as a row (`alert_alerts`) and an audit
//! record before it calls the notifier, so a notifier failure never loses an alert.

use crate::future::BoxFuture;
use crate::journal::Alert;

/// A notifier could not deliver an alert.
#[derive(Debug, thiserror::Error)]
#[error("operator alert not delivered: {0}")]
pub struct NotifyError(pub String);

/// Delivers operator alerts (a run is Blocked, a write cannot be undone).
pub trait Notifier: Send + Sync {
    /// Delivers one alert.
    fn notify<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), NotifyError>>;
}

/// Emits each alert as a `tracing` event at ERROR level. The default notifier.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingNotifier;

impl Notifier for TracingNotifier {
    fn notify<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            tracing::error!(
                run_id = %alert.run_id,
                chain = %alert.chain,
                principal = %alert.principal,
                step_id = alert.step_id.as_deref().unwrap_or("-"),
                records = alert.records.len(),
                "operator alert: {}",
                alert.message
            );
            Ok(())
        })
    }
}

/// Posts each alert as JSON (the [`Alert`] fields) to a URL; a non-2xx answer is an error.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    url: String,
    client: reqwest::Client,
}

impl WebhookNotifier {
    /// A notifier posting to `url`. Installs the `ring` TLS provider when none is installed.
    pub fn new(url: impl Into<String>) -> Result<Self, NotifyError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| NotifyError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            url: url.into(),
            client,
        })
    }
}

impl Notifier for WebhookNotifier {
    fn notify<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let response = self
                .client
                .post(&self.url)
                .json(alert)
                .send()
                .await
                .map_err(|e| NotifyError(format!("POST to the webhook failed: {e}")))?;
            if !response.status().is_success() {
                return Err(NotifyError(format!(
                    "the webhook answered {}",
                    response.status()
                )));
            }
            Ok(())
        })
    }
}
