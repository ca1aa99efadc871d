//! Machinery shared by the three emulators: state, the HTTP server with connection
//! resets, and the request pipelines (authorize, token, API) that apply faults, check
//! tokens, replay idempotent writes and fill the ledger.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use super::SandboxError;
use super::faults::{ApiFaultAction, ApiFaults, FaultKind, TokenFaults};
use super::ledger::{CallRecord, GrantId, Ledger, TokenRequestRecord, WriteRecord};
use super::oauth::{AccessCheck, AuthorizeOutcome, Issued, OAuthState, TokenError};

/// A provider's wire shapes and API routes. Implemented by the three marker types.
pub trait ProviderImpl: Send + Sync + Sized + 'static {
    /// Human name for errors.
    const NAME: &'static str;
    /// Provider records (opportunities, issues, messages).
    type Data: Default + Send + 'static;
    /// Scopes of which one must be granted for a refresh token (empty: always one).
    const REFRESH_SCOPES: &'static [&'static str];
    /// Default emulator configuration.
    fn default_config() -> super::EmulatorConfig;
    /// A new tenant id (org id, cloud id, team id).
    fn new_tenant() -> String;
    /// Token prefixes `(access, refresh)` for this tenant.
    fn token_prefixes(tenant: &str) -> (String, String);
    /// The upstream subject of the `n`-th sandbox user.
    fn new_subject(base_url: &str, tenant: &str, n: usize) -> String;
    /// The URLs a client needs.
    fn urls(base_url: &str, tenant: &str) -> super::Urls;
    /// The API and OAuth routes (the token, authorize and revoke handlers come from here too).
    fn router(shared: Arc<Shared<Self>>) -> Router;
    /// Whether granted scopes satisfy a needed one.
    fn has_scope(granted: &[String], needed: &str) -> bool {
        granted.iter().any(|g| g == needed)
    }
    /// The shape of an API failure.
    fn api_failure(failure: ApiFailure<'_>, now: SystemTime) -> ApiReply;
    /// Headers the provider puts on every API response.
    fn decorate(_reply: &mut ApiReply, _api_calls: u64, _scopes: Option<&[String]>) {}
    /// The shape of a token-endpoint failure.
    fn token_failure(error: &TokenError) -> ApiReply;
    /// A 5xx from the token endpoint.
    fn token_server_error() -> ApiReply;
    /// The shape of a successful token response.
    fn token_success(issued: &Issued, ctx: &TokenCtx<'_>) -> ApiReply;
}

/// Context for shaping a token response.
pub struct TokenCtx<'a> {
    pub base_url: &'a str,
    pub tenant: &'a str,
    pub client_secret: &'a str,
    pub issued_at: SystemTime,
}

/// A provider-neutral API failure.
pub enum ApiFailure<'a> {
    NotAuthed,
    InvalidToken,
    Expired,
    Revoked,
    MissingScope {
        needed: &'a str,
        provided: &'a [String],
    },
    RateLimited(Duration),
    ServerError,
}

/// A response that can be stored (idempotency replay) and decorated.
#[derive(Clone, Debug)]
pub struct ApiReply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Value>,
    /// The provider's error code, for the ledger.
    pub error: Option<String>,
}

impl ApiReply {
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
            error: None,
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
            error: None,
        }
    }

    /// Marks the reply as a failure with this provider error code.
    pub fn err(mut self, code: &str) -> Self {
        self.error = Some(code.to_owned());
        self
    }

    /// Adds a header (values that are not valid header text are skipped).
    pub fn header(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        self.add_header(name, value);
        self
    }

    /// Adds a header in place (`name` must be lower-case).
    pub fn add_header(&mut self, name: &'static str, value: impl AsRef<str>) {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((HeaderName::from_static(name), v));
        }
    }
}

impl IntoResponse for ApiReply {
    fn into_response(self) -> Response {
        let mut resp = match self.body {
            Some(body) => (self.status, axum::Json(body)).into_response(),
            None => self.status.into_response(),
        };
        for (name, value) in self.headers {
            resp.headers_mut().append(name, value);
        }
        resp
    }
}

/// The outcome of a provider API operation.
pub struct OpResult {
    pub reply: ApiReply,
    /// The record created, changed or deleted.
    pub record_id: Option<String>,
    /// Whether something was changed (and must be recorded as a write).
    pub committed: bool,
}

