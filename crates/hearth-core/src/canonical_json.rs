//! Canonical JSON, exactly per the spec appendix "Canonical JSON": the shortest
//! UTF-8 encoding, object keys sorted by code point, integers only within
//! `[-(2^53)+1, 2^53-1]`.
//!
//! Values are held as `serde_json::Value`, whose map is a `BTreeMap` ordered by
//! UTF-8 bytes, which is the same as ordering by code point.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// The largest magnitude canonical JSON allows: 2^53 - 1.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalJsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("duplicate key {0:?} in object")]
    DuplicateKey(String),
    #[error("number {0} is not an integer")]
    NotAnInteger(String),
    #[error("integer {0} is outside the range canonical JSON allows")]
    OutOfRange(String),
}

/// Parses JSON strictly: duplicate keys, fractional numbers and integers
/// beyond ±(2^53-1) are errors. Numbers with an integral value written as
/// floats (`-0`, `1e10`) become integers, as the spec's examples require.
pub fn parse(bytes: &[u8]) -> Result<Value, CanonicalJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict::deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(value.0)
}

/// Encodes a value as canonical JSON. Fails on values that canonical JSON
/// cannot hold (floats, out-of-range integers), which only code can build.
pub fn to_string(value: &Value) -> Result<String, CanonicalJsonError> {
    let mut out = String::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Serializes any value and encodes it canonically.
pub fn to_string_from<T: serde::Serialize>(value: &T) -> Result<String, CanonicalJsonError> {
    let value =
        serde_json::to_value(value).map_err(|e| CanonicalJsonError::Syntax(e.to_string()))?;
    to_string(&value)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&canonical_number(n)?.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn canonical_number(n: &Number) -> Result<i64, CanonicalJsonError> {
    if let Some(i) = n.as_i64() {
        check_range(i, n)
    } else if n.is_u64() {
        Err(CanonicalJsonError::OutOfRange(n.to_string()))
    } else {
        Err(CanonicalJsonError::NotAnInteger(n.to_string()))
    }
}

fn check_range(i: i64, shown: &dyn fmt::Display) -> Result<i64, CanonicalJsonError> {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
        Ok(i)
    } else {
        Err(CanonicalJsonError::OutOfRange(shown.to_string()))
    }
}

/// Only `\" \\ \b \f \n \r \t` and `\u00XX` for other control characters are
/// escaped; everything else is literal UTF-8.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn classify(e: serde_json::Error) -> CanonicalJsonError {
    // Our visitor's custom errors carry a tag so they map back to variants.
    let msg = e.to_string();
    for (tag, make) in [
        (
            "duplicate key ",
            CanonicalJsonError::DuplicateKey as fn(String) -> _,
        ),
        ("not an integer ", CanonicalJsonError::NotAnInteger),
        ("out of range ", CanonicalJsonError::OutOfRange),
    ] {
        if let Some(rest) = msg.strip_prefix(tag) {
            let detail = rest.split(" at line ").next().unwrap_or(rest);
            return make(detail.to_owned());
        }
    }
    CanonicalJsonError::Syntax(msg)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        check_range(v, &v)
            .map(Value::from)
            .map_err(|_| E::custom(format!("out of range {v}")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Err(E::custom(format!("out of range {v}"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::custom(format!("not an integer {v}")));
        }
        if v.abs() > MAX_SAFE_INTEGER as f64 {
            return Err(E::custom(format!("out of range {v}")));
        }
        // Exact: |v| <= 2^53 - 1 and v is integral. `-0.0` becomes 0.
        Ok(Value::from(v as i64))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Strict(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(input: &str) -> String {
        to_string(&parse(input.as_bytes()).unwrap()).unwrap()
    }

    /// Spec appendix "Canonical JSON", every example with its exact output.
    #[test]
    fn spec_examples() {
        assert_eq!(canon("{}"), "{}");
        assert_eq!(
            canon("{\n    \"one\": 1,\n    \"two\": \"Two\"\n}"),
            r#"{"one":1,"two":"Two"}"#
        );
        assert_eq!(
            canon("{\n    \"b\": \"2\",\n    \"a\": \"1\"\n}"),
            r#"{"a":"1","b":"2"}"#
        );
        assert_eq!(canon(r#"{"b":"2","a":"1"}"#), r#"{"a":"1","b":"2"}"#);
        assert_eq!(
            canon(
                r#"{
                "auth": {
                    "success": true,
                    "mxid": "@john.doe:example.com",
                    "profile": {
                        "display_name": "John Doe",
                        "three_pids": [
                            {"medium": "email", "address": "john.doe@example.org"},
                            {"medium": "msisdn", "address": "123456789"}
                        ]
                    }
                }
            }"#
            ),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
        );
        assert_eq!(canon(r#"{"a": "日本語"}"#), r#"{"a":"日本語"}"#);
        assert_eq!(canon(r#"{"本": 2, "日": 1}"#), r#"{"日":1,"本":2}"#);
        assert_eq!(canon(r#"{"a": "\u65E5"}"#), r#"{"a":"日"}"#);
        assert_eq!(canon(r#"{"a": null}"#), r#"{"a":null}"#);
        assert_eq!(
            canon(r#"{"a": -0, "b": 1e10}"#),
            r#"{"a":0,"b":10000000000}"#
        );
    }

    #[test]
    fn escapes_only_what_the_grammar_requires() {
        assert_eq!(
            canon(r#"["\"\\\/\b\f\n\r\t\u0001\u001f\u007f\u00e9"]"#),
            "[\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}é\"]"
        );
    }

    #[test]
    fn rejects_fractions_duplicates_and_out_of_range() {
        assert_eq!(
            parse(br#"{"a":1.5}"#),
            Err(CanonicalJsonError::NotAnInteger("1.5".into()))
        );
        assert_eq!(
            parse(br#"{"a":1,"a":2}"#),
            Err(CanonicalJsonError::DuplicateKey("\"a\"".into()))
        );
        assert!(matches!(
            parse(br#"{"a":{"b":[{"c":1,"c":1}]}}"#),
            Err(CanonicalJsonError::DuplicateKey(_))
        ));
        assert_eq!(
            parse(b"9007199254740992"),
            Err(CanonicalJsonError::OutOfRange("9007199254740992".into()))
        );
        assert_eq!(
            parse(b"-9007199254740992"),
            Err(CanonicalJsonError::OutOfRange("-9007199254740992".into()))
        );
        assert!(matches!(
            parse(b"1e300"),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        assert!(parse(b"9007199254740991").is_ok());
        assert!(parse(b"-9007199254740991").is_ok());
        assert!(matches!(
            parse(b"{\"a\":1} x"),
            Err(CanonicalJsonError::Syntax(_))
        ));
        assert!(matches!(
            parse(b"{\"a\""),
            Err(CanonicalJsonError::Syntax(_))
        ));
    }

    #[test]
    fn refuses_to_encode_values_built_with_floats() {
        let v = serde_json::json!({"a": 0.5});
        assert_eq!(
            to_string(&v),
            Err(CanonicalJsonError::NotAnInteger("0.5".into()))
        );
        let v = serde_json::json!({"a": u64::MAX});
        assert!(matches!(
            to_string(&v),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
    }
}
