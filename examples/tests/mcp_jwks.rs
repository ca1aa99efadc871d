//! The JWKS bearer verifier at the real streamable HTTP endpoint: an authorization server's
//! key set served over HTTP (RSA and P-256 keys; the keys under `tests/mcp_keys/` are test-only
//! keys generated for this test), RS256 and ES256 tokens accepted, every kind of bad token
//! refused with the right status and `WWW-Authenticate` challenge, key rotation picked up by a
//! refetch on an unknown `kid`, refetches rate-limited, and an unreachable or oversized key set
//! answered 503 (the verifier cannot decide).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use chain_runtime::mcp::ResourceServer;
use chain_runtime::mcp::auth::JwksJwtVerifier;
use chain_runtime::sandbox::pkce_challenge;
use examples::mcp_demo::McpDemo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use test_support::oauth::{CLIENT_ID, OAuthServer, REDIRECT_URI, authorize};

const RSA1: &[u8] = include_bytes!("mcp_keys/rsa1.der");
const RSA2: &[u8] = include_bytes!("mcp_keys/rsa2.der");
const ROGUE: &[u8] = include_bytes!("mcp_keys/rogue.der");
const EC1: &[u8] = include_bytes!("mcp_keys/ec1.der");

const SCOPE: &str = "mcp:tools";

/// The authorization server's key set, as it publishes it now, and how often each path was
/// fetched.
#[derive(Clone, Default)]
struct Issuer {
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    served: Arc<AtomicUsize>,
}

