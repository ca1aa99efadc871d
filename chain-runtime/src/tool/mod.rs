//! Tool definitions generated from `#[step]` and `#[chain]`: name, description (the doc
//! comment), and the JSON Schemas of the inputs (named after the parameters, the context
//! excluded) and of the output; exported in the formats model providers and MCP use.
//!
//! A step's schemas exist when its input and output types implement `schemars::JsonSchema`;
//! offering a step to a model (`toolset![...]`) without them, or without a doc comment, does
//! not compile.

mod schema;
mod validate;

use std::str::FromStr;

use serde_json::{Value, json};

pub use schema::{ToolInput, ToolSchemas, ToolType, schemas_of, strictify};
pub use validate::validate;

/// A provider-neutral tool definition.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDefinition {
    /// The tool name: the step's (or chain's) function name.
    pub name: String,
    /// What it does: the doc comment.
    pub description: String,
    /// The parameters as an object schema.
    pub input_schema: Value,
    /// The output's schema.
    pub output_schema: Value,
    /// Whether the input schema fits the providers' strict subset.
    pub strict: bool,
}

/// The formats [`ToolDefinition`]s are exported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// OpenAI Chat Completions `tools` (also what OpenAI-compatible servers take).
    OpenAi,
    /// OpenAI Responses API `tools`.
    OpenAiResponses,
    /// Anthropic Messages `tools`.
    Anthropic,
    /// MCP `Tool` objects (as listed by `tools/list`).
    Mcp,
}

impl FromStr for ToolFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(Self::OpenAi),
            "openai-responses" | "responses" => Ok(Self::OpenAiResponses),
            "anthropic" => Ok(Self::Anthropic),
            "mcp" => Ok(Self::Mcp),
            other => Err(format!(
                "unknown tool format `{other}`: use openai, openai-responses, anthropic or mcp"
            )),
        }
    }
}

impl ToolDefinition {
    /// A definition from its parts (`description` is the doc comment, if any).
    pub fn new(name: &str, description: Option<&str>, schemas: ToolSchemas) -> Self {
        Self {
            name: name.to_owned(),
            description: description.unwrap_or_default().to_owned(),
            input_schema: schemas.input,
            output_schema: schemas.output,
            strict: schemas.strict,
        }
    }

    /// This definition in `format`.
    pub fn export(&self, format: ToolFormat) -> Value {
        match format {
            ToolFormat::OpenAi => json!({
                "type": "function",
                "function": {
                    "name": self.name,
                    "description": self.description,
                    "parameters": self.input_schema,
                    "strict": self.strict,
                }
            }),
            ToolFormat::OpenAiResponses => json!({
                "type": "function",
                "name": self.name,
                "description": self.description,
                "parameters": self.input_schema,
                "strict": self.strict,
            }),
            ToolFormat::Anthropic => json!({
                "name": self.name,
                "description": self.description,
                "input_schema": self.input_schema,
            }),
            ToolFormat::Mcp => {
                let mut tool = json!({
                    "name": self.name,
                    "description": self.description,
                    "inputSchema": self.input_schema,
                });
                // MCP output schemas describe `structuredContent`, which is an object.
                if self.output_schema.get("type").and_then(Value::as_str) == Some("object") {
                    tool["outputSchema"] = self.output_schema.clone();
                }
                tool
            }
        }
    }
}

/// `definitions` in `format`, as a JSON array.
pub fn export(definitions: &[ToolDefinition], format: ToolFormat) -> Value {
    Value::Array(definitions.iter().map(|d| d.export(format)).collect())
}

/// Per-run bounds on what a model may make a chain do; chain policy, set with
/// `#[chain(max_model_turns = N, max_tool_calls = N, max_rejected_tool_calls = N)]`.
/// Reaching one ends the run through the normal failure path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ToolLimits {
    /// Model turns (requests to the model) per run (default 16).
    pub max_model_turns: u32,
    /// Tool calls the model asks for per run, rejected ones included (default 32).
    pub max_tool_calls: u32,
    /// Rejected tool calls (unknown tool, invalid arguments) per run (default 3).
    pub max_rejected_tool_calls: u32,
}

impl ToolLimits {
    /// The defaults.
    pub const DEFAULT: Self = Self {
        max_model_turns: 16,
        max_tool_calls: 32,
        max_rejected_tool_calls: 3,
    };
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Metadata default of a step or chain without JSON Schemas.
#[doc(hidden)]
pub fn no_schemas() -> Option<ToolSchemas> {
    None
}

/// Autoref specialisation: `(&&ToolProbe::<I, O>::NEW).schemas(params)` is `Some` when `I`
/// and `O` have JSON Schemas and `None` otherwise, so a step without them still compiles.
#[doc(hidden)]
pub struct ToolProbe<I, O>(std::marker::PhantomData<fn() -> (I, O)>);

impl<I, O> ToolProbe<I, O> {
    /// The probe.
    pub const NEW: Self = Self(std::marker::PhantomData);
}

/// Chosen when the types have schemas.
#[doc(hidden)]
pub trait ProbeSchemas {
    /// The schemas.
    fn schemas(&self, params: &[&str]) -> Option<ToolSchemas>;
}

impl<I: ToolInput, O: ToolType> ProbeSchemas for &ToolProbe<I, O> {
    fn schemas(&self, params: &[&str]) -> Option<ToolSchemas> {
        Some(schemas_of::<I, O>(params))
    }
}

/// Chosen otherwise.
#[doc(hidden)]
pub trait ProbeNoSchemas {
    /// No schemas.
    fn schemas(&self, params: &[&str]) -> Option<ToolSchemas>;
}

impl<I, O> ProbeNoSchemas for ToolProbe<I, O> {
    fn schemas(&self, _params: &[&str]) -> Option<ToolSchemas> {
        None
    }
}
