//! Generated tool definitions: schemas named after the parameters, strict where the
//! providers allow it, and stable (snapshots of all formats).

use chain_runtime::Step;
use chain_runtime::prelude::*;
use chain_runtime::tool::{ToolDefinition, ToolFormat, export};
use serde_json::Value;
use test_support::UserId;

/// A stage change.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct StageChange {
    /// The opportunity id.
    opportunity: String,
    /// The stage before.
    previous: String,
    /// An optional note.
    note: Option<String>,
    /// How urgent, 1 to 5.
    urgency: u8,
}

/// A priority.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
enum Priority {
    /// Soon.
    High,
    /// Later.
    Low,
}

/// No schema for this one.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Opaque(String);

/// Moves an opportunity to a new stage.
///
/// Returns what changed.
#[step(connector = "salesforce", scopes = ["api"], read)]
async fn set_stage(
    ctx: &StepCtx<UserId>,
    opportunity: String,
    stage: String,
    priority: Priority,
) -> Result<StageChange, StepError> {
    let _ = (ctx, priority);
    Ok(StageChange {
        opportunity,
        previous: stage,
        note: None,
        urgency: 1,
    })
}

/// Opens an issue from a change.
#[step(connector = "jira", scopes = ["read:jira-work"], read)]
async fn open_issue(ctx: &StepCtx<UserId>, change: StageChange) -> Result<String, StepError> {
    let _ = ctx;
    Ok(change.opportunity)
}

#[step(connector = "jira", scopes = ["read:jira-work"], read)]
async fn opaque(ctx: &StepCtx<UserId>, o: Opaque) -> Result<(), StepError> {
    let _ = (ctx, o);
    Ok(())
}

/// Escalates an opportunity.
#[chain(principal = UserId)]
async fn escalate(ctx: &ChainCtx<UserId>, opportunity: String) -> Result<String, ChainError> {
    let change = set_stage(ctx, opportunity, "Escalated".into(), Priority::High).await?;
    let key = open_issue(ctx, change).await?;
    opaque(ctx, Opaque(key.clone())).await?;
    Ok(key)
}

fn defs() -> Vec<ToolDefinition> {
    let (defs, missing) = <escalate as Chain>::META.step_tools();
    assert_eq!(
        missing,
        vec!["opaque"],
        "a step without schemas has no definition"
    );
    let mut defs = defs;
    defs.push(
        <escalate as Chain>::META
            .tool_definition()
            .expect("chain schemas"),
    );
    defs
}

fn snapshot(name: &str, value: &Value) {
    let path = format!("{}/tests/snapshots/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{path} missing: run with UPDATE_SNAPSHOTS=1 and review it"));
    assert_eq!(
        stored, text,
        "{name} changed: review, then UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn openai_snapshot() {
    snapshot("tools_openai", &export(&defs(), ToolFormat::OpenAi));
}

#[test]
fn openai_responses_snapshot() {
    snapshot(
        "tools_openai_responses",
        &export(&defs(), ToolFormat::OpenAiResponses),
    );
}

#[test]
fn anthropic_snapshot() {
    snapshot("tools_anthropic", &export(&defs(), ToolFormat::Anthropic));
}

#[test]
fn mcp_snapshot() {
    snapshot("tools_mcp", &export(&defs(), ToolFormat::Mcp));
}

#[test]
fn inputs_are_named_after_parameters_and_strict() {
    let def = <set_stage as Step>::META.tool_definition().unwrap();
    assert_eq!(def.name, "set_stage");
    assert_eq!(
        def.description,
        "Moves an opportunity to a new stage.\n\nReturns what changed."
    );
    let input = &def.input_schema;
    assert_eq!(input["type"], "object");
    assert_eq!(input["additionalProperties"], false);
    let props: Vec<&String> = input["properties"].as_object().unwrap().keys().collect();
    assert_eq!(props.len(), 3);
    assert_eq!(
        input["required"],
        serde_json::json!(["opportunity", "priority", "stage"])
    );
    assert!(def.strict);
    // The nested struct is closed too, its optional field required but nullable.
    let issue = <open_issue as Step>::META.tool_definition().unwrap();
    let change = &issue.input_schema["$defs"]["StageChange"];
    assert_eq!(change["additionalProperties"], false);
    assert_eq!(change["required"].as_array().unwrap().len(), 4);
    assert_eq!(
        change["properties"]["note"]["type"],
        serde_json::json!(["string", "null"])
    );
    assert!(change["properties"]["urgency"].get("format").is_none());
}

#[test]
fn every_object_schema_is_closed() {
    fn walk(v: &Value, path: &str) {
        if let Some(o) = v.as_object() {
            if o.get("type") == Some(&Value::from("object")) {
                assert_eq!(
                    o.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "{path}"
                );
                let props = o["properties"].as_object().unwrap();
                assert_eq!(
                    o["required"].as_array().unwrap().len(),
                    props.len(),
                    "{path}"
                );
            }
            for (k, c) in o {
                walk(c, &format!("{path}/{k}"));
            }
        } else if let Some(a) = v.as_array() {
            for c in a {
                walk(c, path);
            }
        }
    }
    for def in defs() {
        walk(&def.input_schema, &def.name);
    }
}
