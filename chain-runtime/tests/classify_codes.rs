//! Which provider error codes a classification keeps: codes end up in step errors, the run
//! journal and the audit trail, so anything that is not shaped like a code is dropped.

use chain_runtime::classify::{RequestKind, classify, sanitized_code};
use http::HeaderMap;

#[test]
fn real_codes_are_kept() {
    for code in [
        "invalid_grant",
        "insufficient_scope",
        "MISSING_SCOPES",
        "INVALID_SESSION_ID",
        "Authorization_RequestDenied",
        "rateLimitExceeded",
        "AADSTS50076",
        "AADSTS700082",
        "not_authed",
        "ratelimited",
        "REQUEST_LIMIT_EXCEEDED",
        "urn:ietf:params:oauth:error:slow_down",
        "403",
    ] {
        assert_eq!(sanitized_code(code), Some(code), "{code} was dropped");
    }
}

#[test]
fn free_text_and_credentials_are_dropped() {
    for text in [
        "",
        "the token abc is not valid",
        "invalid grant",
        "<html>",
        "{\"a\":1}",
        "ya29.a0AfH6SMBx3kq9Lq2xZ7_nT4pQ8wY0vR1sE5uI6oP3aS",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
        "00D5e000000ABCD!AQ4AQFv3rGfXqT8kM9pLzN2wY7eB",
        "0123456789abcdef0123456789abcdef",
        "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7bC9",
        "3f2a",
    ] {
        assert_eq!(sanitized_code(text), None, "{text:?} was kept");
    }
    assert_eq!(sanitized_code(&"a".repeat(200)), None);
}

#[test]
fn a_classification_never_carries_an_echoed_token_as_its_code() {
    let token = "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7bC9";
    let body = format!(r#"{{"error":"{token}","error_description":"{token}"}}"#);
    for kind in [RequestKind::Api, RequestKind::TokenRefresh] {
        for status in [400, 401, 403, 429] {
            let c = classify("example", kind, status, &HeaderMap::new(), body.as_bytes());
            assert_eq!(c.error_code, None, "{kind:?} {status}: {c:?}");
            assert!(!format!("{c:?}").contains(token));
        }
    }
}

/// The single token-error table: only `invalid_grant` and documented equivalents are
/// revocation; unknown codes are transient.
#[test]
fn token_error_codes_by_provider() {
    use chain_runtime::classify::{FailureClass::*, token_error_class};
    for (provider, code, class) in [
        ("example-idp", "invalid_grant", GrantRevoked),
        ("example-idp", "invalid_client", InvalidClient),
        ("example-idp", "unauthorized_client", InvalidClient),
        ("example-idp", "invalid_scope", InsufficientScope),
        ("example-idp", "interaction_required", StepUpRequired),
        ("example-idp", "slow_down", RateLimited),
        ("example-idp", "temporarily_unavailable", ServerError),
        ("example-idp", "something_new", ServerError),
        ("example-idp", "access_denied", ServerError),
        ("example-idp", "", ServerError),
        ("slack", "token_revoked", GrantRevoked),
        ("slack", "invalid_refresh_token", GrantRevoked),
        ("slack", "token_expired", GrantRevoked),
        ("slack", "bad_client_secret", InvalidClient),
        ("slack", "ratelimited", RateLimited),
        ("slack", "channel_not_found", ServerError),
        ("github", "bad_refresh_token", GrantRevoked),
        ("github", "incorrect_client_credentials", InvalidClient),
        ("salesforce", "inactive_user", GrantRevoked),
        ("salesforce", "invalid_client_id", InvalidClient),
        ("jira", "access_denied", InvalidClient),
        ("microsoft", "invalid_grant", GrantRevoked),
    ] {
        assert_eq!(
            token_error_class(provider, code),
            class,
            "{provider} {code}"
        );
    }
}
