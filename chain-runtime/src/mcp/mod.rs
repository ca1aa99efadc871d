//! The MCP server (feature `mcp`, on `rmcp` 3.x): every chain the application adds is a tool,
//! and so is every step it exposes on its own; a call starts a run for the session's principal
//! and answers with the output as structured content.
//!
//! # Protocol versions
//! `2026-07-28` (the `server/discover` lifecycle, per-request metadata, multi-round-trip
//! `InputRequiredResult`s) and `2025-11-25` (the `initialize` lifecycle; consent as the
//! `-32042` error). Over both: tools, progress notifications, URL and form elicitation, and the
//! tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) for clients that declare it.
//!
//! # Tools
//! [`McpServerBuilder::chain`] adds a chain; [`McpServerBuilder::expose_step`] adds one step,
//! which runs as a chain of that one call (journaled, audited, preflight on its scopes, consent
//! and approval as below). The tool has the generated name, description and input and output
//! schemas.
//!
//! # Identity
//! The principal comes from the session, never from tool arguments: over streamable HTTP from
//! the bearer access token (see [`auth`]), over stdio fixed when the server starts.
//!
//! # Consent through the client
//! When a call cannot run yet (preflight finds a missing consent) or its run suspends for
//! re-consent or step-up, the answer is a URL-mode elicitation carrying the consent link:
//! - to clients that negotiated protocol `2026-07-28`, an `InputRequiredResult` (SEP-2322)
//!   whose `requestState` is sealed by rmcp's `RequestStateCodec` (HMAC, expiry) with the
//!   principal and tool as associated data, naming the run to continue;
//! - to clients of `2025-11-25`, the error `-32042` (URL elicitation required) listing the
//!   elicitation; such a client retries without a request state, and the server finds the
//!   pending call by principal, tool and the digest of the arguments.
//!
//! Either way the retry after consent continues the same run (resume of the suspended run, or
//! the first start when preflight had stopped the call), never a second one; a request state
//! presented by another principal is refused.
//!
//! # Tasks
//! A client that declared the tasks extension gets a task from `tools/call` at once and
//! follows the run with `tasks/get`; consent links and approval forms are its
//! `input_required` requests, answered with `tasks/update`; `tasks/cancel` never interrupts a
//! step and leaves the run where it stopped for the same call made again (see the `tasks`
//! module for the mapping of run states).
//!
//! # Progress
//! A call that carries a progress token gets a notification when its run starts and one when
//! it stops (completed, suspended, …).
//!
//! # Results
//! A completed run answers `structuredContent: {"result": <output>}`; a run that failed, was
//! compensated or is blocked answers a tool error (`isError: true`) with the run's classified
//! message; tokens and provider bodies never reach a tool result.

pub mod auth;
mod builder;
mod elicit;
mod state;
mod step_tool;
mod tasks;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    ErrorData, GetTaskParams, GetTaskResult, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool, UpdateTaskParams,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::Value;

use crate::engine::{Engine, EngineError, RunReport};
use crate::future::BoxFuture;
use crate::journal::RunState;
use crate::preflight::ConsentNeeded;
use crate::vault::Vault;

pub use auth::{Identity, ResourceServer, TokenRejection, TokenVerifier};
pub use builder::{McpBuildError, McpServerBuilder};
use state::{PendingCall, StateBook};

/// The JSON-RPC error code of the 2025-11-25 "URL elicitation required" error.
pub const URL_ELICITATION_REQUIRED: i32 = -32042;

/// Arguments larger than this (serialized) are refused.
const MAX_ARGUMENT_BYTES: usize = 256 * 1024;

type StartFn = dyn Fn(Engine, String, Value) -> BoxFuture<'static, Result<RunReport<Value>, EngineError>>
    + Send
    + Sync;

struct ChainTool {
    spec: tools::ToolSpec,
    start: Arc<StartFn>,
}

