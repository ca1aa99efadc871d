//! The audit record types: one envelope ([`AuditRecord`]) around one event ([`AuditEvent`]).
//!
//! Every field name here is part of the export format and of the hashed canonical form: renaming
//! one breaks verification of every record already written. Add fields only with a new
//! [`FORMAT_VERSION`].
//!
//! None of these types has a field for a token, refresh token, client secret or key, and none
//! accepts a `secrecy` type. Free-text fields (`detail`, `reason`, `message`) must be filled from
//! classified, redacted messages, never from raw provider bodies or headers.

use serde::{Deserialize, Serialize};

/// The format version written into every record's `format` field.
pub const FORMAT_VERSION: u32 = 1;

/// One append-only, hash-chained audit record as stored and exported.
///
/// The field names are stable snake_case; see the module docs of [`crate::audit`] for the
/// canonical form the `hash` covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Record format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Position in the chain: 1 for the first record, then consecutive.
    pub seq: u64,
    /// When the record was made: milliseconds since the Unix epoch, UTC.
    pub time_unix_ms: i64,
    /// The run this record belongs to, if any.
    pub run_id: Option<String>,
    /// The stable step id within the run, if the record concerns one step.
    pub step_id: Option<String>,
    /// The principal's identifier string: whose authorization this is.
    pub principal: String,
    /// The connector (provider) called, if any.
    pub connector: Option<String>,
    /// The connected account used (the vault's id for (principal, connector)).
    pub account_id: Option<String>,
    /// The subject the provider knows the account as (e.g. Salesforce user id).
    pub upstream_subject: Option<String>,
    /// The grant (consent) the credential came from.
    pub grant_id: Option<String>,
    /// The scopes granted at call time.
    pub scopes: Vec<String>,
    /// External records the call touched, as declared by step code.
    pub records: Vec<RecordRef>,
    /// The outcome.
    pub outcome: Outcome,
    /// What happened.
    pub event: AuditEvent,
    /// `hash` of the previous record; 64 zeros for the first record.
    pub prev_hash: String,
    /// BLAKE3 of this record's canonical form (lowercase hex, 64 characters).
    pub hash: String,
}

/// A reference to one record in an external system (the type step code declares with
/// [`crate::StepCtx::touch`]).
pub use crate::step::RecordRef;

/// How the recorded action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action is about to be made (attempts); its result follows in a later record.
    Attempted,
    /// The action succeeded.
    Succeeded,
    /// The action failed; the event says why.
    Failed,
    /// A state change or notice with no success or failure (suspension, resume, handoff, alert).
    Info,
}

impl Outcome {
    /// The stable string stored and exported for this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Attempted => "attempted",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Info => "info",
        }
    }
}

/// Whether a step reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The step only reads.
    Read,
    /// The step writes (reversible by a compensator or declared irreversible).
    Write,
}

/// Scopes per connector, as in a preflight summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorScopes {
    /// The connector.
    pub connector: String,
    /// The scopes.
    pub scopes: Vec<String>,
}

/// What preflight found before the first write of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightSummary {
    /// Every connector's grant covers the chain's scopes.
    pub passed: bool,
    /// Scopes the chain needs that the principal has not granted, per connector.
    pub missing: Vec<ConnectorScopes>,
    /// Scopes granted but never used by the chain (least-privilege report), per connector.
    pub unused: Vec<ConnectorScopes>,
}

/// How urgent an operator alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// Needs attention but nothing is stuck.
    Warning,
    /// A run is blocked or a write cannot be undone: an operator must act.
    Critical,
}

