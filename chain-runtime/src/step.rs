//! Steps: the metadata `#[step]` and `#[compensator]` record, the context step code runs
//! with, and the errors it returns.

use serde::{Deserialize, Serialize};

use crate::chain::ChainCtx;
use crate::exec::{BoxFuture, StepEnv};
use crate::principal::Principal;

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
    #[serde(skip)]
    #[doc(hidden)]
    pub compensate: Option<crate::exec::ErasedCompensate>,
}

impl StepMeta {
    /// `module::name`, unique within a binary.
    pub fn path(&self) -> String {
        format!("{}::{}", self.module, self.name)
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

    /// After an attempt with an unknown outcome: asks the step's `reconcile` hook whether the
    /// write happened (returning what it produced), and runs the body only when it did not.
    /// Without a hook, runs the body.
    #[doc(hidden)]
    fn reconcile_then_run(
        env: StepEnv,
        input: Self::Input,
    ) -> BoxFuture<'static, Result<Self::Output, StepError>> {
        Self::run(env, input)
    }
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
pub trait StepFor<P: Principal>: Step {
    /// Narrows the chain context to the step's own principal type (the identity function).
    #[doc(hidden)]
    fn narrow(ctx: &ChainCtx<P>) -> &ChainCtx<Self::Principal>;

    /// Marks the call site a chain body calls this step from; `#[chain]` wraps every step
    /// call's context argument in it.
    #[doc(hidden)]
    fn at_site(ctx: &ChainCtx<P>, site: u32) -> &ChainCtx<Self::Principal> {
        Self::narrow(ctx.__at_site(site))
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
        Box::pin(async move {
            let input: Self::Input = serde_json::from_value(output).map_err(|e| {
                StepError::Runtime(format!(
                    "journaled output does not decode for `{}`: {e}",
                    Self::META.name
                ))
            })?;
            Self::run(env, input).await
        })
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

/// The context a step body runs with: who it acts for, its idempotency key, and the
/// records it touched. Step code never sees a credential.
pub struct StepCtx<P> {
    principal: P,
    env: StepEnv,
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
        Ok(Self { principal, env })
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
    pub fn http(&self) -> Result<&crate::connector::StepHttp, StepError> {
        self.env.http.as_ref().ok_or_else(|| {
            StepError::Runtime(format!(
                "step `{}` has no HTTP client for `{}`: give the engine a vault",
                self.env.step_id, self.env.connector
            ))
        })
    }

    /// The run-time environment (connector client, run id).
    pub fn env(&self) -> &StepEnv {
        &self.env
    }

    /// Declares an external record this step read or wrote, for the audit trail.
    pub fn touch(&self, record: RecordRef) {
        self.env.touch(record);
    }
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

/// Why a step failed.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepError {
    /// An authorization failure the runtime could not recover by itself (revoked grant,
    /// missing scope, step-up, invalid client). The chain policy decides what happens next.
    #[error("{connector}: {class:?}{}", needed_scopes_suffix(.needed_scopes))]
    Auth {
        /// The connector that failed.
        connector: String,
        /// The failure class.
        class: crate::classify::FailureClass,
        /// Scopes the provider said it needs.
        needed_scopes: Vec<String>,
        /// Extra authorization-request parameters the new consent must carry, such as
        /// RFC 9470's `acr_values` and `max_age` for a step-up.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        consent_params: Vec<(String, String)>,
    },
    /// The user may not touch this record; a domain error, no consent loop.
    #[error("{connector}: forbidden: {message}")]
    Forbidden {
        /// The connector that refused.
        connector: String,
        /// The provider's message.
        message: String,
    },
    /// The provider kept failing (5xx, rate limit or transport) after the bounded retries.
    #[error("{connector}: unavailable after retries: {message}")]
    Unavailable {
        /// The connector that failed.
        connector: String,
        /// What the last attempt said.
        message: String,
    },
    /// The step's own logic refused.
    #[error("{0}")]
    Domain(String),
    /// The runtime could not run the step (store, decoding, configuration).
    #[error("runtime: {0}")]
    Runtime(String),
}

fn needed_scopes_suffix(scopes: &[String]) -> String {
    if scopes.is_empty() {
        String::new()
    } else {
        format!(" (needs {})", scopes.join(" "))
    }
}

impl StepError {
    /// A domain failure with a message for people.
    pub fn domain(message: impl Into<String>) -> Self {
        StepError::Domain(message.into())
    }
}

/// A step call made from a chain body, not yet awaited. `.await` it in the chain.
#[must_use = "a step does nothing until it is awaited"]
pub struct StepCall<'c, S: Step> {
    ctx: &'c ChainCtx<S::Principal>,
    site: u32,
    input: S::Input,
}

impl<'c, S: Step> StepCall<'c, S> {
    #[doc(hidden)]
    pub fn __new(ctx: &'c ChainCtx<S::Principal>, input: S::Input) -> Self {
        Self {
            ctx,
            site: ctx.__current_site(),
            input,
        }
    }
}

impl<'c, S: Step> std::future::IntoFuture for StepCall<'c, S> {
    type Output = Result<S::Output, StepError>;
    type IntoFuture = BoxFuture<'c, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        self.ctx.__execute::<S>(self.site, self.input)
    }
}
