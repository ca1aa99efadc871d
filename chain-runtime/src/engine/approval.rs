//! Approval before a write, in the engine: the driver's gate before a step with
//! `approval = "..."` (propose, or check the journaled decision), and the decisions
//! ([`Engine::approve`], [`Engine::deny`], expiry). See [`crate::approval`] for the model.

use serde_json::Value;

use super::driver::Driver;
use super::ids::new_id;
use super::replay::{self, Call, Decision};
use super::report::erased_report;
use super::version::check_version;
use super::{Engine, EngineError, RunReport, runner};
use crate::approval::{
    ApprovalGiven, ApprovalPolicy, PendingApproval, arguments_digest, named_arguments,
};
use crate::audit::{AuditEvent, NewRecord, Outcome};
use crate::journal::{
    Durability, EntryKind, EntryResult, JournalError, JournalWrite, RunState, Unit,
};
use crate::step::{StepError, StepMeta};

/// Why a decision on an approval was refused. Nothing changes on a refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The run does not wait on that approval: it was decided already (a request is
    /// single-use), never existed, or belongs to another run.
    #[error(
        "run `{run_id}` has no pending approval `{approval_id}` (the run is {state}): it was decided already or never asked"
    )]
    NotPending {
        /// The run.
        run_id: String,
        /// The approval id given.
        approval_id: String,
        /// The run's state now.
        state: String,
    },
    /// The approver may not decide this request: only the run's principal, or whom the
    /// application's [`crate::approval::ApprovalAuthorizer`] allows.
    #[error(
        "`{approver}` may not decide the approvals of run `{run_id}`: only its principal (or an approver the application authorizes) can"
    )]
    NotAllowed {
        /// Who tried.
        approver: String,
        /// The run.
        run_id: String,
    },
    /// The request had expired: it was denied (and the run went down its failure path).
    #[error(
        "the approval `{approval_id}` of run `{run_id}` expired before the decision, which counts as a denial; the run is now {state}"
    )]
    Expired {
        /// The run.
        run_id: String,
        /// The approval id.
        approval_id: String,
        /// The run's state after the denial.
        state: String,
    },
    /// The engine could not read, store or drive the run.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<JournalError> for ApprovalError {
    fn from(e: JournalError) -> Self {
        ApprovalError::Engine(e.into())
    }
}

/// A decision on a pending approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Approve,
    Deny,
    Expire,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Approve => "approved",
            Verdict::Deny => "denied",
            Verdict::Expire => "expired",
        }
    }
}

impl Driver {
    /// The gate before a step with `approval = "..."`: replays a journaled decision (checked
    /// against this call), or proposes the call and stops the run until a person decides.
    pub(super) async fn run_approval(
        &self,
        site: u32,
        meta: &'static StepMeta,
        arguments: Vec<Value>,
    ) -> Result<(), StepError> {
        let node = crate::graph::FAIL + 1 + site;
        let (next, step_id) = {
            let mut s = self.state();
            let step_id = s
                .replay
                .peek_id(&format!("{}/{}", self.meta.name, meta.name));
            let next = s
                .replay
                .next_as(format!("{step_id}@approval"), Call::Approval);
            (next, step_id)
        };
        let arguments = named_arguments(meta.params, arguments);
        let principal = self.run.principal_id.clone();
        let digest = arguments_digest(&self.run.run_id, &step_id, &principal, &arguments);
        let attempt = match next.decision.clone() {
            Decision::Replay(Ok(given)) => return self.check_given(given, &step_id, &digest),
            Decision::Replay(Err(denied)) => {
                self.note_failure(&step_id, node, meta.connector, &denied);
                return Err(denied);
            }
            Decision::Halt(cause) => return Err(self.halted(&next, cause, meta.connector)),
            Decision::Execute { attempt, .. } => attempt,
        };
        let policy = self.engine.approval_policy();
        let now = policy.now_unix_ms();
        let request = PendingApproval {
            approval_id: new_id("apr_"),
            run_id: self.run.run_id.clone(),
            chain: self.run.chain.clone(),
            principal: principal.clone(),
            step_id: step_id.clone(),
            step: meta.name.to_owned(),
            connector: meta.connector.to_owned(),
            reason: meta.approval.unwrap_or_default().to_owned(),
            arguments,
            arguments_digest: digest,
            journal_seq: next.seq,
            node,
            requested_unix_ms: now,
            expires_unix_ms: policy.expiry(now),
        };
        let proposal = NewRecord::new(
            principal,
            Outcome::Info,
            AuditEvent::ApprovalRequested {
                step: meta.name.to_owned(),
                approval_id: request.approval_id.clone(),
                reason: request.reason.clone(),
                arguments_digest: request.arguments_digest.clone(),
                expires_at_unix_ms: request.expires_unix_ms,
            },
        )
        .run(&self.run.run_id)
        .step(&step_id)
        .connector(meta.connector);
        // The proposal (an approval entry without a decision) and its audit record: one unit.
        let intent = replay::entry(
            &next,
            EntryKind::Approval,
            meta.name.to_owned(),
            attempt,
            None,
        );
        self.journal(
            intent,
            node,
            vec![proposal],
            Durability::Sync,
            "journaling an approval request",
        )
        .await?;
        let message = format!(
            "step `{}` waits for a person's approval ({}); the run stops until it is decided",
            meta.name, request.reason
        );
        let mut s = self.state();
        s.node = node;
        s.replay.halt();
        s.awaiting = Some(request);
        Err(StepError::Runtime(message))
    }

