//! Consent: links with PKCE S256 and a single-use state, and the callback that exchanges the
//! code and records the account.

use base64::Engine as _;
use secrecy::zeroize::Zeroizing;
use sha2::{Digest as _, Sha256};

use crate::classify::FailureClass;

use super::accounts::token_aad;
use super::crypto::aad;
use super::oauth::{self, TokenOutcome, TokenSet};
use super::provider::ProviderConfig;
use super::secret::PkceVerifier;
use super::store::{AccountStatus, StoredAccount, StoredConsent};
use super::types::{AccountInfo, ConsentRequest};
use super::{TokenKind, Vault, VaultError};

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

fn consent_aad(state_hash: &[u8], principal_id: &str, connector: &str) -> Vec<u8> {
    let hex: String = state_hash.iter().map(|b| format!("{b:02x}")).collect();
    aad(&["consent", &hex, principal_id, connector, "pkce_verifier"])
}

impl Vault {
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
}
