//! A real OAuth authorization server for the vault tests: the `oidc-provider` server (node,
//! in `tests/oauth-server`), a recording reverse proxy in front of its token endpoint, and a
//! non-interactive "browser" that completes its consent.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chain_runtime::vault::{
    ClientSecret, OffsetClock, ProviderConfig, SubjectSource, Vault, VaultKey, VaultOptions,
};

pub use crate::tls::install_tls_provider;

/// The OAuth client the test authorization server accepts.
pub const CLIENT_ID: &str = "chain-test-client";
/// The redirect URI registered for [`CLIENT_ID`].
pub const REDIRECT_URI: &str = "https://app.example.test/oauth/callback";
/// The connector name the vault tests give the test authorization server.
pub const CONNECTOR: &str = "idp";

/// `n` bytes of randomness, hex-encoded (not for secrets: for unique test names).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    for b in bytes.iter_mut() {
        *b = rand_byte();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    (h.finish() & 0xff) as u8
}

/// The oidc-provider server, killed on drop.
pub struct OAuthServer {
    child: Child,
    /// The server's base URL.
    pub base: String,
    /// The secret of [`CLIENT_ID`] this server accepts.
    pub client_secret: String,
    stderr: Arc<Mutex<String>>,
}

impl OAuthServer {
    /// Starts the server with a 120 s access-token lifetime.
    pub fn start() -> Self {
        Self::start_with_ttl(120)
    }

    /// Starts the server with the given access-token lifetime (seconds).
    pub fn start_with_ttl(access_token_ttl: u64) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oauth-server");
        install_oauth_server(&dir);
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "the OAuth test server is not installed: run `npm ci --prefix tests/oauth-server` \
             (node and npm are required; see .ci/run). Looked in {}",
            dir.join("node_modules").display()
        );
        let client_secret = format!("cs-{}", random_hex(24));
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("OAUTH_CLIENT_ID", CLIENT_ID)
            .env("OAUTH_CLIENT_SECRET", &client_secret)
            .env("OAUTH_REDIRECT_URI", REDIRECT_URI)
            .env("OAUTH_ACCESS_TOKEN_TTL", access_token_ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn `node` (is Node.js installed and on PATH?)");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // Keep draining stdout so the server never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("port").and_then(|p| p.as_u64()))
            .unwrap_or_else(|| {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "oauth-server did not print its port; stderr:\n{}",
                    stderr.lock().unwrap()
                )
            });
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client_secret,
            stderr,
        }
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- oauth-server stderr ---\n{}",
                self.stderr.lock().unwrap()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does with token-endpoint requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the server.
    Forward,
    /// Never answer.
    Hang,
    /// Answer 503 without forwarding.
    Unavailable,
}

/// What the proxy saw on the wire.
#[derive(Default)]
pub struct Recorded {
    /// Every secret value seen on the wire: codes, verifiers, tokens, client secrets.
    pub secrets: HashSet<String>,
    /// Access and refresh tokens the server issued (from token responses).
    pub issued: HashSet<String>,
}

/// A recording reverse proxy in front of the authorization server's back-channel endpoints.
#[derive(Clone)]
pub struct TokenProxy {
    /// The proxy's base URL (point the provider config here).
    pub base: String,
    /// How many refresh requests went through.
    pub refresh_requests: Arc<AtomicUsize>,
    /// How many token requests went through.
    pub token_requests: Arc<AtomicUsize>,
    /// The secrets seen on the wire.
    pub recorded: Arc<Mutex<Recorded>>,
    mode: Arc<Mutex<ProxyMode>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    proxy: TokenProxy,
}

const SECRET_FORM_KEYS: &[&str] = &[
    "code",
    "code_verifier",
    "refresh_token",
    "client_secret",
    "token",
];
const SECRET_JSON_KEYS: &[&str] = &["access_token", "refresh_token", "id_token"];

async fn proxy_handler(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let is_token = path == "/token";
    if is_token {
        state.proxy.token_requests.fetch_add(1, Ordering::SeqCst);
    }
    {
        let mut rec = state.proxy.recorded.lock().unwrap();
        for (k, v) in url::form_urlencoded::parse(&body) {
            if is_token && k == "grant_type" && v == "refresh_token" {
                state.proxy.refresh_requests.fetch_add(1, Ordering::SeqCst);
            }
            if SECRET_FORM_KEYS.contains(&k.as_ref()) {
                rec.secrets.insert(v.into_owned());
            }
        }
        if let Some(auth) = headers.get("authorization").and_then(|h| h.to_str().ok())
            && let Some(t) = auth.strip_prefix("Bearer ")
        {
            rec.secrets.insert(t.to_owned());
        }
    }
    let mode = *state.proxy.mode.lock().unwrap();
    if is_token {
        match mode {
            ProxyMode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            ProxyMode::Unavailable => {
                return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
            }
            ProxyMode::Forward => {}
        }
    }
    let url = format!(
        "{}{}",
        state.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = state.http.request(method, url).body(body.to_vec());
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let resp_headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        let mut rec = state.proxy.recorded.lock().unwrap();
        for key in SECRET_JSON_KEYS {
            if let Some(v) = json.get(key).and_then(|v| v.as_str()) {
                rec.secrets.insert(v.to_owned());
                if *key != "id_token" {
                    rec.issued.insert(v.to_owned());
                }
            }
        }
    }
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in resp_headers.iter() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out = out.header(name, value);
        }
    }
    out.body(axum::body::Body::from(bytes)).unwrap()
}

