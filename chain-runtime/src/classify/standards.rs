//! The standards path: RFC 6749 §5.2 token errors, RFC 6750 / RFC 9470 bearer challenges,
//! `Retry-After` (RFC 9110 §10.2.3) and generic rate-limit headers.

use std::time::{Duration, SystemTime};

use super::www_authenticate;
use super::{Classification, FailureClass, Response, ScopeMode, StepUp, bounded};

/// Longest `WWW-Authenticate` value parsed (longer ones are cut).
const MAX_CHALLENGE_LEN: usize = 16 * 1024;
/// Most `WWW-Authenticate` header values looked at.
const MAX_CHALLENGE_HEADERS: usize = 16;
/// Longest body read as `application/x-www-form-urlencoded`.
const MAX_FORM_LEN: usize = 8 * 1024;

/// Generic rate-limit markers: 429, `Retry-After` on a 4xx, a zero remaining quota on a 403/429,
/// the device-flow `slow_down` error.
pub(super) fn rate_limited(r: &Response<'_>) -> bool {
    if r.status == 429 {
        return true;
    }
    if !r.is_client_error() {
        return false;
    }
    if r.headers.contains_key(http::header::RETRY_AFTER) {
        return true;
    }
    if r.status == 403 {
        let zero = |name: &str| r.header(name).is_some_and(|v| v == "0");
        if zero("x-ratelimit-remaining") || zero("ratelimit-remaining") {
            return true;
        }
    }
    oauth_error(r).as_deref() == Some("slow_down")
}

/// `Retry-After` as a delay (delta-seconds) or an instant (IMF-fixdate HTTP-date).
pub(super) fn retry_after(r: &Response<'_>) -> (Option<Duration>, Option<SystemTime>) {
    let Some(v) = r.header(http::header::RETRY_AFTER.as_str()) else {
        return (None, None);
    };
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly large values saturate; the policy caps every wait anyway.
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return (Some(Duration::from_secs(secs)), None);
    }
    (None, http_date(&v))
}

/// The RFC 6749 `error` code of a token-endpoint style body: a top-level JSON string `error`, or
/// an `error=` pair of a form-urlencoded body.
pub(super) fn oauth_error(r: &Response<'_>) -> Option<String> {
    if let Some(v) = r.json() {
        return v.as_object()?.get("error")?.as_str().map(str::to_owned);
    }
    form_field(r, "error")
}

