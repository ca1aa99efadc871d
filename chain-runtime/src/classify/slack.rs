//! Slack Web API (docs/providers.md §2.3): nearly every error is HTTP 200 + `"ok":false`.

use super::{Classification, FailureClass, RequestKind, Response, ScopeMode};

/// Classifies a Slack `{"ok":false,"error":…}` envelope (any status), or a 2xx without one as
/// [`FailureClass::Ok`]. Returns `None` (standard path) for a 429, a 5xx, or a 4xx without an
/// envelope.
pub(super) fn envelope(r: &Response<'_>) -> Option<Classification> {
    if !(r.is_success() || (r.is_client_error() && r.status != 429)) {
        // 429 and 5xx: the status is authoritative (rate limit, server error).
        return None;
    }
    let obj = r.json().and_then(|v| v.as_object());
    let failed = match obj {
        Some(o) => o.get("ok").and_then(|v| v.as_bool()) == Some(false),
        // Too large (or not JSON): look for the envelope marker in the scanned prefix only.
        None => r.text_contains("\"ok\":false") || r.text_contains("\"ok\": false"),
    };
    if !failed {
        return r
            .is_success()
            .then(|| Classification::new(FailureClass::Ok));
    }
    let error = obj.and_then(|o| o.get("error")).and_then(|v| v.as_str());
    let class = match error {
        Some(e) => error_class(e, r.kind),
        None if r.is_success() => fallback(r.kind),
        // A non-2xx `ok:false` without an error code: let the status decide.
        None => return None,
    };
    let mut c = Classification::new(class).code_opt(error);
    if class == FailureClass::InsufficientScope {
        let needed = obj.and_then(|o| o.get("needed")).and_then(|v| v.as_str());
        c = match needed {
            Some(needed) => c.scopes([needed], ScopeMode::AllOf),
            None => {
                let accepted: Vec<_> = r.header_values("x-accepted-oauth-scopes").collect();
                c.scopes(accepted.iter().map(|s| s.as_ref()), ScopeMode::AllOf)
            }
        };
    }
    Some(c)
}

/// An undocumented Slack error: a domain refusal on the API, transient at the token endpoint
/// (only the documented codes below mean the grant is gone).
fn fallback(kind: RequestKind) -> FailureClass {
    match kind {
        RequestKind::Api => FailureClass::Forbidden,
        RequestKind::TokenRefresh => FailureClass::ServerError,
    }
}

/// Slack error codes (rows (a)–(f) plus the documented operational errors).
pub(super) fn error_class(error: &str, kind: RequestKind) -> FailureClass {
    match error {
        "token_expired" => FailureClass::AccessTokenExpired,
        "token_revoked"
        | "invalid_auth"
        | "account_inactive"
        | "not_authed"
        | "invalid_refresh_token"
        | "invalid_grant_type"
        | "invalid_code"
        | "code_already_used"
        | "app_uninstalled"
        | "team_access_not_granted"
        | "ekm_access_denied"
        | "org_login_required" => FailureClass::GrantRevoked,
        "missing_scope" => FailureClass::InsufficientScope,
        "bad_client_secret"
        | "invalid_client_id"
        | "invalid_client"
        | "bad_redirect_uri"
        | "invalid_team_for_non_distributed_app"
        | "oauth_authorization_url_mismatch" => FailureClass::InvalidClient,
        "ratelimited" | "rate_limited" => FailureClass::RateLimited,
        "fatal_error" | "internal_error" | "service_unavailable" | "request_timeout" => {
            FailureClass::ServerError
        }
        // not_in_channel, channel_not_found, restricted_action, no_permission, is_archived, …
        _ => fallback(kind),
    }
}
