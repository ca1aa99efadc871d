//! Fake OAuth token endpoints: a local HTTP server that answers each request from a script,
//! for provider quirks the real authorization server does not have.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::response::Response;
use chain_runtime::vault::{ClientSecret, ProviderConfig};

use crate::oauth::REDIRECT_URI;

/// What a scripted endpoint answers: (status, JSON body), possibly after a wait.
pub type FakeReply = futures::future::BoxFuture<'static, (u16, String)>;
type FakeScript =
    Arc<dyn Fn(usize, std::collections::HashMap<String, String>) -> FakeReply + Send + Sync>;

/// A scripted fake token endpoint (for provider quirks the real server does not have).
#[derive(Clone)]
pub struct FakeTokenEndpoint {
    /// Its base URL (any path answers).
    pub base: String,
    /// Every request's form, in order.
    pub requests: Arc<Mutex<Vec<std::collections::HashMap<String, String>>>>,
}

impl FakeTokenEndpoint {
    /// `script(n, form)` answers the n-th (0-based) request to any path with (status, body).
    pub async fn start(
        script: impl Fn(usize, std::collections::HashMap<String, String>) -> FakeReply
        + Send
        + Sync
        + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<std::collections::HashMap<String, String>>>> = Arc::default();
        let script: FakeScript = Arc::new(script);
        let recorded = Arc::clone(&requests);
        let app = axum::Router::new().fallback(move |body: Bytes| {
            let script = Arc::clone(&script);
            let recorded = Arc::clone(&recorded);
            async move {
                let form: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                let n = {
                    let mut r = recorded.lock().unwrap();
                    r.push(form.clone());
                    r.len() - 1
                };
                let (status, body) = script(n, form).await;
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        });
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base, requests }
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The form of the `n`-th request (0-based).
    pub fn request(&self, n: usize) -> std::collections::HashMap<String, String> {
        self.requests.lock().unwrap()[n].clone()
    }

    /// A provider config whose token endpoint is this endpoint.
    pub fn provider(&self, connector: &str) -> ProviderConfig {
        ProviderConfig::new(
            connector,
            "https://provider.example.test/authorize",
            &format!("{}/token", self.base),
            "fake-client",
            ClientSecret::new("fake-client-secret"),
            REDIRECT_URI,
        )
        .unwrap()
    }
}

/// Replies immediately.
pub fn reply(status: u16, body: impl Into<String>) -> FakeReply {
    let body = body.into();
    Box::pin(async move { (status, body) })
}
