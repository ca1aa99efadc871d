//! Steps as the runtime sees them: the metadata `#[step]` and `#[compensator]` record, the
//! records a step touches, and the erased entry points the engine calls a step and a
//! compensator through ([`StepEnv`] in, JSON out).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use crate::error::StepError;
use crate::future::BoxFuture;
use crate::token::ConnectorAccess;

/// What a step does to the outside world, as declared in `#[step(...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// `read`: the step changes nothing and needs no undo.
    Read,
    /// `compensate = f`: a write that `f` undoes.
    Compensated {
        /// The compensator's metadata.
        #[serde(serialize_with = "serialize_compensator_name")]
        compensator: &'static CompensatorMeta,
    },
    /// `irreversible = "why"`: a write that cannot be undone, with the stated reason.
    Irreversible {
        /// Why the write cannot be undone.
        reason: &'static str,
    },
}

fn serialize_compensator_name<S: serde::Serializer>(
    meta: &&'static CompensatorMeta,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(meta.name)
}

impl Effect {
    /// True for every effect but [`Effect::Read`].
    pub fn is_write(&self) -> bool {
        !matches!(self, Effect::Read)
    }

    /// A short label: `read`, `write, undone by f` or `irreversible`.
    pub fn label(&self) -> String {
        match self {
            Effect::Read => "read".to_owned(),
            Effect::Compensated { compensator } => format!("write, undone by {}", compensator.name),
            Effect::Irreversible { .. } => "irreversible write".to_owned(),
        }
    }
}

/// Everything `#[step]` records about a step, available at compile time.
#[derive(Debug, Serialize)]
pub struct StepMeta {
    /// The function name.
    pub name: &'static str,
    /// The module path the step is defined in.
    pub module: &'static str,
    /// The connector (provider) whose connected account the step uses.
    pub connector: &'static str,
    /// The scopes the step needs on that connector.
    pub scopes: &'static [&'static str],
    /// Read, compensated write or irreversible write.
    pub effect: Effect,
    /// The principal type, as written.
    pub principal: &'static str,
    /// The input types after the context, as written.
    pub inputs: &'static [&'static str],
    /// The output type (the `T` of `Result<T, StepError>`), as written.
    pub output: &'static str,
    /// `reconcile = f`: the read-back that tells, after a crash, whether the write happened.
    pub reconcile: Option<&'static str>,
    /// `idempotent`: the provider deduplicates this step's writes by the `Idempotency-Key`
    /// header it sends, so after a crash with an unknown outcome the runtime may resend it
    /// with the same key instead of blocking the run.
    pub idempotent: bool,
    /// `approval = "why"`: a person must approve each call before it runs; the reason they
    /// are shown.
    pub approval: Option<&'static str>,
    #[serde(skip)]
    #[doc(hidden)]
    pub compensate: Option<ErasedCompensate>,
    /// The doc comment: the tool description a model is given.
    pub description: Option<&'static str>,
    /// The parameter names after the context: the tool's argument names.
    pub params: &'static [&'static str],
    /// The JSON Schemas of the inputs and output, when the types implement `JsonSchema`.
    #[serde(skip)]
    #[doc(hidden)]
    pub tool: fn() -> Option<crate::tool::ToolSchemas>,
}

impl StepMeta {
    /// `module::name`, unique within a binary.
    pub fn path(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }

    /// The step as a tool a model can call (name, doc comment, JSON Schemas of inputs and
    /// output); `None` when its types have no JSON Schema.
    pub fn tool_definition(&self) -> Option<crate::tool::ToolDefinition> {
        let description = match (self.description, self.approval) {
            (description, Some(reason)) => Some(format!(
                "{}{}Each call waits for a person's approval ({reason}).",
                description.unwrap_or_default(),
                if description.is_some() { "\n\n" } else { "" }
            )),
            (description, None) => description.map(str::to_owned),
        };
        (self.tool)()
            .map(|s| crate::tool::ToolDefinition::new(self.name, description.as_deref(), s))
    }

    /// The effect's label, followed by the approval the step waits for, if any: `write,
    /// undone by f; needs approval: moves money`.
    pub fn label(&self) -> String {
        match self.approval {
            Some(reason) => format!("{}; needs approval: {reason}", self.effect.label()),
            None => self.effect.label(),
        }
    }

    /// The compensator, if the step names one.
    pub fn compensator(&self) -> Option<&'static CompensatorMeta> {
        match self.effect {
            Effect::Compensated { compensator } => Some(compensator),
            _ => None,
        }
    }
}

