//! GitHub (OAuth apps and GitHub Apps; docs/providers.md §2.4).
//!
//! The token endpoint answers errors with **HTTP 200**; scope failures hide behind 404 and are
//! only visible as the `X-Accepted-OAuth-Scopes` vs `X-OAuth-Scopes` diff; GitHub App permission
//! failures name their alternatives in `X-Accepted-GitHub-Permissions`; rate limits are 403 or 429.

use std::time::{Duration, SystemTime};

use super::{
    Classification, FailureClass, Response, ScopeMode, push_scope, split_scopes, standards,
};

/// Token endpoint 2xx bodies: an `error` (JSON or form-urlencoded) is a failure, anything else is
/// [`FailureClass::Ok`]. Non-2xx responses take the common path.
pub(super) fn token_envelope(r: &Response<'_>) -> Option<Classification> {
    if !r.is_success() {
        return None;
    }
    Some(match standards::oauth_error(r) {
        Some(code) => Classification::new(token_class(&code)).code(&code),
        None => Classification::new(FailureClass::Ok),
    })
}

/// Token endpoint failures with a non-2xx status.
pub(super) fn token(r: &Response<'_>) -> Option<Classification> {
    let code = standards::oauth_error(r)?;
    Some(Classification::new(token_class(&code)).code(&code))
}

/// A GitHub token error code; unknown codes are transient.
fn token_class(code: &str) -> FailureClass {
    token_code_class(code)
        .or_else(|| standards::token_code_class(code))
        .unwrap_or(FailureClass::ServerError)
}

/// GitHub's documented token error codes.
pub(super) fn token_code_class(code: &str) -> Option<FailureClass> {
    Some(match code {
        "bad_refresh_token"
        | "bad_verification_code"
        | "unverified_user_email"
        | "expired_token"
        | "access_denied"
        | "invalid_grant" => FailureClass::GrantRevoked,
        "incorrect_client_credentials"
        | "redirect_uri_mismatch"
        | "unsupported_grant_type"
        | "invalid_client"
        | "unauthorized_client"
        | "incorrect_device_code" => FailureClass::InvalidClient,
        "slow_down" => FailureClass::RateLimited,
        _ => return None,
    })
}

/// 403/429 with `x-ratelimit-remaining: 0` (generic) or a primary/secondary rate-limit message.
pub(super) fn rate_limited(r: &Response<'_>) -> bool {
    if !matches!(r.status, 403 | 429) {
        return false;
    }
    let message = r.json_str("message").map(str::to_ascii_lowercase);
    match message {
        Some(m) => m.contains("rate limit"),
        None => r.text_contains_ci("rate limit"),
    }
}

/// `x-ratelimit-reset` (UTC epoch seconds), only when the quota is exhausted (the header is on
/// every response).
pub(super) fn reset_at(r: &Response<'_>) -> Option<SystemTime> {
    if r.header("x-ratelimit-remaining")? != "0" {
        return None;
    }
    let secs: u64 = r.header("x-ratelimit-reset")?.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// API rows (c): the OAuth-app scope diff on 404/403 and the GitHub App permission header on a
/// 403 "Resource not accessible by integration". Everything else takes the fallback (401 →
/// expired, 403/404 → forbidden).
pub(super) fn api(r: &Response<'_>) -> Option<Classification> {
    if !matches!(r.status, 403 | 404) {
        return None;
    }
    if r.status == 403 {
        let message = r.json_str("message").map(str::to_ascii_lowercase);
        let by_integration = match message {
            Some(m) => m.contains("not accessible by integration"),
            None => r.text_contains_ci("not accessible by integration"),
        };
        if by_integration {
            let sets = permission_sets(r);
            let mut c = Classification::new(FailureClass::InsufficientScope)
                .code("resource_not_accessible_by_integration");
            c.needed_scopes = sets;
            c.scope_mode = ScopeMode::GitHubAppPermissions;
            return Some(c);
        }
    }
    let accepted_raw: Vec<_> = r.header_values("x-accepted-oauth-scopes").collect();
    if accepted_raw.is_empty() {
        return None;
    }
    let accepted = split_scopes(accepted_raw.iter().map(|s| s.as_ref()));
    if accepted.is_empty() {
        // The route needs no scope: a real 404/403.
        return None;
    }
    let granted_raw: Vec<_> = r.header_values("x-oauth-scopes").collect();
    let granted = split_scopes(granted_raw.iter().map(|s| s.as_ref()));
    let overlap = accepted
        .iter()
        .any(|a| granted.iter().any(|g| covers(g, a)));
    if overlap {
        return None;
    }
    Some(
        Classification::new(FailureClass::InsufficientScope)
            .code("oauth_scope_missing")
            .scopes(accepted.iter().map(String::as_str), ScopeMode::AnyOf),
    )
}

/// `X-Accepted-GitHub-Permissions: issues=write; contents=read,pull_requests=write`: `;` separates
/// alternative sets, `,` the permissions of one set. Each set becomes one entry `a=x,b=y`.
fn permission_sets(r: &Response<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for value in r.header_values("x-accepted-github-permissions") {
        for set in value.split(';') {
            let perms = split_scopes([set]);
            if !perms.is_empty() {
                push_scope(&mut out, &perms.join(","));
            }
        }
    }
    out
}

/// Whether granted OAuth-app scope `granted` includes `accepted` (docs: "scopes for OAuth apps";
/// parent scopes include their `parent:child` scopes, `admin:` ⊇ `write:` ⊇ `read:`).
fn covers(granted: &str, accepted: &str) -> bool {
    if granted == accepted {
        return true;
    }
    let implied: &[&str] = match granted {
        "repo" => &[
            "repo:status",
            "repo_deployment",
            "public_repo",
            "repo:invite",
            "security_events",
        ],
        "user" => &["read:user", "user:email", "user:follow"],
        "admin:org" => &["write:org", "read:org", "manage_runners:org"],
        "write:org" => &["read:org"],
        "admin:public_key" => &["write:public_key", "read:public_key"],
        "write:public_key" => &["read:public_key"],
        "admin:repo_hook" => &["write:repo_hook", "read:repo_hook"],
        "write:repo_hook" => &["read:repo_hook"],
        "admin:gpg_key" => &["write:gpg_key", "read:gpg_key"],
        "write:gpg_key" => &["read:gpg_key"],
        "write:packages" => &["read:packages"],
        "project" => &["read:project"],
        "admin:enterprise" => &[
            "manage_runners:enterprise",
            "manage_billing:enterprise",
            "read:enterprise",
        ],
        "codespace" => &["codespace:secrets"],
        _ => &[],
    };
    implied.contains(&accepted)
}
