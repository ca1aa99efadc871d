//! Property tests of the consent callback parser: for any text (arbitrary strings, URLs with
//! arbitrary query pairs, encodings and repeats) it never panics, finishes in work linear in
//! the input, and
//! - accepts exactly the absolute URLs whose query has a `state` and a `code` or an `error`;
//! - returns the first `state`, and `error` whenever one is present (even beside a `code`);
//! - never quotes the URL, the state or the code in a refusal.

use proptest::prelude::*;

use super::{Callback, parse_redirect};
use crate::vault::VaultError;

/// Query values: printable text, percent signs, separators and non-ASCII.
fn value() -> impl Strategy<Value = String> {
    prop::string::string_regex("[A-Za-z0-9%&=+#?/ ._~\\-é€]{0,40}").unwrap()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("state".to_owned()),
        Just("code".to_owned()),
        Just("error".to_owned()),
        Just("error_description".to_owned()),
        Just("STATE".to_owned()),
        prop::string::string_regex("[a-z_]{0,8}").unwrap(),
    ]
}

fn redirect() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    (
        prop_oneof![
            Just("https://app.example/callback".to_owned()),
            Just("http://127.0.0.1:8080/oauth/cb#frag".to_owned()),
            Just("/relative/callback".to_owned()),
            Just("".to_owned()),
        ],
        prop::collection::vec((key(), value()), 0..8),
    )
}

fn url_of(base: &str, pairs: &[(String, String)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        query.append_pair(k, v);
    }
    let query = query.finish();
    match base.split_once('#') {
        Some((path, frag)) => format!("{path}?{query}#{frag}"),
        None => format!("{base}?{query}"),
    }
}

fn refusal_reason(e: &VaultError) -> String {
    match e {
        VaultError::MalformedCallback { reason } => reason.clone(),
        other => panic!("a parse failure is MalformedCallback, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_parsed_or_refused_without_panic(text in "\\PC{0,200}") {
        if let Err(e) = parse_redirect(&text) {
            let reason = refusal_reason(&e);
            prop_assert!(text.len() < 4 || !reason.contains(&text));
        }
    }

    #[test]
    fn the_query_decides((base, pairs) in redirect()) {
        let url = url_of(&base, &pairs);
        let first = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let absolute = base.starts_with("http");
        match parse_redirect(&url) {
            Ok((state, outcome)) => {
                prop_assert!(absolute);
                prop_assert_eq!(Some(state.to_string()), first("state"));
                match outcome {
                    Callback::Error(error) => prop_assert_eq!(Some(error.to_string()), first("error")),
                    Callback::Code(code) => {
                        prop_assert!(first("error").is_none());
                        prop_assert_eq!(Some(code.to_string()), first("code"));
                    }
                }
            }
            Err(e) => {
                let reason = refusal_reason(&e);
                prop_assert!(
                    !absolute
                        || first("state").is_none()
                        || (first("code").is_none() && first("error").is_none())
                );
                for secret in [first("state"), first("code")].into_iter().flatten() {
                    prop_assert!(secret.len() < 4 || !reason.contains(&secret));
                }
            }
        }
    }
}

/// Linear work: a megabyte of query pairs parses in one pass (a quadratic parser would take
/// minutes here; the test has no clock, it simply finishes).
#[test]
fn a_megabyte_of_query_pairs_is_one_pass() {
    let mut url = String::from("https://app.example/cb?");
    while url.len() < 1 << 20 {
        url.push_str("x=%25a&");
    }
    url.push_str("state=s&code=c");
    let (state, outcome) = parse_redirect(&url).unwrap();
    assert_eq!(state.as_str(), "s");
    assert!(matches!(outcome, Callback::Code(c) if c.as_str() == "c"));
}
