//! The seam between generated code and the engine that runs a chain.
//!
//! Generated code turns each step call into an erased call and hands it to the run's
//! [`RunDriver`]; the driver decides whether to replay a journaled result or run the step.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::step::{RecordRef, StepError};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A step call with its types erased: given the step's environment, it runs the step body
/// (or reconciles first, see [`CallMode`]) and returns the output as JSON.
pub type ErasedStepCall = Box<
    dyn FnOnce(StepEnv, CallMode) -> BoxFuture<'static, Result<serde_json::Value, StepError>>
        + Send,
>;

/// How the engine asks for a step call to be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallMode {
    /// Run the step body.
    Run,
    /// An earlier attempt's outcome is unknown: run the step's `reconcile` hook first, and the
    /// body only when the hook finds that the write did not happen.
    ReconcileFirst,
}

/// A compensator with its types erased: given the environment and the forward step's
/// journaled output, it runs the undo.
pub type ErasedCompensate =
    fn(StepEnv, serde_json::Value) -> BoxFuture<'static, Result<(), StepError>>;

/// What a step body runs with, built by the engine for one step execution.
#[derive(Clone)]
pub struct StepEnv {
    pub(crate) run_id: String,
    pub(crate) step_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) connector: &'static str,
    pub(crate) principal: serde_json::Value,
    pub(crate) touched: Arc<Mutex<Vec<RecordRef>>>,
    pub(crate) http: Option<crate::connector::StepHttp>,
}

impl std::fmt::Debug for StepEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepEnv")
            .field("run_id", &self.run_id)
            .field("step_id", &self.step_id)
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl StepEnv {
    /// Builds the environment of one step execution.
    pub(crate) fn new(
        run_id: impl Into<String>,
        step_id: impl Into<String>,
        idempotency_key: impl Into<String>,
        connector: &'static str,
        principal: serde_json::Value,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            step_id: step_id.into(),
            idempotency_key: idempotency_key.into(),
            connector,
            principal,
            touched: Arc::default(),
            http: None,
        }
    }

    /// Gives the step a connector client (the engine does this when it has a vault).
    pub(crate) fn with_http(mut self, http: crate::connector::StepHttp) -> Self {
        self.http = Some(http);
        self
    }

    /// The run this step belongs to.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The connector whose account the step uses.
    pub fn connector(&self) -> &'static str {
        self.connector
    }

    pub(crate) fn touch(&self, record: RecordRef) {
        if let Ok(mut touched) = self.touched.lock() {
            touched.push(record);
        }
    }

    /// The records the step declared so far.
    pub fn touched(&self) -> Vec<RecordRef> {
        self.touched.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Runs the steps of one chain run. Implemented by the engine.
pub trait RunDriver: Send + Sync {
    /// Executes the step call made at decision-graph `site`: returns its journaled output
    /// when the run already completed it, otherwise runs `call` and journals the result.
    fn step<'a>(
        &'a self,
        site: u32,
        meta: &'static crate::step::StepMeta,
        call: ErasedStepCall,
    ) -> BoxFuture<'a, Result<serde_json::Value, StepError>>;

    /// Journals a value the chain body depends on (a model's choice, the clock), or returns
    /// the journaled one on replay.
    fn record<'a>(
        &'a self,
        label: &'a str,
        produce: BoxFuture<'a, Result<serde_json::Value, StepError>>,
    ) -> BoxFuture<'a, Result<serde_json::Value, StepError>>;

    /// Starts a child chain under another principal (an explicit handoff, e.g. a co-approval)
    /// and returns its output; journaled in the parent like a step. The parent's principal
    /// does not change. Drivers that cannot hand off refuse.
    fn handoff<'a>(
        &'a self,
        request: HandoffRequest,
    ) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
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
    /// The child chain's metadata.
    pub chain: &'static crate::chain::ChainMeta,
    /// Registers the child chain with an engine (so it can be resumed by id).
    pub register: fn(&crate::engine::Engine),
    /// The child's principal as JSON.
    pub principal: serde_json::Value,
    /// The child's principal identifier.
    pub principal_id: String,
    /// The child's input as JSON.
    pub input: serde_json::Value,
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
