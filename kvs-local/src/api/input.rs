//! Typed access to a JSON request body with the service's checks: member types (SerializationException) and
//! length, range and pattern constraints (InvalidArgumentException), each error naming the member.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Map, Value};

use crate::error::ApiError;

fn serialization(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "SerializationException", message)
}

/// A constraint violation, worded like the service's validation messages.
pub fn constraint(member: &str, value: &str, what: &str) -> ApiError {
    let shown: String = value.chars().take(64).collect();
    ApiError::invalid_argument(format!(
        "1 validation error detected: Value '{shown}' at '{member}' failed to satisfy constraint: {what}"
    ))
}

/// `[a-zA-Z0-9_.-]+`: stream names and device names.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The prefix of a `<member>` name condition (`{"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": ...}`) of
/// the List operations, `None` when absent.
pub fn name_condition(input: &Input, member: &str) -> Result<Option<String>, ApiError> {
    let Some(c) = input.opt_object(member)? else {
        return Ok(None);
    };
    if let Some(op) = c.opt_str("ComparisonOperator")?
        && op != "BEGINS_WITH"
    {
        return Err(constraint(
            &format!("{member}.ComparisonOperator"),
            op,
            "Member must satisfy enum value set: [BEGINS_WITH]",
        ));
    }
    match c.opt_str("ComparisonValue")? {
        Some(v) => {
            check_name(&format!("{member}.ComparisonValue"), v, 256)?;
            Ok(Some(v.to_owned()))
        }
        None => Ok(None),
    }
}

/// Checks a stream-name-like member.
pub fn check_name(member: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.chars().count() > max {
        return Err(constraint(
            member,
            value,
            &format!("Member must have length between 1 and {max}"),
        ));
    }
    if !is_name(value) {
        return Err(constraint(
            member,
            value,
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
        ));
    }
    Ok(())
}

/// A JSON request body.
#[derive(Debug, Clone, Default)]
pub struct Input {
    map: Map<String, Value>,
}

impl Input {
    /// Parses a body; an empty body is an empty object.
    pub fn parse(body: &[u8]) -> Result<Input, ApiError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Input::default());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| serialization(format!("request body is not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(Input { map }),
            other => Err(serialization(format!(
                "request body must be a JSON object, not {}",
                type_name(&other)
            ))),
        }
    }

    pub fn from_value(value: Value) -> Result<Input, ApiError> {
        match value {
            Value::Object(map) => Ok(Input { map }),
            other => Err(serialization(format!(
                "expected an object, not {}",
                type_name(&other)
            ))),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(serialization(format!(
                "{name} must be a string, not {}",
                type_name(other)
            ))),
        }
    }

    pub fn req_str(&self, name: &str) -> Result<&str, ApiError> {
        self.opt_str(name)?
            .ok_or_else(|| ApiError::invalid_argument(format!("{name} is required")))
    }

    /// An optional string with length bounds (in characters).
    pub fn opt_str_len(
        &self,
        name: &str,
        min: usize,
        max: usize,
    ) -> Result<Option<&str>, ApiError> {
        let v = self.opt_str(name)?;
        if let Some(s) = v {
            let n = s.chars().count();
            if n < min || n > max {
                return Err(constraint(
                    name,
                    s,
                    &format!("Member must have length between {min} and {max}"),
                ));
            }
        }
        Ok(v)
    }

    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| serialization(format!("{name} must be an integer, not {n}"))),
            Some(other) => Err(serialization(format!(
                "{name} must be a number, not {}",
                type_name(other)
            ))),
        }
    }

    /// An optional integer within bounds.
    pub fn opt_int_range(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let v = self.opt_i64(name)?;
        if let Some(n) = v
            && (n < min || n > max)
        {
            return Err(constraint(
                name,
                &n.to_string(),
                &format!("Member must have value between {min} and {max}"),
            ));
        }
        Ok(v)
    }

    /// A timestamp in epoch seconds (number, fractions allowed), returned in milliseconds.
    pub fn opt_timestamp_ms(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let secs = n
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        ApiError::invalid_argument(format!(
                            "{name} must be a non-negative timestamp"
                        ))
                    })?;
                Ok(Some((secs * 1000.0).round() as u64))
            }
            Some(Value::String(s)) => {
                // botocore accepts ISO 8601 input from users and sends numbers; accept both forms on input.
                if let Ok(secs) = s.parse::<f64>()
                    && secs.is_finite()
                    && secs >= 0.0
                {
                    return Ok(Some((secs * 1000.0).round() as u64));
                }
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
                    .map(Some)
                    .ok_or_else(|| serialization(format!("{name} '{s}' is not a timestamp")))
            }
            Some(other) => Err(serialization(format!(
                "{name} must be a timestamp, not {}",
                type_name(other)
            ))),
        }
    }

    pub fn opt_object(&self, name: &str) -> Result<Option<Input>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Input { map: m.clone() })),
            Some(other) => Err(serialization(format!(
                "{name} must be an object, not {}",
                type_name(other)
            ))),
        }
    }

    pub fn opt_array(&self, name: &str) -> Result<Option<&Vec<Value>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(serialization(format!(
                "{name} must be a list, not {}",
                type_name(other)
            ))),
        }
    }

    /// A list of strings.
    pub fn opt_string_list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        let Some(items) = self.opt_array(name)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(serialization(format!(
                    "{name} must hold strings, not {}",
                    type_name(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A string-to-string map.
    pub fn opt_string_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(serialization(format!(
                        "{name}.{k} must be a string, not {}",
                        type_name(other)
                    ))),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(other) => Err(serialization(format!(
                "{name} must be a map, not {}",
                type_name(other)
            ))),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_constraints_name_the_member() {
        let input =
            Input::parse(br#"{"StreamName": 5, "MaxResults": 0, "Tags": {"a": 1}}"#).unwrap();
        let e = input.opt_str("StreamName").unwrap_err();
        assert_eq!(e.error_type, "SerializationException");
        assert!(
            e.message.contains("StreamName must be a string"),
            "{}",
            e.message
        );
        let e = input.opt_int_range("MaxResults", 1, 10000).unwrap_err();
        assert_eq!(e.error_type, "InvalidArgumentException");
        assert!(e.message.contains("at 'MaxResults'"), "{}", e.message);
        assert!(
            input
                .opt_string_map("Tags")
                .unwrap_err()
                .message
                .contains("Tags.a")
        );
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(Input::parse(b"").is_ok());
        assert_eq!(
            Input::parse(b"{nope").unwrap_err().error_type,
            "SerializationException"
        );
        assert!(
            Input::parse(b"[1]")
                .unwrap_err()
                .message
                .contains("not a list")
        );
    }

    #[test]
    fn names_follow_the_pattern() {
        assert!(check_name("StreamName", "..", 256).is_ok());
        assert!(check_name("StreamName", "a/b", 256).is_err());
        assert!(check_name("StreamName", "", 256).is_err());
        assert!(check_name("StreamName", &"a".repeat(257), 256).is_err());
    }

    #[test]
    fn timestamps_are_epoch_seconds() {
        let input =
            Input::parse(br#"{"A": 1705489836.421, "B": "2024-01-17T11:10:36Z", "C": true}"#)
                .unwrap();
        assert_eq!(
            input.opt_timestamp_ms("A").unwrap(),
            Some(1_705_489_836_421)
        );
        assert_eq!(
            input.opt_timestamp_ms("B").unwrap(),
            Some(1_705_489_836_000)
        );
        assert!(input.opt_timestamp_ms("C").is_err());
    }
}
