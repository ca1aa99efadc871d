//! Helpers shared by the sandbox tests: a non-redirecting HTTP client and the PKCE dance.
#![allow(dead_code)]

use chain_runtime::sandbox::{Urls, pkce_challenge};
use reqwest::{Client, Response};
use serde_json::Value;

pub const VERIFIER: &str = "sandbox-test-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";
pub const REDIRECT: &str = "http://127.0.0.1:9/callback";
pub const SECRET: &str = "sandbox-secret";
pub const CLIENT: &str = "sandbox-client";

pub use test_support::tls::client_without_redirects as client;

/// GET the authorize endpoint with PKCE S256 for `VERIFIER`; returns the raw response.
pub async fn authorize_raw(c: &Client, urls: &Urls, query: &[(&str, &str)]) -> Response {
    c.get(&urls.authorize).query(query).send().await.unwrap()
}

/// Parameters of a 302's Location.
pub fn location_params(resp: &Response) -> Vec<(String, String)> {
    assert_eq!(resp.status(), 302, "authorize must redirect");
    let loc = resp.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with(REDIRECT),
        "redirects to the client's redirect_uri: {loc}"
    );
    url::Url::parse(loc)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The full PKCE authorize step over HTTP; returns the code.
pub async fn authorize(c: &Client, urls: &Urls, scope: &str) -> String {
    let challenge = pkce_challenge(VERIFIER);
    let resp = authorize_raw(
        c,
        urls,
        &[
            ("response_type", "code"),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
            ("state", "st-1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let params = location_params(&resp);
    assert_eq!(param(&params, "state"), Some("st-1"));
    assert_eq!(param(&params, "error"), None, "consent refused: {params:?}");
    param(&params, "code").unwrap().to_owned()
}

/// Form POST to the token endpoint with client credentials in the body.
pub async fn token_form(c: &Client, urls: &Urls, form: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("client_id", CLIENT), ("client_secret", SECRET)];
    all.extend_from_slice(form);
    let resp = c.post(&urls.token).form(&all).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

pub async fn exchange(c: &Client, urls: &Urls, code: &str, verifier: &str) -> (u16, Value) {
    token_form(
        c,
        urls,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

pub async fn refresh(c: &Client, urls: &Urls, rt: &str) -> (u16, Value) {
    token_form(
        c,
        urls,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await
}

pub fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
        .to_owned()
}
