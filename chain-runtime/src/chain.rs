//! Chains: the metadata `#[chain]` records and the context a chain body runs with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exec::{BoxFuture, CallMode, ErasedStepCall, RunDriver};
use crate::graph::DecisionGraph;
use crate::principal::Principal;
use crate::step::{Step, StepError, StepMeta};

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

    /// The scope manifest: per connector, the minimal scope set and who needs each scope.
    pub fn manifest(&'static self) -> crate::manifest::ScopeManifest {
        crate::manifest::ScopeManifest::for_chain(self)
    }
}

/// A chain function, as seen by the runtime. Implemented by `#[chain]` on a marker type that
/// shares the function's name.
pub trait Chain: 'static {
    /// The principal every step of a run acts for.
    type Principal: Principal;
    /// The chain's inputs after the context, as a tuple; journaled so a run can resume.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What the chain returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The chain's metadata.
    const META: ChainMeta;

    /// Runs the chain body.
    #[doc(hidden)]
    fn run(
        ctx: Arc<ChainCtx<Self::Principal>>,
        input: Self::Input,
    ) -> BoxFuture<'static, Result<Self::Output, ChainError>>;
}

/// The context a chain body runs with. Only the runtime creates one; its principal is fixed
/// for the whole run.
pub struct ChainCtx<P> {
    principal: P,
    driver: Arc<dyn RunDriver>,
    site: AtomicU32,
}

impl<P: Principal> std::fmt::Debug for ChainCtx<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainCtx")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl<P: Principal> ChainCtx<P> {
    pub(crate) fn new(principal: P, driver: Arc<dyn RunDriver>) -> Self {
        Self {
            principal,
            driver,
            site: AtomicU32::new(0),
        }
    }

    /// The principal this run acts for.
    pub fn principal(&self) -> &P {
        &self.principal
    }

    /// Runs `produce` once and journals its value under `label`; a resumed run gets the
    /// journaled value back instead of running it again. Use it for everything that can
    /// change the path of the body: a model's choice of the next tool, the clock, randomness.
    pub async fn record<T, F>(&self, label: &str, produce: F) -> Result<T, ChainError>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = T> + Send,
    {
        let produce: BoxFuture<'_, Result<serde_json::Value, StepError>> = Box::pin(async move {
            serde_json::to_value(produce.await)
                .map_err(|e| StepError::Runtime(format!("recorded value does not encode: {e}")))
        });
        let value = self.driver.record(label, produce).await?;
        serde_json::from_value(value).map_err(|e| {
            ChainError::Step(StepError::Runtime(format!(
                "journaled value `{label}` does not decode: {e}"
            )))
        })
    }

    /// Starts chain `C` under another principal (an explicit handoff, such as a co-approval by
    /// a second user) and returns its output. The child run has its own run id, preflight and
    /// audit trail, linked to this run; this run's principal does not change. The child's
    /// result is journaled here like a step's, so a resumed parent does not start it again.
    pub async fn handoff<C: Chain>(
        &self,
        principal: C::Principal,
        input: C::Input,
        reason: &str,
    ) -> Result<C::Output, ChainError> {
        let encode = |what: &str, e: serde_json::Error| {
            ChainError::Step(StepError::Runtime(format!(
                "handoff to `{}`: the {what} does not encode: {e}",
                C::META.name
            )))
        };
        let request = crate::exec::HandoffRequest {
            chain: &C::META,
            register: crate::engine::Engine::register::<C>,
            principal_id: principal.identifier(),
            principal: serde_json::to_value(&principal).map_err(|e| encode("principal", e))?,
            input: serde_json::to_value(&input).map_err(|e| encode("input", e))?,
            reason: reason.to_owned(),
        };
        let value = self.driver.handoff(request).await?;
        serde_json::from_value(value).map_err(|e| {
            ChainError::Step(StepError::Runtime(format!(
                "journaled output of handoff to `{}` does not decode: {e}",
                C::META.name
            )))
        })
    }

    /// The run's driver (model turns dispatch rejected tool calls through it).
    pub(crate) fn driver(&self) -> &dyn RunDriver {
        &*self.driver
    }

    #[doc(hidden)]
    pub fn __at_site(&self, site: u32) -> &Self {
        self.site.store(site, Ordering::Relaxed);
        self
    }

    pub(crate) fn __current_site(&self) -> u32 {
        self.site.load(Ordering::Relaxed)
    }

    pub(crate) fn __execute<S: Step<Principal = P>>(
        &self,
        site: u32,
        input: S::Input,
    ) -> BoxFuture<'_, Result<S::Output, StepError>> {
        let call: ErasedStepCall = Box::new(move |env, mode| {
            Box::pin(async move {
                let output = match mode {
                    CallMode::Run => S::run(env, input).await?,
                    CallMode::ReconcileFirst => S::reconcile_then_run(env, input).await?,
                };
                serde_json::to_value(output)
                    .map_err(|e| StepError::Runtime(format!("step output does not encode: {e}")))
            })
        });
        Box::pin(async move {
            let value = self.driver.step(site, &S::META, call).await?;
            serde_json::from_value(value).map_err(|e| {
                StepError::Runtime(format!(
                    "journaled output of `{}` does not decode: {e}",
                    S::META.name
                ))
            })
        })
    }
}

/// Why a chain run did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A step failed.
    #[error("step failed: {0}")]
    Step(#[from] StepError),
    /// The chain's own logic gave up.
    #[error("{0}")]
    Domain(String),
}

impl ChainError {
    /// A failure of the chain's own logic, with a message for people.
    pub fn domain(message: impl Into<String>) -> Self {
        ChainError::Domain(message.into())
    }
}