/// A field of a form-urlencoded body (GitHub's token endpoint without `Accept: application/json`).
pub(super) fn form_field(r: &Response<'_>, key: &str) -> Option<String> {
    if r.body.len() > MAX_FORM_LEN {
        return None;
    }
    let text = r.text().trim();
    if text.is_empty() || text.contains(['<', '{', '[', '\n', ' ']) {
        return None;
    }
    url::form_urlencoded::parse(text.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// RFC 6749 §5.2 (plus OIDC, RFC 8628, RFC 8707, RFC 9396 and RFC 9470) token error codes.
///
/// Only `invalid_grant` means the grant is gone. The OIDC codes that ask for an interactive
/// login (`login_required`, `account_selection_required`, `interaction_required`) are step-ups:
/// a new authorization fixes them, but the grant is not revoked. Codes not listed here are
/// unknown (the caller treats them as transient).
pub(super) fn token_code_class(code: &str) -> Option<FailureClass> {
    Some(match code {
        "invalid_grant" => FailureClass::GrantRevoked,
        "invalid_client" | "unauthorized_client" | "unsupported_grant_type" | "invalid_request" => {
            FailureClass::InvalidClient
        }
        "invalid_scope"
        | "invalid_target"
        | "invalid_authorization_details"
        | "consent_required" => FailureClass::InsufficientScope,
        "interaction_required"
        | "login_required"
        | "account_selection_required"
        | "insufficient_user_authentication" => FailureClass::StepUpRequired,
        "slow_down" => FailureClass::RateLimited,
        "temporarily_unavailable" | "server_error" => FailureClass::ServerError,
        _ => return None,
    })
}

/// The class of a token-endpoint failure without a well-formed, known OAuth error code (an HTML
/// page from a proxy, an empty body, a code nobody documents): transient, never revocation. Only
/// the shapes that can only be the client's configuration go to the operator (never to a
/// re-consent): a 401 (RFC 6749 §5.2: the client authentication failed) and a token URL that
/// does not exist or does not take a form POST (404, 405, 406, 415).
pub(super) fn token_status_class(r: &Response<'_>) -> FailureClass {
    match r.status {
        401 | 404 | 405 | 406 | 415 => FailureClass::InvalidClient,
        _ => FailureClass::ServerError,
    }
}

/// The standards path for a token-endpoint failure.
pub(super) fn token(r: &Response<'_>) -> Classification {
    let code = oauth_error(r);
    let class = code
        .as_deref()
        .and_then(token_code_class)
        .unwrap_or_else(|| token_status_class(r));
    let mut c = Classification::new(class).code_opt(code.as_deref());
    if class == FailureClass::StepUpRequired {
        c.step_up = Some(StepUp::default());
    }
    if class == FailureClass::InsufficientScope {
        // Some servers echo the scope they would accept.
        if let Some(scope) = r.json_str("scope") {
            c = c.scopes([scope], ScopeMode::AllOf);
        }
    }
    c
}

/// The first `Bearer` (or `DPoP`) challenge with an `error` param, across every
/// `WWW-Authenticate` header.
pub(super) fn error_challenge(r: &Response<'_>) -> Option<www_authenticate::Challenge> {
    r.header_values(http::header::WWW_AUTHENTICATE.as_str())
        .take(MAX_CHALLENGE_HEADERS)
        .flat_map(|v| {
            let cut = v.floor_char_boundary(MAX_CHALLENGE_LEN);
            www_authenticate::parse(&v[..cut])
        })
        .find(|ch| (ch.is("bearer") || ch.is("dpop")) && ch.param("error").is_some())
}

/// Step 3: an RFC 6750 / RFC 9470 / Entra bearer challenge with a recognised `error`.
pub(super) fn bearer_challenge(r: &Response<'_>) -> Option<Classification> {
    let ch = error_challenge(r)?;
    let error = ch.param("error")?;
    let c = match error {
        "invalid_token" => Classification::new(FailureClass::AccessTokenExpired),
        "insufficient_scope" => Classification::new(FailureClass::InsufficientScope)
            .scopes(ch.param("scope"), ScopeMode::AllOf),
        "insufficient_user_authentication" => {
            let mut c = Classification::new(FailureClass::StepUpRequired);
            c.step_up = Some(StepUp {
                acr_values: ch.param("acr_values").and_then(bounded),
                max_age: ch
                    .param("max_age")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
                claims: None,
            });
            c
        }
        "insufficient_claims" => {
            let mut c = Classification::new(FailureClass::StepUpRequired);
            c.step_up = Some(StepUp {
                acr_values: None,
                max_age: None,
                claims: ch.param("claims").and_then(bounded),
            });
            c
        }
        _ => return None,
    };
    Some(c.code(error))
}

/// Step 5: 401 → expired (refresh once, retry once); 408/425 → transient; any other 4xx →
/// forbidden (a failure the credentials cannot fix).
pub(super) fn api_fallback(r: &Response<'_>) -> Classification {
    let class = match r.status {
        401 => FailureClass::AccessTokenExpired,
        408 | 425 => FailureClass::ServerError,
        _ => FailureClass::Forbidden,
    };
    let code = oauth_error(r)
        .or_else(|| error_challenge(r).and_then(|ch| ch.param("error").map(str::to_owned)));
    Classification::new(class).code_opt(code.as_deref())
}

// ---------------------------------------------------------------------------------------------
// Dates, without a clock: parsed to instants, turned into waits by the policy.

/// An HTTP-date in any of the three RFC 9110 §5.6.7 forms: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form and asctime.
pub(super) fn http_date(v: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(v.trim()).ok()
}

/// An ISO-8601 / RFC 3339 timestamp as Atlassian sends it (`2024-01-31T12:30Z`), with optional
/// seconds, fraction and numeric offset. Instants before 1970 are refused.
pub(super) fn iso8601(v: &str) -> Option<SystemTime> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let v = v.trim();
    let at = time::OffsetDateTime::parse(v, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(v, &Iso8601::DEFAULT))
        .ok()?;
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(epoch(784_111_777))
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(epoch(0)));
        assert_eq!(
            http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(epoch(1_835_481_599))
        );
        // The obsolete forms RFC 9110 says recipients must accept.
        assert_eq!(
            http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(epoch(784_111_777))
        );
        assert_eq!(
            http_date("Sun Nov  6 08:49:37 1994"),
            Some(epoch(784_111_777))
        );
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(http_date(""), None);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601("1994-11-06T08:49Z"), Some(epoch(784_111_740)));
        assert_eq!(
            iso8601("1994-11-06T08:49:37.123Z"),
            Some(epoch(784_111_777))
        );
        assert_eq!(
            iso8601("1994-11-06T09:49:37+01:00"),
            Some(epoch(784_111_777))
        );
        assert_eq!(
            iso8601("1994-11-06T07:49:37-0100"),
            Some(epoch(784_111_777))
        );
        assert_eq!(iso8601("1994-11-06"), None);
        assert_eq!(iso8601("ü994-11-06T08:49Z"), None);
        assert_eq!(iso8601("1994-13-06T08:49Z"), None);
    }
}
