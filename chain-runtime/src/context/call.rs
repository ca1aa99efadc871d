//! How a step call runs: the glue between the code `#[step]`, `#[compensator]` and `#[chain]`
//! generate and the run's driver.
//!
//! None of it is generic over the step itself, only over its principal, input and output
//! types: steps of the same types share one copy of the compiled code, and what the macros
//! generate per step stays a few lines (the step's own body, a wrapper that builds a
//! [`StepCall`], its metadata). The rare cases (approval, reconcile) are plain function
//! pointers in the [`Step`] impl.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ChainCtx, Step, StepCtx};
use crate::__private::StepReturn;
use crate::chain::RunDriver;
use crate::future::BoxFuture;
use crate::principal::Principal;
use crate::step::{CallMode, ErasedStepCall, StepEnv, StepError, StepMeta};

/// A step's typed entry point: its body, run with a context built from the environment.
pub type StepRun<I, O> = fn(StepEnv, I) -> BoxFuture<'static, Result<O, StepError>>;

/// Encodes the arguments of a step that needs approval, in parameter order.
pub type ApprovalArguments<I> = fn(&I) -> Result<Vec<Value>, StepError>;

/// A step call made from a chain body, not yet awaited. `.await` it in the chain.
///
/// The chain body awaits every step call where it makes it (`#[chain]` checks this), so the
/// call site the chain context holds when the call is awaited is the one it was made at.
#[must_use = "a step does nothing until it is awaited"]
pub struct StepCall<'c, S: Step> {
    ctx: &'c ChainCtx<S::Principal>,
    input: S::Input,
}

impl<'c, S: Step> StepCall<'c, S> {
    #[doc(hidden)]
    pub fn __new(ctx: &'c ChainCtx<S::Principal>, input: S::Input) -> Self {
        Self { ctx, input }
    }
}

impl<'c, S: Step> std::future::IntoFuture for StepCall<'c, S> {
    type Output = Result<S::Output, StepError>;
    type IntoFuture = StepFuture<'c, S::Output>;

    // One call, with the step's constants: this is compiled once per step, everything it
    // calls once per input and output types.
    fn into_future(self) -> Self::IntoFuture {
        execute_at_site::<S::Input, S::Output>(
            &self.ctx.site,
            &self.ctx.driver,
            &S::META,
            self.input,
            S::run,
            S::RECONCILE,
            S::APPROVAL,
        )
    }
}

impl<P: Principal> ChainCtx<P> {
    /// Runs step `S` at call site `site` through the run's driver.
    pub(crate) fn __execute<S: Step<Principal = P>>(
        &self,
        site: u32,
        input: S::Input,
    ) -> StepFuture<'_, S::Output> {
        execute::<S::Input, S::Output>(
            self.driver(),
            site,
            &S::META,
            input,
            [S::run, S::RECONCILE.unwrap_or(S::run)],
            S::APPROVAL,
        )
    }
}

/// [`execute`] at the call site the chain context holds.
fn execute_at_site<'a, I, O>(
    site: &AtomicU32,
    driver: &'a Arc<dyn RunDriver>,
    meta: &'static StepMeta,
    input: I,
    run: StepRun<I, O>,
    reconcile: Option<StepRun<I, O>>,
    approval: Option<ApprovalArguments<I>>,
) -> StepFuture<'a, O>
where
    I: Send + 'static,
    O: Serialize + Send + 'static,
{
    let site = site.load(Ordering::Relaxed);
    let run = [run, reconcile.unwrap_or(run)];
    execute(&**driver, site, meta, input, run, approval)
}

/// Runs a step of input `I` and output `O` through `driver`: asks for its approval first if
/// it needs one, then has the driver journal the call, which runs `run[0]` (or `run[1]` when
/// an earlier attempt's outcome is unknown: the reconcile hook, or the body again).
fn execute<'a, I, O>(
    driver: &'a dyn RunDriver,
    site: u32,
    meta: &'static StepMeta,
    input: I,
    run: [StepRun<I, O>; 2],
    approval: Option<ApprovalArguments<I>>,
) -> StepFuture<'a, O>
where
    I: Send + 'static,
    O: Serialize + Send + 'static,
{
    // A step that needs approval: its arguments, encoded before the call, are what the
    // approver sees and what the approval is bound to.
    let arguments = match (meta.approval, approval) {
        (None, _) => None,
        (Some(_), Some(encode)) => Some(encode(&input)),
        (Some(_), None) => Some(Ok(Vec::new())),
    };
    let call: ErasedStepCall = Box::new(move |env, mode| {
        let [body, reconcile] = run;
        let output = match mode {
            CallMode::Run => body(env, input),
            CallMode::ReconcileFirst => reconcile(env, input),
        };
        Box::pin(EncodeOutput { inner: output })
    });
    StepFuture {
        inner: journaled(driver, site, meta, arguments, call),
        step: meta.name,
        output: PhantomData,
    }
}

