//! The tool a chain is exposed as: name, description, schemas, and how MCP arguments become the
//! chain's input tuple.
//!
//! This is the one place that reads tool metadata off a [`ChainMeta`]; when `#[chain]`
//! generates richer definitions (parameter names, doc comments, JSON Schemas), only this file
//! changes.

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
}

/// The tool definition of `meta`.
pub(crate) fn tool_spec(meta: &ChainMeta) -> ToolSpec {
    let steps: Vec<String> = meta
        .steps
        .iter()
        .map(|s| format!("{} ({}, {})", s.name, s.connector, s.effect.label()))
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
    }
}

fn as_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The chain's input tuple (as a JSON array) from the MCP arguments object: one element per
/// parameter, in declaration order. Without parameter names the object's values are taken in
/// key order, which is exact for single-parameter chains.
pub(crate) fn input_tuple(arguments: &Map<String, Value>) -> Value {
    Value::Array(arguments.values().cloned().collect())
}

/// The structured content of a completed call: the output under `result`.
pub(crate) fn structured_output(output: Value) -> Value {
    json!({ "result": output })
}
