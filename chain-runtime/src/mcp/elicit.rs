//! Elicitations: the consent links a call needs (URL mode), and the approval of a step when
//! the caller may decide it (form mode).
//!
//! # Approval through the client
//! A call whose run stops at a step that needs approval, made by someone who may decide it
//! (the run's principal, or whom the engine's approval policy authorizes), is asked in a form
//! with one boolean, `approve`:
//! - clients of `2025-11-25` that declared form elicitation get an `elicitation/create`
//!   request during the call; the answer decides at once and the run goes on in the same call;
//! - clients of `2026-07-28` get an `InputRequiredResult` holding the form under the key
//!   `approval-{approval id}` and a sealed request state naming the run; their retry carries
//!   the answer in `inputResponses` and continues the same run.
//!
//! Accepting with `approve: true` approves; `approve: false` or declining denies (the run goes
//! down its failure path); cancelling leaves the request pending, so a retry asks again. A
//! caller who may not decide gets a tool error saying who must, and the request stays pending.

use std::collections::BTreeMap;

use rmcp::model::{
    BooleanSchema, CallToolResponse, ElicitRequest, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationSchema, ErrorCode, ErrorData, InputRequest, InputRequiredResult,
    InputResponses, PrimitiveSchemaDefinition, ProtocolVersion,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::{Value, json};

use super::state::PendingCall;
use super::{Identity, McpServer, URL_ELICITATION_REQUIRED, tool_error};
use crate::approval::PendingApproval;
use crate::engine::{ApprovalError, EngineError, RunReport};
use crate::journal::RunState;

/// At most this many approvals are asked within one call (a chain that needs more goes on
/// with the next call).
const MAX_APPROVALS_PER_CALL: usize = 8;

/// What asking for an approval came to.
pub(super) enum Asked {
    /// A decision was made: the run's new outcome.
    Decided(Result<RunReport<Value>, EngineError>),
    /// The call answers now (a form to fill, or a tool error).
    Respond(CallToolResponse),
}

/// The key of an approval's form among a call's input requests and responses.
fn form_key(request: &PendingApproval) -> String {
    format!("approval-{}", request.approval_id)
}

/// The form a person fills to decide `request`.
pub(super) fn form(request: &PendingApproval) -> ElicitRequestParams {
    let schema = ElicitationSchema::new(BTreeMap::from([(
        "approve".to_owned(),
        PrimitiveSchemaDefinition::Boolean(
            BooleanSchema::new()
                .title("Approve")
                .description("true runs the step; false denies it (the run undoes its writes)"),
        ),
    )]));
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: format!(
            "Approve step `{}` of run {} ({})? It would run with: {}",
            request.step, request.run_id, request.reason, request.arguments
        ),
        requested_schema: schema,
    }
}

/// The decision an elicitation answer carries: `Some(true)` approve, `Some(false)` deny,
/// `None` undecided (cancelled, or an answer that is not one).
pub(super) fn verdict(result: &ElicitResult) -> Option<bool> {
    match result.action {
        ElicitationAction::Accept => result
            .content
            .as_ref()
            .and_then(|c| c.get("approve"))
            .and_then(Value::as_bool),
        ElicitationAction::Decline => Some(false),
        _ => None,
    }
}

impl McpServer {
    /// Asks the caller to decide the approvals its run stops at, as long as they may and do
    /// decide; returns the final outcome, or the answer the call gives now.
    pub(super) async fn settle_approvals(
        &self,
        mut outcome: Result<RunReport<Value>, EngineError>,
        identity: &Identity,
        call: PendingCall,
        responses: Option<&InputResponses>,
        context: &RequestContext<RoleServer>,
    ) -> Result<Result<RunReport<Value>, EngineError>, CallToolResponse> {
        for _ in 0..MAX_APPROVALS_PER_CALL {
            let request = match &outcome {
                Ok(report) => match &report.state {
                    RunState::AwaitingApproval(request) => (**request).clone(),
                    _ => return Ok(outcome),
                },
                Err(_) => return Ok(outcome),
            };
            let call = PendingCall {
                run_id: Some(request.run_id.clone()),
                ..call.clone()
            };
            match self
                .ask_approval(&request, identity, &call, responses, context)
                .await
            {
                Asked::Decided(next) => outcome = next,
                Asked::Respond(response) => return Err(response),
            }
        }
        Ok(outcome)
    }

