//! What step and chain code runs with, and the traits `#[step]`, `#[compensator]` and
//! `#[chain]` implement: the contexts ([`StepCtx`], [`ChainCtx`]) and the typed entry points
//! ([`Step`], [`Compensator`], [`Chain`]) the erased ones in the metadata call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::chain::{ChainError, ChainMeta, HandoffRequest, RunDriver};
use crate::connector::StepHttp;
use crate::future::BoxFuture;
use crate::principal::Principal;
use crate::step::{CompensatorMeta, RecordRef, StepEnv, StepError, StepMeta};

mod call;

pub use call::{
    ApprovalArguments, Body, StepCall, StepFuture, StepRun, boxed, run_compensator, run_step,
};

/// The context a step body runs with: who it acts for, its idempotency key, and the
/// records it touched. Step code never sees a credential.
pub struct StepCtx<P> {
    principal: P,
    env: StepEnv,
    http: Option<StepHttp>,
}

impl<P: Principal> std::fmt::Debug for StepCtx<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCtx")
            .field("principal", &self.principal)
            .field("step_id", &self.env.step_id)
            .finish_non_exhaustive()
    }
}

impl<P: Principal> StepCtx<P> {
    #[doc(hidden)]
    pub fn __from_env(env: StepEnv) -> Result<Self, StepError> {
        let principal = serde_json::from_value(env.principal.clone())
            .map_err(|e| StepError::Runtime(format!("principal does not decode: {e}")))?;
        let http = env
            .access
            .clone()
            .map(|access| StepHttp::new(access, &env.idempotency_key, env.no_resend));
        Ok(Self {
            principal,
            env,
            http,
        })
    }

    /// A context over `env` for `principal`, for unit tests.
    #[cfg(feature = "test-util")]
    pub(crate) fn for_test(principal: P, env: StepEnv) -> Self {
        let http = env
            .access
            .clone()
            .map(|access| StepHttp::new(access, &env.idempotency_key, env.no_resend));
        Self {
            principal,
            env,
            http,
        }
    }

    /// The principal this step acts for.
    pub fn principal(&self) -> &P {
        &self.principal
    }

    /// A key that is the same on every retry and resume of this step execution; send it as
    /// an `Idempotency-Key` header or store it as an external id.
    pub fn idempotency_key(&self) -> &str {
        &self.env.idempotency_key
    }

    /// The stable id of this step execution: `chain/step#n`.
    pub fn step_id(&self) -> &str {
        &self.env.step_id
    }

    /// The HTTP client for this step's connector: the run principal's credential is injected
    /// and the failure policy applied. Fails when the runtime was started without a vault.
    pub fn http(&self) -> Result<&StepHttp, StepError> {
        self.http.as_ref().ok_or_else(|| {
            StepError::Runtime(format!(
                "step `{}` has no HTTP client for `{}`: give the engine a vault",
                self.env.step_id, self.env.connector
            ))
        })
    }

    /// The run this step execution belongs to.
    pub fn run_id(&self) -> &str {
        &self.env.run_id
    }

    /// The connector whose account the step uses.
    pub fn connector(&self) -> &'static str {
        self.env.connector
    }

    /// Declares an external record this step read or wrote, for the audit trail.
    pub fn touch(&self, record: RecordRef) {
        self.env.touch(record);
    }
}

/// A step function, as seen by the runtime. Implemented by `#[step]` on a marker type that
/// shares the function's name.
pub trait Step: 'static {
    /// The principal the step runs as.
    type Principal: Principal;
    /// The step's inputs after the context, as a tuple.
    type Input: Send + 'static;
    /// What the step returns on success; journaled, so it must round-trip through serde.
    type Output: Serialize + serde::de::DeserializeOwned + Send + 'static;
    /// The step's metadata.
    const META: StepMeta;

    /// Runs the step body with a fresh context built from `env`.
    #[doc(hidden)]
    fn run(env: StepEnv, input: Self::Input)
    -> BoxFuture<'static, Result<Self::Output, StepError>>;

    /// After an attempt with an unknown outcome: the step's `reconcile` hook, which asks
    /// whether the write happened (returning what it produced) and runs the body only when
    /// it did not. `None` (no hook): the body runs.
    #[doc(hidden)]
    const RECONCILE: Option<StepRun<Self::Input, Self::Output>> = None;

    /// For a step with `approval = "..."`: encodes its arguments as JSON, in parameter order,
    /// as the approver sees them and as their digest binds the approval.
    #[doc(hidden)]
    const APPROVAL: Option<ApprovalArguments<Self::Input>> = None;
}

/// Proof that a step may run in a chain whose principal is `P`.
///
/// `#[step]` implements it for exactly the principal of the step's context, so a call from a
/// chain with another principal does not compile.
#[diagnostic::on_unimplemented(
    message = "step `{Self}` cannot run in a chain whose principal is `{P}`",
    label = "this step is declared for another principal",
    note = "every step a #[chain] calls must take `&StepCtx<{P}>`: one identity authorizes the whole chain",
    note = "to act for a second user, hand off to a second chain explicitly"
)]
pub trait StepFor<P: Principal>: Step<Principal = P> {
    /// Narrows the chain context to the step's own principal type (the identity function).
    #[doc(hidden)]
    fn narrow(ctx: &ChainCtx<P>) -> &ChainCtx<Self::Principal> {
        ctx
    }

