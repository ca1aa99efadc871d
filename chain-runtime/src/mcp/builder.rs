//! Building the [`McpServer`]: which chains (and single steps) it serves as tools, the key
//! request states are sealed with, and the fixed principal of stdio sessions.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::state::StateBook;
use super::step_tool::StepTool;
use super::{ChainTool, Identity, Inner, McpServer, StartFn, tools};
use crate::agent::Documented;
use crate::context::{Chain, Step};
use crate::engine::{Engine, EngineError, RunReport};
use crate::tool::{ToolInput, ToolType};
use crate::vault::Vault;

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

impl McpServerBuilder {
    pub(super) fn new(engine: Engine, vault: Vault) -> Self {
        Self {
            engine,
            vault,
            tools: Vec::new(),
            key: None,
            ttl: Duration::from_secs(30 * 60),
            fixed: None,
        }
    }

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

    /// Exposes step `S` as a tool of its own, for an application that lets MCP clients call
    /// it directly. The tool has the step's name, doc comment and argument schema; a call runs
    /// the step durably for the session's principal as a one-step chain (journaled, audited,
    /// preflight on the step's scopes, consent elicitation when an account is not connected,
    /// the same run continued by the retry, approval when the step asks for one). A step
    /// without a doc comment or without JSON Schemas for its types does not compile here, as
    /// in a `toolset![...]`. The run's chain is the step's path (`module::step`): a process
    /// that resumes or recovers such runs exposes the same step (which registers it with the
    /// engine).
    pub fn expose_step<S>(self) -> Self
    where
        S: Step + Documented,
        S::Input: ToolInput + Serialize + DeserializeOwned,
        S::Output: ToolType,
        S::Principal: DeserializeOwned,
    {
        self.chain::<StepTool<S>>()
    }

    /// The key request states are sealed with (at least 32 bytes; random when not set, so
    /// pending calls do not survive a restart).
    pub fn request_state_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How long a consent elicitation can be answered by a retry, and how long a task is kept
    /// and its run followed (default 30 minutes).
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
        let mut names = std::collections::BTreeSet::new();
        if let Some(twice) = self.tools.iter().find(|t| !names.insert(&t.spec.name)) {
            return Err(McpBuildError(format!(
                "two tools are named `{}` (a chain and an exposed step, or one added twice)",
                twice.spec.name
            )));
        }
        let book = StateBook::new(key, self.ttl).map_err(McpBuildError)?;
        Ok(McpServer {
            inner: Arc::new(Inner {
                engine: self.engine,
                vault: self.vault,
                tools: self.tools,
                book,
                fixed: self.fixed,
                tasks: super::tasks::TaskBook::default(),
                task_ttl: self.ttl,
            }),
        })
    }
}
