//! The tool a chain is exposed as: name, description, schemas, and how MCP arguments become the
//! chain's input tuple.
//!
//! This is the one place that reads tool metadata off a [`ChainMeta`]: the generated tool
//! definition (doc comment, JSON Schemas of the inputs and output) when the chain's types
//! implement `JsonSchema`, otherwise a description built from the step list and an open
//! object schema.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::chain::ChainMeta;

/// What `tools/list` shows for one chain.
#[derive(Clone, Debug)]
pub(crate) struct ToolSpec {
    /// The tool name (the chain's function name).
    pub name: String,
    /// What it does.
    pub description: String,
    /// The arguments' schema (an object).
    pub input_schema: Arc<Map<String, Value>>,
    /// The structured result's schema, when known.
    pub output_schema: Option<Arc<Map<String, Value>>>,
    /// The chain's parameter names, in declaration order.
    pub params: &'static [&'static str],
}

/// `description`, followed by the steps that wait for a person's approval, if any.
fn with_approvals(description: String, meta: &ChainMeta) -> String {
    let approvals: Vec<String> = meta
        .steps
        .iter()
        .filter_map(|s| s.approval.map(|reason| format!("`{}` ({reason})", s.name)))
        .collect();
    if approvals.is_empty() {
        return description;
    }
    let sep = if description.is_empty() { "" } else { "\n\n" };
    format!(
        "{description}{sep}A person approves before these steps run: {}. When you may decide, you are asked in a form during the call.",
        approvals.join(", ")
    )
}

/// The tool definition of `meta`.
pub(crate) fn tool_spec(meta: &ChainMeta) -> ToolSpec {
    if let Some(def) = meta.tool_definition() {
        return ToolSpec {
            name: def.name,
            description: with_approvals(def.description, meta),
            input_schema: Arc::new(as_object(def.input_schema)),
            output_schema: Some(Arc::new(as_object(json!({
                "type": "object",
                "properties": { "result": def.output_schema },
                "required": ["result"],
            })))),
            params: meta.params,
        };
    }
    let steps: Vec<String> = meta
        .steps
        .iter()
        .map(|s| format!("{} ({}, {})", s.name, s.connector, s.label()))
        .collect();
    let description = format!(
        "Runs the chain `{}` for the signed-in user: {}. Writes are journaled and undone or held for an operator if a later step fails.",
        meta.path(),
        steps.join(" → ")
    );
    let schema = json!({
        "type": "object",
        "description": "The chain's parameters by name.",
    });
    ToolSpec {
        name: meta.name.to_owned(),
        description,
        input_schema: Arc::new(as_object(schema)),
        output_schema: Some(Arc::new(as_object(json!({
            "type": "object",
            "properties": { "result": { "description": "The chain's output." } },
            "required": ["result"],
        })))),
        params: meta.params,
    }
}

fn as_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The chain's input tuple (as a JSON array) from the MCP arguments object: one element per
/// parameter, in declaration order (a missing one is `null`, which the chain's input type
/// refuses unless it is optional). Without parameter names the object's values are taken in
/// key order, which is exact for single-parameter chains.
pub(crate) fn input_tuple(spec: &ToolSpec, arguments: &Map<String, Value>) -> Value {
    if spec.params.is_empty() {
        return Value::Array(arguments.values().cloned().collect());
    }
    Value::Array(
        spec.params
            .iter()
            .map(|p| arguments.get(*p).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}

/// The structured content of a completed call: the output under `result`.
pub(crate) fn structured_output(output: Value) -> Value {
    json!({ "result": output })
}
