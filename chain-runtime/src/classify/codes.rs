//! Provider error codes: which ones may be stored ([`sanitized_code`]) and what a token
//! endpoint's code means ([`token_error_class`], the one table behind the token path).

use super::{
    FailureClass, MAX_CODE_LEN, Provider, RequestKind, atlassian, github, salesforce, slack,
    standards,
};

/// An error code as it may be stored: `Some` only for text shaped like a provider's error code,
/// `None` for anything else (free text, an echoed credential, an over-long value).
///
/// Error codes end up in step errors, the run journal and the audit trail, so they are kept only
/// when they look like identifiers: 1 to 128 ASCII bytes of letters, digits and
/// `_ . : -`; every segment between those separators at most 32 bytes, made of letters followed
/// by at most 6 digits (`AADSTS50076`, `invalid_grant`, `Authorization_RequestDenied`,
/// `rateLimitExceeded`), with at most four lower-to-upper case changes. Random credentials
/// (base64url, hex, JWTs) mix digits into letters and switch case constantly, so they fail.
pub fn sanitized_code(code: &str) -> Option<&str> {
    let code = code.trim();
    if code.is_empty() || code.len() > MAX_CODE_LEN {
        return None;
    }
    let is_sep = |c: char| matches!(c, '_' | '.' | ':' | '-');
    if !code.chars().all(|c| c.is_ascii_alphanumeric() || is_sep(c)) {
        return None;
    }
    let segment_ok = |seg: &str| {
        let letters = seg.trim_end_matches(|c: char| c.is_ascii_digit());
        let digits = seg.len() - letters.len();
        let case_changes = letters
            .as_bytes()
            .windows(2)
            .filter(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase())
            .count();
        seg.len() <= 32
            && digits <= 6
            && letters.chars().all(|c| c.is_ascii_alphabetic())
            && case_changes <= 4
    };
    code.split(is_sep)
        .filter(|seg| !seg.is_empty())
        .all(segment_ok)
        .then_some(code)
}

/// The class of an OAuth token-endpoint error `code` as `provider` documents it: the single
/// table behind [`super::classify`]'s token path (RFC 6749 §5.2 and its extensions, overridden by the
/// provider's own codes), for callers that hold only a code.
///
/// Only `invalid_grant` and a provider's documented equivalents (Slack `token_revoked`,
/// GitHub `bad_refresh_token`, Salesforce `inactive_user`, …) are
/// [`FailureClass::GrantRevoked`]; an unknown code is [`FailureClass::ServerError`]
/// (transient), never revocation. Never [`FailureClass::AccessTokenExpired`] or
/// [`FailureClass::Ok`].
pub fn token_error_class(provider: &str, code: &str) -> FailureClass {
    let specific = match Provider::from_name(provider) {
        Provider::Salesforce => salesforce::token_code_class(code),
        Provider::Atlassian => atlassian::token_code_class(code),
        Provider::GitHub => github::token_code_class(code),
        Provider::Slack => Some(slack::error_class(code, RequestKind::TokenRefresh)),
        Provider::Microsoft | Provider::Google | Provider::Standard => None,
    };
    match specific.or_else(|| standards::token_code_class(code)) {
        Some(FailureClass::AccessTokenExpired) => FailureClass::GrantRevoked,
        Some(FailureClass::Ok) | None => FailureClass::ServerError,
        Some(class) => class,
    }
}
