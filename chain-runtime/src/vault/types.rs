//! What the vault hands out about consents and accounts (never a token).

use super::store::{AccountStatus, StoredAccount};

/// A consent link to send to the user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConsentRequest {
    /// The authorization URL (with `state` and the PKCE S256 `code_challenge`).
    #[serde(serialize_with = "serialize_url")]
    pub url: url::Url,
    /// The `state` parameter; the callback must bring it back.
    pub state: String,
    /// When the link stops working, unix seconds.
    pub expires_at: i64,
    /// The requested scopes.
    pub scopes: Vec<String>,
    /// The principal the consent is for.
    pub principal_id: String,
    /// The connector.
    pub connector: String,
}

fn serialize_url<S: serde::Serializer>(url: &url::Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(url.as_str())
}

/// A connected account as the rest of the runtime sees it (no token inside), e.g. for audit records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AccountInfo {
    /// Stable id of the connected account.
    pub account_id: String,
    /// The owning principal.
    pub principal_id: String,
    /// The connector.
    pub connector: String,
    /// The provider's stable user id.
    pub upstream_subject: String,
    /// Scopes as granted.
    pub granted_scopes: Vec<String>,
    /// Access-token expiry, unix seconds (`None`: unknown).
    pub expires_at: Option<i64>,
    /// The grant (one per completed consent).
    pub grant_id: String,
    /// When the user consented, unix seconds.
    pub consented_at: i64,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Token version, incremented by every token write.
    pub token_version: i64,
}

impl From<&StoredAccount> for AccountInfo {
    fn from(a: &StoredAccount) -> Self {
        Self {
            account_id: a.account_id.clone(),
            principal_id: a.principal_id.clone(),
            connector: a.connector.clone(),
            upstream_subject: a.upstream_subject.clone(),
            granted_scopes: a.granted_scopes.clone(),
            expires_at: a.expires_at,
            grant_id: a.grant_id.clone(),
            consented_at: a.consented_at,
            status: a.status,
            token_version: a.rt_version,
        }
    }
}
