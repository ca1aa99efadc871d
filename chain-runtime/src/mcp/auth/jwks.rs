//! JWT access tokens signed with the authorization server's published keys: a JSON Web Key
//! Set (RFC 7517) fetched from a URL such as the `jwks_uri` of the server's metadata.
//!
//! - Keys: RSA (`RS256`/`RS384`/`RS512`, `PS256`/`PS384`/`PS512`), EC P-256 (`ES256`) and
//!   P-384 (`ES384`), Ed25519 (`EdDSA`). Symmetric keys in the set, keys for encryption and
//!   keys that do not parse are skipped; a key's own `alg`, when it names one, binds it.
//! - Cache: the set is fetched on first use and again once it is older than
//!   [`JwksJwtVerifier::max_age`]; a token whose `kid` is not in the cache (the server rotated
//!   its keys) triggers a refetch, at most once per [`JwksJwtVerifier::refetch_interval`], so
//!   tokens with made-up key ids cannot make the verifier hammer the server. A failed refetch
//!   keeps the keys it had.
//! - Fetch: bounded in time (5 s) and size ([`JwksJwtVerifier::max_bytes`], 64 KiB by default).
//! - Answers: no usable key set at all is 503 (the verifier cannot decide); a token whose key is
//!   not published, a bad signature, `alg: none` or a disallowed algorithm, wrong `iss` or
//!   `aud`, an expired or not-yet-valid token are 401 `invalid_token`; missing scopes 403.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use serde_json::Value;

use super::jwt;
use super::{ClaimRules, Identity, Presence, TokenRejection, TokenVerifier, identity_from_claims};
use crate::future::BoxFuture;

/// The asymmetric algorithms a JWK Set's keys can verify.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One usable key of the set.
#[derive(Clone)]
struct CachedKey {
    kid: Option<String>,
    /// The algorithms this key verifies (its type and curve, narrowed by its `alg`).
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<CachedKey>,
    /// The last fetch that succeeded.
    fetched_at: Option<Instant>,
    /// The last fetch tried, successful or not (the rate limit).
    attempted_at: Option<Instant>,
}

impl KeyCache {
    /// The keys that may have signed a token with this header: the one with its `kid`, or
    /// without a `kid` every key that verifies its algorithm.
    fn candidates(&self, header: &Header) -> Vec<DecodingKey> {
        self.keys
            .iter()
            .filter(|k| match &header.kid {
                Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                None => true,
            })
            .filter(|k| k.algorithms.contains(&header.alg))
            .map(|k| k.key.clone())
            .collect()
    }
}

/// Verifies JWT access tokens signed with keys the authorization server publishes at a JWK Set
/// URL: signature (by `kid`), `iss`, `aud` (this resource), `exp` and `nbf` with a small
/// leeway, `sub` (the principal) and required scopes.
pub struct JwksJwtVerifier {
    jwks_url: url::Url,
    http: reqwest::Client,
    rules: ClaimRules,
    algorithms: Vec<Algorithm>,
    max_bytes: usize,
    refetch_interval: Duration,
    max_age: Duration,
    cache: tokio::sync::Mutex<KeyCache>,
}

impl std::fmt::Debug for JwksJwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksJwtVerifier")
            .field("jwks_url", &self.jwks_url.as_str())
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .finish_non_exhaustive()
    }
}

impl JwksJwtVerifier {
    /// Tokens issued by `issuer` (their `iss`), addressed to `audience` (the MCP endpoint's
    /// URL), signed with a key of the set at `jwks_url`.
    pub fn new(jwks_url: url::Url, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        crate::vault::ensure_tls_provider();
        jwt::ensure_provider();
        let mut rules = ClaimRules::new(audience.into());
        rules.issuer = Some(issuer.into());
        Self {
            jwks_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            rules,
            algorithms: ASYMMETRIC.to_vec(),
            max_bytes: 64 * 1024,
            refetch_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(15 * 60),
            cache: tokio::sync::Mutex::default(),
        }
    }

    /// Also require these scopes (403 `insufficient_scope` without them).
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.rules.required_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Accept only these algorithms (default: every asymmetric one listed in the module
    /// docs). Symmetric algorithms are never accepted: the key set is public.
    pub fn algorithms<I: IntoIterator<Item = Algorithm>>(mut self, algorithms: I) -> Self {
        self.algorithms = algorithms
            .into_iter()
            .filter(|a| ASYMMETRIC.contains(a))
            .collect();
        self
    }

    /// The clock skew tolerated on `exp` and `nbf` (default
    /// [`DEFAULT_LEEWAY_SECS`](super::DEFAULT_LEEWAY_SECS)).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.rules.leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        self
    }

