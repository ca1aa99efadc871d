//! The vault's typed errors. No variant carries a token, secret, key, verifier or code.

use crate::classify::FailureClass;

use super::secret::KeyError;
use super::store::StoreError;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The vault key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The supplied key is not the key this vault was created with.
    #[error(
        "the vault key does not decrypt this vault (its key check value fails to open); \
         supply the key the vault was created with. Nothing was read or changed"
    )]
    WrongKey,
    /// A stored secret does not decrypt under its row identity: the row was tampered with or a
    /// ciphertext was moved from another row.
    #[error(
        "the stored {field} of account `{account_id}` does not decrypt: the row was tampered with or copied"
    )]
    Tampered {
        /// The connected account.
        account_id: String,
        /// Which secret.
        field: &'static str,
    },
    /// The stored configuration of a connector does not decrypt under its row identity: its
    /// client secret or its configuration was edited, or the secret was copied from another row.
    /// The connector is unusable until [`crate::vault::Vault::register_provider`] stores it again.
    #[error(
        "the stored provider configuration of connector `{connector}` does not decrypt: its client \
         secret or its configuration was tampered with or copied from another connector; register \
         the provider again to replace it"
    )]
    ProviderTampered {
        /// The connector.
        connector: String,
    },
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No provider configuration is registered for the connector.
    #[error(
        "no provider is configured for connector `{connector}`; call `Vault::register_provider` first"
    )]
    UnknownConnector {
        /// The connector.
        connector: String,
    },
    /// The provider configuration is invalid.
    #[error("the provider configuration of `{connector}` is invalid: {reason}")]
    Config {
        /// The connector.
        connector: String,
        /// What is wrong.
        reason: String,
    },
    /// The principal has no connected account for the connector. Build a consent link with
    /// `Vault::consent_link(principal_id, connector, scopes)`; there is no fallback account.
    #[error(
        "principal `{principal_id}` has no connected `{connector}` account; send them a consent link \
         (`Vault::consent_link`). No other account is used in its place"
    )]
    NotConnected {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
    },
    /// The account needs a new consent (refresh rejected, or no refresh token left). Never retried
    /// automatically. `scopes` are the scopes of the previous grant, for the consent link.
    #[error(
        "the `{connector}` account of principal `{principal_id}` needs re-authorization (the provider rejected \
         its refresh token); send a consent link for scopes [{}]",
        scopes.join(" ")
    )]
    NeedsReauthorization {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
        /// The scopes of the previous grant.
        scopes: Vec<String>,
    },
    /// The account was disconnected.
    #[error(
        "the `{connector}` account of principal `{principal_id}` was disconnected; it needs a new consent"
    )]
    Revoked {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
    },
    /// The refresh token was rejected right now (invalid_grant or the provider's equivalent); the
    /// account is now marked needs-reauthorization.
    #[error(
        "`{connector}` rejected the refresh token of principal `{principal_id}` ({}); the account now needs \
         re-authorization and will not be refreshed again automatically",
        error_code.as_deref().unwrap_or("no error code")
    )]
    GrantRevoked {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
        /// The token endpoint's HTTP status.
        status: u16,
        /// The provider's error code.
        error_code: Option<String>,
    },
    /// The provider rejected the client credentials: an operator must fix the configuration.
    /// Users are not sent to consent for this.
    #[error(
        "`{connector}` rejected the client credentials during {operation} ({}); check the client id and \
         secret of the connector configuration (operator action, not a user consent problem)",
        error_code.as_deref().unwrap_or("no error code")
    )]
    InvalidClient {
        /// The connector.
        connector: String,
        /// What the vault was doing.
        operation: &'static str,
        /// The provider's error code.
        error_code: Option<String>,
    },
    /// The token endpoint failed in a way that keeps the grant (5xx, rate limit, other errors).
    /// Stored tokens are unchanged.
    #[error(
        "`{connector}` token endpoint failed during {operation}: HTTP {status}, class {class:?} ({}); \
         stored tokens are unchanged",
        error_code.as_deref().unwrap_or("no error code")
    )]
    TokenEndpoint {
        /// The connector.
        connector: String,
        /// What the vault was doing.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The failure class.
        class: FailureClass,
        /// The provider's error code.
        error_code: Option<String>,
    },
    /// The token endpoint answered with something that is not a token response. Stored tokens are unchanged.
    #[error(
        "`{connector}` returned a malformed response during {operation}: {reason}; stored tokens are unchanged"
    )]
    MalformedResponse {
        /// The connector.
        connector: String,
        /// What the vault was doing.
        operation: &'static str,
        /// What is wrong (never the body itself).
        reason: String,
    },
    /// The HTTP call did not complete (connection failure or timeout). Stored tokens are unchanged.
    #[error(
        "`{connector}` {operation} request {}; stored tokens are unchanged",
        if *timed_out { "timed out" } else { "failed to connect or complete" }
    )]
    Transport {
        /// The connector.
        connector: String,
        /// What the vault was doing.
        operation: &'static str,
        /// Whether the bounded timeout fired.
        timed_out: bool,
    },
    /// The `state` of a consent callback is unknown: forged, already used, or purged.
    #[error("the consent callback `state` is unknown, forged or already used; start a new consent")]
    UnknownConsentState,
    /// The consent link expired before its callback arrived.
    #[error(
        "the consent link of principal `{principal_id}` for `{connector}` expired; start a new consent"
    )]
    ConsentExpired {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
    },
    /// Re-consent returned a different upstream user than the stored account: refused, and the
    /// stored account is untouched.
    #[error(
        "identity drift: principal `{principal_id}` re-consented to `{connector}` as upstream subject \
         `{new_subject}`, but the connected account belongs to `{stored_subject}`; refused, the stored account \
         is unchanged. To switch upstream users, disconnect it first (`Vault::disconnect`) and consent \
         again, or replace it explicitly with `Vault::forget_account`"
    )]
    IdentityDrift {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
        /// The subject on record.
        stored_subject: String,
        /// The subject the new consent returned.
        new_subject: String,
    },
    /// The consent callback landed for another principal than the one the consent link was
    /// issued to: refused before the code exchange, and the link is used up.
    #[error(
        "the consent callback for `{connector}` was completed by principal `{principal_id}`, but the \
         consent link was issued to another principal; refused (the link is used up, start a new consent)"
    )]
    ConsentPrincipalMismatch {
        /// The principal who completed the callback.
        principal_id: String,
        /// The connector.
        connector: String,
    },
    /// The provider sent the user back with an OAuth error (e.g. `access_denied`); the pending
    /// consent is ended.
    #[error(
        "the `{connector}` consent of principal `{principal_id}` was not granted: the provider answered `{error_code}`"
    )]
    ConsentDenied {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
        /// The provider's sanitized error code.
        error_code: String,
    },
    /// The redirect URL of a consent callback carries neither `code` and `state` nor `error`.
    #[error("the consent callback URL is not a consent redirect: {reason}")]
    MalformedCallback {
        /// What is wrong (never the URL itself: it carries the code).
        reason: String,
    },
    /// The upstream user of a new consent is already bound to another principal's account on the
    /// same connector, and [`SharedSubjectPolicy::Refuse`](crate::vault::SharedSubjectPolicy)
    /// is in force: refused, and the new grant is revoked.
    #[error(
        "the `{connector}` upstream user of this consent is already connected to another principal; \
         refused (one upstream user belongs to one principal)"
    )]
    SubjectAlreadyBound {
        /// The principal who consented.
        principal_id: String,
        /// The connector.
        connector: String,
    },
    /// The upstream subject could not be determined.
    #[error("cannot determine the upstream subject for `{connector}`: {reason}")]
    SubjectUnavailable {
        /// The connector.
        connector: String,
        /// Why.
        reason: String,
    },
    /// Revocation at the provider failed; the account was left as it was so the call can be repeated.
    #[error(
        "`{connector}` revocation failed: HTTP {status}; the account is unchanged, retry the disconnect"
    )]
    RevocationFailed {
        /// The connector.
        connector: String,
        /// The HTTP status.
        status: u16,
    },
    /// A concurrent writer changed the account between read and write.
    #[error(
        "the `{connector}` account of principal `{principal_id}` was changed concurrently; retry"
    )]
    Conflict {
        /// The principal.
        principal_id: String,
        /// The connector.
        connector: String,
    },
}
