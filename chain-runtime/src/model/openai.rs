//! An OpenAI-compatible Chat Completions client: OpenAI itself and local servers that speak
//! the same API (vLLM, llama.cpp server, Ollama).

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Message, Model, ModelError, ModelRequest, ModelResponse, ToolCall};
use crate::policy::RetryPolicy;
use crate::tool::ToolFormat;

/// A Chat Completions client. The API key is a secret: never in Debug, logs, errors, the
/// journal or the audit trail.
#[derive(Clone)]
pub struct OpenAiCompatible {
    base_url: String,
    model: String,
    api_key: Option<SecretString>,
    http: reqwest::Client,
    retry: RetryPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

enum Attempt {
    Done(ModelResponse),
    RateLimited(Option<Duration>, String),
    Transient(String),
    Refused(u16, String),
}

impl OpenAiCompatible {
    /// A client for `model` at `base_url` (such as `https://api.openai.com/v1` or
    /// `http://localhost:11434/v1`), without an API key. Installs the `ring` TLS provider
    /// when none is installed.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Result<Self, ModelError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ModelError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            model: model.into(),
            api_key: None,
            http,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(120),
        })
    }

    /// Sends `api_key` as a bearer token.
    pub fn with_api_key(mut self, api_key: SecretString) -> Self {
        self.api_key = Some(api_key);
        self
    }

    /// Reads the API key from the environment variable `var` (such as `OPENAI_API_KEY`).
    pub fn with_api_key_from_env(self, var: &str) -> Result<Self, ModelError> {
        match std::env::var(var) {
            Ok(key) if !key.is_empty() => Ok(self.with_api_key(SecretString::from(key))),
            _ => Err(ModelError::Config(format!(
                "the environment variable `{var}` holds no API key"
            ))),
        }
    }

    /// Bounds on retries of rate limits (honouring `Retry-After`), server errors, timeouts
    /// and unreadable answers.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long one request may take before it counts as a timeout (default 120 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Chat Completions request body for `request`.
    pub fn body(&self, request: &ModelRequest) -> Value {
        let messages: Vec<Value> = request.messages.iter().map(message_json).collect();
        let mut body = json!({ "model": self.model, "messages": messages });
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|t| t.export(ToolFormat::OpenAi))
                .collect();
            body["tools"] = Value::Array(tools);
            body["tool_choice"] = "auto".into();
        }
        body
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let mut req = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .timeout(self.timeout)
            .json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let response = match req.send().await {
            Ok(r) => r,
            // The error text names the URL, never a header.
            Err(e) => return Attempt::Transient(transport_error(&e)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return Attempt::Transient(transport_error(&e)),
        };
        if status.as_u16() == 429 {
            return Attempt::RateLimited(retry_after, "HTTP 429".into());
        }
        if status.is_server_error() {
            return Attempt::Transient(format!("HTTP {}", status.as_u16()));
        }
        if !status.is_success() {
            return Attempt::Refused(status.as_u16(), error_message(&text));
        }
        match parse_response(&text) {
            Ok(r) => Attempt::Done(r),
            Err(e) => Attempt::Transient(e),
        }
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "transport error".into()
    }
}

impl Model for OpenAiCompatible {
    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let body = self.body(request);
            let (mut rate_limited, mut transient, mut attempts) = (0u32, 0u32, 0u32);
            loop {
                attempts += 1;
                let wait = match self.attempt(&body).await {
                    Attempt::Done(r) => return Ok(r),
                    Attempt::Refused(status, message) => {
                        return Err(ModelError::Refused { status, message });
                    }
                    Attempt::RateLimited(after, last) => {
                        if rate_limited >= self.retry.max_rate_limit_retries {
                            return Err(ModelError::Unavailable { attempts, last });
                        }
                        rate_limited += 1;
                        match after {
                            Some(w) if w > self.retry.max_backoff => {
                                return Err(ModelError::Unavailable {
                                    attempts,
                                    last: format!(
                                        "{last}: Retry-After {} s exceeds the bound",
                                        w.as_secs()
                                    ),
                                });
                            }
                            Some(w) => w,
                            None => self.retry.backoff(rate_limited - 1),
                        }
                    }
                    Attempt::Transient(last) => {
                        if transient >= self.retry.max_server_retries {
                            return Err(ModelError::Unavailable { attempts, last });
                        }
                        transient += 1;
                        self.retry.backoff(transient - 1)
                    }
                };
                tracing::debug!(model = %self.model, attempts, ?wait, "model call retried");
                tokio::time::sleep(wait).await;
            }
        })
    }
}

fn message_json(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({ "role": "system", "content": content }),
        Message::User { content } => json!({ "role": "user", "content": content }),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let mut m = json!({ "role": "assistant", "content": content });
            if !tool_calls.is_empty() {
                m["tool_calls"] = tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": { "name": c.name, "arguments": c.arguments },
                        })
                    })
                    .collect();
            }
            m
        }
        Message::Tool {
            call_id, content, ..
        } => json!({ "role": "tool", "tool_call_id": call_id, "content": content }),
    }
}

/// The server's `error.message`, if it sent one, cut short.
fn error_message(text: &str) -> String {
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no error message".into());
    message.chars().take(200).collect()
}

/// Reads the first choice of a Chat Completions response.
pub(crate) fn parse_response(text: &str) -> Result<ModelResponse, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("unreadable response: {e}"))?;
    let message = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"))
        .ok_or("the response has no choices[0].message")?;
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (i, call) in calls.iter().enumerate() {
            let function = call.get("function").ok_or("a tool call has no function")?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a tool call has no name")?;
            // Some servers send the arguments as an object rather than a JSON text.
            let arguments = match function.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "{}".into(),
            };
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{i}"));
            tool_calls.push(ToolCall {
                id,
                name: name.to_owned(),
                arguments,
            });
        }
    }
    Ok(ModelResponse { text, tool_calls })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{ToolDefinition, ToolSchemas};

    #[test]
    fn reads_text_and_tool_calls_with_string_or_object_arguments() {
        let text = r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[
            {"id":"c1","type":"function","function":{"name":"a","arguments":"{\"x\":1}"}},
            {"type":"function","function":{"name":"b","arguments":{"y":2}}}]}}]}"#;
        let r = parse_response(text).unwrap();
        assert_eq!(r.text, None);
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].arguments, "{\"x\":1}");
        assert_eq!(r.tool_calls[1].id, "call_1");
        assert_eq!(r.tool_calls[1].arguments, "{\"y\":2}");
        assert!(parse_response("{\"choices\": []}").is_err());
        assert!(parse_response("not json").is_err());
    }

    #[test]
    fn the_body_carries_messages_and_tools_but_never_the_key() {
        let client = OpenAiCompatible::new("http://127.0.0.1:9/v1/", "m")
            .unwrap()
            .with_api_key(SecretString::from("sk-very-secret".to_owned()));
        let request = ModelRequest {
            messages: vec![
                Message::User {
                    content: "hi".into(),
                },
                Message::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "a".into(),
                        arguments: "{}".into(),
                    }],
                },
                Message::Tool {
                    call_id: "c1".into(),
                    content: "1".into(),
                    is_error: false,
                },
            ],
            tools: vec![ToolDefinition::new(
                "a",
                Some("does a"),
                ToolSchemas {
                    input: json!({"type": "object", "properties": {}}),
                    output: json!({}),
                    strict: true,
                },
            )],
        };
        let body = client.body(&request);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["name"],
            "a"
        );
        assert_eq!(body["messages"][2]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
        assert!(!body.to_string().contains("sk-very-secret"));
        assert!(!format!("{client:?}").contains("sk-very-secret"));
    }
}