    /// The shortest time between two fetches of the set (default 30 s): the rate limit of
    /// refetches for unknown key ids.
    pub fn refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// How long a fetched set is used before it is fetched again (default 15 minutes).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The largest key set accepted, in bytes (default 64 KiB).
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The keys that may have signed a token with `header`, fetching the set when it is
    /// missing, old, or lacks the token's `kid` (within the rate limit).
    async fn keys_for(&self, header: &Header) -> Result<Vec<DecodingKey>, TokenRejection> {
        let mut cache = self.cache.lock().await;
        let may_fetch = |c: &KeyCache| {
            c.attempted_at
                .is_none_or(|t| t.elapsed() >= self.refetch_interval)
        };
        let stale = cache.fetched_at.is_none_or(|t| t.elapsed() >= self.max_age);
        let mut fetch_error = None;
        if stale && may_fetch(&cache) {
            fetch_error = self.refresh(&mut cache).await.err();
        }
        let found = cache.candidates(header);
        if !found.is_empty() {
            return Ok(found);
        }
        if may_fetch(&cache) {
            fetch_error = self.refresh(&mut cache).await.err();
            let found = cache.candidates(header);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        match fetch_error {
            Some(why) if cache.keys.is_empty() => Err(TokenRejection::Unavailable(why)),
            _ if cache.fetched_at.is_none() => Err(TokenRejection::Unavailable(
                "the signing keys could not be fetched yet".into(),
            )),
            _ => Err(TokenRejection::Invalid(
                "the token's signing key is not among the published keys".into(),
            )),
        }
    }

    /// Fetches the set; on success replaces the cached keys.
    async fn refresh(&self, cache: &mut KeyCache) -> Result<(), String> {
        cache.attempted_at = Some(Instant::now());
        let keys = self.fetch().await?;
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    async fn fetch(&self) -> Result<Vec<CachedKey>, String> {
        let mut response = self
            .http
            .get(self.jwks_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetching the key set: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("the key set URL answered {}", response.status()));
        }
        let too_big = || format!("the key set is larger than {} bytes", self.max_bytes);
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the key set: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        let set: Value =
            serde_json::from_slice(&body).map_err(|_| "the key set is not JSON".to_owned())?;
        let keys: Vec<CachedKey> = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "the key set has no `keys` array".to_owned())?
            .iter()
            .filter_map(usable_key)
            .collect();
        if keys.is_empty() {
            return Err("the key set has no usable signing key".into());
        }
        Ok(keys)
    }

    async fn check(&self, token: &str) -> Result<Identity, TokenRejection> {
        let header = jwt::header(token)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenRejection::Invalid("unsupported algorithm".into()));
        }
        let mut outcome = Err(TokenRejection::Invalid("bad signature".into()));
        for key in self.keys_for(&header).await? {
            outcome = jwt::verified_claims(token, &key, header.alg);
            if outcome.is_ok() {
                break;
            }
        }
        identity_from_claims(&outcome?, &self.rules, Presence::Required)
    }
}

/// A key of the set the verifier can use, with the algorithms it verifies.
fn usable_key(value: &Value) -> Option<CachedKey> {
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let mut algorithms: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Symmetric keys (`oct`) and anything else: never from a public set.
        _ => return None,
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let declared = Algorithm::try_from(declared).ok()?;
        algorithms.retain(|a| *a == declared);
    }
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(CachedKey {
        kid: jwk.common.key_id,
        algorithms,
        key,
    })
}

impl TokenVerifier for JwksJwtVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenRejection>> {
        Box::pin(self.check(token))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const EC_X: &str = "C3KcCJjcjnGMZEdSvVfhAw1pftyZJbLvFXtiNLDBZD0";
    const EC_Y: &str = "VnLxM6Xq3W5GSyrULgU6eUj5ezB5O156YCEN6u0kBHQ";
    const RSA_N: &str = "5Jnie7dZBq9pL8Sqglij1EZWEUEXiPyxBcm2EGZsMVhZ4WN6SYxL1CSa29sWSOd6QA0-t3GQIu4HTFBTJ8U4C3MyrBjMOAzbF5Cq607BLSgQ6R9f6s1_J4Zv0_V0RdCwVmZlmhprie0uAphkFBHF4vw0I0B00SktsxOK3-8tefImW-NpGXu7fyMipa7oN7Q0Qm55Zs2NwHGJWClGub56ZnyeuPxDWJaVQgMbhhs3YYFKU2K00X3UfKdIk9dwNaAJippLcYvb7AshClkMKwIRD7DtcosXJQJzbkhefurS0ayBkuTWcS9nJOX20mWaBlOKRf2Ufty-XIDp9MCKc2iNQQ";

    fn algorithms(key: Value) -> Option<Vec<Algorithm>> {
        usable_key(&key).map(|k| k.algorithms)
    }

    #[test]
    fn only_public_signing_keys_are_used_and_their_alg_binds_them() {
        let ec = json!({"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "e"});
        assert_eq!(algorithms(ec.clone()), Some(vec![Algorithm::ES256]));
        let rsa = json!({"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "r"});
        assert_eq!(algorithms(rsa.clone()).map(|a| a.len()), Some(6));
        let mut rs256 = rsa.clone();
        rs256["alg"] = json!("RS256");
        assert_eq!(algorithms(rs256), Some(vec![Algorithm::RS256]));
        // A key whose declared alg does not fit its type, an encryption key, a symmetric key
        // (a public set must never hand out an HMAC secret), an unknown type, garbage.
        let mut mismatched = ec.clone();
        mismatched["alg"] = json!("ES384");
        assert_eq!(algorithms(mismatched), None);
        let mut hs = rsa.clone();
        hs["alg"] = json!("HS256");
        assert_eq!(algorithms(hs), None);
        let mut enc = rsa;
        enc["use"] = json!("enc");
        assert_eq!(algorithms(enc), None);
        assert_eq!(
            algorithms(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})),
            None
        );
        assert_eq!(algorithms(json!({"kty": "XYZ", "kid": "x"})), None);
        assert_eq!(
            algorithms(json!({"kty": "EC", "crv": "P-256", "x": "AA"})),
            None
        );
        assert_eq!(usable_key(&json!(5)).map(|k| k.kid), None);
        assert_eq!(usable_key(&ec).and_then(|k| k.kid).as_deref(), Some("e"));
    }
}