struct Inner {
    engine: Engine,
    vault: Vault,
    tools: Vec<ChainTool>,
    book: StateBook,
    fixed: Option<Identity>,
    tasks: tasks::TaskBook,
    /// How long a task is kept (and its run followed).
    task_ttl: Duration,
}

/// The MCP server: a cheap-to-clone [`ServerHandler`]. Build it with [`McpServer::builder`].
#[derive(Clone)]
pub struct McpServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field(
                "tools",
                &self
                    .inner
                    .tools
                    .iter()
                    .map(|t| &t.spec.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl McpServer {
    /// A server running chains on `engine`, asking `vault` for consent links.
    pub fn builder(engine: Engine, vault: Vault) -> McpServerBuilder {
        McpServerBuilder::new(engine, vault)
    }

    /// The names of the tools it serves.
    pub fn tool_names(&self) -> Vec<String> {
        self.inner
            .tools
            .iter()
            .map(|t| t.spec.name.clone())
            .collect()
    }

    /// Serves over stdin/stdout until the client disconnects (the principal must have been
    /// fixed with [`McpServerBuilder::principal`]).
    pub async fn serve_stdio(self) -> Result<(), std::io::Error> {
        use rmcp::ServiceExt as _;
        let service = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(std::io::Error::other)?;
        service.waiting().await.map_err(std::io::Error::other)?;
        Ok(())
    }

    /// The streamable HTTP endpoint as an axum router: the MCP service at `path` behind the
    /// bearer check of `resource`, and the RFC 9728 metadata at
    /// `/.well-known/oauth-protected-resource` (and its path-suffixed form). Merge it into the
    /// application's router.
    pub fn http_router(&self, path: &str, resource: ResourceServer) -> axum::Router {
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
        };
        let server = self.clone();
        let mut config = StreamableHttpServerConfig::default();
        config.max_request_body_bytes = MAX_ARGUMENT_BYTES * 2;
        let service = StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let suffixed = format!(
            "/.well-known/oauth-protected-resource{}",
            path.trim_end_matches('/')
        );
        let mut router = axum::Router::new()
            .route_service(path, service)
            .layer(axum::middleware::from_fn_with_state(
                resource.clone(),
                auth::require_bearer,
            ))
            .route(
                "/.well-known/oauth-protected-resource",
                axum::routing::get(auth::metadata),
            );
        if suffixed != "/.well-known/oauth-protected-resource" {
            router = router.route(&suffixed, axum::routing::get(auth::metadata));
        }
        router.with_state(resource)
    }

    fn identity(&self, context: &RequestContext<RoleServer>) -> Option<Identity> {
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Identity>().cloned())
            .or_else(|| self.inner.fixed.clone())
    }

    fn tool(&self, name: &str) -> Option<&ChainTool> {
        self.inner.tools.iter().find(|t| t.spec.name == name)
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let identity = self.identity(&context).ok_or_else(no_principal)?;
        let Some(tool) = self.tool(&request.name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{}`", request.name),
                None,
            ));
        };
        let arguments = request.arguments.clone().unwrap_or_default();
        let size = serde_json::to_vec(&arguments).map(|v| v.len()).unwrap_or(0);
        if size > MAX_ARGUMENT_BYTES {
            return Err(ErrorData::invalid_params(
                format!(
                    "the arguments are {size} bytes; at most {MAX_ARGUMENT_BYTES} are accepted"
                ),
                None,
            ));
        }
        let args_value = Value::Object(arguments.clone());
        let digest = state::digest(&args_value);
        let name = tool.spec.name.clone();
        // A client that declared the tasks extension gets a task at once (a retry that carries
        // a request state continues a call made without one).
        if request.request_state.is_none()
            && context
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks())
        {
            return Ok(CallToolResponse::Task(
                self.start_task(identity, name, arguments, digest),
            ));
        }
        let pending = match &request.request_state {
            Some(sealed) => match self.inner.book.open(sealed, &identity.subject, &name) {
                Some(call) if call.args_digest == digest => Some(call),
                Some(_) => {
                    return Err(ErrorData::invalid_params(
                        "the arguments differ from the call this request state continues",
                        None,
                    ));
                }
                None => {
                    return Err(ErrorData::invalid_request(
                        "the request state is invalid, expired, or belongs to another principal or tool",
                        None,
                    ));
                }
            },
            None => self.inner.book.find(&identity.subject, &name, &digest),
        };
        let progress = context.meta.get_progress_token();
        self.progress(&context, progress.clone(), 0.0, "run started")
            .await;
        let outcome = match pending.as_ref().and_then(|p| p.run_id.clone()) {
            Some(run_id) => self.continue_run(&run_id).await,
            None => {
                (tool.start)(
                    self.inner.engine.clone(),
                    identity.subject.clone(),
                    tools::input_tuple(&tool.spec, &arguments),
                )
                .await
            }
        };
        let call = PendingCall {
            tool: name.clone(),
            principal: identity.subject.clone(),
            run_id: None,
            args_digest: digest.clone(),
        };
        let responses = request.input_responses.as_ref();
        let outcome = match self
            .settle_approvals(outcome, &identity, call, responses, &context)
            .await
        {
            Ok(outcome) => outcome,
            Err(response) => return Ok(response),
        };
        let stand = match &outcome {
            Ok(report) => format!("run {}", report.state.kind()),
            Err(_) => "run not started".to_owned(),
        };
        self.progress(&context, progress, 1.0, &stand).await;
        self.answer(outcome, &identity, &name, digest, &context)
            .await
    }

    /// A progress notification, when the caller asked for them with a progress token.
    async fn progress(
        &self,
        context: &RequestContext<RoleServer>,
        token: Option<rmcp::model::ProgressToken>,
        progress: f64,
        message: &str,
    ) {
        if let Some(token) = token {
            let param = rmcp::model::ProgressNotificationParam::new(token, progress)
                .with_total(1.0)
                .with_message(message);
            let _ = context.peer.notify_progress(param).await;
        }
    }

    /// The consent links (connector, URL) of the consents preflight found missing.
    async fn preflight_links(
        &self,
        subject: &str,
        consents: &[ConsentNeeded],
    ) -> Result<Vec<(String, String)>, String> {
        let mut links = Vec::new();
        for consent in consents {
            let scopes: Vec<&String> = consent.scopes.iter().collect();
            let link = self
                .inner
                .vault
                .consent_link(subject, &consent.connector, &scopes)
                .await
                .map_err(|e| e.to_string())?;
            links.push((consent.connector.clone(), link.url.to_string()));
        }
        Ok(links)
    }

    /// The consent link of a suspended run (re-consent or step-up on one connector).
    async fn resume_links(
        &self,
        subject: &str,
        state: &RunState,
    ) -> Result<Vec<(String, String)>, String> {
        let RunState::Suspended {
            connector,
            consent_scopes,
            consent_params,
            ..
        } = state
        else {
            return Ok(Vec::new());
        };
        let link = self
            .inner
            .vault
            .consent_link_with(subject, connector, consent_scopes, consent_params)
            .await
            .map_err(|e| e.to_string())?;
        Ok(vec![(connector.clone(), link.url.to_string())])
    }

    /// Continues the run a retry names: resumes it when it is still suspended, otherwise
    /// reports where it stands (a finished run is not started again).
    async fn continue_run(&self, run_id: &str) -> Result<RunReport<Value>, EngineError> {
        let engine = &self.inner.engine;
        let run = engine.run_status(run_id).await?;
        match run.state {
            RunState::Suspended { .. } => engine.resume(run_id).await,
            state => Ok(report_of(run_id, state)),
        }
    }

    async fn answer(
        &self,
        outcome: Result<RunReport<Value>, EngineError>,
        identity: &Identity,
        tool: &str,
        args_digest: String,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let pending = |run_id: Option<String>| PendingCall {
            tool: tool.to_owned(),
            principal: identity.subject.clone(),
            run_id,
            args_digest: args_digest.clone(),
        };
        let report = match outcome {
            Ok(report) => report,
            Err(EngineError::PreflightNotReady { consents, .. }) => {
                let links = self
                    .preflight_links(&identity.subject, &consents)
                    .await
                    .map_err(|e| ErrorData::internal_error(e, None))?;
                return self.elicit(pending(None), links, context);
            }
            Err(e) => return Ok(tool_error(&e.to_string())),
        };
        match report.state {
            RunState::Completed { output } => {
                let done = pending(Some(report.run_id.clone()));
                self.inner.book.finish(&done);
                let mut result = CallToolResult::structured(tools::structured_output(output));
                result.meta = None;
                Ok(CallToolResponse::Complete(result))
            }
            state @ RunState::Suspended { .. } => {
                let links = self
                    .resume_links(&identity.subject, &state)
                    .await
                    .map_err(|e| ErrorData::internal_error(e, None))?;
                self.elicit(pending(Some(report.run_id.clone())), links, context)
            }
            state
            @ (RunState::Compensated | RunState::Blocked { .. } | RunState::Failed { .. }) => Ok(
                tool_error(&failure_message(&report.run_id, &state).unwrap_or_default()),
            ),
            RunState::AwaitingApproval(request) => {
                let _ = self.inner.book.seal(&pending(Some(report.run_id.clone())));
                Ok(tool_error(&format!(
                    "run {} waits for a person's approval of `{}` ({}); retry the call after it is decided",
                    report.run_id, request.step, request.reason
                )))
            }
            RunState::Running | RunState::Compensating => Ok(tool_error(&format!(
                "run {} is still being driven elsewhere; retry later",
                report.run_id
            ))),
        }
    }
}

fn report_of(run_id: &str, state: RunState) -> RunReport<Value> {
    let output = match &state {
        RunState::Completed { output } => Some(output.clone()),
        _ => None,
    };
    RunReport {
        run_id: run_id.to_owned(),
        state,
        output,
    }
}

fn no_principal() -> ErrorData {
    ErrorData::invalid_request("no authenticated principal for this session", None)
}

/// The tool error of a run that ended without its output (failed, compensated, blocked).
fn failure_message(run_id: &str, state: &RunState) -> Option<String> {
    match state {
        RunState::Compensated => Some(format!(
            "run {run_id} failed and every completed write was undone"
        )),
        RunState::Blocked { reason } => Some(format!(
            "run {run_id} stopped with partial state an operator must settle: {reason}"
        )),
        RunState::Failed { error } => Some(format!("run {run_id} failed: {error}")),
        _ => None,
    }
}

fn tool_error(message: &str) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(message)]))
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
        .with_instructions(
            "Each tool runs one chain of authorized steps for the signed-in user. When a call answers with a consent link, open it, then retry the call: it continues the same run.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .inner
            .tools
            .iter()
            .map(|t| {
                let mut tool = Tool::new(
                    t.spec.name.clone(),
                    t.spec.description.clone(),
                    t.spec.input_schema.clone(),
                );
                if let Some(out) = &t.spec.output_schema {
                    tool = tool.with_raw_output_schema(out.clone());
                }
                tool
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool(name).map(|t| {
            Tool::new(
                t.spec.name.clone(),
                t.spec.description.clone(),
                t.spec.input_schema.clone(),
            )
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, context).await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let identity = self.identity(&context).ok_or_else(no_principal)?;
        self.task_status(&identity, &request.task_id)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let identity = self.identity(&context).ok_or_else(no_principal)?;
        self.task_update(&identity, &request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let identity = self.identity(&context).ok_or_else(no_principal)?;
        self.task_cancel(&identity, &request.task_id)
    }
}
