//! The human side of the runtime as a small web server (feature `server`, axum): the OAuth
//! redirect endpoint that completes a consent and resumes the runs that waited on it, and
//! server-rendered HTML pages (no JavaScript) of a principal's runs, one run's timeline with its
//! decision graph, the consent links of suspended runs, and the steps waiting for the
//! principal's approval with approve and deny buttons.
//!
//! Who is looking is the application's business: it supplies an [`Authenticator`] that names
//! the principal of a request (from its session cookie, a header set by a proxy, …). A
//! principal only ever sees their own runs; someone else's run answers 404. Every form carries a
//! CSRF token bound to the principal, and a post without it is refused.
//!
//! ```no_run
//! # async fn demo(engine: chain_runtime::engine::Engine, vault: chain_runtime::vault::Vault,
//! #   audit: std::sync::Arc<dyn chain_runtime::audit::AuditStore>) -> std::io::Result<()> {
//! use chain_runtime::server::{WebServer, FixedPrincipal};
//! let web = WebServer::new(engine, vault, audit, FixedPrincipal::new("alice"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, web.router()).await
//! # }
//! ```

mod approvals;
mod csrf;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::audit::AuditStore;
use crate::engine::Engine;
use crate::future::BoxFuture;
use crate::journal::{RunRecord, RunState};
use crate::vault::Vault;

pub use csrf::CsrfKey;

/// Names the principal a web request comes from, or `None` when it is not signed in.
pub trait Authenticator: Send + Sync + 'static {
    /// The principal identifier of the request, from its headers (session cookie, proxy header…).
    fn principal<'a>(&'a self, request: &'a Parts) -> BoxFuture<'a, Option<String>>;
}

/// Every request is the same principal: for a single-user local tool such as the demo.
#[derive(Clone, Debug)]
pub struct FixedPrincipal(String);

impl FixedPrincipal {
    /// Every request is `principal_id`.
    pub fn new(principal_id: impl Into<String>) -> Self {
        Self(principal_id.into())
    }
}

impl Authenticator for FixedPrincipal {
    fn principal<'a>(&'a self, _request: &'a Parts) -> BoxFuture<'a, Option<String>> {
        Box::pin(std::future::ready(Some(self.0.clone())))
    }
}

/// The principal is the value of a request header set by a trusted proxy in front of the
/// server (for example `X-Forwarded-User`); without the header the request is not signed in.
#[derive(Clone, Debug)]
pub struct TrustedHeader(header::HeaderName);

impl TrustedHeader {
    /// Reads the principal from header `name`.
    pub fn new(name: &'static str) -> Self {
        Self(header::HeaderName::from_static(name))
    }
}

impl Authenticator for TrustedHeader {
    fn principal<'a>(&'a self, request: &'a Parts) -> BoxFuture<'a, Option<String>> {
        let value = request
            .headers
            .get(&self.0)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Box::pin(std::future::ready(value))
    }
}

/// The web server's shared state; build its [`Router`] with [`WebServer::router`].
#[derive(Clone)]
pub struct WebServer {
    pub(crate) engine: Engine,
    pub(crate) vault: Vault,
    pub(crate) audit: Arc<dyn AuditStore>,
    auth: Arc<dyn Authenticator>,
    csrf: CsrfKey,
}

impl std::fmt::Debug for WebServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebServer").finish_non_exhaustive()
    }
}

impl WebServer {
    /// A server over `engine` and `vault`, showing audit answers from `audit`, with requests
    /// authenticated by `auth`. The CSRF key is random (forms do not survive a restart).
    pub fn new(
        engine: Engine,
        vault: Vault,
        audit: Arc<dyn AuditStore>,
        auth: impl Authenticator,
    ) -> Self {
        Self {
            engine,
            vault,
            audit,
            auth: Arc::new(auth),
            csrf: CsrfKey::generate(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The routes: `GET /oauth/callback`, `GET /runs`, `GET /runs/{id}`,
    /// `GET /runs/{id}/graph.svg`, `GET /runs/{id}/consent` (redirects to a fresh consent
    /// link), `POST /runs/{id}/resume`, `GET /approvals` (the steps waiting for the
    /// principal's decision) and `POST /runs/{id}/approvals/{approval}/approve` (or `/deny`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/oauth/callback", get(callback))
            .route("/", get(|| async { Redirect::to("/runs") }))
            .route("/runs", get(runs_page))
            .route("/runs/{id}", get(run_page))
            .route("/runs/{id}/graph.svg", get(run_graph))
            .route("/runs/{id}/consent", get(run_consent))
            .route("/runs/{id}/resume", post(run_resume))
            .route("/approvals", get(approvals::approvals_page))
            .route(
                "/runs/{id}/approvals/{approval}/{verdict}",
                post(approvals::decide),
            )
            .with_state(self.clone())
    }

    /// The principal of a request, or a 401 page.
    async fn who(&self, parts: &Parts) -> Result<String, Response> {
        self.auth
            .principal(parts)
            .await
            .ok_or_else(|| page_error(StatusCode::UNAUTHORIZED, "Sign in to see your runs."))
    }

    /// The run, if it exists and belongs to `principal` (someone else's run is "not found").
    async fn own_run(&self, principal: &str, run_id: &str) -> Result<RunRecord, Response> {
        match self.engine.run_status(run_id).await {
            Ok(run) if run.principal_id == principal => Ok(run),
            _ => Err(page_error(StatusCode::NOT_FOUND, "No such run.")),
        }
    }

    /// Resumes every suspended run of `principal` that waits on `connector`; returns each
    /// run id with its new state or why it did not resume.
    pub async fn resume_waiting(
        &self,
        principal: &str,
        connector: &str,
    ) -> Vec<(String, Result<String, String>)> {
        match self.engine.resume_waiting(principal, connector).await {
            Ok(runs) => runs
                .into_iter()
                .map(|(run_id, result)| {
                    let result = result
                        .map(|state| state.kind().to_owned())
                        .map_err(|e| e.to_string());
                    (run_id, result)
                })
                .collect(),
            Err(e) => {
                tracing::error!(principal, connector, error = %e, "could not list the runs waiting on a consent");
                Vec::new()
            }
        }
    }
}

/// An HTML error page with `status`.
pub(crate) fn page_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        pages::html(pages::shell("Error", &pages::paragraph(message))),
    )
        .into_response()
}

