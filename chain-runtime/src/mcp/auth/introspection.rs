//! RFC 7662 token introspection: opaque access tokens checked with the authorization server.

use serde_json::Value;

use super::{ClaimRules, Identity, Presence, TokenRejection, TokenVerifier, identity_from_claims};
use crate::future::BoxFuture;

/// Verifies opaque tokens with the authorization server's RFC 7662 introspection endpoint
/// (client authentication with HTTP Basic): the token must be `active`, with a `sub`, the
/// required scopes, and `exp` and `aud` right when the answer carries them.
pub struct IntrospectionVerifier {
    http: reqwest::Client,
    endpoint: url::Url,
    client_id: String,
    client_secret: secrecy::SecretString,
    rules: ClaimRules,
}

impl std::fmt::Debug for IntrospectionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionVerifier")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl IntrospectionVerifier {
    /// Introspects at `endpoint` as client `client_id`; tokens must be for `audience`.
    pub fn new(
        endpoint: url::Url,
        client_id: impl Into<String>,
        client_secret: secrecy::SecretString,
        audience: impl Into<String>,
    ) -> Self {
        crate::vault::ensure_tls_provider();
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            endpoint,
            client_id: client_id.into(),
            client_secret,
            rules: ClaimRules::new(audience.into()),
        }
    }

    /// Also require these scopes.
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.rules.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

impl TokenVerifier for IntrospectionVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>> {
        use secrecy::ExposeSecret;
        Box::pin(async move {
            let response = self
                .http
                .post(self.endpoint.clone())
                .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
                .form(&[("token", token), ("token_type_hint", "access_token")])
                .send()
                .await
                .map_err(|e| {
                    TokenRejection::Unavailable(format!("introspection: {}", e.without_url()))
                })?;
            if !response.status().is_success() {
                return Err(TokenRejection::Unavailable(format!(
                    "introspection answered {}",
                    response.status()
                )));
            }
            let claims: Value = response.json().await.map_err(|_| {
                TokenRejection::Unavailable("introspection answered no JSON".into())
            })?;
            if claims.get("active").and_then(Value::as_bool) != Some(true) {
                return Err(TokenRejection::Invalid("inactive token".into()));
            }
            identity_from_claims(&claims, &self.rules, Presence::IfPresent)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUD: &str = "https://mcp.example/mcp";

    #[cfg(feature = "sandbox")]
    #[tokio::test]
    async fn introspection_against_the_sandbox_authorization_server() {
        use crate::sandbox::{Salesforce, pkce_challenge};
        let sf = Salesforce::start().await.unwrap();
        let alice = sf.add_user("alice@example.com");
        sf.approve_as(&alice).unwrap();
        let verifier = "a-long-random-verifier-of-at-least-43-characters-for-pkce";
        let redirect = "http://127.0.0.1:9/cb";
        let link = format!(
            "{}?response_type=code&client_id={}&redirect_uri={redirect}&scope=api&state=s&code_challenge={}&code_challenge_method=S256",
            sf.urls().authorize,
            sf.client_id(),
            pkce_challenge(verifier)
        );
        let code = sf.consent(&link).unwrap().code.unwrap();
        let config = sf.provider_config("salesforce").unwrap();
        let secret = config.client_secret.expose().to_owned();
        crate::vault::ensure_tls_provider();
        let answer: Value = reqwest::Client::new()
            .post(&sf.urls().token)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
                ("client_id", sf.client_id().as_str()),
                ("client_secret", secret.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = answer["access_token"].as_str().unwrap().to_owned();
        let endpoint = url::Url::parse(sf.urls().introspect.as_deref().unwrap()).unwrap();
        let v = IntrospectionVerifier::new(
            endpoint.clone(),
            sf.client_id(),
            secrecy::SecretString::from(secret.clone()),
            AUD,
        );
        let id = v.verify(&token).await.unwrap();
        assert_eq!(id.subject, alice);
        assert_eq!(id.scopes, ["api"]);
        assert!(matches!(
            v.verify("garbage").await,
            Err(TokenRejection::Invalid(_))
        ));
        let scoped = IntrospectionVerifier::new(
            endpoint.clone(),
            sf.client_id(),
            secrecy::SecretString::from(secret),
            AUD,
        )
        .require_scopes(["refresh_token"]);
        assert_eq!(
            scoped.verify(&token).await,
            Err(TokenRejection::InsufficientScope("refresh_token".into()))
        );
        sf.revoke_grant(&alice);
        assert!(
            matches!(v.verify(&token).await, Err(TokenRejection::Invalid(_))),
            "revoked"
        );
        // Wrong client credentials: the verifier cannot decide, which is not "invalid".
        let wrong =
            IntrospectionVerifier::new(endpoint, sf.client_id(), "nope".to_owned().into(), AUD);
        assert!(matches!(
            wrong.verify(&token).await,
            Err(TokenRejection::Unavailable(_))
        ));
        sf.shutdown().await;
    }
}
