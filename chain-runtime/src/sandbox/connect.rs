//! Bridges from the emulators to the vault: the provider configuration a vault needs to talk
//! to an emulator, and the full consent flow (link → approve → callback) in one call.

use secrecy::ExposeSecret;

use super::{Emulator, Github, Google, Jira, Microsoft, Provider, Salesforce, SandboxError, Slack};
use crate::vault::presets::{self, OAuthClient};
use crate::vault::{
    AccountInfo, ClientSecret, ProviderConfig, ScopeSeparator, SubjectSource, Vault, VaultError,
};

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
    fn base_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        let secret = {
            let state = self.shared.lock();
            ClientSecret::new(state.oauth.client.client_secret.expose_secret().to_owned())
        };
        let urls = self.urls();
        let config = ProviderConfig::new(
            connector,
            &urls.authorize,
            &urls.token,
            self.client_id(),
            secret,
            REDIRECT_URI,
        )?
        .with_provider(P::NAME.to_ascii_lowercase())
        .with_revoke_url(&urls.revoke)?;
        Ok(config)
    }

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
    /// The vault configuration for this emulator: the subject is the token response's `id`
    /// URL, the lifetime comes from introspection (Salesforce sends no `expires_in`).
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        let introspect = self.urls().introspect.clone().unwrap_or_default();
        Ok(self
            .base_config(connector)?
            .with_introspection_url(&introspect)?
            .with_subject(SubjectSource::TokenResponse {
                pointers: vec!["/id".into()],
            }))
    }
}

impl Jira {
    /// The vault configuration for this emulator: the subject is `account_id` from `/me`.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        let me = self.urls().userinfo.clone().unwrap_or_default();
        let me = url::Url::parse(&me).map_err(|e| VaultError::Config {
            connector: connector.to_owned(),
            reason: format!("the emulator's /me URL does not parse: {e}"),
        })?;
        Ok(self
            .base_config(connector)?
            .with_subject(SubjectSource::UserInfo {
                url: me,
                pointers: vec!["/account_id".into()],
            }))
    }
}

impl Slack {
    /// The vault configuration for this emulator: comma-separated scopes, subject
    /// `team.id:authed_user.id`.
    pub fn provider_config(&self, connector: &str) -> Result<ProviderConfig, VaultError> {
        Ok(self
            .base_config(connector)?
            .with_scope_separator(ScopeSeparator::Comma)
            .with_subject(SubjectSource::TokenResponse {
                pointers: vec!["/team/id".into(), "/authed_user/id".into()],
            }))
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
