//! Bridges from the emulators to the vault: the provider configuration a vault needs to talk
//! to an emulator, and the full consent flow (link → approve → callback) in one call.

use secrecy::ExposeSecret;

use super::{Emulator, Github, Google, Jira, Microsoft, Provider, Salesforce, SandboxError, Slack};
use crate::vault::presets::{self, OAuthClient};
use crate::vault::{AccountInfo, ProviderConfig, Vault, VaultError};

/// The callback URI the sandbox's clients use; the consent flow never really redirects there.
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/oauth/callback";

/// Why connecting an account through an emulator failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The vault refused (bad state, identity drift, token endpoint failure…).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The emulator refused the consent link.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The user declined (or no user was selected with `approve_as`).
    #[error("the {connector} consent was declined: {error}")]
    Declined {
        /// The connector.
        connector: String,
        /// The OAuth error the redirect carried.
        error: String,
    },
}

impl<P: Provider> Emulator<P> {
    /// The registration of this emulator's client, for a preset.
    pub fn oauth_client(&self) -> OAuthClient {
        let state = self.shared.lock();
        OAuthClient::new(
            state.oauth.client.client_id.clone(),
            state.oauth.client.client_secret.expose_secret().to_owned(),
            REDIRECT_URI,
        )
    }

    /// Runs the whole consent flow for `principal_id` on this emulator: the vault builds the
    /// link, the emulator approves it as the user selected with [`Emulator::approve_as`], and the
    /// vault completes the callback (state, PKCE verifier, code exchange, subject check).
    pub async fn connect(
        &self,
        vault: &Vault,
        principal_id: &str,
        connector: &str,
        scopes: &[&str],
    ) -> Result<AccountInfo, ConnectError> {
        let request = vault.consent_link(principal_id, connector, scopes).await?;
        let consent = self.consent(request.url.as_str())?;
        match (consent.code, consent.state) {
            (Some(code), Some(state)) => {
                Ok(vault.complete_consent(principal_id, &state, &code).await?)
            }
            _ => Err(ConnectError::Declined {
                connector: connector.to_owned(),
                error: consent
                    .error
                    .unwrap_or_else(|| "no code in the redirect".into()),
            }),
        }
    }
}

impl Salesforce {
    /// [`presets::salesforce`] with this emulator as the login host: the subject is the token
    /// response's `id` URL, the lifetime comes from introspection (Salesforce sends no
    /// `expires_in`).
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        presets::salesforce(connector, &self.oauth_client(), self.base_url())
    }
}

impl Jira {
    /// [`presets::atlassian`] pointed at this emulator (subject: `account_id` from `/me`), plus
    /// the emulator's revocation endpoint.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        presets::at_origin(
            presets::atlassian(connector, &self.oauth_client())?,
            self.base_url(),
        )?
        .with_revoke_url(&self.urls().revoke)
    }
}

impl Slack {
    /// [`presets::slack`] pointed at this emulator: comma-separated scopes, subject
    /// `team.id:authed_user.id`.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        presets::at_origin(
            presets::slack(connector, &self.oauth_client())?,
            self.base_url(),
        )
    }
}

impl Github {
    /// [`presets::github`] pointed at this emulator.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        presets::at_origin(
            presets::github(connector, &self.oauth_client())?,
            self.base_url(),
        )
    }
}

impl Google {
    /// [`presets::google`] pointed at this emulator.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        presets::at_origin(
            presets::google(connector, &self.oauth_client())?,
            self.base_url(),
        )
    }
}

impl Microsoft {
    /// [`presets::microsoft`] for this emulator's tenant, pointed at this emulator.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        presets::at_origin(
            presets::microsoft(connector, &self.oauth_client(), self.tenant())?,
            self.base_url(),
        )
    }
}
