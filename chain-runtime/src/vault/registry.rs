//! The provider registry: registered connector configurations, stored with their client secret
//! sealed, and reloaded (or flagged as tampered) when a vault opens.

use std::collections::HashMap;
use std::sync::Arc;

use super::crypto::{Cipher, aad};
use super::provider::{ProviderConfig, SubjectSource};
use super::secret::ClientSecret;
use super::store::{AccountStore, StoredProvider};
use super::{Vault, VaultError, presets};

/// A registered connector: its configuration, or the fact that its stored row did not open.
#[derive(Clone)]
pub(super) enum ProviderSlot {
    Ready(Arc<ProviderConfig>),
    /// The stored row failed to decrypt: every use is refused until it is registered again.
    Tampered,
}

/// The associated data of a provider's sealed client secret: the connector and the exact stored
/// configuration JSON, so neither can be edited (nor the secret moved) without detection.
fn provider_aad(connector: &str, config_json: &str) -> Vec<u8> {
    aad(&["provider", connector, config_json, "client_secret"])
}

impl Vault {
    /// Reads every stored provider configuration. A row whose client secret does not open under
    /// its associated data (connector and configuration) is kept as tampered: using that
    /// connector fails with [`VaultError::ProviderTampered`] until it is registered again.
    pub(super) async fn load_providers(
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
        presets::warn_if_unclassified(&config);
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

    /// The lifecycle scopes `connector` declares (see [`ProviderConfig::lifecycle_scopes`]):
    /// needed for refresh or identity, never "unused".
    pub fn lifecycle_scopes(&self, connector: &str) -> Result<Vec<String>, VaultError> {
        Ok(self.provider(connector)?.lifecycle_scopes.clone())
    }

    /// The provider name `connector`'s responses are classified as (see
    /// [`crate::classify::classify`]).
    pub fn provider_name(&self, connector: &str) -> Result<String, VaultError> {
        Ok(self.provider(connector)?.provider.clone())
    }

    /// The classification rules registered for `connector`, if any.
    pub fn classification_rules(
        &self,
        connector: &str,
    ) -> Result<Option<crate::classify::RuleSet>, VaultError> {
        Ok(self.provider(connector)?.classification_rules.clone())
    }

    /// The header `connector`'s step calls carry their idempotency key in (`None`: none).
    pub fn idempotency_header(&self, connector: &str) -> Result<Option<String>, VaultError> {
        Ok(self.provider(connector)?.idempotency_header.clone())
    }

    pub(super) fn provider(&self, connector: &str) -> Result<Arc<ProviderConfig>, VaultError> {
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
}
