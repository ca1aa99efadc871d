//! Chains as the runtime sees them: the metadata `#[chain]` records, with the erased entry
//! point the engine runs a chain body through, and the [`RunDriver`] seam a running body
//! calls back into for every step, recorded value and handoff.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

pub use crate::error::ChainError;
use crate::future::BoxFuture;
use crate::graph::DecisionGraph;
use crate::step::{ErasedStepCall, StepError, StepMeta};

/// What a run does when a step fails for an authorization reason the runtime cannot fix by
/// itself (revoked grant, missing scope, step-up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailurePolicy {
    /// Keep completed writes, suspend the run with a consent link, resume after re-consent.
    #[default]
    Suspend,
    /// Undo completed writes in reverse order under the same identity.
    Compensate,
}

/// Everything `#[chain]` records about a chain, available at compile time.
#[derive(Debug, Serialize)]
pub struct ChainMeta {
    /// The function name.
    pub name: &'static str,
    /// The module path it is defined in.
    pub module: &'static str,
    /// The principal type, as written.
    pub principal: &'static str,
    /// What happens on an unrecoverable authorization failure.
    pub on_auth_failure: AuthFailurePolicy,
    /// Every step the body can reach, in order of first appearance, without repeats.
    /// Compensators are reached through [`StepMeta::compensator`].
    #[serde(serialize_with = "serialize_step_names")]
    pub steps: &'static [&'static StepMeta],
    /// The body's control flow between step call sites.
    pub graph: DecisionGraph,
    /// Runs the body from its journaled principal and input; see [`ErasedChainRun`].
    #[serde(skip)]
    #[doc(hidden)]
    pub run: ErasedChainRun,
    /// The doc comment: the description of the chain as one tool.
    pub description: Option<&'static str>,
    /// The parameter names after the context.
    pub params: &'static [&'static str],
    /// The JSON Schemas of the inputs and output, when the types implement `JsonSchema`.
    #[serde(skip)]
    #[doc(hidden)]
    pub tool: fn() -> Option<crate::tool::ToolSchemas>,
    /// Bounds on model turns and tool calls per run (chain policy).
    pub tool_limits: crate::tool::ToolLimits,
}

fn serialize_step_names<S: serde::Serializer>(
    steps: &&'static [&'static StepMeta],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(steps.iter().map(|s| s.name))
}

impl ChainMeta {
    /// `module::name`.
    pub fn path(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }

    /// The whole chain as one tool; `None` when its types have no JSON Schema.
    pub fn tool_definition(&self) -> Option<crate::tool::ToolDefinition> {
        (self.tool)().map(|s| crate::tool::ToolDefinition::new(self.name, self.description, s))
    }

    /// The tool definitions of every step the chain can reach (written calls and toolsets),
    /// in order; steps whose types have no JSON Schema are named in the second list.
    pub fn step_tools(&self) -> (Vec<crate::tool::ToolDefinition>, Vec<&'static str>) {
        let mut defs = Vec::new();
        let mut missing = Vec::new();
        for step in self.steps {
            match step.tool_definition() {
                Some(def) => defs.push(def),
                None => missing.push(step.name),
            }
        }
        (defs, missing)
    }
}

/// A chain body with its types erased: decodes the journaled principal and input (an `Err`
/// says why they do not decode), then returns the body's future, which calls back into
/// `driver` for every step and yields the output as JSON. `#[chain]` fills it in.
pub type ErasedChainRun = fn(
    driver: Arc<dyn RunDriver>,
    principal: &Value,
    input: &Value,
) -> Result<BoxFuture<'static, Result<Value, ChainError>>, String>;

/// Runs the steps of one chain run. Implemented by the engine.
pub trait RunDriver: Send + Sync {
    /// Executes the step call made at decision-graph `site`: returns its journaled output
    /// when the run already completed it, otherwise runs `call` and journals the result.
    fn step<'a>(
        &'a self,
        site: u32,
        meta: &'static StepMeta,
        call: ErasedStepCall,
    ) -> BoxFuture<'a, Result<Value, StepError>>;

    /// Journals a value the chain body depends on (a model's choice, the clock), or returns
    /// the journaled one on replay.
    fn record<'a>(
        &'a self,
        label: &'a str,
        produce: BoxFuture<'a, Result<Value, StepError>>,
    ) -> BoxFuture<'a, Result<Value, StepError>>;

    /// Before a step with `approval = "..."` runs: returns when a person approved this call
    /// with exactly these `arguments` (journaled, so a replay does not ask again), and an
    /// error when the approval was denied, expired, or given for other arguments. A run that
    /// must wait for the decision stops here. Drivers that cannot ask refuse.
    fn approval<'a>(
        &'a self,
        site: u32,
        meta: &'static StepMeta,
        arguments: Vec<Value>,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let _ = (site, arguments);
        Box::pin(async move {
            Err(StepError::Runtime(format!(
                "step `{}` needs a person's approval, which this run driver cannot ask for; run the chain with the engine",
                meta.name
            )))
        })
    }

    /// Starts a child chain under another principal (an explicit handoff, e.g. a co-approval)
    /// and returns its output; journaled in the parent like a step. The parent's principal
    /// does not change. Drivers that cannot hand off refuse.
    fn handoff<'a>(&'a self, request: HandoffRequest) -> BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(async move {
            Err(StepError::Runtime(format!(
                "this run driver cannot hand off to `{}`; run the chain with the engine",
                request.chain.name
            )))
        })
    }
}

/// A request to start a child chain under another principal; built by
/// [`crate::ChainCtx::handoff`].
pub struct HandoffRequest {
    /// The child chain's metadata (with its entry point).
    pub chain: &'static ChainMeta,
    /// The child's principal as JSON.
    pub principal: Value,
    /// The child's principal identifier.
    pub principal_id: String,
    /// The child's input as JSON.
    pub input: Value,
    /// Why the handoff happens, in words (audited).
    pub reason: String,
}

impl std::fmt::Debug for HandoffRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffRequest")
            .field("chain", &self.chain.name)
            .field("principal_id", &self.principal_id)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}
