//! Consent: links with PKCE S256 and a single-use state, and the callback that exchanges the
//! code and records the account.

use base64::Engine as _;
use secrecy::zeroize::Zeroizing;
use sha2::{Digest as _, Sha256};

use crate::classify::FailureClass;

use super::crypto::aad;
use super::oauth::{self, TokenOutcome, TokenSet};
use super::provider::ProviderConfig;
use super::secret::PkceVerifier;
use super::store::{AccountStatus, StoredConsent};
use super::types::{AccountInfo, ConsentRequest};
use super::{TokenKind, Vault, VaultError};

fn random_b64(bytes: usize) -> String {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf[..])
}

fn consent_aad(state_hash: &[u8], principal_id: &str, connector: &str) -> Vec<u8> {
    let hex: String = state_hash.iter().map(|b| format!("{b:02x}")).collect();
    aad(&["consent", &hex, principal_id, connector, "pkce_verifier"])
}

impl Vault {
    /// The scopes every consent on `connector` for `principal_id` asks for besides the
    /// caller's: when the account needs re-authorization, everything its revoked grant held (a
    /// re-consent asks again for e.g. `offline_access`, not only for what a step needs now),
    /// then the provider's lifecycle scopes. In that order, without repeats.
    pub async fn reconsent_scopes(
        &self,
        principal_id: &str,
        connector: &str,
    ) -> Result<Vec<String>, VaultError> {
        let provider = self.provider(connector)?;
        let previous: Vec<String> = match self
            .inner
            .store
            .get_account(principal_id, connector)
            .await?
        {
            Some(a) if a.status == AccountStatus::NeedsReauthorization => a.granted_scopes,
            _ => Vec::new(),
        };
        let mut held: Vec<String> = Vec::new();
        for s in previous.iter().chain(provider.lifecycle_scopes.iter()) {
            if !s.is_empty() && !held.contains(s) {
                held.push(s.clone());
            }
        }
        Ok(held)
    }

    /// Creates a consent link for (principal, connector, scopes), also asking for the provider's
    /// lifecycle scopes and, when the account needs re-authorization, for every scope its
    /// revoked grant held: PKCE S256 with the verifier kept
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
        let held = self.reconsent_scopes(principal_id, connector).await?;
        let mut wanted: Vec<String> = Vec::new();
        for s in scopes
            .iter()
            .map(|s| s.as_ref().trim())
            .chain(held.iter().map(String::as_str))
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

