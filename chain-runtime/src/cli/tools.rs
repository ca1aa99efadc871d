//! `tools CHAIN [--format openai|openai-responses|anthropic|mcp] [--whole]`: the tool
//! definitions of a chain's steps (written calls and toolsets), or of the chain as one tool.

use serde_json::Value;

use super::CliError;
use crate::chain::ChainMeta;
use crate::tool::{ToolFormat, export};

pub(super) fn parse_format(s: &str) -> Result<ToolFormat, String> {
    s.parse()
}

/// The definitions as a JSON array in `format`; an error names the steps (or the chain)
/// whose types have no JSON Schema.
pub(super) fn tools(
    meta: &'static ChainMeta,
    format: ToolFormat,
    whole: bool,
) -> Result<Value, CliError> {
    let defs = if whole {
        let def = meta.tool_definition().ok_or_else(|| {
            CliError::Usage(format!(
                "chain `{}` has inputs or an output without a JSON Schema: derive `JsonSchema` on them",
                meta.name
            ))
        })?;
        vec![def]
    } else {
        let (defs, missing) = meta.step_tools();
        if !missing.is_empty() {
            return Err(CliError::Usage(format!(
                "steps of `{}` without a JSON Schema for their inputs or output: {} (derive `JsonSchema` on their types)",
                meta.name,
                missing.join(", ")
            )));
        }
        defs
    };
    Ok(export(&defs, format))
}