/// Everything `#[compensator]` records about a compensator.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct CompensatorMeta {
    /// The function name.
    pub name: &'static str,
    /// The module path it is defined in.
    pub module: &'static str,
    /// The connector it uses (normally the forward step's).
    pub connector: &'static str,
    /// The scopes it needs; they count toward every chain that can reach its step.
    pub scopes: &'static [&'static str],
    /// The principal type, as written.
    pub principal: &'static str,
    /// The forward step's output type it takes, as written.
    pub input: &'static str,
}

/// An external record a step touched, such as a Salesforce Opportunity or a Jira issue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordRef {
    /// The connector the record lives in.
    pub connector: String,
    /// The record kind, such as `Opportunity`, `issue` or `message`.
    pub kind: String,
    /// The provider's id for it.
    pub id: String,
}

impl RecordRef {
    /// Builds a record reference.
    pub fn new(
        connector: impl Into<String>,
        kind: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Self {
            connector: connector.into(),
            kind: kind.into(),
            id: id.into(),
        }
    }

    /// The same record in a connector registered under another name (the helpers below use
    /// the preset's conventional connector name: `salesforce`, `jira`, `slack`, `github`,
    /// `google`, `microsoft`).
    pub fn with_connector(mut self, connector: impl Into<String>) -> Self {
        self.connector = connector.into();
        self
    }

    // One convention per provider, so that `who_authorized(connector, id)` finds every write
    // to a record whichever step touched it: the kind is the provider's own type name, the id
    // the provider's stable id, qualified by its container where the id is only unique there.

    /// A Salesforce sObject record: kind = the sObject type (`Opportunity`), id = the 18- or
    /// 15-character record id.
    pub fn salesforce(sobject: &str, id: &str) -> Self {
        Self::new("salesforce", sobject, id)
    }

    /// A Jira issue: kind `issue`, id = the issue key (`ESC-1`).
    pub fn jira_issue(key: &str) -> Self {
        Self::new("jira", "issue", key)
    }

    /// A Slack message: kind `message`, id = `{channel}/{ts}`.
    pub fn slack_message(channel: &str, ts: &str) -> Self {
        Self::new("slack", "message", format!("{channel}/{ts}"))
    }

    /// A GitHub issue: kind `issue`, id = `{owner}/{repo}#{number}`.
    pub fn github_issue(owner: &str, repo: &str, number: u64) -> Self {
        Self::new("github", "issue", format!("{owner}/{repo}#{number}"))
    }

    /// A Google Calendar event: kind `event`, id = `{calendar_id}/{event_id}`.
    pub fn google_event(calendar_id: &str, event_id: &str) -> Self {
        Self::new("google", "event", format!("{calendar_id}/{event_id}"))
    }

    /// A Microsoft Graph mail message: kind `message`, id = the message id (or, for a
    /// `sendMail` that returns none, the `internetMessageId` the step set).
    pub fn microsoft_message(id: &str) -> Self {
        Self::new("microsoft", "message", id)
    }
}

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

/// What a step body runs with, built by the engine for one step execution. Generated code
/// turns it into a [`StepCtx`](crate::StepCtx).
#[doc(hidden)]
#[derive(Clone)]
pub struct StepEnv {
    pub(crate) run_id: String,
    pub(crate) step_id: String,
    pub(crate) idempotency_key: String,
    pub(crate) connector: &'static str,
    pub(crate) principal: serde_json::Value,
    pub(crate) touched: Arc<Mutex<Vec<RecordRef>>>,
    pub(crate) access: Option<ConnectorAccess>,
    /// The step is a write its provider does not deduplicate: a request that got no answer
    /// must not be sent again (see [`StepError::OutcomeUnknown`]).
    pub(crate) no_resend: bool,
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
            access: None,
            no_resend: false,
        }
    }

    /// Marks the step as a write whose provider does not deduplicate by idempotency key: its
    /// client never resends a request that got no answer.
    pub(crate) fn without_resend(mut self) -> Self {
        self.no_resend = true;
        self
    }

    /// Gives the step access to its connector (the engine does this when its account
    /// directory can make calls).
    pub(crate) fn with_access(mut self, access: ConnectorAccess) -> Self {
        self.access = Some(access);
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
        self.touched_handle().records()
    }

    /// A handle on the records the step declares, to read them once the environment itself
    /// went to the step (instead of keeping a copy of the whole environment).
    pub(crate) fn touched_handle(&self) -> Touched {
        Touched(Arc::clone(&self.touched))
    }
}

/// The records one step execution declares (see [`StepEnv::touched_handle`]).
pub(crate) struct Touched(Arc<Mutex<Vec<RecordRef>>>);

impl Touched {
    /// The records declared so far.
    pub(crate) fn records(&self) -> Vec<RecordRef> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
