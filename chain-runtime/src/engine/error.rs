//! Why the engine refused or could not finish an operation.

use crate::accounts::AccountLookupError;
use crate::audit::AuditError;
use crate::journal::JournalError;
use crate::preflight::ConsentNeeded;

/// Why the engine refused or could not finish an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Preflight found missing consents; nothing but the refusal's audit records was written.
    #[error("{}", not_ready(.chain, .run_id.as_deref(), .consents))]
    PreflightNotReady {
        /// The chain.
        chain: String,
        /// The run being resumed; `None` when a new run was refused.
        run_id: Option<String>,
        /// The consents to ask for.
        consents: Vec<ConsentNeeded>,
    },
    /// The run's chain is not registered with this engine.
    #[error(
        "chain `{chain}` is not registered with this engine; call `engine.register::<{chain}>()` before resuming or recovering its runs"
    )]
    NotRegistered {
        /// The chain path.
        chain: String,
    },
    /// No such run.
    #[error("no run `{run_id}`")]
    NotFound {
        /// The run id.
        run_id: String,
    },
    /// Only a suspended run can be resumed.
    #[error("run `{run_id}` is {state}, not suspended: only a suspended run can be resumed")]
    NotSuspended {
        /// The run id.
        run_id: String,
        /// Its state.
        state: String,
    },
    /// Someone else is driving the run (for example a concurrent resume).
    #[error("run `{run_id}` is being driven by `{owner}` right now; nothing was changed")]
    Busy {
        /// The run id.
        run_id: String,
        /// Who drives it.
        owner: String,
    },
    /// The re-consented account belongs to another upstream identity.
    #[error(
        "run `{run_id}` refuses to resume: the `{connector}` account is now upstream subject `{current}`, but the run started as `{recorded}`; re-consent with the original account (the run stays suspended)"
    )]
    SubjectChanged {
        /// The run id.
        run_id: String,
        /// The connector.
        connector: String,
        /// The subject recorded at start.
        recorded: String,
        /// The subject now connected.
        current: String,
    },
    /// The chain's code changed incompatibly since the run started.
    #[error(
        "run `{run_id}` of `{chain}` cannot continue: the chain's steps changed since it started ({}); finish or cancel it with the old version",
        .steps.join(", ")
    )]
    ChainChanged {
        /// The run id.
        run_id: String,
        /// The chain.
        chain: String,
        /// What changed, one entry per step (`step `x` changed`, `added`, `removed`).
        steps: Vec<String>,
    },
    /// A task driving a run panicked or was cancelled.
    #[error("a task driving a run failed: {0}")]
    Task(String),
    /// A principal or input did not (de)serialize.
    #[error("{0}")]
    Codec(String),
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] JournalError),
    /// The audit trail failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The account directory failed.
    #[error(transparent)]
    Credentials(#[from] AccountLookupError),
}

/// The refusal in words: a new run "cannot start", a suspended one "cannot resume yet".
fn not_ready(chain: &str, run_id: Option<&str>, consents: &[ConsentNeeded]) -> String {
    let consents = describe_consents(consents);
    match run_id {
        None => {
            format!("chain `{chain}` cannot start: the principal must first consent to {consents}")
        }
        Some(run_id) => format!(
            "run `{run_id}` of chain `{chain}` cannot resume yet (it stays suspended, nothing was \
             changed): the principal must first consent to {consents}"
        ),
    }
}

pub(super) fn describe_consents(consents: &[ConsentNeeded]) -> String {
    consents
        .iter()
        .map(|c| {
            format!(
                "{} [{}]",
                c.connector,
                c.scopes.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