/// What an audit record records. Serialized with a `type` tag in snake_case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A run started (after preflight).
    RunStarted {
        /// The chain's name.
        chain: String,
        /// The chain's version.
        chain_version: String,
        /// Preflight's result.
        preflight: PreflightSummary,
    },
    /// Preflight refused to start (or resume) a run: the principal's grant on the record's
    /// connector lacks scopes the chain needs. One record per refused connector; nothing else
    /// was written.
    PreflightRefused {
        /// The chain's name.
        chain: String,
        /// The scopes the chain needs there that are not granted (all of them when no account
        /// is connected).
        missing_scopes: Vec<String>,
        /// Whether the principal has an account on the connector at all.
        connected: bool,
    },
    /// A step call is about to be made (intent).
    StepAttempt {
        /// The step function's name.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// Read or write.
        effect: Effect,
        /// The idempotency key sent with the call, if any (not a secret).
        idempotency_key: Option<String>,
    },
    /// One HTTP attempt of a step's (or a compensator's) call, retries included: the step
    /// attempt's records say what the call was for, these say what each request got.
    HttpAttempt {
        /// The step (or compensator) function's name.
        step: String,
        /// The attempt's number within its request, from 1.
        http_attempt: u32,
        /// The HTTP method.
        method: String,
        /// The response status; 0 when no response arrived.
        status: u16,
        /// The failure class (snake_case) when the response was not a success.
        failure_class: Option<String>,
        /// The wait before the next attempt, in milliseconds, when the client retries.
        wait_ms: Option<u64>,
    },
    /// A step call's result.
    StepOutcome {
        /// The step function's name.
        step: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// Read or write.
        effect: Effect,
        /// The failure class (snake_case, as from `classify`) when it failed.
        failure_class: Option<String>,
        /// A short redacted explanation; never a provider body or header.
        detail: Option<String>,
    },
    /// A compensator is about to run for a completed step.
    CompensationAttempt {
        /// The compensator's name.
        compensator: String,
        /// The step id of the forward step being undone.
        compensates_step_id: String,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// A compensator's result.
    CompensationOutcome {
        /// The compensator's name.
        compensator: String,
        /// The step id of the forward step being undone.
        compensates_step_id: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// The failure class when it failed.
        failure_class: Option<String>,
        /// A short redacted explanation.
        detail: Option<String>,
    },
    /// The run was suspended (e.g. waiting for re-consent).
    Suspended {
        /// Why, in words.
        reason: String,
        /// The failure class that caused it, if any.
        failure_class: Option<String>,
        /// Scopes the run waits for (the consent link itself is not recorded: it carries state).
        missing_scopes: Vec<String>,
    },
    /// The run resumed.
    Resumed {
        /// Why, in words (e.g. "consent completed", "process restart").
        reason: String,
    },
    /// The run handed work to a child run under another principal (e.g. a co-approval).
    Handoff {
        /// The child run's id.
        child_run_id: String,
        /// The child run's principal identifier.
        child_principal: String,
        /// The child chain's name.
        child_chain: String,
        /// Why, in words.
        reason: String,
    },
    /// The principal completed consent; the envelope carries account, subject, grant and the
    /// scopes as granted.
    ConsentCompleted {
        /// The scopes that were asked for.
        requested_scopes: Vec<String>,
        /// `true` when this renewed an existing grant (re-consent).
        reconsent: bool,
    },
    /// An access-token refresh: success or failure. Never the token.
    TokenRefresh {
        /// The failure class when the refresh failed.
        failure_class: Option<String>,
        /// The new access token's absolute expiry, when it succeeded.
        expires_at_unix_ms: Option<i64>,
        /// The token endpoint's HTTP status when it answered a failed refresh. Absent (not
        /// `null`) when unknown, so records written before the field existed hash the same.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        /// The token endpoint's sanitized OAuth error code of a failed refresh. Absent when none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
    },
    /// A consent did not complete: unknown or expired state, the provider's error callback
    /// (e.g. `access_denied`), a rejected code exchange (PKCE failure), a callback by another
    /// principal than the one the link was issued to, or an identity refusal. Never the state,
    /// the code or a token.
    ConsentFailed {
        /// Why, as a stable snake_case word (e.g. `unknown_state`, `provider_error`).
        reason: String,
        /// The provider's sanitized error code, if it gave one.
        error_code: Option<String>,
    },
    /// A connected account was removed on purpose (forgotten, or replaced by a consent as
    /// another upstream user after it was disconnected).
    AccountRemoved {
        /// Why, as a stable snake_case word (`forgotten`, `replaced`).
        reason: String,
    },
    /// An operator was alerted.
    OperatorAlert {
        /// How urgent.
        severity: AlertSeverity,
        /// What the operator must know, in words.
        message: String,
    },
    /// A step that needs a person's approval was proposed: the run waits for the decision.
    ApprovalRequested {
        /// The step function's name.
        step: String,
        /// The approval request's id.
        approval_id: String,
        /// Why the step needs approval, as declared.
        reason: String,
        /// The digest of the step's arguments the approval is bound to.
        arguments_digest: String,
        /// When the request expires (a denial), milliseconds since the Unix epoch.
        expires_at_unix_ms: i64,
    },
    /// A person decided an approval request (or it expired, which is a denial).
    ApprovalDecided {
        /// The step function's name.
        step: String,
        /// The approval request's id.
        approval_id: String,
        /// `approved`, `denied` or `expired`.
        decision: String,
        /// Who decided (`expiry` when the request expired).
        decided_by: String,
    },
    /// A run reached a final state.
    RunFinished {
        /// The final state (e.g. "completed", "compensated", "blocked").
        state: String,
    },
}

impl AuditEvent {
    /// The stable `type` tag of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            AuditEvent::RunStarted { .. } => "run_started",
            AuditEvent::PreflightRefused { .. } => "preflight_refused",
            AuditEvent::StepAttempt { .. } => "step_attempt",
            AuditEvent::HttpAttempt { .. } => "http_attempt",
            AuditEvent::StepOutcome { .. } => "step_outcome",
            AuditEvent::CompensationAttempt { .. } => "compensation_attempt",
            AuditEvent::CompensationOutcome { .. } => "compensation_outcome",
            AuditEvent::Suspended { .. } => "suspended",
            AuditEvent::Resumed { .. } => "resumed",
            AuditEvent::Handoff { .. } => "handoff",
            AuditEvent::ConsentCompleted { .. } => "consent_completed",
            AuditEvent::TokenRefresh { .. } => "token_refresh",
            AuditEvent::ConsentFailed { .. } => "consent_failed",
            AuditEvent::AccountRemoved { .. } => "account_removed",
            AuditEvent::OperatorAlert { .. } => "operator_alert",
            AuditEvent::ApprovalRequested { .. } => "approval_requested",
            AuditEvent::ApprovalDecided { .. } => "approval_decided",
            AuditEvent::RunFinished { .. } => "run_finished",
        }
    }
}

