//! The OAuth client an emulator accepts, its refresh-token rotation rule, and the random
//! ids, tokens and PKCE challenges the emulators mint.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// The OAuth client (connected app) an emulator accepts.
#[derive(Clone)]
pub struct ClientConfig {
    /// The `client_id` (Salesforce "consumer key").
    pub client_id: String,
    /// The `client_secret`; a token request with another secret is rejected with the
    /// provider's invalid-client shape.
    pub client_secret: SecretString,
    /// Registered redirect URIs. Empty means "accept any redirect URI" (tests bind
    /// their callback servers on ephemeral ports); the token request must still repeat
    /// the exact URI the authorize request used.
    pub redirect_uris: Vec<String>,
}

impl ClientConfig {
    /// A client with this id and secret, accepting any redirect URI.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: SecretString::from(client_secret.into()),
            redirect_uris: Vec::new(),
        }
    }

    /// Registers a redirect URI; once one is registered, others are refused.
    pub fn with_redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_uris", &self.redirect_uris)
            .finish()
    }
}

/// What a refresh does to the refresh token it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The refresh token is reused; refresh responses carry no new one (Salesforce default).
    Never,
    /// Every refresh returns a new refresh token and the used one dies at once
    /// (Slack; Salesforce with rotation enabled).
    Immediate,
    /// Every refresh returns a new refresh token, and the used one *and every access token
    /// of the grant* die at once (GitHub App user-to-server tokens).
    ImmediateWithAccess,
    /// Every refresh returns a new refresh token; the used one stays usable for this
    /// leeway after its first use, then dies (Atlassian: 10 minutes).
    WithLeeway(Duration),
}

/// Computes the PKCE S256 `code_challenge` of a `code_verifier`
/// (`BASE64URL-NOPAD(SHA256(verifier))`, RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh random URL-safe string of `bytes` random bytes.
pub fn random_string(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A random UUID-shaped string (`8-4-4-4-12` lower-case hex).
pub fn random_uuid() -> String {
    let mut buf = [0u8; 16];
    rand::fill(&mut buf[..]);
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Random alphanumeric upper-case characters (ids like Slack's `T0123ABCD`).
pub fn random_upper(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789";
    let mut buf = vec![0u8; len];
    rand::fill(&mut buf[..]);
    buf.iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Splits a scope parameter on spaces and commas (Slack uses commas, the rest spaces).
pub fn split_scopes(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split([' ', ',', '+']).filter(|p| !p.is_empty()) {
        if !out.iter().any(|o| o == part) {
            out.push(part.to_owned());
        }
    }
    out
}

/// A JWT with these claims and a random (unverifiable) signature, as an id_token the client
/// reads without checking the signature (OIDC Core 3.1.3.7 allows that for a token received
/// directly from the token endpoint over TLS).
pub fn sandbox_jwt(claims: &serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"alg":"RS256","kid":"sandbox","typ":"JWT"}"#);
    let payload = b64(claims.to_string().as_bytes());
    format!("{header}.{payload}.{}", random_string(32))
}

/// A random decimal number of `digits` digits (no leading zero), like Google's `sub`.
pub fn random_digits(digits: usize) -> String {
    let mut buf = vec![0u8; digits];
    rand::fill(&mut buf[..]);
    buf.iter()
        .enumerate()
        .map(|(i, b)| {
            let d = if i == 0 { 1 + b % 9 } else { b % 10 };
            char::from(b'0' + d)
        })
        .collect()
}
