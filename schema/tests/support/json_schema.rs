//! `weft.schema.json`: how it is generated from the types, and a small validator for the
//! keywords it uses, so tests can check real documents against it without a JSON Schema
//! library. The validator refuses any keyword it does not know: a schema it cannot fully
//! check fails the test instead of passing by omission.

use std::collections::HashMap;
use std::sync::Mutex;

use regex::Regex;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use weft_schema::{ApplyReply, HostSpec, HostStatus, PodSpec, PodStatus};

/// The checked-in schema's path.
pub fn path() -> std::path::PathBuf {
    super::crate_dir().join("weft.schema.json")
}

/// The schema document: `PodSpec` and `HostSpec` as the agent reads them (fields with a
/// default are optional), `PodStatus`, `HostStatus` and `ApplyReply` as the agent writes them
/// (every field always present, `null` where the contract says so). One document, the five
/// roots under `$defs`.
pub fn generate() -> Value {
    let mut reads = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator();
    let spec = reads.subschema_for::<PodSpec>();
    let host_spec = reads.subschema_for::<HostSpec>();
    let mut writes = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let status = writes.subschema_for::<PodStatus>();
    let host_status = writes.subschema_for::<HostStatus>();
    let reply = writes.subschema_for::<ApplyReply>();
    let mut defs = reads.take_definitions(true);
    for (name, def) in writes.take_definitions(true) {
        // Spec and status types are disjoint; a shared name would mean one contract
        // (read or write) silently wins for both.
        assert!(
            defs.insert(name.clone(), def).is_none(),
            "{name} is in both"
        );
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "weft wire contract v1",
        "description": "Message bodies on the weft NATS subjects: PodSpec (<prefix>.pod.<pod>.spec), PodStatus (<prefix>.pod.<pod>.status and the reply to .status.get), HostSpec and HostStatus (the same on <prefix>.host.<host>.*) and ApplyReply (the reply to a spec sent as a request; for a host its PodId is the host id). null is accepted wherever a field may be left out and means leaving it out (contract v1.1). Generated from the weft-schema types; the agent's validation is authoritative where this schema is looser (interface names and comments are limited in bytes, not characters; CIDRs and endpoints are checked by parsing).",
        "anyOf": [spec, status, host_spec, host_status, reply],
        "$defs": defs,
    })
}

/// The document as it is checked in: pretty, with a final newline.
pub fn render(schema: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(schema).expect("a schema serializes");
    text.push(b'\n');
    text
}

/// The checked-in document (while blessing, the one being written).
pub fn load() -> Value {
    if super::blessing() {
        return generate();
    }
    let text = std::fs::read(path()).expect("weft.schema.json is checked in");
    serde_json::from_slice(&text).expect("weft.schema.json is JSON")
}

/// Validates `instance` against the definition `def` of `schema` (e.g. `"PodSpec"`); the
/// errors name the instance path.
pub fn check(schema: &Value, def: &str, instance: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let root = json!({ "$ref": format!("#/$defs/{def}") });
    Checker { schema }.check(&root, instance, "", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

struct Checker<'a> {
    schema: &'a Value,
}

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "default", "format", "title", "writeOnly"];

fn regex(pattern: &str) -> Regex {
    static CACHE: Mutex<Option<HashMap<String, Regex>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap();
    cache
        .get_or_insert_with(HashMap::new)
        .entry(pattern.to_owned())
        .or_insert_with(|| Regex::new(pattern).expect("the schema's patterns compile"))
        .clone()
}

fn type_matches(name: &str, v: &Value) -> bool {
    match name {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        other => panic!("unknown type {other:?}"),
    }
}