impl OpResult {
    /// A read or a failed write: nothing changed.
    pub fn reply(reply: ApiReply) -> Self {
        Self {
            reply,
            record_id: None,
            committed: false,
        }
    }

    /// A committed write of `record_id`.
    pub fn committed(reply: ApiReply, record_id: impl Into<String>) -> Self {
        Self {
            reply,
            record_id: Some(record_id.into()),
            committed: true,
        }
    }
}

/// Who is calling, once the token checked out.
pub struct ApiCtx<'a> {
    pub subject: &'a str,
    pub base_url: &'a str,
    pub tenant: &'a str,
    pub scopes: &'a [String],
    pub login: &'a str,
}

/// Everything mutable of one emulator.
pub struct StateInner<D> {
    pub oauth: OAuthState,
    pub api_faults: HashMap<String, ApiFaults>,
    pub token_faults: TokenFaults,
    pub ledger: Ledger,
    /// (subject, idempotency key) → the original reply and record.
    pub idempotency: HashMap<(String, String), (ApiReply, Option<String>)>,
    pub data: D,
    pub clock_offset: Duration,
    pub api_calls: u64,
}

impl<D> StateInner<D> {
    pub fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    pub fn wall_now(&self) -> SystemTime {
        SystemTime::now() + self.clock_offset
    }
}

/// What the handlers share.
pub struct Shared<P: ProviderImpl> {
    pub base_url: String,
    pub tenant: String,
    pub state: Mutex<StateInner<P::Data>>,
    /// API calls currently held back by a delay fault (arrived, not yet processed).
    pub held: Arc<AtomicUsize>,
}

/// Counts one held call while alive; a handler dropped mid-delay (its client went away)
/// still decrements.
struct HeldGuard(Arc<AtomicUsize>);

impl HeldGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<P: ProviderImpl> Shared<P> {
    /// Locks the state. A poisoned lock (a panic elsewhere) still yields the data: every
    /// mutation is small and leaves the state consistent.
    pub fn lock(&self) -> MutexGuard<'_, StateInner<P::Data>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Per-connection switch a handler pulls to close its connection without a response.
#[derive(Clone)]
pub struct ConnKill(Arc<Notify>);

impl ConnKill {
    /// Closes the connection; the handler future is dropped with it, so this never returns.
    pub async fn reset(&self) -> Response {
        self.0.notify_one();
        std::future::pending::<Response>().await
    }
}

/// The running server of one emulator.
pub struct ServerHandle {
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds 127.0.0.1 on an ephemeral port.
pub async fn bind(provider: &'static str) -> Result<(TcpListener, SocketAddr), SandboxError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| SandboxError::Bind { provider, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SandboxError::Bind { provider, source })?;
    Ok((listener, addr))
}

/// Serves `router` on `listener` until shutdown; dropping the handle aborts every connection.
pub fn serve(listener: TcpListener, router: Router) -> ServerHandle {
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => { conns.spawn(serve_conn(stream, router.clone())); }
                    // Transient accept errors (e.g. out of file descriptors): wait a little.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    });
    ServerHandle {
        shutdown: Some(tx),
        task: Some(task),
    }
}

async fn serve_conn(stream: TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket lets a reset set SO_LINGER=0 (RST instead of FIN)
    // after hyper's handle is gone.
    let (stream, killer) = match stream.into_std().and_then(|s| {
        let clone = s.try_clone()?;
        clone.set_nonblocking(true)?;
        Ok((TcpStream::from_std(s)?, TcpStream::from_std(clone).ok()))
    }) {
        Ok(pair) => pair,
        Err(_) => return,
    };
    let notify = Arc::new(Notify::new());
    let kill = ConnKill(notify.clone());
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(kill.clone());
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, req).await }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = notify.notified() => {
            if let Some(k) = &killer {
                let _ = k.set_zero_linger();
            }
        }
    }
    drop(killer);
}

/// Reads the bearer token (`Bearer x`, or Salesforce's `OAuth x`).
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Parses a JSON object or a form body into string parameters.
pub fn params(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        match serde_json::from_slice::<serde_json::Map<String, Value>>(body) {
            Ok(map) => map
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect(),
            Err(_) => HashMap::new(),
        }
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    }
}