/// A record to append: everything but `format`, `seq`, `prev_hash` and `hash`, which the store
/// assigns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// Milliseconds since the Unix epoch, UTC ([`NewRecord::new`] sets now).
    pub time_unix_ms: i64,
    /// See [`AuditRecord::run_id`].
    pub run_id: Option<String>,
    /// See [`AuditRecord::step_id`].
    pub step_id: Option<String>,
    /// See [`AuditRecord::principal`].
    pub principal: String,
    /// See [`AuditRecord::connector`].
    pub connector: Option<String>,
    /// See [`AuditRecord::account_id`].
    pub account_id: Option<String>,
    /// See [`AuditRecord::upstream_subject`].
    pub upstream_subject: Option<String>,
    /// See [`AuditRecord::grant_id`].
    pub grant_id: Option<String>,
    /// See [`AuditRecord::scopes`].
    pub scopes: Vec<String>,
    /// See [`AuditRecord::records`].
    pub records: Vec<RecordRef>,
    /// See [`AuditRecord::outcome`].
    pub outcome: Outcome,
    /// See [`AuditRecord::event`].
    pub event: AuditEvent,
}

impl NewRecord {
    /// A record for `principal` made now, with every optional field empty.
    pub fn new(principal: impl Into<String>, outcome: Outcome, event: AuditEvent) -> Self {
        Self {
            time_unix_ms: crate::audit::now_unix_ms(),
            run_id: None,
            step_id: None,
            principal: principal.into(),
            connector: None,
            account_id: None,
            upstream_subject: None,
            grant_id: None,
            scopes: Vec::new(),
            records: Vec::new(),
            outcome,
            event,
        }
    }

    /// Sets the time (milliseconds since the Unix epoch).
    pub fn at(mut self, time_unix_ms: i64) -> Self {
        self.time_unix_ms = time_unix_ms;
        self
    }

    /// Sets the run id.
    pub fn run(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// Sets the step id.
    pub fn step(mut self, step_id: impl Into<String>) -> Self {
        self.step_id = Some(step_id.into());
        self
    }

    /// Sets the connector, connected account, upstream subject and grant in one go.
    pub fn account(
        mut self,
        connector: impl Into<String>,
        account_id: impl Into<String>,
        upstream_subject: impl Into<String>,
        grant_id: impl Into<String>,
    ) -> Self {
        self.connector = Some(connector.into());
        self.account_id = Some(account_id.into());
        self.upstream_subject = Some(upstream_subject.into());
        self.grant_id = Some(grant_id.into());
        self
    }

    /// Sets only the connector.
    pub fn connector(mut self, connector: impl Into<String>) -> Self {
        self.connector = Some(connector.into());
        self
    }

    /// Sets the scopes granted at call time.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one touched external record.
    pub fn touched(mut self, record: RecordRef) -> Self {
        self.records.push(record);
        self
    }

    /// Builds the sealed record at position `seq` after a predecessor whose hash is `prev_hash`.
    pub fn seal(self, seq: u64, prev_hash: String) -> Result<AuditRecord, serde_json::Error> {
        Ok(super::seal::Presealed::new(self)?.seal(seq, prev_hash).0)
    }
}

/// A point in the chain to verify against later: the head's `seq` and `hash`.
///
/// Store it outside the database (a ticket, a log, a second system): verification against it
/// detects a truncated tail and a rewritten history.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The head record's `seq`.
    pub seq: u64,
    /// The head record's `hash`.
    pub hash: String,
}

/// What kind of write [`Authorization`] reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WriteKind {
    /// A forward step wrote the record.
    Step {
        /// The step function's name.
        step: String,
    },
    /// A compensator touched the record (to undo an earlier write).
    Compensation {
        /// The compensator's name.
        compensator: String,
        /// The step id of the forward step it undid.
        compensates_step_id: String,
    },
}

/// One write to an external record and under whose authorization it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// The audit record's `seq`.
    pub seq: u64,
    /// When (milliseconds since the Unix epoch).
    pub time_unix_ms: i64,
    /// The principal whose authorization it was.
    pub principal: String,
    /// The connected account used.
    pub account_id: Option<String>,
    /// The upstream subject the provider saw.
    pub upstream_subject: Option<String>,
    /// The grant the credential came from.
    pub grant_id: Option<String>,
    /// The scopes granted at call time.
    pub scopes: Vec<String>,
    /// The run.
    pub run_id: Option<String>,
    /// The step.
    pub step_id: Option<String>,
    /// The record written.
    pub record: RecordRef,
    /// Forward step or compensation.
    pub write: WriteKind,
    /// The outcome (always `succeeded` for forward steps; compensations are listed whatever
    /// their outcome, since a failed one may have partly written).
    pub outcome: Outcome,
}