impl Checker<'_> {
    fn resolve(&self, reference: &str) -> &Value {
        let name = reference
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("only local $refs: {reference}"));
        self.schema["$defs"]
            .get(name)
            .unwrap_or_else(|| panic!("no definition {name}"))
    }

    fn check(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let at_or_root = if at.is_empty() { "(root)" } else { at };
        let mut fail = |msg: String| errors.push(format!("{at_or_root}: {msg}"));
        let object = schema.as_object().expect("a schema is an object");
        let mut nested = Vec::new();
        for (keyword, arg) in object {
            match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "$ref" => self.check(self.resolve(arg.as_str().unwrap()), v, at, &mut nested),
                "type" => {
                    let ok = match arg {
                        Value::String(t) => type_matches(t, v),
                        Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap(), v)),
                        _ => panic!("type {arg}"),
                    };
                    if !ok {
                        fail(format!("{v} is not of type {arg}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().unwrap().contains(v) {
                        fail(format!("{v} is not one of {arg}"));
                    }
                }
                "const" => {
                    if arg != v {
                        fail(format!("{v} is not {arg}"));
                    }
                }
                "anyOf" | "oneOf" => {
                    let outcomes: Vec<Vec<String>> = arg
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            let mut errs = Vec::new();
                            self.check(s, v, at, &mut errs);
                            errs
                        })
                        .collect();
                    let matching = outcomes.iter().filter(|e| e.is_empty()).count();
                    if keyword == "oneOf" && matching > 1 {
                        fail(format!("{v} matches {matching} of oneOf"));
                    }
                    if matching == 0 {
                        // Say why the closest alternative failed (for `T or null`, why T did).
                        let closest = outcomes
                            .into_iter()
                            .min_by_key(Vec::len)
                            .unwrap_or_default();
                        nested.extend(closest);
                    }
                }
                "minimum" | "maximum" => {
                    if let Some(n) = v.as_f64() {
                        let bound = arg.as_f64().unwrap();
                        if (keyword == "minimum" && n < bound)
                            || (keyword == "maximum" && n > bound)
                        {
                            fail(format!("{v} is past {keyword} {bound}"));
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let Some(s) = v.as_str() {
                        let len = s.chars().count() as u64;
                        let bound = arg.as_u64().unwrap();
                        if (keyword == "minLength" && len < bound)
                            || (keyword == "maxLength" && len > bound)
                        {
                            fail(format!("length {len} is past {keyword} {bound}"));
                        }
                    }
                }
                "maxItems" => {
                    if let Some(items) = v.as_array() {
                        if items.len() as u64 > arg.as_u64().unwrap() {
                            fail(format!("{} items, maxItems {arg}", items.len()));
                        }
                    }
                }
                "pattern" => {
                    if let Some(s) = v.as_str() {
                        if !regex(arg.as_str().unwrap()).is_match(s) {
                            fail(format!("{v} does not match {arg}"));
                        }
                    }
                }
                "items" => {
                    if let Some(items) = v.as_array() {
                        for (i, item) in items.iter().enumerate() {
                            self.check(arg, item, &format!("{at}[{i}]"), &mut nested);
                        }
                    }
                }
                "properties" => {
                    if let Some(fields) = v.as_object() {
                        for (name, sub) in arg.as_object().unwrap() {
                            if let Some(field) = fields.get(name) {
                                let path = if at.is_empty() {
                                    name.clone()
                                } else {
                                    format!("{at}.{name}")
                                };
                                self.check(sub, field, &path, &mut nested);
                            }
                        }
                    }
                }
                "required" => {
                    if let Some(fields) = v.as_object() {
                        for name in arg.as_array().unwrap() {
                            if !fields.contains_key(name.as_str().unwrap()) {
                                fail(format!("missing {name}"));
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    assert_eq!(arg, &Value::Bool(false), "only `false` is supported");
                    let known: &Map<String, Value> = object
                        .get("properties")
                        .and_then(Value::as_object)
                        .expect("additionalProperties next to properties");
                    if let Some(fields) = v.as_object() {
                        for name in fields.keys().filter(|n| !known.contains_key(*n)) {
                            fail(format!("unknown field {name:?}"));
                        }
                    }
                }
                other => panic!("the schema uses {other:?}, which this checker does not know"),
            }
        }
        errors.extend(nested);
    }
}
