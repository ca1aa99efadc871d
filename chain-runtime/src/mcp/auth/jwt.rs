//! JWT access tokens: the one path every JWT verifier takes. `jsonwebtoken` (RustCrypto
//! backend) reads the header and checks the signature with the key the verifier chose for the
//! header's algorithm; the claims then go through the same rules as every other verifier's
//! ([`identity_from_claims`]). `alg: none`, an algorithm the verifier does not allow, and a key
//! of another family than the algorithm (an RSA public key used as an HMAC secret) are refused.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use super::{ClaimRules, Identity, Presence, TokenRejection, TokenVerifier, identity_from_claims};
use crate::future::BoxFuture;

/// Makes sure `jsonwebtoken` has its crypto provider (the RustCrypto one unless the
/// application installed another).
pub(super) fn ensure_provider() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
    );
}

/// The token's header, refused when it is unreadable or names no algorithm `jsonwebtoken`
/// knows (`none` among them).
pub(super) fn header(token: &str) -> Result<Header, TokenRejection> {
    if token.split('.').count() != 3 {
        return Err(TokenRejection::Invalid("not a JWT".into()));
    }
    jsonwebtoken::decode_header(token)
        .map_err(|_| TokenRejection::Invalid("unreadable header or unsupported algorithm".into()))
}

/// The claims of `token` once its signature checks out with `key` under `alg` (which the
/// caller took from the header and allowed). No claim is checked here.
pub(super) fn verified_claims(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<Value, TokenRejection> {
    ensure_provider();
    if key.family() != alg.family() {
        return Err(TokenRejection::Invalid(
            "the algorithm does not fit the key".into(),
        ));
    }
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| {
            TokenRejection::Invalid(
                match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "the algorithm does not fit the key",
                    _ => "malformed token",
                }
                .into(),
            )
        })
}

/// Verifies HS256 JWTs signed with a static shared key: signature, `exp`, `nbf` (with a
/// small leeway), `iss`, `aud` (must name this resource), `sub` (the principal) and required
/// scopes.
pub struct SharedKeyJwtVerifier {
    key: Vec<u8>,
    rules: ClaimRules,
}

impl std::fmt::Debug for SharedKeyJwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyJwtVerifier")
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .finish_non_exhaustive()
    }
}

impl SharedKeyJwtVerifier {
    /// Tokens signed with `key` and addressed to `audience` (the MCP endpoint's URL).
    pub fn new(key: impl Into<Vec<u8>>, audience: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            rules: ClaimRules::new(audience.into()),
        }
    }

    /// Also require `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.rules.issuer = Some(issuer.into());
        self
    }

    /// Also require these scopes (403 `insufficient_scope` without them).
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.rules.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The clock skew tolerated on `exp` and `nbf` (default
    /// [`DEFAULT_LEEWAY_SECS`](super::DEFAULT_LEEWAY_SECS)).
    pub fn leeway(mut self, leeway: std::time::Duration) -> Self {
        self.rules.leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// Signs `claims` as an HS256 JWT with this verifier's key (for tests and local tools);
    /// empty when the key cannot sign.
    pub fn sign(&self, claims: &Value) -> String {
        ensure_provider();
        EncodingKey::from_secret(&self.key)
            .and_then(|key| jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key))
            .unwrap_or_default()
    }

    pub(super) fn check(&self, token: &str) -> Result<Identity, TokenRejection> {
        let header = header(token)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenRejection::Invalid("unsupported algorithm".into()));
        }
        let key = DecodingKey::from_secret(&self.key)
            .map_err(|_| TokenRejection::Invalid("bad key".into()))?;
        let claims = verified_claims(token, &key, Algorithm::HS256)?;
        identity_from_claims(&claims, &self.rules, Presence::Required)
    }
}

impl TokenVerifier for SharedKeyJwtVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>> {
        Box::pin(std::future::ready(self.check(token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    use crate::mcp::auth::now_secs;

    const AUD: &str = "https://mcp.example/mcp";

    fn claims(exp_in: i64) -> Value {
        json!({"sub": "alice", "aud": AUD, "exp": now_secs() + exp_in, "scope": "chains:run other"})
    }

    #[test]
    fn shared_key_jwts_are_checked() {
        let v = SharedKeyJwtVerifier::new(b"k".repeat(32), AUD);
        let id = v.check(&v.sign(&claims(60))).unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.scopes, ["chains:run", "other"]);
        let invalid = |t: &str| matches!(v.check(t), Err(TokenRejection::Invalid(_)));
        assert!(invalid(&v.sign(&claims(-120))), "expired");
        assert!(invalid("a.b"), "not a JWT");
        assert!(
            invalid(&SharedKeyJwtVerifier::new(b"x".repeat(32), AUD).sign(&claims(60))),
            "other key"
        );
        let mut other_aud = claims(60);
        other_aud["aud"] = json!("https://elsewhere/mcp");
        assert!(invalid(&v.sign(&other_aud)), "other audience");
        let mut no_sub = claims(60);
        no_sub.as_object_mut().unwrap().remove("sub");
        assert!(invalid(&v.sign(&no_sub)));
        // alg none, and a payload swapped under a valid signature.
        let token = v.sign(&claims(60));
        let parts: Vec<&str> = token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{}.", b64.encode(br#"{"alg":"none"}"#), parts[1]);
        assert!(invalid(&none));
        let mut bob = claims(60);
        bob["sub"] = json!("bob");
        let swapped = format!("{}.{}.{}", parts[0], b64.encode(bob.to_string()), parts[2]);
        assert!(invalid(&swapped), "bad signature");
        let strict = SharedKeyJwtVerifier::new(b"k".repeat(32), AUD).require_scopes(["admin"]);
        assert_eq!(
            strict.check(&strict.sign(&claims(60))),
            Err(TokenRejection::InsufficientScope("admin".into()))
        );
        let with_iss = SharedKeyJwtVerifier::new(b"k".repeat(32), AUD).issuer("https://as");
        assert!(matches!(
            with_iss.check(&token),
            Err(TokenRejection::Invalid(_))
        ));
    }
}
