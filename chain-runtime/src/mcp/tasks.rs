//! MCP tasks (the `io.modelcontextprotocol/tasks` extension, SEP-2663, on rmcp's
//! [`TaskManager`]): a `tools/call` from a client that declared the extension answers at once
//! with a task; the run goes on in the background and the task follows it.
//!
//! | the run | `tasks/get` |
//! |---|---|
//! | being driven | `working` (status message: which run, what it does) |
//! | needs consent (preflight, re-consent, step-up) | `input_required`: URL elicitations with the consent links; answering them (`tasks/update`, action `accept`) continues the same run |
//! | waits for an approval the caller may decide | `input_required`: the approval form; the answer approves or denies |
//! | waits for someone else's approval, or another driver | `working`, until the run moves |
//! | completed | `completed`, result: the chain's output as structured content |
//! | failed, compensated, blocked | `completed` with a tool error (`isError: true`) and the classified message |
//! | cannot start (engine error) | `completed` with a tool error |
//!
//! A task belongs to the principal who created it: another principal's `tasks/get`,
//! `tasks/update` or `tasks/cancel` is answered like an unknown task.
//!
//! # Cancellation
//! `tasks/cancel` never interrupts a step (that could lose the outcome of a write). A task
//! waiting for the user (consent, approval) or for another driver settles `cancelled` at once;
//! a task whose run is being driven settles when the run reaches its next stopping point
//! (`completed` if it completed). The run stays where it stopped, suspended or awaiting
//! approval, nothing is undone behind the user's back: the same call made again (same tool,
//! same arguments, same principal) continues that run, and operators see it in the run list.
//!
//! # Lifetime
//! A task lives for the server's request-state TTL (30 minutes by default) and is kept as long
//! again after it ends. Past its TTL rmcp's manager fails it and stops the future that follows
//! the run; the run itself is journaled, and a drive stopped that way is recovered like one
//! whose process died (its lease expires, a worker or a retry continues it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rmcp::model::{
    CallToolResult, ContentBlock, CreateTaskResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, ErrorData, GetTaskResult, InputRequest, InputResponses,
};
use rmcp::task_manager::{TaskContext, TaskExit, TaskManager, TaskOptions};
use serde_json::{Map, Value};

use super::state::PendingCall;
use super::{Identity, McpServer, failure_message, report_of, tools};
use crate::engine::{ApprovalError, EngineError, RunReport};
use crate::journal::RunState;

/// Consent or approval rounds one task goes through at most.
const MAX_ROUNDS: u32 = 16;

/// How often a task waiting for another party looks at its run.
const POLL: Duration = Duration::from_millis(200);

/// The tasks of one server and who owns them.
#[derive(Default)]
pub(super) struct TaskBook {
    manager: TaskManager,
    owners: Mutex<HashMap<String, String>>,
}

impl TaskBook {
    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The manager, when `task_id` exists and belongs to `subject`.
    fn owned(&self, task_id: &str, subject: &str) -> Result<&TaskManager, ErrorData> {
        if self.owners().get(task_id).map(String::as_str) == Some(subject) {
            Ok(&self.manager)
        } else {
            Err(ErrorData::invalid_params(
                format!("unknown task `{task_id}`"),
                None,
            ))
        }
    }
}