    /// Marks the call site a chain body calls this step from; `#[chain]` wraps every step
    /// call's context argument in it.
    #[doc(hidden)]
    fn at_site(ctx: &ChainCtx<P>, site: u32) -> &ChainCtx<Self::Principal> {
        ctx.__at_site(site)
    }
}

/// A compensator function, as seen by the runtime. Implemented by `#[compensator]`.
pub trait Compensator: 'static {
    /// The principal the compensator runs as.
    type Principal: Principal;
    /// The forward step's output it takes (without a reference).
    type Input: serde::de::DeserializeOwned + Send + 'static;
    /// Its metadata.
    const META: CompensatorMeta;

    /// Runs the compensator body with a fresh context built from `env`.
    #[doc(hidden)]
    fn run(env: StepEnv, input: Self::Input) -> BoxFuture<'static, Result<(), StepError>>;

    /// [`Compensator::run`] with the input still as the journaled JSON.
    #[doc(hidden)]
    fn run_erased(
        env: StepEnv,
        output: serde_json::Value,
    ) -> BoxFuture<'static, Result<(), StepError>> {
        call::compensate_json(env, output, Self::run, Self::META.name)
    }
}

/// Proof that a compensator can undo a step whose output is `O` and principal is `P`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot undo a step that returns `{O}` for principal `{P}`",
    label = "compensator does not match this step",
    note = "a compensator takes the step's output (`{O}` or `&{O}`) and `&StepCtx<{P}>`, and is marked #[compensator(...)]"
)]
pub trait Undoes<O, P>: Compensator {
    /// Evaluated by `#[step]` to check the pairing at compile time.
    #[doc(hidden)]
    const CHECKED: () = ();
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
    usage: ToolUsage,
}

/// What one run of a chain body has used of its model-turn and tool-call limits (the chain's
/// `max_model_turns`, `max_tool_calls`, `max_rejected_tool_calls`), over all its
/// conversations. A replay re-runs the body from the start, so it counts the same again.
#[derive(Debug, Default)]
pub(crate) struct ToolUsage {
    /// Model turns taken.
    pub(crate) turns: AtomicU32,
    /// Tool calls the models made.
    pub(crate) calls: AtomicU32,
    /// Tool calls refused (unknown tool, invalid arguments).
    pub(crate) rejected: AtomicU32,
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
            usage: ToolUsage::default(),
        }
    }

    /// What this run has used of its model-turn and tool-call limits.
    pub(crate) fn usage(&self) -> &ToolUsage {
        &self.usage
    }

    /// The principal this run acts for.
    pub fn principal(&self) -> &P {
        &self.principal
    }

    /// The run's driver (model turns dispatch rejected tool calls through it).
    pub(crate) fn driver(&self) -> &dyn RunDriver {
        &*self.driver
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
    /// `input` is taken as by [`Engine::start`](crate::engine::Engine::start): the value itself
    /// for a chain with one parameter, else the tuple.
    pub async fn handoff<C: Chain>(
        &self,
        principal: C::Principal,
        input: impl crate::IntoInput<C::Input>,
        reason: &str,
    ) -> Result<C::Output, ChainError> {
        let input: C::Input = input.into_input();
        let encode = |what: &str, e: serde_json::Error| {
            ChainError::Step(StepError::Runtime(format!(
                "handoff to `{}`: the {what} does not encode: {e}",
                C::META.name
            )))
        };
        let request = HandoffRequest {
            chain: &C::META,
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

    #[doc(hidden)]
    pub fn __at_site(&self, site: u32) -> &Self {
        self.site.store(site, Ordering::Relaxed);
        self
    }
}

/// The erased entry point of chain `C` (what `#[chain]` puts in [`ChainMeta::run`]): decodes
/// the journaled principal and input, and runs the body with a context on `driver`.
#[doc(hidden)]
pub fn run_erased<C: Chain>(
    driver: Arc<dyn RunDriver>,
    principal: &Value,
    input: &Value,
) -> Result<BoxFuture<'static, Result<Value, ChainError>>, String> {
    let principal: C::Principal = serde_json::from_value(principal.clone()).map_err(|e| {
        format!(
            "stored principal does not decode as `{}`: {e}",
            C::META.principal
        )
    })?;
    let input: C::Input = serde_json::from_value(input.clone())
        .map_err(|e| format!("stored input does not decode: {e}"))?;
    let ctx = Arc::new(ChainCtx::new(principal, driver));
    Ok(Box::pin(async move {
        let output = C::run(ctx, input).await?;
        serde_json::to_value(output).map_err(|e| {
            ChainError::Step(StepError::Runtime(format!(
                "chain output does not encode: {e}"
            )))
        })
    }))
}
