//! One model turn: ask the model (or replay its journaled answer), then dispatch its tool
//! calls one at a time, in order.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Toolset;
use crate::context::ChainCtx;
use crate::error::ChainError;
use crate::model::{Message, ModelRequest, ModelResponse, ToolCall, registered_model};
use crate::principal::Principal;
use crate::step::{Effect, ErasedStepCall, StepError, StepMeta};
use crate::tool::{ToolFormat, validate};

/// The conversation a chain holds with a model: the model's name (see
/// [`crate::model::register_model`]), the messages so far and its turn count. Rebuilt
/// identically on replay, since every turn and tool result is journaled. The chain's limits
/// count per run, over all its conversations.
#[derive(Clone, Debug)]
pub struct Conversation {
    model: String,
    messages: Vec<Message>,
    turns: u32,
}

impl Conversation {
    /// A conversation with the model registered as `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            messages: Vec::new(),
            turns: 0,
        }
    }

    /// Adds instructions.
    pub fn system(mut self, content: impl Into<String>) -> Self {
        self.messages.push(Message::System {
            content: content.into(),
        });
        self
    }

    /// Adds a user message.
    pub fn user(mut self, content: impl Into<String>) -> Self {
        self.messages.push(Message::User {
            content: content.into(),
        });
        self
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Model turns taken so far.
    pub fn turns(&self) -> u32 {
        self.turns
    }
}

/// What the journal holds for one model turn.
#[derive(Serialize, Deserialize)]
struct TurnRecord {
    /// BLAKE3 of the request (messages and tool definitions) as sent.
    request_digest: String,
    /// The model's answer, or why the turn failed.
    response: Result<ModelResponse, String>,
}

/// The synthetic step a rejected tool call is journaled and audited as: it never runs
/// anything, its result is the rejection.
static REJECTED: StepMeta = StepMeta {
    name: "rejected_tool_call",
    module: "chain_runtime::agent",
    connector: "model",
    scopes: &[],
    effect: Effect::Read,
    principal: "",
    inputs: &[],
    output: "()",
    reconcile: None,
    idempotent: false,
    approval: None,
    compensate: None,
    description: Some("a tool call the model made that was not executed"),
    params: &[],
    tool: crate::tool::no_schemas,
};

fn digest(request: &ModelRequest) -> String {
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| t.export(ToolFormat::OpenAi))
        .collect();
    let bytes = serde_json::to_vec(&json!({ "messages": request.messages, "tools": tools }))
        .unwrap_or_default();
    blake3::hash(&bytes).to_hex().to_string()
}

fn limit(what: &str, n: u32) -> ChainError {
    ChainError::Domain(format!(
        "the model reached the run's limit of {n} {what} (chain policy)"
    ))
}

/// Step failures a written chain would end on (the run's failure path decides: suspend,
/// compensate, block); the others are the model's to handle, and go back to it.
fn ends_the_run(error: &StepError) -> bool {
    !matches!(error, StepError::Domain(_) | StepError::Forbidden { .. })
}

impl<P: Principal> ChainCtx<P> {
    /// Runs model turns until the model answers without calling a tool; returns its text.
    pub async fn run_tools(
        &self,
        tools: &Toolset<P>,
        chat: &mut Conversation,
    ) -> Result<String, ChainError> {
        loop {
            if let Some(text) = self.model_turn(tools, chat).await? {
                return Ok(text);
            }
        }
    }

