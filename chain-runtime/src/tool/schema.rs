//! JSON Schemas of step and chain signatures, generated with `schemars` and made strict.
//!
//! The work is done by generic functions here, so a `#[step]` expansion only names its types.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value};

/// The input and output schemas of one step or chain.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSchemas {
    /// An object schema with one property per parameter (named after it), all required,
    /// `additionalProperties: false`.
    pub input: Value,
    /// The schema of the output.
    pub output: Value,
    /// Whether the input schema fits the providers' strict subset.
    pub strict: bool,
}

/// A type a model may send or receive: anything with a JSON Schema.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no JSON Schema, so a step that takes or returns it cannot be offered to a model",
    label = "no `JsonSchema` for this type",
    note = "add `#[derive(JsonSchema)]` (from the `schemars` crate, or `chain_runtime::schemars` with `#[schemars(crate = \"chain_runtime::schemars\")]`) to `{Self}`"
)]
pub trait ToolType: JsonSchema {}
#[diagnostic::do_not_recommend]
impl<T: JsonSchema + ?Sized> ToolType for T {}

/// The parameters of a step after its context, as a tuple whose every element has a schema.
#[diagnostic::on_unimplemented(
    message = "the inputs `{Self}` have no JSON Schema, so this step cannot be offered to a model",
    label = "an input type lacks `JsonSchema`",
    note = "add `#[derive(JsonSchema)]` to each input type of the step"
)]
pub trait ToolInput {
    /// One subschema per element, in order.
    fn subschemas(generator: &mut SchemaGenerator) -> Vec<Schema>;
}

macro_rules! tool_input_tuple {
    ($($t:ident),*) => {
        impl<$($t: ToolType),*> ToolInput for ($($t,)*) {
            fn subschemas(_generator: &mut SchemaGenerator) -> Vec<Schema> {
                vec![$(_generator.subschema_for::<$t>()),*]
            }
        }
    };
}
tool_input_tuple!();
tool_input_tuple!(A);
tool_input_tuple!(A, B);
tool_input_tuple!(A, B, C);
tool_input_tuple!(A, B, C, D);
tool_input_tuple!(A, B, C, D, E);
tool_input_tuple!(A, B, C, D, E, F);
tool_input_tuple!(A, B, C, D, E, F, G);
tool_input_tuple!(A, B, C, D, E, F, G, H);
tool_input_tuple!(A, B, C, D, E, F, G, H, I);
tool_input_tuple!(A, B, C, D, E, F, G, H, I, J);
tool_input_tuple!(A, B, C, D, E, F, G, H, I, J, K);
tool_input_tuple!(A, B, C, D, E, F, G, H, I, J, K, L);

fn generator(deserialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12();
    let settings = if deserialize {
        settings.for_deserialize()
    } else {
        settings.for_serialize()
    };
    settings.into_generator()
}

/// The schemas of a signature with inputs `I` (named `params`) and output `O`.
pub fn schemas_of<I: ToolInput, O: ToolType>(params: &[&str]) -> ToolSchemas {
    let mut input_gen = generator(true);
    let subs = I::subschemas(&mut input_gen);
    let mut properties = Map::new();
    for (name, schema) in params.iter().zip(subs) {
        properties.insert((*name).to_owned(), schema.to_value());
    }
    let mut input = Map::new();
    input.insert("type".into(), "object".into());
    input.insert("properties".into(), Value::Object(properties));
    let defs = input_gen.take_definitions(true);
    if !defs.is_empty() {
        input.insert("$defs".into(), Value::Object(defs));
    }
    let mut input = Value::Object(input);
    let strict = strictify(&mut input);

    let mut output = generator(false).into_root_schema_for::<O>().to_value();
    if let Some(o) = output.as_object_mut() {
        o.remove("$schema");
    }
    strictify(&mut output);
    ToolSchemas {
        input,
        output,
        strict,
    }
}

/// Makes every object schema closed (`additionalProperties: false`) with every property
/// required (optional ones accept `null`, so a model sends `null` for them), and turns
/// `oneOf` into `anyOf`; returns whether the result fits the providers' strict subset.
pub fn strictify(schema: &mut Value) -> bool {
    let mut strict = true;
    walk(schema, &mut strict);
    strict
}

fn walk(value: &mut Value, strict: &mut bool) {
    let Value::Object(map) = value else { return };
    if let Some(one_of) = map.remove("oneOf") {
        map.insert("anyOf".into(), one_of);
    }
    let numeric = matches!(
        map.get("type").and_then(Value::as_str),
        Some("integer" | "number")
    );
    if numeric {
        // `uint32` and friends are not formats the providers know.
        map.remove("format");
    }
    if let Some(Value::Object(props)) = map.get("properties") {
        let names: Vec<Value> = props.keys().map(|k| Value::String(k.clone())).collect();
        map.insert("required".into(), Value::Array(names));
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    let is_object = map.get("type").and_then(Value::as_str) == Some("object");
    match map.get_mut("additionalProperties") {
        // A map type: the providers' strict subset cannot express it.
        Some(extra @ Value::Object(_)) => {
            *strict = false;
            walk(extra, strict);
        }
        Some(_) => {}
        None if is_object => {
            map.insert("properties".into(), Value::Object(Map::new()));
            map.insert("required".into(), Value::Array(Vec::new()));
            map.insert("additionalProperties".into(), Value::Bool(false));
        }
        None => {}
    }
    for key in ["properties", "$defs"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            for child in children.values_mut() {
                walk(child, strict);
            }
        }
    }
    for key in ["anyOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(children)) = map.get_mut(key) {
            for child in children {
                walk(child, strict);
            }
        }
    }
    if let Some(items) = map.get_mut("items") {
        walk(items, strict);
    }
}
