//! Checks a model's tool arguments against the tool's input schema before anything runs.
//!
//! It covers the subset of JSON Schema that [`super::schema`] generates: `type`, `properties`,
//! `required`, `additionalProperties`, `enum`, `const`, `anyOf`, `allOf`, `items`,
//! `prefixItems`, `minimum`/`maximum`, `minItems`/`maxItems` and local `$ref`s into `$defs`.
//! Decoding into the step's types comes after it and has the last word.

use serde_json::Value;

/// Validates `value` against `schema` (whose `$defs` resolve `$ref`s); the error names the
/// first offending location, such as `/change/previous`.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, schema, value, "")
}

fn at(path: &str) -> &str {
    if path.is_empty() {
        "the arguments"
    } else {
        path
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        _ => true,
    }
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let name = reference.strip_prefix("#/$defs/")?;
    root.get("$defs")?.get(name)
}

fn check(root: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(map) = schema.as_object() else {
        return match schema {
            Value::Bool(false) => Err(format!("{} is not allowed", at(path))),
            _ => Ok(()),
        };
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let target = resolve(root, reference)
            .ok_or_else(|| format!("the schema refers to an unknown `{reference}`"))?;
        check(root, target, value, path)?;
    }
    if let Some(ty) = map.get("type") {
        let ok = match ty {
            Value::String(t) => type_matches(t, value),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, value)),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "{} must be of type {ty}, found {}",
                at(path),
                kind(value)
            ));
        }
    }
    if let Some(Value::Array(options)) = map.get("enum")
        && !options.contains(value)
    {
        return Err(format!(
            "{} must be one of {}",
            at(path),
            Value::Array(options.clone())
        ));
    }
    if let Some(expected) = map.get("const")
        && expected != value
    {
        return Err(format!("{} must be {expected}", at(path)));
    }
    if let Some(Value::Array(options)) = map.get("anyOf") {
        let errors: Vec<String> = options
            .iter()
            .filter_map(|o| check(root, o, value, path).err())
            .collect();
        if errors.len() == options.len() && !options.is_empty() {
            return Err(format!(
                "{} matches none of the allowed shapes ({})",
                at(path),
                errors.join("; ")
            ));
        }
    }
    if let Some(Value::Array(all)) = map.get("allOf") {
        for s in all {
            check(root, s, value, path)?;
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = map.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{} must be at least {min}", at(path)));
        }
        if let Some(max) = map.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{} must be at most {max}", at(path)));
        }
    }
    if let Value::Object(fields) = value {
        check_object(root, map, fields, path)?;
    }
    if let Value::Array(items) = value {
        check_array(root, map, items, path)?;
    }
    Ok(())
}

fn check_object(
    root: &Value,
    map: &serde_json::Map<String, Value>,
    fields: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let props = map.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = map.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                return Err(format!("{} lacks the required field `{name}`", at(path)));
            }
        }
    }
    for (name, field) in fields {
        let child = format!("{path}/{name}");
        match props.and_then(|p| p.get(name)) {
            Some(s) => check(root, s, field, &child)?,
            None => match map.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    return Err(format!("{} has an unknown field `{name}`", at(path)));
                }
                Some(extra @ Value::Object(_)) => check(root, extra, field, &child)?,
                _ => {}
            },
        }
    }
    Ok(())
}

fn check_array(
    root: &Value,
    map: &serde_json::Map<String, Value>,
    items: &[Value],
    path: &str,
) -> Result<(), String> {
    let len = items.len() as u64;
    if let Some(min) = map.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        return Err(format!("{} needs at least {min} items", at(path)));
    }
    if let Some(max) = map.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        return Err(format!("{} takes at most {max} items", at(path)));
    }
    let prefix = map.get("prefixItems").and_then(Value::as_array);
    for (i, item) in items.iter().enumerate() {
        let child = format!("{path}/{i}");
        match prefix.and_then(|p| p.get(i)) {
            Some(s) => check(root, s, item, &child)?,
            None => {
                if let Some(s) = map.get("items") {
                    check(root, s, item, &child)?;
                }
            }
        }
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "stage": { "type": "string" },
                "change": { "$ref": "#/$defs/Change" },
                "count": { "type": ["integer", "null"], "minimum": 0 }
            },
            "required": ["stage", "change", "count"],
            "additionalProperties": false,
            "$defs": { "Change": {
                "type": "object",
                "properties": { "previous": { "type": "string" } },
                "required": ["previous"],
                "additionalProperties": false
            }}
        })
    }

    #[test]
    fn accepts_valid_arguments() {
        let args = json!({ "stage": "Escalated", "change": { "previous": "Open" }, "count": null });
        assert_eq!(validate(&schema(), &args), Ok(()));
    }

    #[test]
    fn names_the_offending_location() {
        let cases = [
            (
                json!({ "stage": 3, "change": { "previous": "x" }, "count": 1 }),
                "/stage must be of type \"string\"",
            ),
            (
                json!({ "stage": "s", "count": 1 }),
                "lacks the required field `change`",
            ),
            (
                json!({ "stage": "s", "change": { "previous": 1 }, "count": 1 }),
                "/change/previous",
            ),
            (
                json!({ "stage": "s", "change": { "previous": "x" }, "count": 1, "x": 1 }),
                "unknown field `x`",
            ),
            (
                json!({ "stage": "s", "change": { "previous": "x" }, "count": -1 }),
                "at least 0",
            ),
            (json!([1]), "must be of type \"object\""),
        ];
        for (args, expected) in cases {
            let err = validate(&schema(), &args).unwrap_err();
            assert!(err.contains(expected), "{err} / {expected}");
        }
    }
}