impl Issuer {
    fn publish(&self, keys: Vec<Jwk>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fetches(&self, path: &str) -> usize {
        self.fetches.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn jwks(State(issuer): State<Issuer>, Path(path): Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    *issuer
        .fetches
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    issuer.served.fetch_add(1, Ordering::SeqCst);
    match path.as_str() {
        "big" => {
            let padding = "x".repeat(100 * 1024);
            axum::Json(json!({"keys": [], "padding": padding})).into_response()
        }
        "gone" => axum::http::StatusCode::NOT_FOUND.into_response(),
        _ => {
            let set = JwkSet {
                keys: issuer.keys.lock().unwrap().clone(),
            };
            axum::Json(set).into_response()
        }
    }
}

fn jwk(der: &[u8], alg: Algorithm, kid: &str) -> Jwk {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        _ => EncodingKey::from_rsa_der(der),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

fn sign(der: &[u8], alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        _ => EncodingKey::from_rsa_der(der),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Posts an `initialize` to the MCP endpoint `url` with `token`: the status and the challenge.
async fn initialize(http: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let response = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), challenge)
}

struct World {
    _dir: tempfile::TempDir,
    _demo: McpDemo,
    issuer: Issuer,
    issuer_url: String,
    /// Each endpoint's origin (one listener each: each serves its own metadata).
    bases: std::collections::HashMap<&'static str, String>,
    http: reqwest::Client,
}

impl World {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The authorization server's key endpoint.
        let issuer = Issuer::default();
        issuer.publish(vec![
            jwk(RSA1, Algorithm::RS256, "rsa-1"),
            jwk(EC1, Algorithm::ES256, "ec-1"),
        ]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer_url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/jwks/{path}", axum::routing::get(jwks))
            .with_state(issuer.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The demo's MCP server, behind four endpoints that differ in their verifier.
        let dir = tempfile::tempdir().unwrap();
        let demo = McpDemo::start(&dir.path().join("mcp.db"), "127.0.0.1:0")
            .await
            .unwrap();
        let verifier = |path: &str, resource: &str| {
            JwksJwtVerifier::new(
                url::Url::parse(&format!("{issuer_url}/jwks/{path}")).unwrap(),
                issuer_url.clone(),
                resource,
            )
            .require_scopes([SCOPE])
        };
        let mut bases = std::collections::HashMap::new();
        for (path, refetch) in [
            ("fast", Duration::ZERO),
            ("slow", Duration::from_secs(3600)),
            ("big", Duration::ZERO),
            ("gone", Duration::ZERO),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let resource = format!("{base}/{path}/mcp");
            let rs = ResourceServer::new(
                verifier(path, &resource).refetch_interval(refetch),
                resource.clone(),
                vec![issuer_url.clone()],
            )
            .scopes_supported([SCOPE]);
            let router = demo.mcp.http_router(&format!("/{path}/mcp"), rs);
            tokio::spawn(async move { axum::serve(listener, router).await });
            bases.insert(path, base);
        }
        Self {
            _dir: dir,
            _demo: demo,
            issuer,
            issuer_url,
            bases,
            http: reqwest::Client::new(),
        }
    }

    fn resource(&self, path: &str) -> String {
        format!("{}/{path}/mcp", self.bases[path])
    }

    /// Good claims for endpoint `path`.
    fn claims(&self, path: &str) -> Value {
        json!({
            "iss": self.issuer_url,
            "sub": "alice",
            "aud": self.resource(path),
            "iat": now(),
            "exp": now() + 300,
            "scope": format!("openid {SCOPE}"),
        })
    }

    /// Posts an `initialize` to endpoint `path` with `token`: the status and the challenge.
    async fn post(&self, path: &str, token: &str) -> (u16, String) {
        initialize(&self.http, &self.resource(path), token).await
    }

    /// Asserts `token` is refused at `path` with `status`, `error` and a description
    /// containing `why`, pointing at the metadata.
    async fn refused(&self, path: &str, token: &str, status: u16, error: &str, why: &str) {
        let (got, challenge) = self.post(path, token).await;
        assert_eq!(got, status, "{why}: {challenge}");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(
            challenge.contains(&format!(
                "resource_metadata=\"{}/.well-known/oauth-protected-resource/{path}/mcp\"",
                self.bases[path]
            )),
            "{challenge}"
        );
        assert!(
            challenge.contains(&format!("error=\"{error}\"")),
            "{challenge}"
        );
        assert!(challenge.contains(why), "expected `{why}` in {challenge}");
    }
}

#[tokio::test]
async fn jwks_signed_tokens_are_verified_at_the_http_endpoint() {
    let w = World::start().await;
    let good = w.claims("fast");
    // RS256 and ES256 tokens of the issuer pass; the set is fetched once for both.
    let rs256 = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &good);
    assert_eq!(w.post("fast", &rs256).await.0, 200);
    let es256 = sign(EC1, Algorithm::ES256, Some("ec-1"), &good);
    assert_eq!(w.post("fast", &es256).await.0, 200);
    assert_eq!(w.issuer.fetches("fast"), 1, "the keys are cached");
    // rmcp's own client connects with it and lists the tools.
    let config = StreamableHttpClientTransportConfig::with_uri(w.resource("fast"))
        .auth_header(rs256.clone());
    let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "escalate_deal"));
    client.cancel().await.unwrap();

    // Expired (beyond the leeway), not yet valid, wrong audience, wrong issuer, no subject.
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 300);
    let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &expired);
    w.refused("fast", &token, 401, "invalid_token", "expired")
        .await;
    let mut early = good.clone();
    early["nbf"] = json!(now() + 600);
    let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &early);
    w.refused("fast", &token, 401, "invalid_token", "not valid yet")
        .await;
    let mut other_aud = good.clone();
    other_aud["aud"] = json!(w.resource("slow"));
    let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &other_aud);
    w.refused("fast", &token, 401, "invalid_token", "audience")
        .await;
    let mut other_iss = good.clone();
    other_iss["iss"] = json!("https://elsewhere.example");
    let token = sign(EC1, Algorithm::ES256, Some("ec-1"), &other_iss);
    w.refused("fast", &token, 401, "invalid_token", "issuer")
        .await;
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &no_sub);
    w.refused("fast", &token, 401, "invalid_token", "subject")
        .await;

    // A payload swapped under a valid signature, `alg: none`, an HS256 token (the public key
    // is no shared secret), an ES256 header on the RSA key's id.
    let b64 = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let parts: Vec<&str> = rs256.split('.').collect();
    let mut bob = good.clone();
    bob["sub"] = json!("bob");
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        b64(bob.to_string().as_bytes()),
        parts[2]
    );
    w.refused("fast", &swapped, 401, "invalid_token", "bad signature")
        .await;
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    w.refused("fast", &none, 401, "invalid_token", "algorithm")
        .await;
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"a-secret-anyone-could-pick").unwrap(),
    )
    .unwrap();
    w.refused(
        "fast",
        &hs256,
        401,
        "invalid_token",
        "unsupported algorithm",
    )
    .await;
    let es_on_rsa = sign(EC1, Algorithm::ES256, Some("rsa-1"), &good);
    w.refused(
        "fast",
        &es_on_rsa,
        401,
        "invalid_token",
        "not among the published keys",
    )
    .await;

    // A token without the required scope: 403 with the scopes to ask for.
    let mut narrow = good.clone();
    narrow["scope"] = json!("openid");
    let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &narrow);
    w.refused("fast", &token, 403, "insufficient_scope", SCOPE)
        .await;
    let (_, challenge) = w.post("fast", &token).await;
    assert!(
        challenge.contains(&format!("scope=\"{SCOPE}\"")),
        "{challenge}"
    );

    // Signed by a key the issuer never published: under a published kid, and under its own.
    let forged = sign(ROGUE, Algorithm::RS256, Some("rsa-1"), &good);
    w.refused("fast", &forged, 401, "invalid_token", "bad signature")
        .await;
    let fetched = w.issuer.fetches("fast");
    let rogue = sign(ROGUE, Algorithm::RS256, Some("rogue"), &good);
    w.refused(
        "fast",
        &rogue,
        401,
        "invalid_token",
        "not among the published keys",
    )
    .await;
    assert_eq!(
        w.issuer.fetches("fast"),
        fetched + 1,
        "an unknown kid makes the verifier look at the set again"
    );

    // Rotation: the issuer publishes a new key and retires the old one. A token signed with
    // the new key passes (the unknown kid triggers a refetch); one signed with the retired
    // key is refused once the set no longer has it.
    w.issuer.publish(vec![
        jwk(RSA2, Algorithm::RS256, "rsa-2"),
        jwk(EC1, Algorithm::ES256, "ec-1"),
    ]);
    let fetched = w.issuer.fetches("fast");
    let rotated = sign(RSA2, Algorithm::RS256, Some("rsa-2"), &good);
    assert_eq!(w.post("fast", &rotated).await.0, 200);
    assert_eq!(w.issuer.fetches("fast"), fetched + 1);
    assert_eq!(w.post("fast", &rotated).await.0, 200);
    assert_eq!(w.issuer.fetches("fast"), fetched + 1, "cached again");
    let retired = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &good);
    w.refused(
        "fast",
        &retired,
        401,
        "invalid_token",
        "not among the published keys",
    )
    .await;
}