    async fn ask_approval(
        &self,
        request: &PendingApproval,
        identity: &Identity,
        call: &PendingCall,
        responses: Option<&InputResponses>,
        context: &RequestContext<RoleServer>,
    ) -> Asked {
        // The retry continues this run whatever happens below.
        let sealed = self.inner.book.seal(call);
        let engine = &self.inner.engine;
        if !engine
            .approval_policy()
            .may_decide(&identity.subject, request)
        {
            return Asked::Respond(tool_error(&format!(
                "run {} waits for the approval of `{}` ({}) by `{}` or an approver the application names; you may not decide it",
                request.run_id, request.step, request.reason, request.principal
            )));
        }
        let modern = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        let answer = if modern {
            match responses.and_then(|r| r.get(&form_key(request))) {
                Some(value) => serde_json::from_value::<ElicitResult>(value.clone()).ok(),
                None => {
                    let Ok(sealed) = sealed else {
                        return Asked::Respond(tool_error("could not seal the request state"));
                    };
                    let requests = BTreeMap::from([(
                        form_key(request),
                        InputRequest::Elicitation(ElicitRequest::new(form(request))),
                    )]);
                    return Asked::Respond(CallToolResponse::InputRequired(
                        InputRequiredResult::new(Some(requests), Some(sealed)),
                    ));
                }
            }
        } else if context
            .peer
            .supported_elicitation_modes()
            .contains(&rmcp::service::ElicitationMode::Form)
        {
            context.peer.create_elicitation(form(request)).await.ok()
        } else {
            None
        };
        let decided = match answer.as_ref().and_then(verdict) {
            Some(true) => {
                engine
                    .approve(&request.run_id, &request.approval_id, &identity.subject)
                    .await
            }
            Some(false) => {
                engine
                    .deny(&request.run_id, &request.approval_id, &identity.subject)
                    .await
            }
            None => {
                return Asked::Respond(tool_error(&format!(
                    "run {} waits for your approval of `{}` ({}); retry the call to be asked again, or decide it on the approvals page",
                    request.run_id, request.step, request.reason
                )));
            }
        };
        match decided {
            Ok(report) => Asked::Decided(Ok(report)),
            Err(ApprovalError::Engine(e)) => Asked::Decided(Err(e)),
            Err(e) => Asked::Respond(tool_error(&e.to_string())),
        }
    }

    /// The URL-mode elicitation of `links`, in the form the client's protocol version takes.
    pub(super) fn elicit(
        &self,
        call: PendingCall,
        links: Vec<(String, String)>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let sealed = self
            .inner
            .book
            .seal(&call)
            .map_err(|e| ErrorData::internal_error(e, None))?;
        let message = |connector: &str| {
            format!(
                "Connect your {connector} account to continue; then the call resumes where it stopped."
            )
        };
        let id = |i: usize| format!("{}-{i}", &sealed[sealed.len().saturating_sub(16)..]);
        let modern = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        if modern {
            let mut requests = BTreeMap::new();
            for (i, (connector, url)) in links.iter().enumerate() {
                requests.insert(
                    format!("consent-{connector}"),
                    InputRequest::Elicitation(ElicitRequest::new(
                        ElicitRequestParams::UrlElicitationParams {
                            meta: None,
                            message: message(connector),
                            url: url.clone(),
                            elicitation_id: id(i),
                        },
                    )),
                );
            }
            return Ok(CallToolResponse::InputRequired(InputRequiredResult::new(
                Some(requests),
                Some(sealed),
            )));
        }
        let elicitations: Vec<Value> = links
            .iter()
            .enumerate()
            .map(|(i, (connector, url))| {
                json!({
                    "mode": "url",
                    "elicitationId": id(i),
                    "url": url,
                    "message": message(connector),
                })
            })
            .collect();
        Err(ErrorData::new(
            ErrorCode(URL_ELICITATION_REQUIRED),
            "this call needs the user to connect an account first",
            Some(json!({ "elicitations": elicitations, "requestState": sealed })),
        ))
    }
}
