//! Human approval before a write: what a pending approval is, who may decide it, and when it
//! expires.
//!
//! A step declared with `#[step(..., approval = "moves money")]` does not run until a person
//! approves that one call. When a run reaches it, the engine journals a proposal (an
//! [`EntryKind::Approval`](crate::journal::EntryKind::Approval) entry without a result and an
//! `approval_requested` audit record, in one unit of work) and the run stops in
//! [`RunState::AwaitingApproval`](crate::RunState::AwaitingApproval) with a
//! [`PendingApproval`]. The request is bound to the run, the step id, the run's principal and
//! a digest of the step's arguments ([`arguments_digest`]).
//!
//! [`Engine::approve`](crate::Engine::approve) and [`Engine::deny`](crate::Engine::deny)
//! decide it, once: the decision is the proposal entry's result (an approval, or a denial as
//! the step's failure) committed with the run's return to `running` and an
//! `approval_decided` audit record, under the run's lease and only while the run still waits
//! on that approval id, so a second decision finds nothing to decide. Only the run's principal
//! decides, unless the application's [`ApprovalAuthorizer`] lets another approver decide. A
//! request past its expiry (on the policy's clock) is a denial, whoever asks.
//!
//! Replay never asks twice: the body meets the journaled decision at the same position and
//! either fails the step with the denial (the chain's failure path: compensation) or, for an
//! approval, checks that it was given in this run, for this step id and principal, over the
//! digest of the arguments the body passes now. Arguments that differ from the approved ones
//! block the run for an operator and the step is not executed. An approval is not a
//! permission: the step then runs with the principal's own grant and scopes as any other.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vault::{Clock, SystemClock};

/// A step call that waits for a person's decision: what the approver is shown, and what the
/// approval is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The approval request's id (named in every decision).
    pub approval_id: String,
    /// The run.
    pub run_id: String,
    /// The chain's path.
    pub chain: String,
    /// The run's principal: whose write it is.
    pub principal: String,
    /// The stable id of the step call waiting (`chain/step#n`).
    pub step_id: String,
    /// The step function's name.
    pub step: String,
    /// The connector the step writes to.
    pub connector: String,
    /// Why the step needs approval, as declared (`approval = "..."`).
    pub reason: String,
    /// The step's arguments by parameter name, as the body passes them.
    pub arguments: Value,
    /// [`arguments_digest`] of the run, step id, principal and arguments.
    pub arguments_digest: String,
    /// The position of the proposal in the run's journal.
    pub journal_seq: u32,
    /// The step's decision-graph node.
    pub node: u32,
    /// When it was asked for, milliseconds since the Unix epoch (policy clock).
    pub requested_unix_ms: i64,
    /// After this instant (policy clock) the request is a denial.
    pub expires_unix_ms: i64,
}

impl PendingApproval {
    /// True once the request's expiry has passed at `now_unix_ms`.
    pub fn is_expired(&self, now_unix_ms: i64) -> bool {
        now_unix_ms >= self.expires_unix_ms
    }
}

/// What the journal keeps of an approval given: checked against the call at every replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalGiven {
    /// The approval request's id.
    pub approval_id: String,
    /// The step id it was given for.
    pub step_id: String,
    /// The run's principal it was given for.
    pub principal: String,
    /// Who approved.
    pub approver: String,
    /// The digest of the arguments approved.
    pub arguments_digest: String,
    /// When, milliseconds since the Unix epoch (policy clock).
    pub decided_unix_ms: i64,
}

/// Lets the application name approvers other than the run's principal (a manager, a
/// finance team). The run's principal may always decide; this hook is asked for anyone else.
pub trait ApprovalAuthorizer: Send + Sync + 'static {
    /// Whether `approver` may decide `request`.
    fn may_decide(&self, approver: &str, request: &PendingApproval) -> bool;
}

/// How an engine handles approvals: how long a request stays open, the clock that says
/// when it expired, and who besides the run's principal may decide.
#[derive(Clone)]
pub struct ApprovalPolicy {
    ttl: Duration,
    clock: Arc<dyn Clock>,
    authorizer: Option<Arc<dyn ApprovalAuthorizer>>,
}