/// Client credentials from HTTP Basic or from the parameters.
fn client_credentials(
    headers: &HeaderMap,
    p: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(i, s)| (i.to_owned(), s.to_owned())));
    match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (p.get("client_id").cloned(), p.get("client_secret").cloned()),
    }
}

/// Checks the client of a request to a side endpoint (revoke, introspect).
pub fn check_client_of<P: ProviderImpl>(
    shared: &Shared<P>,
    headers: &HeaderMap,
    p: &HashMap<String, String>,
) -> Result<(), TokenError> {
    let (id, secret) = client_credentials(headers, p);
    shared
        .lock()
        .oauth
        .check_client(id.as_deref(), secret.as_deref())
}

/// GET authorize: 302 to the redirect URI (code or error), or 400.
pub async fn authorize_endpoint<P: ProviderImpl>(
    State(shared): State<Arc<Shared<P>>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let outcome = {
        let mut st = shared.lock();
        let now = st.now();
        st.oauth.authorize(&p, now)
    };
    match outcome {
        AuthorizeOutcome::Redirect(url) => match HeaderValue::from_str(&url) {
            Ok(v) => (StatusCode::FOUND, [(LOCATION, v)]).into_response(),
            Err(_) => (
                StatusCode::BAD_REQUEST,
                "redirect URL is not valid header text",
            )
                .into_response(),
        },
        AuthorizeOutcome::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg).into_response(),
    }
}

/// POST token: faults, client authentication, code exchange or refresh.
pub async fn token_endpoint<P: ProviderImpl>(
    State(shared): State<Arc<Shared<P>>>,
    axum::Extension(kill): axum::Extension<ConnKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&headers, &body);
    let grant_type = match p.get("grant_type") {
        Some(g) => g.clone(),
        // Slack's oauth.v2.access treats a bare `code` as a code exchange.
        None if p.contains_key("code") => "authorization_code".to_owned(),
        None => String::new(),
    };
    let is_refresh = grant_type == "refresh_token";
    let plan = shared.lock().token_faults.take(is_refresh);
    let record = |st: &mut StateInner<P::Data>, rec: TokenRequestRecord| st.ledger.tokens.push(rec);
    let mut fault = None;
    if let Some(d) = plan.hang {
        tokio::time::sleep(d).await;
        fault = Some(FaultKind::TokenHang);
    }
    if plan.timeout {
        {
            let mut st = shared.lock();
            let seq = st.ledger.seq();
            record(
                &mut st,
                token_record(
                    seq,
                    &grant_type,
                    None,
                    None,
                    None,
                    Some(FaultKind::TokenTimeout),
                ),
            );
        }
        return std::future::pending::<Response>().await;
    }
    if plan.fail {
        let reply = P::token_server_error();
        let mut st = shared.lock();
        let seq = st.ledger.seq();
        let status = reply.status.as_u16();
        record(
            &mut st,
            token_record(
                seq,
                &grant_type,
                Some(status),
                None,
                Some("server_error".into()),
                Some(FaultKind::ServerError),
            ),
        );
        return no_store(reply);
    }
    let (id, secret) = client_credentials(&headers, &p);
    let (reply, issued) = {
        let mut st = shared.lock();
        // Leak tests need the cleartext verifier and whatever client secret was presented.
        for value in [p.get("code_verifier"), secret.as_ref()]
            .into_iter()
            .flatten()
        {
            st.oauth.note_secret(value);
        }
        let now = st.now();
        let result = st
            .oauth
            .check_client(id.as_deref(), secret.as_deref())
            .and_then(|()| match grant_type.as_str() {
                "authorization_code" => st.oauth.exchange_code(&p, now),
                "refresh_token" => st.oauth.refresh(&p, now),
                _ => Err(TokenError::UnsupportedGrantType),
            });
        let seq = st.ledger.seq();
        match result {
            Ok(issued) => {
                let ctx = TokenCtx {
                    base_url: &shared.base_url,
                    tenant: &shared.tenant,
                    client_secret: secret.as_deref().unwrap_or_default(),
                    issued_at: st.wall_now(),
                };
                let reply = P::token_success(&issued, &ctx);
                let lost = plan.lose_response;
                let status = (!lost).then_some(reply.status.as_u16());
                let fault = if lost {
                    Some(FaultKind::ResponseLost)
                } else {
                    fault
                };
                let mut rec = token_record(
                    seq,
                    &grant_type,
                    status,
                    Some(issued.subject.clone()),
                    None,
                    fault,
                );
                rec.issued = true;
                record(&mut st, rec);
                (reply, true)
            }
            Err(e) => {
                let reply = P::token_failure(&e);
                let rec = token_record(
                    seq,
                    &grant_type,
                    Some(reply.status.as_u16()),
                    None,
                    reply.error.clone(),
                    fault,
                );
                record(&mut st, rec);
                (reply, false)
            }
        }
    };
    if issued && plan.lose_response {
        return kill.reset().await;
    }
    no_store(reply)
}