/// The task-level result of a run that ended without output, or could not start.
fn error_result(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// What waiting for the user came to.
enum Answered {
    /// Every request was accepted.
    Accepted,
    /// Declined or cancelled in the client: the task ends with this tool error.
    Declined(CallToolResult),
}

impl McpServer {
    /// Starts `tool` for `identity` as a task and answers with it at once.
    pub(super) fn start_task(
        &self,
        identity: Identity,
        tool: String,
        arguments: Map<String, Value>,
        args_digest: String,
    ) -> CreateTaskResult {
        let server = self.clone();
        let subject = identity.subject.clone();
        let ttl_ms = u64::try_from(self.inner.task_ttl.as_millis()).unwrap_or(u64::MAX);
        let options = TaskOptions::new()
            .with_ttl_ms(ttl_ms)
            .with_poll_interval_ms(500)
            .with_status_message("starting the run");
        let book = &self.inner.tasks;
        let task = book.manager.spawn(options, move |ctx| {
            Box::pin(async move {
                server
                    .run_task(ctx, identity, tool, arguments, args_digest)
                    .await
            })
        });
        let mut owners = book.owners();
        owners.retain(|id, _| book.manager.get_task(id).is_ok());
        owners.insert(task.task_id.clone(), subject);
        CreateTaskResult::new(task)
    }

    /// `tasks/get` for `identity`.
    pub(super) fn task_status(
        &self,
        identity: &Identity,
        task_id: &str,
    ) -> Result<GetTaskResult, ErrorData> {
        let manager = self.inner.tasks.owned(task_id, &identity.subject)?;
        Ok(GetTaskResult::new(manager.get_task(task_id)?))
    }

    /// `tasks/update` for `identity`.
    pub(super) fn task_update(
        &self,
        identity: &Identity,
        task_id: &str,
        responses: InputResponses,
    ) -> Result<(), ErrorData> {
        let manager = self.inner.tasks.owned(task_id, &identity.subject)?;
        manager.update_task(task_id, responses)
    }

    /// `tasks/cancel` for `identity` (see the module docs for what it does to the run).
    pub(super) fn task_cancel(&self, identity: &Identity, task_id: &str) -> Result<(), ErrorData> {
        let manager = self.inner.tasks.owned(task_id, &identity.subject)?;
        manager.cancel_task(task_id)
    }

    /// The body of a task: start (or continue) the run, then follow it until it ends,
    /// asking the client for what it needs on the way.
    async fn run_task(
        &self,
        ctx: TaskContext,
        identity: Identity,
        name: String,
        arguments: Map<String, Value>,
        args_digest: String,
    ) -> Result<CallToolResult, TaskExit> {
        let Some(tool) = self.tool(&name) else {
            return Ok(error_result(&format!("unknown tool `{name}`")));
        };
        let (start, spec) = (tool.start.clone(), tool.spec.clone());
        let engine = self.inner.engine.clone();
        let subject = identity.subject.clone();
        let start_run = || {
            start(
                engine.clone(),
                subject.clone(),
                tools::input_tuple(&spec, &arguments),
            )
        };
        let call = PendingCall {
            tool: name.clone(),
            principal: identity.subject.clone(),
            run_id: None,
            args_digest,
        };
        let mut outcome = match self
            .inner
            .book
            .find(&call.principal, &call.tool, &call.args_digest)
            .and_then(|p| p.run_id)
        {
            Some(run_id) => self.continue_run(&run_id).await,
            None => start_run().await,
        };
        for round in 0..MAX_ROUNDS {
            let report = match outcome {
                Err(EngineError::PreflightNotReady { consents, .. }) => {
                    let _ = self.inner.book.seal(&call);
                    let links = match self.preflight_links(&subject, &consents).await {
                        Ok(links) => links,
                        Err(e) => return Ok(error_result(&e)),
                    };
                    ctx.set_status_message("waiting for the user to connect an account");
                    if let Answered::Declined(result) = self.ask_consent(&ctx, round, links).await?
                    {
                        return Ok(result);
                    }
                    outcome = start_run().await;
                    continue;
                }
                Err(e) => return Ok(error_result(&e.to_string())),
                Ok(report) => report,
            };
            let run_id = report.run_id.clone();
            let pending = PendingCall {
                run_id: Some(run_id.clone()),
                ..call.clone()
            };
            ctx.set_status_message(format!("run {run_id}: {}", report.state.kind()));
            outcome = match report.state {
                RunState::Completed { output } => {
                    self.inner.book.finish(&pending);
                    let mut result = CallToolResult::structured(tools::structured_output(output));
                    result.meta = None;
                    return Ok(result);
                }
                state @ RunState::Suspended { .. } => {
                    let _ = self.inner.book.seal(&pending);
                    let links = match self.resume_links(&subject, &state).await {
                        Ok(links) => links,
                        Err(e) => return Ok(error_result(&e)),
                    };
                    if let Answered::Declined(result) = self.ask_consent(&ctx, round, links).await?
                    {
                        return Ok(result);
                    }
                    self.continue_run(&run_id).await
                }
                RunState::AwaitingApproval(request) => {
                    let _ = self.inner.book.seal(&pending);
                    let engine = &self.inner.engine;
                    if !engine
                        .approval_policy()
                        .may_decide(&identity.subject, &request)
                    {
                        ctx.set_status_message(format!(
                            "run {run_id} waits for the approval of `{}` by `{}` or an approver the application names",
                            request.step, request.principal
                        ));
                        self.wait_until_moved(&ctx, &run_id, "awaiting_approval")
                            .await?
                    } else {
                        let key = format!("approval-{}", request.approval_id);
                        let form = InputRequest::Elicitation(ElicitRequest::new(
                            super::elicit::form(&request),
                        ));
                        let answer = ctx.request_input(key, form).await?;
                        let verdict = serde_json::from_value::<ElicitResult>(answer)
                            .ok()
                            .as_ref()
                            .and_then(super::elicit::verdict);
                        let decided = match verdict {
                            Some(true) => {
                                engine
                                    .approve(&run_id, &request.approval_id, &identity.subject)
                                    .await
                            }
                            Some(false) => {
                                engine
                                    .deny(&run_id, &request.approval_id, &identity.subject)
                                    .await
                            }
                            None => {
                                return Ok(error_result(&format!(
                                    "run {run_id} waits for your approval of `{}` ({}); call the tool again to be asked again, or decide it on the approvals page",
                                    request.step, request.reason
                                )));
                            }
                        };
                        match decided {
                            Ok(report) => Ok(report),
                            Err(ApprovalError::Engine(e)) => Err(e),
                            Err(e) => return Ok(error_result(&e.to_string())),
                        }
                    }
                }
                RunState::Running | RunState::Compensating => {
                    let kind = report.state.kind();
                    self.wait_until_moved(&ctx, &run_id, kind).await?
                }
                state => {
                    return Ok(error_result(
                        &failure_message(&run_id, &state).unwrap_or_default(),
                    ));
                }
            };
        }
        Ok(error_result(&format!(
            "the call needed more than {MAX_ROUNDS} rounds of consent or approval; call the tool again to go on"
        )))
    }

    /// Shows the consent links as URL elicitations and waits until the client answers all.
    async fn ask_consent(
        &self,
        ctx: &TaskContext,
        round: u32,
        links: Vec<(String, String)>,
    ) -> Result<Answered, TaskExit> {
        let asks = links.iter().enumerate().map(|(i, (connector, url))| {
            let request = ElicitRequestParams::UrlElicitationParams {
                meta: None,
                message: format!(
                    "Connect your {connector} account to continue; then the run resumes where it stopped."
                ),
                url: url.clone(),
                elicitation_id: format!("{}-{round}-{i}", ctx.task_id()),
            };
            ctx.request_input(
                format!("consent-{connector}-{round}"),
                InputRequest::Elicitation(ElicitRequest::new(request)),
            )
        });
        for answer in futures::future::join_all(asks).await {
            let answer = answer?;
            let accepted = serde_json::from_value::<ElicitResult>(answer)
                .is_ok_and(|r| r.action == ElicitationAction::Accept);
            if !accepted {
                return Ok(Answered::Declined(error_result(
                    "the account was not connected; call the tool again to continue the same run",
                )));
            }
        }
        Ok(Answered::Accepted)
    }

    /// Waits until run `run_id` leaves state `kind` (someone else decides its approval,
    /// another driver finishes), or the task is cancelled. The task's TTL bounds the wait.
    async fn wait_until_moved(
        &self,
        ctx: &TaskContext,
        run_id: &str,
        kind: &str,
    ) -> Result<Result<RunReport<Value>, EngineError>, TaskExit> {
        let deadline = tokio::time::Instant::now() + self.inner.task_ttl;
        loop {
            tokio::select! {
                () = ctx.cancelled() => return Err(TaskExit::Cancelled),
                () = tokio::time::sleep(POLL) => {}
            }
            let run = match self.inner.engine.run_status(run_id).await {
                Ok(run) => run,
                Err(e) => return Ok(Err(e)),
            };
            if run.state.kind() != kind {
                return Ok(Ok(report_of(run_id, run.state)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TaskExit::Error(ErrorData::internal_error(
                    format!("run {run_id} did not move before the task expired"),
                    None,
                )));
            }
        }
    }
}
