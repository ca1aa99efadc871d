//! The MCP server (feature `mcp`, on `rmcp` 3.x): every chain the application adds is a tool;
//! a call starts a run for the session's principal and answers with the chain's output as
//! structured content.
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
//! # Progress
//! A call that carries a progress token gets a notification when its run starts and one when
//! it stops (completed, suspended, …).
//!
//! # Results
//! A completed run answers `structuredContent: {"result": <output>}`; a run that failed, was
//! compensated or is blocked answers a tool error (`isError: true`) with the run's classified
//! message; tokens and provider bodies never reach a tool result.

pub mod auth;
mod elicit;
mod state;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::Value;

use crate::context::Chain;
use crate::engine::{Engine, EngineError, RunReport};
use crate::future::BoxFuture;
use crate::journal::RunState;
use crate::vault::Vault;

pub use auth::{Identity, ResourceServer, TokenRejection, TokenVerifier};
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

/// Builds an [`McpServer`].
pub struct McpServerBuilder {
    engine: Engine,
    vault: Vault,
    tools: Vec<ChainTool>,
    key: Option<Vec<u8>>,
    ttl: Duration,
    fixed: Option<Identity>,
}

impl std::fmt::Debug for McpServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServerBuilder").finish_non_exhaustive()
    }
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
#[error("MCP server: {0}")]
pub struct McpBuildError(String);

impl McpServer {
    /// A server running chains on `engine`, asking `vault` for consent links.
    pub fn builder(engine: Engine, vault: Vault) -> McpServerBuilder {
        McpServerBuilder {
            engine,
            vault,
            tools: Vec::new(),
            key: None,
            ttl: Duration::from_secs(30 * 60),
            fixed: None,
        }
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
        let Some(identity) = self.identity(&context) else {
            return Err(ErrorData::invalid_request(
                "no authenticated principal for this session",
                None,
            ));
        };
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
                let mut links = Vec::new();
                for consent in &consents {
                    let scopes: Vec<&String> = consent.scopes.iter().collect();
                    let link = self
                        .inner
                        .vault
                        .consent_link(&identity.subject, &consent.connector, &scopes)
                        .await
                        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                    links.push((consent.connector.clone(), link.url.to_string()));
                }
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
            RunState::Suspended {
                connector,
                consent_scopes,
                consent_params,
                ..
            } => {
                let link = self
                    .inner
                    .vault
                    .consent_link_with(
                        &identity.subject,
                        &connector,
                        &consent_scopes,
                        &consent_params,
                    )
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                self.elicit(
                    pending(Some(report.run_id.clone())),
                    vec![(connector, link.url.to_string())],
                    context,
                )
            }
            RunState::Compensated => Ok(tool_error(&format!(
                "run {} failed and every completed write was undone",
                report.run_id
            ))),
            RunState::Blocked { reason } => Ok(tool_error(&format!(
                "run {} stopped with partial state an operator must settle: {reason}",
                report.run_id
            ))),
            RunState::Failed { error } => Ok(tool_error(&format!(
                "run {} failed: {error}",
                report.run_id
            ))),
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

fn tool_error(message: &str) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(message)]))
}

impl McpServerBuilder {
    /// Exposes chain `C` as a tool. The principal is built from the session's subject
    /// (`C::Principal` must deserialize from the subject string, as a newtype over `String`
    /// does); the chain is registered with the engine.
    pub fn chain<C: Chain>(mut self) -> Self
    where
        C::Principal: serde::de::DeserializeOwned,
    {
        self.engine.register::<C>();
        let start: Arc<StartFn> = Arc::new(|engine: Engine, subject: String, input: Value| {
            Box::pin(async move {
                let principal: C::Principal = serde_json::from_value(Value::String(subject))
                    .map_err(|e| {
                        EngineError::Codec(format!(
                            "the session's principal does not fit the chain: {e}"
                        ))
                    })?;
                let input: C::Input = serde_json::from_value(input).map_err(|e| {
                    EngineError::Codec(format!(
                        "the arguments do not fit the chain's parameters: {e}"
                    ))
                })?;
                let report = engine.start::<C>(principal, input).await?;
                let output = report
                    .output
                    .map(|o| serde_json::to_value(o).unwrap_or(Value::Null));
                Ok(RunReport {
                    run_id: report.run_id,
                    state: report.state,
                    output,
                })
            })
        });
        self.tools.push(ChainTool {
            spec: tools::tool_spec(&C::META),
            start,
        });
        self
    }

    /// The key request states are sealed with (at least 32 bytes; random when not set, so
    /// pending calls do not survive a restart).
    pub fn request_state_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How long a consent elicitation can be answered by a retry (default 30 minutes).
    pub fn request_state_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Fixes the principal of every session (stdio: the user who started the server).
    pub fn principal(mut self, subject: impl Into<String>) -> Self {
        self.fixed = Some(Identity::new(subject));
        self
    }

    /// The server.
    pub fn build(self) -> Result<McpServer, McpBuildError> {
        let key = match self.key {
            Some(k) => k,
            None => {
                let mut k = vec![0u8; 32];
                rand::fill(&mut k[..]);
                k
            }
        };
        let book = StateBook::new(key, self.ttl).map_err(McpBuildError)?;
        Ok(McpServer {
            inner: Arc::new(Inner {
                engine: self.engine,
                vault: self.vault,
                tools: self.tools,
                book,
                fixed: self.fixed,
            }),
        })
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
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
}
