//! Microsoft Graph / Entra ID v2 (docs/providers.md §2.6).
//!
//! Token errors are branched on the numeric `error_codes` (`AADSTS…`), never on the text of
//! `error_description` (Microsoft changes it). Graph errors are `{"error":{"code","message"}}`.

use serde_json::Value;

use super::{Classification, FailureClass, Response, ScopeMode, StepUp, bounded, standards};

/// Refresh token expired, revoked, or its session invalidated.
const REVOKED: &[u64] = &[
    70000,  // invalid grant (revoked, malformed, wrong client)
    70008,  // code or refresh token expired
    70043,  // refresh token expired by sign-in frequency (CA)
    50173,  // grant expired: revoked or password changed
    50133,  // session invalid: password expired or changed
    54005,  // code already redeemed
    700081, // refresh token hit its max lifetime
    700082, // refresh token expired through inactivity
    700084, // SPA refresh token 24 h limit
    50089,  // flow token expired
];
/// The user must interact: MFA, Conditional Access, device state, password change.
const INTERACTION: &[u64] = &[
    50076, // MFA required (location/policy)
    50079, // MFA registration required
    50158, // external security challenge not satisfied
    53003, // blocked by Conditional Access
    53000, // device not compliant
    53001, // device not domain-joined
    50074, // strong authentication required
    50072, // MFA enrolment required
    50055, // password expired
    50097, // device authentication required
];
/// Admin or user consent missing.
const CONSENT: &[u64] = &[65001];
/// The client's own credentials or registration are wrong.
const CLIENT: &[u64] = &[
    7000215, // invalid client secret
    7000222, // client secret expired
    7000218, // client_secret or client_assertion missing
    700016,  // application not found in the tenant
    700027,  // client assertion signature invalid
    7000112, // application disabled
    70001,   // application disabled or not found
    70002,   // client must be confidential
    50012,   // client assertion invalid
];

fn code_class(code: u64) -> Option<FailureClass> {
    if CONSENT.contains(&code) {
        Some(FailureClass::InsufficientScope)
    } else if INTERACTION.contains(&code) {
        Some(FailureClass::StepUpRequired)
    } else if CLIENT.contains(&code) {
        Some(FailureClass::InvalidClient)
    } else if REVOKED.contains(&code) {
        Some(FailureClass::GrantRevoked)
    } else {
        None
    }
}

/// Numeric `error_codes` (numbers or numeric strings); falls back to the `AADSTS<n>` prefix of
/// `error_description` when the array is missing (the code is stable even when the text is not).
fn error_codes(r: &Response<'_>) -> Vec<u64> {
    let Some(obj) = r.json().and_then(|v| v.as_object()) else {
        return Vec::new();
    };
    let codes: Vec<u64> = obj
        .get("error_codes")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .take(16)
                .filter_map(|v| match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !codes.is_empty() {
        return codes;
    }
    let desc = obj
        .get("error_description")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    desc.find("AADSTS")
        .and_then(|at| {
            let digits: String = desc[at + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .take(12)
                .collect();
            digits.parse().ok()
        })
        .into_iter()
        .collect()
}

/// Token rows (d)–(d'): codes first, then `suberror`, then the OAuth `error`.
pub(super) fn token(r: &Response<'_>) -> Option<Classification> {
    let codes = error_codes(r);
    let error = standards::oauth_error(r);
    let suberror = r.json_str("suberror");
    let by_code = codes
        .iter()
        .find_map(|c| code_class(*c).map(|class| (class, *c)));
    let (class, code) = match by_code {
        Some((class, code)) => (class, Some(format!("AADSTS{code}"))),
        None => {
            let class = match (suberror, error.as_deref()) {
                (Some("consent_required"), _) => FailureClass::InsufficientScope,
                (
                    Some(
                        "basic_action"
                        | "additional_action"
                        | "message_only"
                        | "user_password_expired",
                    ),
                    _,
                ) => FailureClass::StepUpRequired,
                (Some("bad_token" | "token_expired"), _) => FailureClass::GrantRevoked,
                (_, Some(e)) => standards::token_code_class(e)?,
                (_, None) => return None,
            };
            let code = codes
                .first()
                .map(|c| format!("AADSTS{c}"))
                .or(error.clone());
            (class, code)
        }
    };
    let mut c = Classification::new(class).code_opt(code.as_deref());
    if class == FailureClass::StepUpRequired {
        c.step_up = Some(StepUp {
            acr_values: None,
            max_age: None,
            claims: r.json_str("claims").and_then(bounded),
        });
    }
    if class == FailureClass::InsufficientScope {
        c.scope_mode = ScopeMode::AllOf;
    }
    Some(c)
}

fn graph_error<'r>(r: &'r Response<'_>) -> (Option<&'r str>, Option<&'r str>) {
    let err = r
        .json()
        .and_then(|v| v.as_object())
        .and_then(|o| o.get("error"))
        .and_then(|v| v.as_object());
    let get = |k: &str| err.and_then(|e| e.get(k)).and_then(|v| v.as_str());
    (get("code"), get("message"))
}

/// Graph throttling codes (429, and 503 under load).
pub(super) fn rate_limited(r: &Response<'_>) -> bool {
    matches!(
        graph_error(r).0,
        Some("TooManyRequests" | "activityLimitReached" | "ApplicationThrottled")
    )
}

/// A rate-limit classification carrying the Graph code.
pub(super) fn rate_limit_classification(r: &Response<'_>) -> Classification {
    Classification::new(FailureClass::RateLimited).code_opt(graph_error(r).0)
}

/// `InvalidAuthenticationToken` messages that mean the integration sends a token Graph can never
/// accept (wrong audience, malformed, empty, bad signature): neither a refresh nor a user fixes it.
const MISCONFIGURED: &[&str] = &[
    "audience",
    "not well formed",
    "parsing failed",
    "is empty",
    "signature",
];

/// API rows (a), (c): the token-lifetime message is an expiry; an `InvalidAuthenticationToken`
/// whose message says the token is malformed or for the wrong audience is a client configuration
/// problem; unknown texts count as expiry (Microsoft changes texts; the loop guard bounds it). 403 `Authorization_RequestDenied` /
/// `ErrorAccessDenied` is forbidden, flagged as possibly a missing scope.
pub(super) fn api(r: &Response<'_>) -> Option<Classification> {
    let (code, message) = graph_error(r);
    match (r.status, code) {
        (401, Some("InvalidAuthenticationToken")) => {
            let m = message.unwrap_or("").to_ascii_lowercase();
            let expired = m.contains("lifetime validation failed") || m.contains("expired");
            let misconfigured = MISCONFIGURED.iter().any(|marker| m.contains(marker));
            let class = if misconfigured && !expired {
                FailureClass::InvalidClient
            } else {
                // The expiry message, or a text we do not know: refresh once; the policy's loop
                // guard turns a repeat into a revocation.
                FailureClass::AccessTokenExpired
            };
            Some(Classification::new(class).code_opt(code))
        }
        (403, _) => {
            let mut c = Classification::new(FailureClass::Forbidden).code_opt(code);
            c.scope_suspected = matches!(
                code,
                Some("Authorization_RequestDenied" | "ErrorAccessDenied" | "accessDenied")
            );
            Some(c)
        }
        _ => None,
    }
}
