//! MongoDB `$jsonSchema` validators, derived from the document schemas so that what the database
//! checks is what the code writes. MongoDB's dialect has no `$ref` and no formats and names types
//! by BSON type, so the JSON Schema is rewritten: references inlined, `date-time` strings become
//! `date`, integers become `int`/`long`.

use serde_json::{json, Map, Value};

use crate::collection::Collection;
use crate::json_schema::documents_schema;

/// The validator of each collection, as the `$jsonSchema` value.
pub fn validators() -> Vec<(Collection, Value)> {
    let docs = documents_schema();
    let defs = docs.get("$defs").cloned().unwrap_or(Value::Null);
    Collection::ALL
        .into_iter()
        .map(|c| {
            let schema = docs["properties"][c.name()].clone();
            (c, convert(&schema, &defs))
        })
        .collect()
}

fn bson_types(json_type: &str, format: Option<&str>) -> Vec<&'static str> {
    match json_type {
        "string" if format == Some("date-time") => vec!["date"],
        "string" => vec!["string"],
        "integer" => vec!["int", "long"],
        "number" => vec!["int", "long", "double", "decimal"],
        "boolean" => vec!["bool"],
        "null" => vec!["null"],
        "object" => vec!["object"],
        "array" => vec!["array"],
        _ => vec![],
    }
}

fn convert(schema: &Value, defs: &Value) -> Value {
    let obj = match schema {
        Value::Object(o) => o,
        // `true` accepts anything; MongoDB spells that as an empty schema.
        _ => return json!({}),
    };
    let mut out = Map::new();
    if let Some(Value::String(r)) = obj.get("$ref") {
        let name = r.rsplit('/').next().unwrap_or_default();
        if let Value::Object(resolved) = convert(&defs[name], defs) {
            out.extend(resolved);
        }
    }
    let format = obj.get("format").and_then(Value::as_str);
    for (key, value) in obj {
        match key.as_str() {
            "type" => {
                let names: Vec<&str> = match value {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    _ => vec![],
                };
                let types: Vec<&str> = names.iter().flat_map(|t| bson_types(t, format)).collect();
                let types = if types.len() == 1 {
                    json!(types[0])
                } else {
                    json!(types)
                };
                out.insert("bsonType".into(), types);
            }
            "properties" => {
                let props: Map<String, Value> = value
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), convert(v, defs)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), convert(value, defs));
            }
            "anyOf" | "oneOf" | "allOf" => {
                let parts: Vec<Value> = value
                    .as_array()
                    .map(|a| a.iter().map(|v| convert(v, defs)).collect())
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Array(parts));
            }
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "required" | "description" | "title" | "enum" | "minimum" | "maximum" => {
                out.insert(key.clone(), value.clone());
            }
            // $ref is inlined above; formats, ids and defaults have no MongoDB counterpart.
            _ => {}
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator(c: Collection) -> Value {
        validators()
            .into_iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .unwrap()
    }

    #[test]
    fn every_collection_has_an_object_validator_without_json_schema_only_keywords() {
        for (c, v) in validators() {
            assert_eq!(v["bsonType"], "object", "{c}");
            let text = v.to_string();
            for word in ["$ref", "\"format\"", "\"type\"", "$defs", "\"integer\""] {
                assert!(!text.contains(word), "{c} validator contains {word}");
            }
        }
    }

    #[test]
    fn dates_ids_and_nullable_fields_map_to_bson_types() {
        let builds = validator(Collection::Builds);
        let p = &builds["properties"];
        assert_eq!(p["time_start"]["bsonType"], "date");
        assert_eq!(p["time_end"]["bsonType"], json!(["date", "null"]));
        assert_eq!(p["result"]["bsonType"], json!(["int", "long", "null"]));
        assert_eq!(
            p["master_id"]["anyOf"],
            json!([{"bsonType": ["int", "long"]}, {"bsonType": "string"}])
        );
        assert_eq!(
            p["properties"]["additionalProperties"]["properties"]["value"],
            json!({})
        );
        let required = builds["required"].as_array().unwrap();
        assert!(required.contains(&json!("builder")) && required.contains(&json!("steps")));
        let steps = validator(Collection::Steps);
        assert_eq!(
            steps["properties"]["log_bytes"]["properties"]["stdout"]["bsonType"],
            json!(["int", "long"])
        );
    }

    #[test]
    fn repository_metadata_is_optional_but_typed() {
        let repo = validator(Collection::Repository);
        assert_eq!(repo["required"], json!(["_id", "builds"]));
        assert_eq!(
            repo["properties"]["commiter_date"]["bsonType"],
            json!(["date", "null"])
        );
        // Only a finished build is linked: how it ended is always there.
        let entry = &repo["properties"]["builds"]["items"];
        assert_eq!(
            entry["required"],
            json!([
                "build",
                "builder",
                "number",
                "result",
                "time_start",
                "time_end"
            ])
        );
        assert_eq!(
            entry["properties"]["result"]["bsonType"],
            json!(["int", "long"])
        );
        assert_eq!(entry["properties"]["time_end"]["bsonType"], "date");
    }
}
