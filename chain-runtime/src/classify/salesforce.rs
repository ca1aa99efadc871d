//! Salesforce (docs/providers.md §2.1).
//!
//! API errors are a JSON **array** of `{"message", "errorCode"}`; a missing `api` scope is a 401
//! `INVALID_SESSION_ID` recognised by its message; rate limits are 403 `REQUEST_LIMIT_EXCEEDED`
//! without `Retry-After`.

use super::{Classification, FailureClass, Response, ScopeMode, standards};

/// The message Salesforce sends when the token lacks the `api` scope.
const NOT_VALID_FOR_REST: &str = "not valid for use with the rest api";

/// `errorCode`/`message` pairs of the body (array or single object).
fn errors<'r>(r: &'r Response<'_>) -> Vec<(Option<&'r str>, Option<&'r str>)> {
    let Some(json) = r.json() else {
        return Vec::new();
    };
    let items: Vec<&serde_json::Value> = match json {
        serde_json::Value::Array(a) => a.iter().take(16).collect(),
        v @ serde_json::Value::Object(_) => vec![v],
        _ => return Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|v| v.as_object())
        .map(|o| {
            (
                o.get("errorCode").and_then(|v| v.as_str()),
                o.get("message").and_then(|v| v.as_str()),
            )
        })
        .collect()
}

/// The first `errorCode` of the body.
pub(super) fn error_code(r: &Response<'_>) -> Option<String> {
    errors(r)
        .into_iter()
        .find_map(|(code, _)| code)
        .map(str::to_owned)
}

/// `REQUEST_LIMIT_EXCEEDED` (daily `TotalRequests` or `ConcurrentRequests`), in JSON or XML.
pub(super) fn rate_limited(r: &Response<'_>) -> bool {
    r.is_client_error() && r.text_contains("REQUEST_LIMIT_EXCEEDED")
}

/// API rows (a)–(c'): 401 is expired unless the message says the token lacks `api`; 403 is a
/// record/object permission.
pub(super) fn api(r: &Response<'_>) -> Option<Classification> {
    match r.status {
        401 => {
            let errs = errors(r);
            let code = errs.iter().find_map(|(c, _)| *c);
            let lacks_api = errs.iter().any(|(_, m)| {
                m.is_some_and(|m| m.to_ascii_lowercase().contains(NOT_VALID_FOR_REST))
            }) || (errs.is_empty() && r.text_contains_ci(NOT_VALID_FOR_REST));
            Some(if lacks_api {
                Classification::new(FailureClass::InsufficientScope)
                    .scopes(["api"], ScopeMode::AllOf)
                    .code_opt(code)
            } else {
                Classification::new(FailureClass::AccessTokenExpired).code_opt(code)
            })
        }
        403 => {
            Some(Classification::new(FailureClass::Forbidden).code_opt(error_code(r).as_deref()))
        }
        _ => None,
    }
}

/// Token rows (d), (d'): `invalid_grant` (expired/revoked RT, `authentication failure`) is
/// revoked; `invalid_client`, `invalid_client_id` and friends are the operator's problem.
pub(super) fn token(r: &Response<'_>) -> Option<Classification> {
    let code = standards::oauth_error(r)?;
    let class = token_code_class(&code)?;
    Some(Classification::new(class).code(&code))
}

/// Salesforce's own token error codes (the rest follow RFC 6749).
pub(super) fn token_code_class(code: &str) -> Option<FailureClass> {
    Some(match code {
        "invalid_client_id"
        | "invalid_client_credentials"
        | "invalid_app_access"
        | "redirect_uri_mismatch" => FailureClass::InvalidClient,
        "inactive_user" | "inactive_org" => FailureClass::GrantRevoked,
        _ => return None,
    })
}
