//! Column encoding shared by the database-backed account stores (SQLite, PostgreSQL): scope
//! lists as JSON text, the status as its stable text, the account column order.

use super::store::{AccountStatus, StoreError};

/// The `vault_accounts` columns, in the order both stores bind and read them.
pub(crate) const ACCOUNT_COLUMNS: &str = "principal_id, connector, account_id, upstream_subject, \
     granted_scopes, access_token, refresh_token, expires_at, grant_id, consented_at, status, \
     rt_version, updated_at";

/// A scope list as stored.
pub(crate) fn scopes_to_text(scopes: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(scopes).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A stored scope list.
pub(crate) fn scopes_from_text(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("granted_scopes: {e}")))
}

/// A stored account status.
pub(crate) fn status_from_text(text: &str) -> Result<AccountStatus, StoreError> {
    AccountStatus::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown account status `{text}`")))
}
