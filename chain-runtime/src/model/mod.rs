//! Models that choose steps: a small [`Model`] trait, the messages of a conversation, and an
//! OpenAI-compatible Chat Completions client ([`OpenAiCompatible`]).
//!
//! A chain body reaches a model by name ([`register_model`]): the client holds an API key and
//! so is never part of a run's journaled input.

mod openai;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use openai::OpenAiCompatible;

use crate::tool::ToolDefinition;

/// A tool call a model asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call; the tool result answers it.
    pub id: String,
    /// The tool (step) name the model chose.
    pub name: String,
    /// The arguments as the model wrote them: a JSON text, not yet validated.
    pub arguments: String,
}

/// What a model answered in one turn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// Text for the user, if any.
    pub text: Option<String>,
    /// Tool calls, in the order the model gave them.
    pub tool_calls: Vec<ToolCall>,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Instructions.
    System {
        /// The text.
        content: String,
    },
    /// The user's request.
    User {
        /// The text.
        content: String,
    },
    /// A model turn.
    Assistant {
        /// Its text, if any.
        content: Option<String>,
        /// Its tool calls.
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call: the step's output as JSON, or a classified, redacted error.
    Tool {
        /// The call it answers.
        call_id: String,
        /// The result text.
        content: String,
        /// Whether the call failed or was rejected.
        is_error: bool,
    },
}

/// One request to a model: the conversation so far and the tools it may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// The tools offered.
    pub tools: Vec<ToolDefinition>,
}

/// Why a model turn failed (after the bounded retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Rate limits, server errors, timeouts or unreadable answers outlasted the retries.
    #[error("model unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// What the last one said.
        last: String,
    },
    /// The model server refused the request (4xx other than 429).
    #[error("model server refused the request: HTTP {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// No model is registered under this name.
    #[error("no model is registered as `{0}`")]
    NotRegistered(String),
    /// The client is misconfigured (for example a missing API key variable).
    #[error("model configuration: {0}")]
    Config(String),
}

/// A chat model that can call tools.
pub trait Model: Send + Sync {
    /// Runs one turn: answers `request` with text and/or tool calls.
    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>>;
}

fn registry() -> &'static RwLock<HashMap<String, Arc<dyn Model>>> {
    static MODELS: OnceLock<RwLock<HashMap<String, Arc<dyn Model>>>> = OnceLock::new();
    MODELS.get_or_init(RwLock::default)
}

/// Makes `model` reachable from chain bodies as `name` (replacing an earlier one).
pub fn register_model(name: impl Into<String>, model: Arc<dyn Model>) {
    let mut models = registry()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    models.insert(name.into(), model);
}

/// The model registered as `name`.
pub fn registered_model(name: &str) -> Result<Arc<dyn Model>, ModelError> {
    let models = registry()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    models
        .get(name)
        .cloned()
        .ok_or_else(|| ModelError::NotRegistered(name.to_owned()))
}
