//! Property tests of the token-response parser (`parse_token_reply`): for any status and any
//! body (random bytes, generated JSON objects with fields of every type, real shapes mutated),
//! it never panics, and
//! - a 2xx JSON object without `error` and with a non-empty string `access_token` gives tokens
//!   carrying exactly that string; anything else with a 2xx is refused as malformed;
//! - a non-2xx status is always a classified rejection, never tokens;
//! - a refusal's message never contains a token-shaped value from the body;
//! - a rejection's error code is one the code-shape rule accepts.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::vault::secret::ClientSecret;

fn provider(name: &str) -> ProviderConfig {
    ProviderConfig::new(
        name,
        "https://a.test/auth",
        "https://a.test/token",
        "id",
        ClientSecret::new("s"),
        "https://cb",
    )
    .unwrap()
}

fn reply(status: u16, body: Vec<u8>) -> HttpReply {
    HttpReply {
        status,
        headers: http::HeaderMap::new(),
        body: Zeroizing::new(body),
    }
}

/// A secret the body may carry anywhere: long enough to be recognisable in a message.
const SECRET: &str = "SeCrEt0Tok3nVa1ueXyz9QwErTy";

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(Value::String(SECRET.to_owned())),
        Just(Value::String(String::new())),
        "\\PC{0,20}".prop_map(Value::String),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "access_token",
    "refresh_token",
    "expires_in",
    "scope",
    "error",
    "ok",
    "token_type",
    "id_token",
];

fn token_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), field_value()), 0..8).prop_map(|fields| {
        let mut map = Map::new();
        for (k, v) in fields {
            map.insert(k.to_owned(), v);
        }
        Value::Object(map)
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        token_object().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        field_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        // A valid object cut short.
        (token_object(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let bytes = serde_json::to_vec(&v).unwrap();
            let at = cut.index(bytes.len() + 1);
            bytes[..at].to_vec()
        }),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(200u16),
        Just(201),
        Just(400),
        Just(401),
        Just(403),
        Just(429),
        Just(503),
        0u16..1000
    ]
}

fn provider_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(
        &[
            "acme",
            "slack",
            "github",
            "google",
            "microsoft",
            "salesforce",
        ][..],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn token_replies_parse_or_refuse_as_documented(
        status in status(),
        body in body(),
        name in provider_name(),
    ) {
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let result = parse_token_reply(&provider(name), "refresh", reply(status, body));
        let success = (200..300).contains(&status);
        match result {
            Ok(TokenOutcome::Tokens(tokens)) => {
                prop_assert!(success);
                let json = json.unwrap();
                prop_assert!(json.get("error").is_none_or(Value::is_null));
                prop_assert_eq!(
                    Some(tokens.access_token.expose()),
                    json.get("access_token").and_then(Value::as_str)
                );
                prop_assert!(!tokens.access_token.expose().is_empty());
            }
            Ok(TokenOutcome::Rejected { status: s, class, error_code }) => {
                prop_assert_eq!(s, status);
                prop_assert!(class != FailureClass::Ok);
                if let Some(code) = error_code {
                    prop_assert!(
                        code == "unrecognized_error_code"
                            || crate::classify::sanitized_code(&code) == Some(code.as_str())
                    );
                    prop_assert!(!code.contains(SECRET));
                }
            }
            Err(e) => {
                let debug = format!("{e:?}");
                prop_assert!(success, "a non-2xx status is a rejection, not {}", debug);
                prop_assert!(matches!(e, VaultError::MalformedResponse { .. }), "{}", debug);
                prop_assert!(!e.to_string().contains(SECRET));
                prop_assert!(!debug.contains(SECRET));
            }
        }
    }
}

/// Bounded work on a large body: a megabyte of nested arrays is refused without a panic (serde
/// stops at its recursion limit) and a megabyte-long token is taken as it is.
#[test]
fn large_bodies_are_parsed_in_one_pass() {
    let mut deep = "[".repeat(1 << 20);
    deep.push_str(&"]".repeat(1 << 20));
    let out = parse_token_reply(&provider("acme"), "refresh", reply(200, deep.into_bytes()));
    assert!(
        matches!(out, Err(VaultError::MalformedResponse { .. })),
        "{out:?}"
    );
    let long = "a".repeat(1 << 20);
    let body = serde_json::to_vec(&json!({ "access_token": long })).unwrap();
    match parse_token_reply(&provider("acme"), "refresh", reply(200, body)) {
        Ok(TokenOutcome::Tokens(t)) => assert_eq!(t.access_token.expose().len(), 1 << 20),
        other => panic!("{other:?}"),
    }
}