    /// Runs one model turn: asks the model (a replay returns the journaled answer instead),
    /// then dispatches its tool calls one at a time, in order, appending each result to the
    /// conversation. Returns the model's text when it called no tool.
    ///
    /// A call to a tool outside the set, or whose arguments do not validate, is never run:
    /// the error goes back to the model as that call's result, is journaled and audited, and
    /// counts against the run's limit. An authorization failure (and any failure a written
    /// chain would end on) ends the turn with that error, so the run suspends or compensates
    /// as the chain's policy says; domain and forbidden errors go back to the model.
    pub async fn model_turn(
        &self,
        tools: &Toolset<P>,
        chat: &mut Conversation,
    ) -> Result<Option<String>, ChainError> {
        let limits = tools.chain.tool_limits;
        // The limits are per run: counted on the run's context, over all its conversations.
        if bump(&self.usage().turns) > limits.max_model_turns {
            return Err(limit("model turns", limits.max_model_turns));
        }
        chat.turns += 1;
        let request = ModelRequest {
            messages: chat.messages.clone(),
            tools: tools.definitions(),
        };
        let request_digest = digest(&request);
        let record: TurnRecord = self
            .record("model_turn", async {
                let response = match registered_model(&chat.model) {
                    Ok(model) => model.complete(&request).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                TurnRecord {
                    request_digest: request_digest.clone(),
                    response,
                }
            })
            .await?;
        if record.request_digest != request_digest {
            return Err(ChainError::Step(StepError::Runtime(format!(
                "model turn {} diverged from its journal: the conversation sent now differs from the one the journaled answer replied to",
                chat.turns
            ))));
        }
        let response = record.response.map_err(|message| {
            ChainError::Step(StepError::Unavailable {
                connector: "model".into(),
                message,
            })
        })?;
        chat.messages.push(Message::Assistant {
            content: response.text.clone(),
            tool_calls: response.tool_calls.clone(),
        });
        if response.tool_calls.is_empty() {
            return Ok(Some(response.text.unwrap_or_default()));
        }
        for call in &response.tool_calls {
            if bump(&self.usage().calls) > limits.max_tool_calls {
                return Err(limit("tool calls", limits.max_tool_calls));
            }
            let (content, is_error) = match self.prepare(tools, call) {
                Ok((entry, args)) => match (entry.dispatch)(self, entry.site, args) {
                    Ok(run) => match run.await {
                        Ok(output) => (output.to_string(), false),
                        Err(e) if ends_the_run(&e) => return Err(ChainError::Step(e)),
                        Err(e) => (json!({ "error": e.to_string() }).to_string(), true),
                    },
                    Err(decode) => {
                        let reason = format!("invalid arguments for `{}`: {decode}", call.name);
                        (self.reject(tools, reason).await?, true)
                    }
                },
                Err(reason) => (self.reject(tools, reason).await?, true),
            };
            chat.messages.push(Message::Tool {
                call_id: call.id.clone(),
                content,
                is_error,
            });
        }
        Ok(None)
    }

    /// The tool a call names and its arguments in parameter order, or why it is rejected.
    fn prepare<'t>(
        &self,
        tools: &'t Toolset<P>,
        call: &ToolCall,
    ) -> Result<(&'t super::ToolEntry<P>, Value), String> {
        let Some(entry) = tools.entry(&call.name) else {
            return Err(format!(
                "unknown tool `{}`: the tools are {}",
                call.name,
                tools.names().join(", ")
            ));
        };
        let args: Value = serde_json::from_str(&call.arguments)
            .map_err(|e| format!("the arguments for `{}` are not valid JSON: {e}", call.name))?;
        let schema = (entry.meta.tool)()
            .map(|s| s.input)
            .ok_or_else(|| format!("`{}` has no input schema", call.name))?;
        validate(&schema, &args)
            .map_err(|e| format!("invalid arguments for `{}`: {e}", call.name))?;
        let ordered: Vec<Value> = entry
            .meta
            .params
            .iter()
            .map(|p| args.get(*p).cloned().unwrap_or(Value::Null))
            .collect();
        Ok((entry, Value::Array(ordered)))
    }

    /// Journals and audits a rejected call (once: a replay returns the journaled rejection),
    /// counts it, and returns the tool result the model gets.
    async fn reject(&self, tools: &Toolset<P>, reason: String) -> Result<String, ChainError> {
        let message = reason.clone();
        let rejected: ErasedStepCall =
            Box::new(move |_, _| Box::pin(async move { Err(StepError::Domain(message)) }));
        let result = self
            .driver()
            .step(tools.choice_site, &REJECTED, rejected)
            .await;
        let text = match result {
            Err(StepError::Domain(text)) => text,
            Err(other) => return Err(ChainError::Step(other)),
            Ok(_) => reason,
        };
        let max = tools.chain.tool_limits.max_rejected_tool_calls;
        if bump(&self.usage().rejected) > max {
            return Err(limit("rejected tool calls", max));
        }
        Ok(json!({ "error": text }).to_string())
    }
}

/// Adds one to a run's counter and returns the new count.
fn bump(counter: &std::sync::atomic::AtomicU32) -> u32 {
    counter
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .saturating_add(1)
}
