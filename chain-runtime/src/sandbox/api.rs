//! The API pipeline of every emulator: faults, token and scope checks, idempotent replay,
//! the provider operation, the ledger, and lost responses.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::endpoints::bearer;
use super::faults::{ApiFaultAction, ApiFaults, FaultKind};
use super::ledger::{CallRecord, GrantId, WriteRecord};
use super::oauth::AccessCheck;
use super::server::ConnKill;
use super::state::{HeldGuard, Shared, StateInner};
use super::wire::{ApiCtx, ApiFailure, ApiReply, OpResult, ProviderImpl};

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

/// What every emulator API handler extracts: the emulator's state, the connection's kill
/// switch, and the request's method, path and headers. [`ApiRequest::run`] sends it through
/// the pipeline.
pub struct ApiRequest<P: ProviderImpl> {
    shared: Arc<Shared<P>>,
    kill: ConnKill,
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl<P: ProviderImpl> FromRequestParts<Arc<Shared<P>>> for ApiRequest<P> {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared<P>>,
    ) -> Result<Self, Self::Rejection> {
        let kill = parts.extensions.get::<ConnKill>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the emulator's connection layer is missing",
        ))?;
        Ok(Self {
            shared: shared.clone(),
            kill,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
        })
    }
}

impl<P: ProviderImpl> ApiRequest<P> {
    /// The emulator's state.
    pub fn shared(&self) -> &Arc<Shared<P>> {
        &self.shared
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The request as the pipeline sees it: a write or a read, needing scope `needed`.
    pub fn call(&self, write: bool, needed: Option<&'static str>) -> ApiCall {
        ApiCall::new(
            self.method.clone(),
            self.path.clone(),
            &self.headers,
            write,
            needed,
        )
    }

    /// Runs `op` through the pipeline as a write or a read needing scope `needed`.
    pub async fn run(
        self,
        write: bool,
        needed: Option<&'static str>,
        op: impl FnOnce(&mut P::Data, &ApiCtx<'_>) -> OpResult,
    ) -> Response {
        let call = self.call(write, needed);
        self.run_call(call, op).await
    }

    /// Runs `op` through the pipeline for a `call` the handler adjusted.
    pub async fn run_call(
        self,
        call: ApiCall,
        op: impl FnOnce(&mut P::Data, &ApiCtx<'_>) -> OpResult,
    ) -> Response {
        run_api(&self.shared, &self.kill, call, op).await
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
            .filter(|_| call.write && P::HONORS_IDEMPOTENCY_KEY)
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
