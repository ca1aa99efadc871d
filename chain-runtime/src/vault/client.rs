//! The HTTP client step code uses: the credential is injected, never handed out.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::{AccountInfo, Vault, VaultError};

/// An HTTP client bound to one principal's account on one connector. Each request gets
/// `Authorization: Bearer` from the vault (refreshed first when it expires within the margin).
/// There is no way to read the token from it.
#[derive(Clone, Debug)]
pub struct AuthorizedClient {
    vault: Vault,
    principal_id: String,
    connector: String,
    /// Token version injected by the last request (for [`AuthorizedClient::refresh_after_expiry`]).
    last_version: Arc<AtomicI64>,
}

impl AuthorizedClient {
    pub(crate) fn new(vault: Vault, principal_id: String, connector: String) -> Self {
        Self {
            vault,
            principal_id,
            connector,
            last_version: Arc::new(AtomicI64::new(-1)),
        }
    }

    /// The principal whose account this client uses.
    pub fn principal_id(&self) -> &str {
        &self.principal_id
    }

    /// The connector.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// The connected account behind this client (no token inside).
    pub async fn account(&self) -> Result<AccountInfo, VaultError> {
        self.vault
            .account(&self.principal_id, &self.connector)
            .await
    }

    /// Starts a request.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> AuthorizedRequest {
        AuthorizedRequest {
            client: self.clone(),
            builder: self.vault.http().request(method, url),
            read: None,
        }
    }

    /// Starts a GET request.
    pub fn get(&self, url: impl reqwest::IntoUrl) -> AuthorizedRequest {
        self.request(reqwest::Method::GET, url)
    }

    /// Starts a POST request.
    pub fn post(&self, url: impl reqwest::IntoUrl) -> AuthorizedRequest {
        self.request(reqwest::Method::POST, url)
    }

    /// Starts a PUT request.
    pub fn put(&self, url: impl reqwest::IntoUrl) -> AuthorizedRequest {
        self.request(reqwest::Method::PUT, url)
    }

    /// Starts a PATCH request.
    pub fn patch(&self, url: impl reqwest::IntoUrl) -> AuthorizedRequest {
        self.request(reqwest::Method::PATCH, url)
    }

    /// Starts a DELETE request.
    pub fn delete(&self, url: impl reqwest::IntoUrl) -> AuthorizedRequest {
        self.request(reqwest::Method::DELETE, url)
    }

    /// Call after the provider rejected this client's last request as "access token expired":
    /// refreshes once (single-flight; skipped if another caller already refreshed since).
    pub async fn refresh_after_expiry(&self) -> Result<AccountInfo, VaultError> {
        let seen = self.last_version.load(Ordering::SeqCst);
        self.vault
            .refresh_after_expiry(&self.principal_id, &self.connector, seen)
            .await
    }
}

/// A request being built by an [`AuthorizedClient`].
#[derive(Debug)]
pub struct AuthorizedRequest {
    client: AuthorizedClient,
    builder: reqwest::RequestBuilder,
    /// The account as just read from the store, to send with instead of reading it again.
    read: Option<super::StoredAccount>,
}

impl AuthorizedRequest {
    /// Sends with `account`, just read from the store (see `prefetch`), instead of reading it
    /// again.
    pub(crate) fn with_account_read(mut self, account: Option<super::StoredAccount>) -> Self {
        self.read = account;
        self
    }

    /// Adds a header. An `Authorization` header set here is replaced by the vault's.
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.builder = self.builder.header(name.as_ref(), value.as_ref());
        self
    }

    /// Sets a JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.builder = self.builder.json(body);
        self
    }

    /// Sets a form body.
    pub fn form<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.builder = self.builder.form(body);
        self
    }

    /// Adds query parameters.
    pub fn query<T: serde::Serialize + ?Sized>(mut self, query: &T) -> Self {
        self.builder = self.builder.query(query);
        self
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.builder = self.builder.body(body);
        self
    }

    /// Overrides the vault's default timeout for this request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.builder = self.builder.timeout(timeout);
        self
    }

    /// Resolves the credential (refreshing if needed) and sends the request. The response is
    /// returned whatever its status; classify it with [`crate::classify::classify`].
    pub async fn send(self) -> Result<reqwest::Response, VaultError> {
        let client = self.client;
        let (token, account) = client
            .vault
            .fresh_token_from(&client.principal_id, &client.connector, None, self.read)
            .await?;
        client
            .last_version
            .store(account.rt_version, Ordering::SeqCst);
        let request = self
            .builder
            .timeout(client.vault.timeout())
            .bearer_auth(token.expose());
        drop(token);
        request.send().await.map_err(|e| VaultError::Transport {
            connector: client.connector.clone(),
            operation: "API call",
            timed_out: e.is_timeout(),
        })
    }
}
