//! `chainctl tools CHAIN --format ...`: the tool definitions of a chain's steps as JSON.

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::Value;

fn tools(args: &[&str]) -> (i32, Value, String) {
    let out = cargo_bin_cmd!("chainctl")
        .arg("tools")
        .args(args)
        .output()
        .expect("chainctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn openai_format_is_an_array_of_functions_with_object_parameters() {
    let (code, json, stderr) = tools(&["escalate_deal", "--format", "openai"]);
    assert_eq!(code, 0, "{stderr}");
    let entries = json.as_array().expect("a JSON array");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["load_stage", "set_stage", "open_issue", "announce"]);
    for entry in entries {
        assert_eq!(entry["type"], "function");
        assert_eq!(entry["function"]["parameters"]["type"], "object");
        assert_eq!(
            entry["function"]["parameters"]["additionalProperties"],
            false
        );
        assert!(
            !entry["function"]["description"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(
        entries[1]["function"]["parameters"]["required"],
        serde_json::json!(["opportunity", "previous", "site", "stage"])
    );
}

#[test]
fn anthropic_and_mcp_formats_and_the_whole_chain() {
    let (code, json, stderr) = tools(&["escalate_deal", "--format", "anthropic"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json[0]["name"], "load_stage");
    assert_eq!(json[0]["input_schema"]["type"], "object");
    let (code, json, stderr) = tools(&["escalate_deal", "--format", "mcp"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json[2]["inputSchema"]["type"], "object");
    assert_eq!(
        json[2]["outputSchema"]["type"], "object",
        "open_issue returns an object"
    );
    let (code, json, stderr) = tools(&["escalate_deal", "--whole"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json[0]["function"]["name"], "escalate_deal");
    assert_eq!(
        json[0]["function"]["parameters"]["required"],
        serde_json::json!(["deal"])
    );
}

#[test]
fn a_bad_format_is_a_usage_error() {
    let (code, _, stderr) = tools(&["escalate_deal", "--format", "soap"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unknown tool format"), "{stderr}");
}