/// The query of the provider's redirect.
#[derive(Debug, Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(web): State<WebServer>,
    parts: Parts,
    Query(q): Query<CallbackQuery>,
) -> Response {
    // Consent completes only for the signed-in principal the link was issued to: a link
    // followed by someone else is refused before the code exchange.
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(state) = &q.state else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "The redirect carries no state: it did not come from a consent link of this server.",
        );
    };
    if let Some(error) = &q.error {
        let text = match web.vault.fail_consent(&principal, state, error).await {
            Ok(denied) => format!("The provider did not grant access: {denied}."),
            Err(e) => format!("Consent failed: {e}"),
        };
        return page_error(StatusCode::BAD_REQUEST, &text);
    }
    let Some(code) = &q.code else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "The redirect carries neither a code nor an error.",
        );
    };
    let account = match web.vault.complete_consent(&principal, state, code).await {
        Ok(account) => account,
        Err(e) => return page_error(StatusCode::BAD_REQUEST, &format!("Consent failed: {e}")),
    };
    let resumed = web
        .resume_waiting(&account.principal_id, &account.connector)
        .await;
    pages::html(pages::connected(&account.connector, &resumed)).into_response()
}

async fn runs_page(State(web): State<WebServer>, parts: Parts) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let runs = match web.engine.list_runs().await {
        Ok(runs) => runs,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mine: Vec<RunRecord> = runs
        .into_iter()
        .filter(|r| r.principal_id == principal)
        .collect();
    pages::html(pages::runs(&principal, &mine)).into_response()
}

async fn run_page(State(web): State<WebServer>, Path(id): Path<String>, parts: Parts) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let run = match web.own_run(&principal, &id).await {
        Ok(run) => run,
        Err(r) => return r,
    };
    let journal = web.engine.store().journal(&id).await.unwrap_or_default();
    let history = web.audit.run_history(&id).await.unwrap_or_default();
    let csrf = web.csrf.token(&principal);
    let now = web.engine.approval_policy().now_unix_ms();
    pages::html(pages::run(&run, &journal, &history, &csrf, now)).into_response()
}

async fn run_graph(State(web): State<WebServer>, Path(id): Path<String>, parts: Parts) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let run = match web.own_run(&principal, &id).await {
        Ok(run) => run,
        Err(r) => return r,
    };
    let journal = web.engine.store().journal(&id).await.unwrap_or_default();
    let Some(svg) = pages::run_svg(&run, &journal) else {
        return page_error(
            StatusCode::NOT_FOUND,
            "This run's chain is not in this binary.",
        );
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("image/svg+xml"),
        )],
        svg,
    )
        .into_response()
}

async fn run_consent(
    State(web): State<WebServer>,
    Path(id): Path<String>,
    parts: Parts,
) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let run = match web.own_run(&principal, &id).await {
        Ok(run) => run,
        Err(r) => return r,
    };
    let RunState::Suspended {
        connector,
        consent_scopes,
        consent_params,
        ..
    } = &run.state
    else {
        return page_error(
            StatusCode::CONFLICT,
            "This run does not wait for a consent.",
        );
    };
    match web
        .vault
        .consent_link_with(&principal, connector, consent_scopes, consent_params)
        .await
    {
        Ok(link) => Redirect::to(link.url.as_str()).into_response(),
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A form post: only the CSRF token.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn run_resume(
    State(web): State<WebServer>,
    Path(id): Path<String>,
    parts: Parts,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let principal = match web.who(&parts).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !web.csrf.verify(&principal, &token) {
        return page_error(
            StatusCode::FORBIDDEN,
            "This form is missing its CSRF token or the token is not yours; reload the page and try again.",
        );
    }
    if let Err(r) = web.own_run(&principal, &id).await {
        return r;
    }
    match web.engine.resume(&id).await {
        Ok(_) => Redirect::to(&format!("/runs/{}", pages::url_segment(&id))).into_response(),
        Err(e) => page_error(StatusCode::CONFLICT, &format!("Not resumed: {e}")),
    }
}