#[tokio::test]
async fn refetches_are_rate_limited_and_an_unusable_key_set_is_unavailable() {
    let w = World::start().await;
    // The slow endpoint refetches at most once an hour: tokens with made-up key ids do not
    // reach the issuer.
    let good = w.claims("slow");
    let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &good);
    assert_eq!(w.post("slow", &token).await.0, 200);
    assert_eq!(w.issuer.fetches("slow"), 1);
    for i in 0..5 {
        let made_up = sign(ROGUE, Algorithm::RS256, Some(&format!("kid-{i}")), &good);
        w.refused(
            "slow",
            &made_up,
            401,
            "invalid_token",
            "not among the published keys",
        )
        .await;
    }
    assert_eq!(
        w.issuer.fetches("slow"),
        1,
        "no refetch within the interval"
    );
    assert_eq!(w.post("slow", &token).await.0, 200);

    // A key set larger than the limit, and one that is not there: 503, nothing decided.
    for path in ["big", "gone"] {
        let token = sign(RSA1, Algorithm::RS256, Some("rsa-1"), &w.claims(path));
        let (status, _) = w.post(path, &token).await;
        assert_eq!(status, 503, "{path}");
    }
    assert!(w.issuer.served.load(Ordering::SeqCst) >= 3);
}

/// An access token from the oidc-provider test server for `login`, through the authorization
/// code flow with PKCE, naming `resource` (RFC 8707) when given.
async fn issue(server: &OAuthServer, login: &str, resource: Option<&str>) -> String {
    let verifier = "a-long-random-verifier-of-at-least-43-characters-for-pkce";
    let mut url = url::Url::parse(&format!("{}/auth", server.base)).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", "openid api")
        .append_pair("state", "s")
        .append_pair("code_challenge", &pkce_challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    if let Some(resource) = resource {
        url.query_pairs_mut().append_pair("resource", resource);
    }
    let (_, code) = authorize(&url, login, None).await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", verifier),
        ("client_id", CLIENT_ID),
        ("client_secret", server.client_secret.as_str()),
    ];
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/token", server.base))
        .form(&form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {answer}"))
        .to_owned()
}

#[tokio::test]
async fn jwt_access_tokens_of_a_real_authorization_server_pass() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // oidc-provider issues JWT access tokens for a named resource, signed with the key it
    // publishes at /jwks.
    let server = OAuthServer::start();
    let dir = tempfile::tempdir().unwrap();
    let demo = McpDemo::start(&dir.path().join("mcp.db"), "127.0.0.1:0")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource = format!("http://{}/mcp", listener.local_addr().unwrap());
    let verifier = JwksJwtVerifier::new(
        url::Url::parse(&format!("{}/jwks", server.base)).unwrap(),
        server.base.clone(),
        resource.clone(),
    )
    .require_scopes(["api"]);
    let router = demo.mcp.http_router(
        "/mcp",
        ResourceServer::new(verifier, resource.clone(), vec![server.base.clone()]),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();

    let token = issue(&server, "alice", Some(&resource)).await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(initialize(&http, &resource, &token).await.0, 200);
    let config = StreamableHttpClientTransportConfig::with_uri(resource.clone()).auth_header(token);
    let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
    assert!(!client.list_all_tools().await.unwrap().is_empty());
    client.cancel().await.unwrap();

    // A token the same server issued for another resource, and an opaque one: refused.
    let elsewhere = issue(&server, "alice", Some("https://elsewhere.example/mcp")).await;
    let (status, challenge) = initialize(&http, &resource, &elsewhere).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("audience"), "{challenge}");
    let opaque = issue(&server, "alice", None).await;
    let (status, challenge) = initialize(&http, &resource, &opaque).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");
}