impl TokenProxy {
    /// Starts a proxy in front of `upstream`.
    pub async fn start(upstream: &str) -> Self {
        install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let proxy = TokenProxy {
            base: format!("http://{addr}"),
            refresh_requests: Arc::new(AtomicUsize::new(0)),
            token_requests: Arc::new(AtomicUsize::new(0)),
            recorded: Arc::new(Mutex::new(Recorded::default())),
            mode: Arc::new(Mutex::new(ProxyMode::Forward)),
        };
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            proxy: proxy.clone(),
        };
        let app = axum::Router::new()
            .fallback(proxy_handler)
            .with_state(state);
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        proxy
    }

    /// Changes what the proxy does with the next token requests.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Refresh requests seen so far.
    pub fn refreshes(&self) -> usize {
        self.refresh_requests.load(Ordering::SeqCst)
    }

    /// Every token the server issued through the proxy.
    pub fn issued(&self) -> Vec<String> {
        self.recorded
            .lock()
            .unwrap()
            .issued
            .iter()
            .cloned()
            .collect()
    }

    /// Every secret seen on the wire (tokens, codes, client secrets).
    pub fn secrets(&self) -> Vec<String> {
        self.recorded
            .lock()
            .unwrap()
            .secrets
            .iter()
            .cloned()
            .collect()
    }
}

/// The real server plus the recording proxy, and a provider configuration pointing at them.
pub struct Harness {
    /// The authorization server.
    pub server: OAuthServer,
    /// The recording proxy in front of its token endpoint.
    pub proxy: TokenProxy,
}

impl Harness {
    /// Starts the server and the proxy.
    pub async fn start() -> Self {
        Self::start_with_ttl(120).await
    }

    /// Starts the server (access-token lifetime `ttl` seconds) and the proxy.
    pub async fn start_with_ttl(ttl: u64) -> Self {
        let server = OAuthServer::start_with_ttl(ttl);
        let proxy = TokenProxy::start(&server.base).await;
        Self { server, proxy }
    }

    /// The provider configuration: authorize at the server, back channel through the proxy,
    /// subject from introspection `sub`.
    pub fn provider(&self) -> ProviderConfig {
        self.provider_with_secret(&self.server.client_secret)
    }

    /// [`Harness::provider`] with another client secret.
    pub fn provider_with_secret(&self, secret: &str) -> ProviderConfig {
        ProviderConfig::new(
            CONNECTOR,
            &format!("{}/auth", self.server.base),
            &format!("{}/token", self.proxy.base),
            CLIENT_ID,
            ClientSecret::new(secret),
            REDIRECT_URI,
        )
        .unwrap()
        .with_revoke_url(&format!("{}/token/revocation", self.proxy.base))
        .unwrap()
        .with_introspection_url(&format!("{}/token/introspection", self.proxy.base))
        .unwrap()
        .with_subject(SubjectSource::Introspection {
            pointers: vec!["/sub".into()],
        })
    }

    /// The server's userinfo endpoint.
    pub fn userinfo_url(&self) -> String {
        format!("{}/me", self.proxy.base)
    }

    /// A vault on a fresh SQLite file with this provider registered.
    pub async fn vault(
        &self,
        path: &std::path::Path,
        key: [u8; 32],
        clock: Arc<OffsetClock>,
    ) -> Vault {
        let options = VaultOptions {
            clock,
            ..VaultOptions::default()
        };
        let runtime = chain_runtime::Runtime::at(&path.to_string_lossy())
            .vault_key_with(VaultKey::from_bytes(key), options)
            .provider(self.provider())
            .open()
            .await
            .unwrap();
        runtime.vault().unwrap().clone()
    }
}

/// Acts as the user's browser: follows the consent URL through the server's login, signing in as
/// `login_hint`, and returns the callback's `(state, code)`.
pub async fn authorize(
    consent_url: &url::Url,
    login_hint: &str,
    deny_scope: Option<&str>,
) -> (String, String) {
    install_tls_provider();
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = consent_url.clone();
    url.query_pairs_mut().append_pair("login_hint", login_hint);
    if let Some(deny) = deny_scope {
        url.query_pairs_mut().append_pair("deny_scope", deny);
    }
    for _ in 0..10 {
        let resp = browser.get(url.clone()).send().await.unwrap();
        let Some(location) = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
        else {
            let status = resp.status();
            panic!(
                "authorization stopped at {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        };
        let next = url.join(&location).unwrap();
        if next.as_str().starts_with(REDIRECT_URI) {
            let pairs: std::collections::HashMap<_, _> = next.query_pairs().into_owned().collect();
            if let Some(err) = pairs.get("error") {
                panic!(
                    "authorization failed: {err} {:?}",
                    pairs.get("error_description")
                );
            }
            return (pairs["state"].clone(), pairs["code"].clone());
        }
        url = next;
    }
    panic!("too many redirects during authorization");
}

/// A full consent for `principal` as upstream user `login`.
pub async fn connect(
    vault: &Vault,
    principal: &str,
    login: &str,
    scopes: &[&str],
) -> chain_runtime::vault::AccountInfo {
    let link = vault
        .consent_link(principal, CONNECTOR, scopes)
        .await
        .unwrap();
    let (state, code) = authorize(&link.url, login, None).await;
    vault
        .complete_consent(principal, &state, &code)
        .await
        .unwrap()
}

/// Installs the OAuth test server's npm packages from its lockfile when they are missing, so
/// that `cargo test` alone works on a fresh clone (test binaries run one at a time; threads
/// within one binary share the `OnceLock`).
fn install_oauth_server(dir: &std::path::Path) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        if dir.join("node_modules/oidc-provider/package.json").exists() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .status()
            .expect("cannot run `npm` (is Node.js installed and on PATH?)");
        assert!(
            status.success(),
            "`npm ci --prefix {}` failed",
            dir.display()
        );
    });
}