impl std::fmt::Debug for ApprovalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalPolicy")
            .field("ttl", &self.ttl)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ApprovalPolicy {
    /// Requests stay open for 24 hours on the system clock; only the run's principal decides.
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            clock: Arc::new(SystemClock),
            authorizer: None,
        }
    }
}

impl ApprovalPolicy {
    /// How long a request stays open before it counts as denied.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock requests are stamped and expired on (the application's clock; the vault's
    /// [`crate::vault::OffsetClock`] in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Who besides the run's principal may decide.
    pub fn authorizer(mut self, authorizer: Arc<dyn ApprovalAuthorizer>) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Now on the policy's clock, milliseconds since the Unix epoch.
    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix().saturating_mul(1000)
    }

    /// The expiry of a request made at `now_unix_ms`.
    pub(crate) fn expiry(&self, now_unix_ms: i64) -> i64 {
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        now_unix_ms.saturating_add(ttl)
    }

    /// Whether `approver` may decide `request`: the run's principal, or whom the
    /// application's authorizer allows.
    pub fn may_decide(&self, approver: &str, request: &PendingApproval) -> bool {
        approver == request.principal
            || self
                .authorizer
                .as_ref()
                .is_some_and(|a| a.may_decide(approver, request))
    }
}

/// The digest an approval is bound to: BLAKE3 over the run id, the step id, the principal
/// and the arguments' JSON, lowercase hex.
pub fn arguments_digest(run_id: &str, step_id: &str, principal: &str, arguments: &Value) -> String {
    let mut h = blake3::Hasher::new();
    for part in [run_id, step_id, principal] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.update(arguments.to_string().as_bytes());
    h.finalize().to_hex().to_string()
}

/// The step's arguments by parameter name (positionally when the names are unknown).
pub(crate) fn named_arguments(params: &[&str], values: Vec<Value>) -> Value {
    let mut map = serde_json::Map::new();
    for (i, value) in values.into_iter().enumerate() {
        let name = params
            .get(i)
            .map_or_else(|| format!("arg{i}"), |p| (*p).to_owned());
        map.insert(name, value);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_digest_binds_run_step_principal_and_arguments() {
        let args = json!({ "amount": 100 });
        let d = arguments_digest("run_1", "c/pay#1", "alice", &args);
        assert_eq!(d, arguments_digest("run_1", "c/pay#1", "alice", &args));
        assert_ne!(d, arguments_digest("run_2", "c/pay#1", "alice", &args));
        assert_ne!(d, arguments_digest("run_1", "c/pay#2", "alice", &args));
        assert_ne!(d, arguments_digest("run_1", "c/pay#1", "bob", &args));
        assert_ne!(
            d,
            arguments_digest("run_1", "c/pay#1", "alice", &json!({ "amount": 101 }))
        );
    }

    #[test]
    fn only_the_principal_or_an_authorized_approver_decides() {
        struct Managers;
        impl ApprovalAuthorizer for Managers {
            fn may_decide(&self, approver: &str, _: &PendingApproval) -> bool {
                approver == "manager"
            }
        }
        let request = PendingApproval {
            approval_id: "apr_1".into(),
            run_id: "run_1".into(),
            chain: "c".into(),
            principal: "alice".into(),
            step_id: "c/pay#1".into(),
            step: "pay".into(),
            connector: "bank".into(),
            reason: "moves money".into(),
            arguments: json!({}),
            arguments_digest: String::new(),
            journal_seq: 0,
            node: 3,
            requested_unix_ms: 0,
            expires_unix_ms: 10,
        };
        let policy = ApprovalPolicy::default();
        assert!(policy.may_decide("alice", &request));
        assert!(!policy.may_decide("manager", &request));
        let policy = policy.authorizer(Arc::new(Managers));
        assert!(policy.may_decide("manager", &request));
        assert!(!policy.may_decide("mallory", &request));
        assert!(!request.is_expired(9));
        assert!(request.is_expired(10));
    }

    #[test]
    fn arguments_are_named_by_parameter() {
        let named = named_arguments(&["to", "amount"], vec![json!("bob"), json!(5)]);
        assert_eq!(named, json!({ "to": "bob", "amount": 5 }));
    }
}
