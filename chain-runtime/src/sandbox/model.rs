//! A scripted model emulator speaking the OpenAI-compatible Chat Completions API: a script of
//! turns (tool calls with arguments, final text), faults (429 with `Retry-After`, 500, a
//! malformed body), and a record of every request it received, so tests can assert what the
//! model saw: the tool definitions, the tool results, and that no secret is ever in them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::SandboxError;
use super::server::{ServerHandle, bind, serve};

/// One scripted model answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptedTurn {
    text: Option<String>,
    calls: Vec<(String, String)>,
}

impl ScriptedTurn {
    /// A final answer with `text` and no tool call.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            calls: Vec::new(),
        }
    }

    /// A turn with no calls yet; add them with [`ScriptedTurn::call`].
    pub fn calls() -> Self {
        Self::default()
    }

    /// Adds a call of `tool` with `arguments` (sent as the JSON text of the value).
    pub fn call(self, tool: impl Into<String>, arguments: Value) -> Self {
        self.call_raw(tool, arguments.to_string())
    }

    /// Adds a call of `tool` whose arguments text is `arguments`, verbatim (it may be broken
    /// JSON).
    pub fn call_raw(mut self, tool: impl Into<String>, arguments: impl Into<String>) -> Self {
        self.calls.push((tool.into(), arguments.into()));
        self
    }
}

/// A failure the emulator answers one request with instead of the next turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFault {
    /// 429 with `Retry-After: secs`.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// 500.
    ServerError,
    /// 200 with a body that is not JSON.
    MalformedJson,
}

#[derive(Clone, Debug)]
enum Entry {
    Turn(ScriptedTurn),
    Fault(ModelFault),
}

#[derive(Default)]
struct ModelState {
    script: VecDeque<Entry>,
    requests: Vec<Value>,
    api_key: Option<String>,
    next_call: u32,
}

/// The emulator. Dropping it stops the server.
pub struct ScriptedModel {
    base_url: String,
    state: Arc<Mutex<ModelState>>,
    _server: ServerHandle,
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ScriptedModel {
    /// Starts the emulator on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Result<Self, SandboxError> {
        let (listener, addr) = bind("model").await?;
        let state = Arc::new(Mutex::new(ModelState::default()));
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(state.clone());
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            state,
            _server: serve(listener, router),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ModelState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The API base URL to give an OpenAI-compatible client (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Requires `Authorization: Bearer key` on every request (401 otherwise).
    pub fn require_api_key(&self, key: &str) {
        self.lock().api_key = Some(key.to_owned());
    }

    /// Appends a turn to the script.
    pub fn push(&self, turn: ScriptedTurn) {
        self.lock().script.push_back(Entry::Turn(turn));
    }

    /// Appends a fault: the request it meets gets the fault, the script does not advance
    /// past any turn.
    pub fn fault(&self, fault: ModelFault) {
        self.lock().script.push_back(Entry::Fault(fault));
    }

    /// Every request body received, oldest first (headers are not kept: the API key never
    /// lands here).
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// Turns and faults not yet consumed.
    pub fn remaining(&self) -> usize {
        self.lock().script.len()
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "message": message } })),
    )
        .into_response()
}

async fn chat_completions(
    State(state): State<Arc<Mutex<ModelState>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(key) = &s.api_key {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(key.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "invalid API key");
        }
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(StatusCode::BAD_REQUEST, "the body is not JSON"),
    };
    s.requests.push(request);
    let Some(entry) = s.script.pop_front() else {
        return error(StatusCode::BAD_REQUEST, "the script has no more turns");
    };
    let turn = match entry {
        Entry::Fault(ModelFault::RateLimited { retry_after_secs }) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            if let Ok(v) = retry_after_secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Entry::Fault(ModelFault::ServerError) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
        Entry::Fault(ModelFault::MalformedJson) => {
            return (StatusCode::OK, "{\"choices\": [{\"message\": ").into_response();
        }
        Entry::Turn(turn) => turn,
    };
    let mut calls = Vec::new();
    for (name, arguments) in turn.calls {
        s.next_call += 1;
        calls.push(json!({
            "id": format!("call_{}", s.next_call),
            "type": "function",
            "function": { "name": name, "arguments": arguments },
        }));
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let mut message = json!({ "role": "assistant", "content": turn.text });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    axum::Json(json!({
        "id": "chatcmpl-sandbox",
        "object": "chat.completion",
        "model": "scripted",
        "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
    }))
    .into_response()
}