/// The approval (when the step needs one), then the journaled call.
fn journaled<'a>(
    driver: &'a dyn RunDriver,
    site: u32,
    meta: &'static StepMeta,
    arguments: Option<Result<Vec<Value>, StepError>>,
    call: ErasedStepCall,
) -> BoxFuture<'a, Result<Value, StepError>> {
    match arguments {
        None => driver.step(site, meta, call),
        Some(arguments) => Box::pin(async move {
            driver.approval(site, meta, arguments?).await?;
            driver.step(site, meta, call).await
        }),
    }
}

/// A future that has already failed with `error`.
fn failed<T: Send + 'static>(error: StepError) -> BoxFuture<'static, Result<T, StepError>> {
    Box::pin(std::future::ready(Err(error)))
}

/// A step's output, encoded as JSON for the journal when the step body finishes.
struct EncodeOutput<O> {
    inner: BoxFuture<'static, Result<O, StepError>>,
}

impl<O: Serialize> Future for EncodeOutput<O> {
    type Output = Result<Value, StepError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let output = ready!(self.inner.as_mut().poll(cx))?;
        Poll::Ready(
            serde_json::to_value(output)
                .map_err(|e| StepError::Runtime(format!("step output does not encode: {e}"))),
        )
    }
}

/// The future of a step call in a chain body (what `.await` on a step call runs): the
/// driver's journaled call, with the output decoded from the journal's JSON.
#[must_use = "a step does nothing until it is awaited"]
pub struct StepFuture<'a, O> {
    inner: BoxFuture<'a, Result<Value, StepError>>,
    step: &'static str,
    output: PhantomData<fn() -> O>,
}

impl<O> std::fmt::Debug for StepFuture<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepFuture")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<O: DeserializeOwned> Future for StepFuture<'_, O> {
    type Output = Result<O, StepError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let value = ready!(self.inner.as_mut().poll(cx))?;
        Poll::Ready(serde_json::from_value(value).map_err(|e| {
            StepError::Runtime(format!(
                "journaled output of `{}` does not decode: {e}",
                self.step
            ))
        }))
    }
}

/// A step or compensator body as `#[step]` and `#[compensator]` rewrite it: it borrows its
/// context, takes its inputs by value and returns its future boxed. The context is owned by
/// the runtime's future around it ([`run_step`], [`run_compensator`]), one generic future per
/// principal, input and output types, so the body's own future (compiled per step) neither
/// owns nor drops it.
pub type Body<P, I, R> = for<'a> fn(&'a StepCtx<P>, I) -> BoxFuture<'a, R>;

/// Boxes the future of a rewritten body. The bound gives the body's `async` block its output
/// type (so `?` and `return` in it work as in the `async fn` the user wrote).
#[doc(hidden)]
pub fn boxed<'a, R, F>(future: F) -> BoxFuture<'a, R>
where
    F: Future<Output = R> + Send + 'a,
{
    Box::pin(future)
}

/// Runs a step body with a context built from `env`.
#[doc(hidden)]
pub fn run_step<P: Principal, I: Send + 'static, R: StepReturn<Ok: Send + 'static> + 'static>(
    env: StepEnv,
    input: I,
    body: Body<P, I, R>,
) -> BoxFuture<'static, Result<R::Ok, StepError>> {
    match StepCtx::<P>::__from_env(env) {
        Ok(ctx) => Box::pin(async move { body(&ctx, input).await.into_result() }),
        Err(e) => failed(e),
    }
}

/// Runs a compensator body with a context built from `env`, discarding the value it returns
/// on success.
#[doc(hidden)]
pub fn run_compensator<P: Principal, I: Send + 'static, R: StepReturn<Ok: 'static> + 'static>(
    env: StepEnv,
    input: I,
    body: Body<P, I, R>,
) -> BoxFuture<'static, Result<(), StepError>> {
    match StepCtx::<P>::__from_env(env) {
        Ok(ctx) => Box::pin(async move { body(&ctx, input).await.into_result().map(drop) }),
        Err(e) => failed(e),
    }
}

/// A compensator's `run` with its input still the step output as journaled.
pub(super) fn compensate_json<I: DeserializeOwned>(
    env: StepEnv,
    output: Value,
    run: fn(StepEnv, I) -> BoxFuture<'static, Result<(), StepError>>,
    name: &'static str,
) -> BoxFuture<'static, Result<(), StepError>> {
    match serde_json::from_value::<I>(output) {
        Ok(input) => run(env, input),
        Err(e) => failed(StepError::Runtime(format!(
            "journaled output does not decode for `{name}`: {e}"
        ))),
    }
}
