//! Google APIs (docs/providers.md §2.5).
//!
//! Errors are `{"error":{"code","message","status","details":[{"@type":"…ErrorInfo","reason"}],
//! "errors":[{"domain","reason"}]}}` (the `errors` array is the legacy shape). Rate limits are 429
//! `RESOURCE_EXHAUSTED` or a legacy 403 with domain `usageLimits`.

use serde_json::Value;

use super::{Classification, FailureClass, Response, ScopeMode};

/// Legacy `errors[].reason` values (domain `usageLimits`) that mean "slow down".
const LEGACY_RATE_REASONS: &[&str] = &[
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "quotaExceeded",
    "dailyLimitExceeded",
    "rateLimitExceededUnreg",
    "userRateLimitExceededUnreg",
    "dailyLimitExceededUnreg",
    "servingLimitExceeded",
];
/// Legacy `usageLimits` reasons that are configuration problems, not rate limits.
const LEGACY_NON_RATE_REASONS: &[&str] = &[
    "accessNotConfigured",
    "keyInvalid",
    "keyExpired",
    "ipRefererBlocked",
];
/// `google.rpc.ErrorInfo` reasons that mean "slow down".
const RATE_REASONS: &[&str] = &["RATE_LIMIT_EXCEEDED", "RESOURCE_QUOTA_EXCEEDED"];

fn error_obj<'r>(r: &'r Response<'_>) -> Option<&'r serde_json::Map<String, Value>> {
    r.json()?.as_object()?.get("error")?.as_object()
}

/// `(reason, domain)` of every `details[]` ErrorInfo and legacy `errors[]` entry.
fn reasons<'r>(r: &'r Response<'_>) -> Vec<(&'r str, Option<&'r str>)> {
    let Some(err) = error_obj(r) else {
        return Vec::new();
    };
    ["details", "errors"]
        .iter()
        .filter_map(|k| err.get(*k)?.as_array())
        .flat_map(|a| a.iter().take(16))
        .filter_map(|d| {
            let o = d.as_object()?;
            let reason = o.get("reason")?.as_str()?;
            Some((reason, o.get("domain").and_then(|v| v.as_str())))
        })
        .collect()
}

/// The first reason of the error (for diagnostics), else its canonical `status`.
pub(super) fn reason(r: &Response<'_>) -> Option<String> {
    reasons(r)
        .first()
        .map(|(reason, _)| (*reason).to_owned())
        .or_else(|| error_obj(r)?.get("status")?.as_str().map(str::to_owned))
}

/// 429 is generic; here: `RESOURCE_EXHAUSTED`, rate-limit ErrorInfo reasons and the legacy 403
/// `usageLimits` shape.
pub(super) fn rate_limited(r: &Response<'_>) -> bool {
    if !r.is_client_error() {
        return false;
    }
    let status = error_obj(r)
        .and_then(|e| e.get("status"))
        .and_then(|v| v.as_str());
    status == Some("RESOURCE_EXHAUSTED")
        || reasons(r).iter().any(|(reason, domain)| {
            RATE_REASONS.contains(reason)
                || LEGACY_RATE_REASONS.contains(reason)
                || (*domain == Some("usageLimits") && !LEGACY_NON_RATE_REASONS.contains(reason))
        })
}

/// API rows (a)–(c') when no bearer challenge decided: 401 is expired (revocation only shows at
/// refresh); 403 is insufficient scope when the reason or message says so, else forbidden.
pub(super) fn api(r: &Response<'_>) -> Option<Classification> {
    match r.status {
        401 => Some(
            Classification::new(FailureClass::AccessTokenExpired).code_opt(reason(r).as_deref()),
        ),
        403 => {
            let message = error_obj(r)
                .and_then(|e| e.get("message"))
                .and_then(|v| v.as_str())
                .map(str::to_ascii_lowercase);
            let scope = reasons(r)
                .iter()
                .any(|(reason, _)| *reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT")
                || message.is_some_and(|m| m.contains("insufficient authentication scopes"));
            let class = if scope {
                FailureClass::InsufficientScope
            } else {
                FailureClass::Forbidden
            };
            let mut c = Classification::new(class).code_opt(reason(r).as_deref());
            if scope {
                c.scope_mode = ScopeMode::AnyOf;
            }
            Some(c)
        }
        _ => None,
    }
}