fn token_record(
    seq: u64,
    grant_type: &str,
    status: Option<u16>,
    subject: Option<String>,
    error: Option<String>,
    fault: Option<FaultKind>,
) -> TokenRequestRecord {
    TokenRequestRecord {
        seq,
        grant_type: grant_type.to_owned(),
        status,
        issued: false,
        subject,
        error,
        fault,
    }
}

/// Token responses are never cacheable (RFC 6749 §5.1).
pub fn no_store(reply: ApiReply) -> Response {
    let mut resp = reply.into_response();
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// One API request as the pipeline sees it.
pub struct ApiCall {
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    pub idempotency_key: Option<String>,
    pub write: bool,
    /// The scope the endpoint needs (`None`: any valid token will do).
    pub needed: Option<&'static str>,
}

impl ApiCall {
    pub fn new(
        method: Method,
        path: String,
        headers: &HeaderMap,
        write: bool,
        needed: Option<&'static str>,
    ) -> Self {
        Self {
            method,
            path,
            token: bearer(headers),
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            write,
            needed,
        }
    }
}

/// The API pipeline: faults → token check → scope check → idempotent replay → operation →
/// ledger → (maybe) lost response.
pub async fn run_api<P: ProviderImpl>(
    shared: &Shared<P>,
    kill: &ConnKill,
    call: ApiCall,
    op: impl FnOnce(&mut P::Data, &ApiCtx<'_>) -> OpResult,
) -> Response {
    let record_call = |st: &mut StateInner<P::Data>,
                       subject: Option<String>,
                       grant: Option<GrantId>,
                       reply: Option<&ApiReply>,
                       fault: Option<FaultKind>| {
        let seq = st.ledger.seq();
        st.ledger.calls.push(CallRecord {
            seq,
            method: call.method.to_string(),
            path: call.path.clone(),
            subject,
            grant,
            status: reply.map(|r| r.status.as_u16()),
            error: reply.and_then(|r| r.error.clone()),
            fault,
            idempotency_key: call.idempotency_key.clone(),
            write: call.write,
        });
    };

    // Phase 1: faults of the account the token belongs to (valid or not).
    let (subject_hint, plan) = {
        let mut st = shared.lock();
        let subject = st.oauth.subject_of_access(call.token.as_deref());
        let plan = subject
            .as_ref()
            .and_then(|s| st.api_faults.get_mut(s))
            .map(ApiFaults::take)
            .unwrap_or_default();
        (subject, plan)
    };
    let delayed = plan.delay.is_some();
    if let Some(d) = plan.delay {
        let _held = HeldGuard::new(&shared.held);
        tokio::time::sleep(d).await;
    }
    if let Some(action) = plan.action {
        let early = {
            let mut st = shared.lock();
            st.api_calls += 1;
            let now = st.wall_now();
            let (reply, fault) = match action {
                ApiFaultAction::Reset => (None, FaultKind::ConnectionReset),
                ApiFaultAction::ServerError => (
                    Some(P::api_failure(ApiFailure::ServerError, now)),
                    FaultKind::ServerError,
                ),
                ApiFaultAction::RateLimited(d) => (
                    Some(P::api_failure(ApiFailure::RateLimited(d), now)),
                    FaultKind::RateLimited,
                ),
            };
            let reply = reply.map(|mut r| {
                P::decorate(&mut r, st.api_calls, None);
                r
            });
            record_call(&mut st, subject_hint, None, reply.as_ref(), Some(fault));
            reply
        };
        return match early {
            Some(reply) => reply.into_response(),
            None => kill.reset().await,
        };
    }
    let fault = delayed.then_some(FaultKind::Delayed);

    // Phase 2: everything else happens under one lock, without awaiting.
    let (reply, lose) = {
        let mut guard = shared.lock();
        let st = &mut *guard;
        st.api_calls += 1;
        let (now, wall) = (st.now(), st.wall_now());
        let (subject, grant, scopes) = match st.oauth.check_access(call.token.as_deref(), now) {
            AccessCheck::Valid {
                subject,
                grant,
                scopes,
            } => (subject, grant, scopes),
            other => {
                let (failure, subject, grant) = match other {
                    AccessCheck::Missing => (ApiFailure::NotAuthed, None, None),
                    AccessCheck::Unknown => (ApiFailure::InvalidToken, None, None),
                    AccessCheck::Expired { subject, grant } => {
                        (ApiFailure::Expired, Some(subject), Some(grant))
                    }
                    AccessCheck::Revoked { subject, grant } => {
                        (ApiFailure::Revoked, Some(subject), Some(grant))
                    }
                    AccessCheck::Valid { .. } => (ApiFailure::InvalidToken, None, None),
                };
                let mut reply = P::api_failure(failure, wall);
                P::decorate(&mut reply, st.api_calls, None);
                record_call(st, subject, grant, Some(&reply), fault);
                return reply.into_response();
            }
        };
        if let Some(needed) = call.needed
            && !P::has_scope(&scopes, needed)
        {
            let mut reply = P::api_failure(
                ApiFailure::MissingScope {
                    needed,
                    provided: &scopes,
                },
                wall,
            );
            P::decorate(&mut reply, st.api_calls, Some(&scopes));
            record_call(st, Some(subject), Some(grant), Some(&reply), fault);
            return reply.into_response();
        }
        let replay_key = call
            .idempotency_key
            .clone()
            .filter(|_| call.write)
            .map(|k| (subject.clone(), k));
        if let Some(key) = &replay_key
            && let Some((stored, record_id)) = st.idempotency.get(key).cloned()
        {
            let mut reply = stored;
            P::decorate(&mut reply, st.api_calls, Some(&scopes));
            let seq = st.ledger.seq();
            st.ledger.writes.push(WriteRecord {
                seq,
                method: call.method.to_string(),
                path: call.path.clone(),
                idempotency_key: call.idempotency_key.clone(),
                subject: subject.clone(),
                grant,
                record_id,
                replay: true,
                response_lost: false,
                status: reply.status.as_u16(),
            });
            record_call(st, Some(subject), Some(grant), Some(&reply), fault);
            return reply.into_response();
        }
        let login = st
            .oauth
            .users
            .get(&subject)
            .map(|u| u.login.clone())
            .unwrap_or_default();
        let ctx = ApiCtx {
            subject: &subject,
            base_url: &shared.base_url,
            tenant: &shared.tenant,
            scopes: &scopes,
            login: &login,
        };
        let result = op(&mut st.data, &ctx);
        let mut reply = result.reply;
        let mut lose = false;
        if call.write && result.committed {
            lose = st
                .api_faults
                .get_mut(&subject)
                .is_some_and(ApiFaults::take_lose_write);
            if let Some(key) = replay_key {
                st.idempotency
                    .insert(key, (reply.clone(), result.record_id.clone()));
            }
            let seq = st.ledger.seq();
            st.ledger.writes.push(WriteRecord {
                seq,
                method: call.method.to_string(),
                path: call.path.clone(),
                idempotency_key: call.idempotency_key.clone(),
                subject: subject.clone(),
                grant,
                record_id: result.record_id,
                replay: false,
                response_lost: lose,
                status: reply.status.as_u16(),
            });
        }
        P::decorate(&mut reply, st.api_calls, Some(&scopes));
        let fault = if lose {
            Some(FaultKind::ResponseLost)
        } else {
            fault
        };
        record_call(st, Some(subject), Some(grant), Some(&reply), fault);
        (reply, lose)
    };
    if lose {
        return kill.reset().await;
    }
    reply.into_response()
}

/// Seconds since the Unix epoch of a (sandbox) wall-clock time.
pub fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn epoch_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
