//! Property tests: `classify` never panics and keeps its documented invariants for arbitrary
//! provider names, kinds, statuses 0..=999, headers and bodies (random bytes, generated JSON,
//! truncated and mutated real bodies, multi-megabyte bodies).

use std::sync::OnceLock;

use chain_runtime::classify::{Classification, FailureClass, RequestKind, classify};
use chain_runtime::policy::{Action, AttemptState, RetryPolicy};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::Value;

const PROVIDERS: &[&str] = &[
    "salesforce",
    "atlassian",
    "jira",
    "slack",
    "github",
    "google",
    "microsoft",
    "SALESFORCE",
    "Jira",
    "GitHub",
    "Slack",
    "GOOGLE",
    "MicroSoft",
    "okta",
    "",
    "mcp-server",
];

const REAL_BODIES: &[&str] = &[
    r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#,
    r#"[{"errorCode":"INVALID_SESSION_ID","message":"This session is not valid for use with the REST API"}]"#,
    r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
    r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
    r#"{"code":401,"message":"Unauthorized; scope does not match"}"#,
    r#"{"errorMessages":["You do not have permission…"],"errors":{}}"#,
    r#"{"error":"access_denied","error_description":"Unauthorized"}"#,
    r#"{"ok":false,"error":"missing_scope","needed":"users:read.email, chat:write:bot","provided":"channels:join"}"#,
    r#"{"ok":false,"error":"token_revoked"}"#,
    r#"{"ok":false,"error":"ratelimited"}"#,
    r#"{"ok":true,"access_token":"xoxe.xoxb-1","refresh_token":"xoxe-1-x","expires_in":43200,"scope":"a,b"}"#,
    r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#,
    r#"{"message":"Resource not accessible by integration"}"#,
    r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#,
    "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect%2",
    r#"{"message":"API rate limit exceeded for user ID 1."}"#,
    r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"ACCESS_TOKEN_EXPIRED","domain":"googleapis.com"}]}}"#,
    r#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","status":"PERMISSION_DENIED","details":[{"reason":"ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}}"#,
    r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded"}],"code":403}}"#,
    r#"{"error":{"code":"InvalidAuthenticationToken","message":"Lifetime validation failed, the token is expired."}}"#,
    r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#,
    r#"{"error":"invalid_grant","error_description":"AADSTS65001: consent","error_codes":[65001],"suberror":"consent_required"}"#,
    r#"{"error":"interaction_required","error_codes":["50076"],"claims":"{\"access_token\":{}}"}"#,
    r#"{"error":{"code":"TooManyRequests","message":"Too many requests"}}"#,
];

const HEADER_NAMES: &[&str] = &[
    "retry-after",
    "www-authenticate",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-remaining",
    "x-oauth-scopes",
    "x-accepted-oauth-scopes",
    "x-accepted-github-permissions",
    "sforce-limit-info",
    "content-type",
];

const HEADER_VALUES: &[&str] = &[
    "0",
    "1",
    "30",
    "99999999999999999999999999",
    "Wed, 31 Jan 2024 12:30:00 GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "2024-01-31T12:30Z",
    "1706704200",
    r#"Bearer realm="x", error="invalid_token""#,
    r#"Bearer error="insufficient_scope", scope="a b  c""#,
    r#"Bearer error="insufficient_scope", scope=" ""#,
    r#"Bearer error="insufficient_user_authentication", acr_values="urn:x", max_age="abc""#,
    r#"Bearer error="insufficient_claims", claims="eyJ9""#,
    r#"Bearer error="insufficient_scope", scope="unterminated"#,
    r#"Basic abc==, DPoP error="invalid_token""#,
    "repo, user",
    "issues=write; pull_requests=write",
    " , ;; , ",
    "application/json",
];

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(HEADER_VALUES).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..80)
            .prop_map(|v| v.into_iter().filter(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f)).collect()),
        1 => "[ -~]{0,60}".prop_map(String::into_bytes),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(HEADER_NAMES).prop_map(str::to_owned),
        1 => "[a-z0-9-]{1,20}",
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..8).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(&v),
            ) else {
                continue;
            };
            h.append(k, v);
        }
        h
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "ok",
        "error",
        "needed",
        "provided",
        "error_codes",
        "error_description",
        "suberror",
        "claims",
        "message",
        "errorCode",
        "code",
        "details",
        "errors",
        "reason",
        "domain",
        "status",
        "scope",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(
            &[
                "token_expired",
                "missing_scope",
                "invalid_grant",
                "invalid_client",
                "bad_refresh_token",
                "ACCESS_TOKEN_EXPIRED",
                "usageLimits",
                "rateLimitExceeded",
                "InvalidAuthenticationToken",
                "Authorization_RequestDenied",
                "consent_required",
                " a , b ",
                "",
                "REQUEST_LIMIT_EXCEEDED",
                "scope does not match",
                "AADSTS50076: x",
                "TooManyRequests",
                "RESOURCE_EXHAUSTED",
            ][..]
        )
        .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn big_body() -> &'static [u8] {
    static BIG: OnceLock<Vec<u8>> = OnceLock::new();
    BIG.get_or_init(|| {
        let mut b = br#"{"ok":false,"error":"missing_scope","needed":""#.to_vec();
        b.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
        b.extend(br#""}"#);
        b
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..512),
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        4 => (prop::sample::select(REAL_BODIES), any::<prop::sample::Index>())
            .prop_map(|(b, i)| b.as_bytes()[..i.index(b.len() + 1)].to_vec()),
        3 => (prop::sample::select(REAL_BODIES), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(b, i, x)| {
            let mut v = b.as_bytes().to_vec();
            let at = i.index(v.len());
            v[at] = x;
            v
        }),
        2 => (prop::sample::select(REAL_BODIES), 1usize..4).prop_map(|(b, n)| {
            // The wrong shape: the real body wrapped in arrays or as a string.
            let mut s = b.to_owned();
            for _ in 0..n {
                s = format!("[{s}]");
            }
            s.into_bytes()
        }),
        1 => Just(big_body().to_vec()),
    ]
}

