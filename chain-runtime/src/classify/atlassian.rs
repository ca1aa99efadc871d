//! Atlassian (Jira / Confluence Cloud, OAuth 2.0 3LO; docs/providers.md §2.2).
//!
//! A missing scope is a 401 `"Unauthorized; scope does not match"` that names no scope; a dead
//! refresh token is a **403** `invalid_grant`; a bad client secret is `access_denied` (the same
//! code as a user declining consent, but at the token endpoint it can only be the client).

use std::time::SystemTime;

use super::{Classification, FailureClass, Response, standards};

const SCOPE_MISMATCH: &str = "scope does not match";

/// API rows (a)–(c'): 401 is expired unless the message says the scope does not match; 403/404
/// are Jira permissions (a 404 may hide an issue the user may not see).
pub(super) fn api(r: &Response<'_>) -> Option<Classification> {
    match r.status {
        401 => {
            let message = r.json_str("message").map(str::to_ascii_lowercase);
            let mismatch = match message {
                Some(m) => m.contains(SCOPE_MISMATCH),
                None => r.text_contains_ci(SCOPE_MISMATCH),
            };
            Some(if mismatch {
                Classification::new(FailureClass::InsufficientScope).code("scope_does_not_match")
            } else {
                Classification::new(FailureClass::AccessTokenExpired)
            })
        }
        403 | 404 => {
            let mut c = Classification::new(FailureClass::Forbidden);
            c.scope_suspected = r.status == 404;
            Some(c)
        }
        _ => None,
    }
}

/// Token rows (d), (d'): `access_denied` and `unauthorized_client` at the token endpoint mean the
/// client credentials are wrong; everything else follows RFC 6749 (`invalid_grant` → revoked,
/// whatever the status).
pub(super) fn token(r: &Response<'_>) -> Option<Classification> {
    let code = standards::oauth_error(r)?;
    let class = token_code_class(&code)?;
    Some(Classification::new(class).code(&code))
}

/// Atlassian's reading of token error codes where it differs from RFC 6749.
pub(super) fn token_code_class(code: &str) -> Option<FailureClass> {
    match code {
        "access_denied" | "unauthorized_client" | "invalid_client" => {
            Some(FailureClass::InvalidClient)
        }
        _ => None,
    }
}

/// `X-RateLimit-Reset` (ISO-8601, `yyyy-MM-ddTHH:mmZ`).
pub(super) fn reset_at(r: &Response<'_>) -> Option<SystemTime> {
    standards::iso8601(&r.header("x-ratelimit-reset")?)
}