    /// A journaled approval lets the call run only for this step id and principal, and for
    /// the arguments the body passes now; anything else blocks the run before the write.
    fn check_given(&self, given: Value, step_id: &str, digest: &str) -> Result<(), StepError> {
        let given: ApprovalGiven = match serde_json::from_value(given) {
            Ok(given) => given,
            Err(e) => {
                return Err(self.halt(
                    format!("the journaled approval of `{step_id}` does not decode: {e}"),
                    Some(step_id.to_owned()),
                    Vec::new(),
                ));
            }
        };
        let refused = if given.step_id != step_id {
            Some(format!("it was given for step `{}`", given.step_id))
        } else if given.principal != self.run.principal_id {
            Some(format!("it was given for principal `{}`", given.principal))
        } else if given.arguments_digest != digest {
            Some(format!(
                "the body now passes other arguments than the ones `{}` approved (approved digest {}, now {digest})",
                given.approver, given.arguments_digest
            ))
        } else {
            None
        };
        match refused {
            None => Ok(()),
            Some(why) => Err(self.halt(
                format!(
                    "approval `{}` does not cover step `{step_id}`: {why}; the step was not executed",
                    given.approval_id
                ),
                Some(step_id.to_owned()),
                Vec::new(),
            )),
        }
    }
}