    /// Completes a consent callback for `principal_id`, the authenticated principal of the
    /// request that landed on the callback: validates the single-use `state`, refuses (before
    /// the code exchange) when the link was issued to another principal, exchanges `code` with
    /// the PKCE verifier, determines the upstream subject and records the account with the
    /// scopes as granted. On re-consent a different upstream subject is refused
    /// ([`VaultError::IdentityDrift`]) unless the stored account was disconnected; an upstream
    /// user already connected to another principal is handled per
    /// [`VaultOptions::shared_subject`](super::VaultOptions). Every failure is audited (never
    /// with the state, the code or a token).
    pub async fn complete_consent(
        &self,
        principal_id: &str,
        state: &str,
        code: &str,
    ) -> Result<AccountInfo, VaultError> {
        let (pending, state_hash) = self.take_pending(principal_id, state).await?;
        let connector = pending.connector.as_str();
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
                self.audit_consent_failure(
                    principal_id,
                    Some(connector),
                    "code_exchange_rejected",
                    error_code.clone(),
                )
                .await;
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
                self.audit_consent_failure(
                    principal_id,
                    Some(connector),
                    "code_exchange_failed",
                    None,
                )
                .await;
                return Err(e);
            }
        };
        let subject = match self.resolve_subject(&provider, &tokens).await {
            Ok(subject) => subject,
            Err(e) => {
                self.audit_consent_failure(
                    principal_id,
                    Some(connector),
                    "subject_unavailable",
                    None,
                )
                .await;
                return Err(e);
            }
        };
        self.bind_account(&provider, &pending, subject, tokens)
            .await
    }

    /// Takes the pending consent of `state` (single use) for `principal_id`, refusing an
    /// unknown or expired state and a principal other than the one the link was issued to.
    async fn take_pending(
        &self,
        principal_id: &str,
        state: &str,
    ) -> Result<(StoredConsent, Vec<u8>), VaultError> {
        let state_hash = Sha256::digest(state.as_bytes()).to_vec();
        let Some(pending) = self.inner.store.take_consent(&state_hash).await? else {
            tracing::warn!(
                principal_id,
                "vault consent callback with an unknown, forged or replayed state"
            );
            self.audit_consent_failure(principal_id, None, "unknown_state", None)
                .await;
            return Err(VaultError::UnknownConsentState);
        };
        let connector = pending.connector.as_str();
        if pending.principal_id != principal_id {
            tracing::warn!(
                principal_id,
                connector,
                "vault consent callback by another principal than the link was issued to; refused"
            );
            // Recorded under both principals: the one whose link it was, and the one who used it.
            for who in [pending.principal_id.as_str(), principal_id] {
                self.audit_consent_failure(who, Some(connector), "principal_mismatch", None)
                    .await;
            }
            return Err(VaultError::ConsentPrincipalMismatch {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        if pending.expires_at <= self.now() {
            tracing::warn!(
                principal_id,
                connector,
                "vault consent callback after the link expired"
            );
            self.audit_consent_failure(principal_id, Some(connector), "expired_state", None)
                .await;
            return Err(VaultError::ConsentExpired {
                principal_id: principal_id.to_owned(),
                connector: connector.to_owned(),
            });
        }
        Ok((pending, state_hash))
    }

    /// Ends the pending consent of `state` after the provider sent the user back with an OAuth
    /// `error` (e.g. `access_denied`): the consent is used up, the sanitized error code is
    /// audited and returned as [`VaultError::ConsentDenied`].
    pub async fn fail_consent(
        &self,
        principal_id: &str,
        state: &str,
        error: &str,
    ) -> Result<VaultError, VaultError> {
        let error_code = oauth::sanitize_error_code(error);
        let (pending, _) = self.take_pending(principal_id, state).await?;
        let connector = pending.connector.as_str();
        tracing::info!(
            principal_id,
            connector,
            error_code,
            "vault consent ended by the provider's error callback"
        );
        self.audit_consent_failure(
            principal_id,
            Some(connector),
            "provider_error",
            Some(error_code.clone()),
        )
        .await;
        Ok(VaultError::ConsentDenied {
            principal_id: principal_id.to_owned(),
            connector: connector.to_owned(),
            error_code,
        })
    }

    /// Completes (or ends) a consent from the redirect URL the provider sent the user back to:
    /// `code` and `state` complete it ([`Vault::complete_consent`]), `error` and `state` end it
    /// with the provider's sanitized error ([`VaultError::ConsentDenied`]). `principal_id` is
    /// the authenticated principal of the request that landed on the callback.
    pub async fn complete_consent_from_redirect(
        &self,
        principal_id: &str,
        redirect: &str,
    ) -> Result<AccountInfo, VaultError> {
        let (state, outcome) = parse_redirect(redirect)?;
        match outcome {
            Callback::Error(error) => Err(self.fail_consent(principal_id, &state, &error).await?),
            Callback::Code(code) => self.complete_consent(principal_id, &state, &code).await,
        }
    }

    pub(super) async fn revoke_quietly(&self, provider: &ProviderConfig, tokens: &TokenSet) {
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

/// What a provider's redirect back to the application carries besides `state`.
pub(crate) enum Callback {
    /// The authorization code (a secret until exchanged).
    Code(Zeroizing<String>),
    /// The provider's `error` parameter, as sent (sanitized before it is stored).
    Error(Zeroizing<String>),
}

/// Reads `state` and then `error` (which wins) or `code` from the query of the redirect URL
/// the provider sent the user back to. A refusal never quotes the URL: it carries the code.
pub(crate) fn parse_redirect(redirect: &str) -> Result<(Zeroizing<String>, Callback), VaultError> {
    let url = url::Url::parse(redirect).map_err(|_| VaultError::MalformedCallback {
        reason: "not an absolute URL".into(),
    })?;
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Zeroizing::new(v.into_owned()))
    };
    let Some(state) = param("state") else {
        return Err(VaultError::MalformedCallback {
            reason: "it has no `state` parameter".into(),
        });
    };
    if let Some(error) = param("error") {
        return Ok((state, Callback::Error(error)));
    }
    let Some(code) = param("code") else {
        return Err(VaultError::MalformedCallback {
            reason: "it has neither `code` nor `error`".into(),
        });
    };
    Ok((state, Callback::Code(code)))
}

#[cfg(test)]
#[path = "consent_props.rs"]
mod props;