fn kind() -> impl Strategy<Value = RequestKind> {
    prop_oneof![Just(RequestKind::Api), Just(RequestKind::TokenRefresh)]
}

fn provider() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(PROVIDERS).prop_map(str::to_owned), 1 => ".{0,16}"]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => 0u16..=999,
        2 => prop::sample::select(&[200u16, 201, 204, 302, 304, 400, 401, 403, 404, 408, 429, 500, 503][..]),
    ]
}

fn check_invariants(
    provider: &str,
    kind: RequestKind,
    status: u16,
    c: &Classification,
) -> Result<(), TestCaseError> {
    let p = provider.trim().to_ascii_lowercase();
    let envelope_provider = p == "slack" || (p == "github" && kind == RequestKind::TokenRefresh);
    if (200..300).contains(&status) && !envelope_provider {
        prop_assert_eq!(c.class, FailureClass::Ok);
    }
    if status == 429 {
        prop_assert_eq!(c.class, FailureClass::RateLimited);
    }
    if !(200..500).contains(&status) {
        prop_assert!(
            matches!(
                c.class,
                FailureClass::ServerError | FailureClass::RateLimited
            ),
            "{c:?}"
        );
    }
    if kind == RequestKind::TokenRefresh {
        prop_assert_ne!(c.class, FailureClass::AccessTokenExpired);
    }
    for s in &c.needed_scopes {
        prop_assert!(!s.is_empty(), "empty scope in {c:?}");
        prop_assert!(
            !s.chars().any(|ch| ch.is_whitespace() || ch.is_control()),
            "bad scope {s:?}"
        );
    }
    let mut dedup = c.needed_scopes.clone();
    dedup.sort();
    dedup.dedup();
    prop_assert_eq!(dedup.len(), c.needed_scopes.len());
    if !matches!(
        c.class,
        FailureClass::RateLimited | FailureClass::ServerError
    ) {
        prop_assert!(c.retry_after.is_none() && c.retry_at.is_none(), "{c:?}");
    }
    prop_assert_eq!(c.step_up.is_some(), c.class == FailureClass::StepUpRequired);
    if let Some(code) = &c.error_code {
        prop_assert!(!code.is_empty() && code.chars().count() <= 128);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn classify_never_panics_and_keeps_invariants(
        provider in provider(),
        kind in kind(),
        status in status(),
        headers in headers(),
        body in body(),
    ) {
        let c = classify(&provider, kind, status, &headers, &body);
        check_invariants(&provider, kind, status, &c)?;
        // Pure: same input, same output; provider names are case-insensitive.
        prop_assert_eq!(&classify(&provider, kind, status, &headers, &body), &c);
        prop_assert_eq!(&classify(&provider.to_ascii_uppercase(), kind, status, &headers, &body), &c);
        // The policy accepts every classification and keeps its waits bounded.
        let policy = RetryPolicy::default();
        for state in [AttemptState::default(), AttemptState { refreshed_after_expiry: true, rate_limit_retries: 2, server_retries: 1, ..AttemptState::default() }] {
            match policy.decide(&provider, &c, &state).action {
                Action::Backoff { wait } | Action::RetrySameKey { wait } => prop_assert!(wait <= policy.max_backoff),
                Action::RefreshThenRetry => prop_assert!(!state.refreshed_after_expiry),
                _ => {}
            }
        }
    }

    #[test]
    fn www_authenticate_parser_never_panics(s in ".{0,200}") {
        let _ = chain_runtime::classify::www_authenticate::parse(&s);
    }
}

#[test]
fn multi_megabyte_and_pathological_bodies() {
    let deep = vec![b'['; 2 * 1024 * 1024];
    let mut big_array = b"[".to_vec();
    for i in 0..200_000 {
        big_array.extend(format!(r#"{{"errorCode":"X{i}","message":"m"}},"#).as_bytes());
    }
    big_array.extend(br#"{"errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#);
    let junk: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut h = HeaderMap::new();
    h.insert(
        "www-authenticate",
        HeaderValue::from_str(&format!("Bearer {}", "a=\"b\", ".repeat(5000))).unwrap(),
    );
    let bodies: [&[u8]; 4] = [&deep, &big_array, &junk, big_body()];
    for provider in PROVIDERS {
        for kind in [RequestKind::Api, RequestKind::TokenRefresh] {
            for status in [0, 200, 401, 403, 404, 429, 503] {
                for body in bodies {
                    for headers in [&HeaderMap::new(), &h] {
                        let c = classify(provider, kind, status, headers, body);
                        check_invariants(provider, kind, status, &c).unwrap();
                    }
                }
            }
        }
    }
    // A Slack error body too large to parse is still recognised as a failure by its prefix.
    let c = classify(
        "slack",
        RequestKind::Api,
        200,
        &HeaderMap::new(),
        big_body(),
    );
    assert_ne!(c.class, FailureClass::Ok);
}