impl Engine {
    /// Sets how this engine handles approvals (expiry, clock, who besides the run's principal
    /// may decide). Applies to requests made and decided from now on.
    pub fn set_approval_policy(&self, policy: ApprovalPolicy) {
        *self
            .inner
            .approvals
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    /// The approval policy in force.
    pub fn approval_policy(&self) -> ApprovalPolicy {
        self.inner
            .approvals
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The open approval requests `approver` may decide (their own runs', and those the
    /// policy's authorizer gives them), oldest first. Expired requests are not listed (see
    /// [`Engine::expire_approvals`]).
    pub async fn pending_approvals(
        &self,
        approver: &str,
    ) -> Result<Vec<PendingApproval>, EngineError> {
        let policy = self.approval_policy();
        let now = policy.now_unix_ms();
        Ok(self
            .list_runs()
            .await?
            .into_iter()
            .filter_map(|run| match run.state {
                RunState::AwaitingApproval(request) => Some(*request),
                _ => None,
            })
            .filter(|request| !request.is_expired(now) && policy.may_decide(approver, request))
            .collect())
    }

    /// Approves the pending request `approval_id` of run `run_id` as `approver`, then drives
    /// the run on (the step runs under the run principal's own grant). Refused, changing
    /// nothing, when the run does not wait on that request or `approver` may not decide it;
    /// an expired request is denied instead ([`ApprovalError::Expired`]).
    pub async fn approve(
        &self,
        run_id: &str,
        approval_id: &str,
        approver: &str,
    ) -> Result<RunReport<Value>, ApprovalError> {
        self.decide(run_id, approval_id, approver, Verdict::Approve)
            .await
    }

    /// Denies the pending request: the step fails with the denial and the run goes down its
    /// failure path (compensation of completed writes per the chain's policy).
    pub async fn deny(
        &self,
        run_id: &str,
        approval_id: &str,
        approver: &str,
    ) -> Result<RunReport<Value>, ApprovalError> {
        self.decide(run_id, approval_id, approver, Verdict::Deny)
            .await
    }

    /// Denies every request whose expiry (on the policy's clock) has passed, driving each run
    /// down its failure path; returns their reports. Call it periodically, or before listing.
    pub async fn expire_approvals(&self) -> Result<Vec<RunReport<Value>>, EngineError> {
        let now = self.approval_policy().now_unix_ms();
        let mut reports = Vec::new();
        for run in self.list_runs().await? {
            let RunState::AwaitingApproval(request) = &run.state else {
                continue;
            };
            if !request.is_expired(now) {
                continue;
            }
            match self
                .decide(&run.run_id, &request.approval_id, "expiry", Verdict::Expire)
                .await
            {
                Ok(report) => reports.push(report),
                Err(ApprovalError::Expired { run_id, .. }) => {
                    let now = self.run_status(&run_id).await?;
                    reports.push(erased_report(run_id, now.state));
                }
                // Decided or claimed meanwhile: someone else settles it.
                Err(ApprovalError::NotPending { .. }) => {}
                Err(ApprovalError::Engine(EngineError::Busy { .. })) => {}
                Err(ApprovalError::Engine(e)) => return Err(e),
                Err(e) => return Err(EngineError::Codec(e.to_string())),
            }
        }
        Ok(reports)
    }

    async fn decide(
        &self,
        run_id: &str,
        approval_id: &str,
        approver: &str,
        verdict: Verdict,
    ) -> Result<RunReport<Value>, ApprovalError> {
        let not_pending = |state: &RunState| ApprovalError::NotPending {
            run_id: run_id.to_owned(),
            approval_id: approval_id.to_owned(),
            state: state.kind().to_owned(),
        };
        let mut run = self.run_status(run_id).await?;
        let request = match &run.state {
            RunState::AwaitingApproval(request) if request.approval_id == approval_id => {
                (**request).clone()
            }
            other => return Err(not_pending(other)),
        };
        let policy = self.approval_policy();
        if verdict != Verdict::Expire && !policy.may_decide(approver, &request) {
            return Err(ApprovalError::NotAllowed {
                approver: approver.to_owned(),
                run_id: run_id.to_owned(),
            });
        }
        let now = policy.now_unix_ms();
        let expired = request.is_expired(now);
        let (verdict, decided_by) = if expired {
            (Verdict::Expire, "expiry")
        } else if verdict == Verdict::Expire {
            return Err(not_pending(&run.state));
        } else {
            (verdict, approver)
        };
        let meta = self.chain(&run.chain)?;
        check_version(&run, meta)?;
        let lease = match self.inner.store.claim_run(run_id, &self.inner.owner).await {
            Ok(lease) => lease,
            Err(JournalError::Claimed { owner, .. }) => {
                return Err(EngineError::Busy {
                    run_id: run_id.to_owned(),
                    owner,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let unit = match self.decision_unit(&request, verdict, decided_by, now).await {
            Ok(unit) => unit,
            Err(e) => {
                let _ = self.inner.store.release_run(&lease).await;
                return Err(e);
            }
        };
        let applied = match super::driver::commit(self, Some(&lease), unit).await {
            Ok(committed) => committed.applied,
            Err(e) => {
                let _ = self.inner.store.release_run(&lease).await;
                return Err(e.into());
            }
        };
        if !applied {
            let _ = self.inner.store.release_run(&lease).await;
            let now = self.run_status(run_id).await?;
            return Err(not_pending(&now.state));
        }
        run.state = RunState::Running;
        let state = runner::drive(self.clone(), meta, run, lease, None).await?;
        if expired {
            return Err(ApprovalError::Expired {
                run_id: run_id.to_owned(),
                approval_id: approval_id.to_owned(),
                state: state.kind().to_owned(),
            });
        }
        Ok(erased_report(run_id.to_owned(), state))
    }

    /// The decision as one unit of work: the proposal entry's result, the run back to
    /// running (only while it still waits on this request), and the audit record.
    async fn decision_unit(
        &self,
        request: &PendingApproval,
        verdict: Verdict,
        decided_by: &str,
        now: i64,
    ) -> Result<Unit, ApprovalError> {
        let journal = self.inner.store.journal(&request.run_id).await?;
        let Some(mut entry) = journal.into_iter().find(|e| {
            e.seq == request.journal_seq && e.kind == EntryKind::Approval && e.result.is_none()
        }) else {
            return Err(ApprovalError::NotPending {
                run_id: request.run_id.clone(),
                approval_id: request.approval_id.clone(),
                state: "awaiting_approval without its proposal in the journal".to_owned(),
            });
        };
        entry.result = Some(match verdict {
            Verdict::Approve => {
                let given = ApprovalGiven {
                    approval_id: request.approval_id.clone(),
                    step_id: request.step_id.clone(),
                    principal: request.principal.clone(),
                    approver: decided_by.to_owned(),
                    arguments_digest: request.arguments_digest.clone(),
                    decided_unix_ms: now,
                };
                EntryResult::Ok {
                    output: serde_json::to_value(given)
                        .map_err(|e| EngineError::Codec(e.to_string()))?,
                    touched: Vec::new(),
                }
            }
            Verdict::Deny => EntryResult::Err {
                error: StepError::Domain(format!(
                    "`{decided_by}` denied step `{}` ({})",
                    request.step, request.reason
                )),
            },
            Verdict::Expire => EntryResult::Err {
                error: StepError::Domain(format!(
                    "the approval of step `{}` ({}) expired without a decision",
                    request.step, request.reason
                )),
            },
        });
        let record = NewRecord::new(
            request.principal.clone(),
            if verdict == Verdict::Approve {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
            AuditEvent::ApprovalDecided {
                step: request.step.clone(),
                approval_id: request.approval_id.clone(),
                decision: verdict.word().to_owned(),
                decided_by: decided_by.to_owned(),
            },
        )
        .run(&request.run_id)
        .step(&request.step_id)
        .connector(&request.connector);
        Ok(Unit {
            writes: vec![
                JournalWrite::Entry {
                    entry,
                    node: request.node,
                },
                JournalWrite::State {
                    expected: Some("awaiting_approval"),
                    state: RunState::Running,
                },
            ],
            audit: vec![record],
            durability: Durability::Sync,
        })
    }
}
