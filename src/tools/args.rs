//! Reading and validating tool arguments, with errors precise enough for the model to fix its
//! call ("callback_number \"abc\" contains characters that are not digits").

use serde_json::{Map, Value};

use crate::domain::ToolError;
use crate::phone::E164;

/// Longest text accepted in any one argument.
pub const MAX_TEXT: usize = 2000;

/// The arguments of one invocation, as a JSON object.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Fields<'a> {
    /// Accepts an object (or `null`, meaning no arguments).
    pub fn new(args: &'a Value) -> Result<Self, ToolError> {
        match args {
            Value::Object(map) => Ok(Self { map }),
            Value::Null => Ok(Self { map: &EMPTY }),
            other => Err(ToolError::validation(format!(
                "arguments must be a JSON object, got {}",
                type_name(other)
            ))),
        }
    }

    /// A text argument: a string (or a number, which models sometimes send for `age`), trimmed;
    /// empty means absent. Unfilled template placeholders are refused.
    pub fn text(&self, name: &str) -> Result<Option<String>, ToolError> {
        let s = match self.map.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(other) => {
                return Err(ToolError::validation(format!(
                    "{name} must be text, got {}",
                    type_name(other)
                )));
            }
        };
        if s.is_empty() {
            return Ok(None);
        }
        if s.contains("{{") && s.contains("}}") {
            return Err(ToolError::validation(format!(
                "{name} is an unfilled template placeholder ({s}); ask the caller for the real value"
            )));
        }
        if s.chars().count() > MAX_TEXT {
            return Err(ToolError::validation(format!(
                "{name} is longer than {MAX_TEXT} characters; summarise it"
            )));
        }
        Ok(Some(s))
    }

    /// A text argument cut to at most `max` characters (the last one an ellipsis) instead of
    /// refused for its length: for text lifeline only keeps, where a refusal would cost more
    /// than the lost tail (the log row keeps the arguments as they came).
    pub fn text_truncated(&self, name: &str, max: usize) -> Result<Option<String>, ToolError> {
        let s = match self.map.get(name) {
            Some(Value::String(s)) if s.trim().chars().count() > max => s.trim(),
            _ => return self.text(name),
        };
        Ok(Some(truncate(s, max)))
    }

    /// The first present text among several names (the original tools used different names for
    /// the same thing over time).
    pub fn first_text(&self, names: &[&str]) -> Result<Option<String>, ToolError> {
        for name in names {
            if let Some(v) = self.text(name)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// A required text argument.
    pub fn required_text(&self, name: &str, hint: &str) -> Result<String, ToolError> {
        self.text(name)?
            .ok_or_else(|| ToolError::validation(format!("{name} is required: {hint}")))
    }

    /// A phone number argument, normalised to E.164. `None` when absent.
    pub fn phone(&self, name: &str) -> Result<Option<E164>, ToolError> {
        match self.text(name)? {
            None => Ok(None),
            Some(raw) => E164::parse(&raw).map(Some).map_err(|e| {
                ToolError::validation(format!(
                    "{name} {raw:?} {e}; read the number back to the caller and try again"
                ))
            }),
        }
    }
}

/// The caller's name from `caller_name`, or `first_name` and `last_name`.
pub fn caller_name(
    caller_name: Option<String>,
    first: Option<&str>,
    last: Option<&str>,
) -> Option<String> {
    caller_name.or_else(|| match (first, last) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (Some(f), None) => Some(f.to_string()),
        (None, Some(l)) => Some(l.to_string()),
        (None, None) => None,
    })
}

/// `s` cut on a character boundary to at most `max` characters, the last one an ellipsis when
/// anything was cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some(_) if max == 0 => String::new(),
        Some(_) => {
            // The byte offset of the character that leaves room for the ellipsis.
            let end = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            format!("{}\u{2026}", &s[..end])
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
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

    #[test]
    fn reads_text_numbers_and_phones() {
        let v = json!({"age": 7, "name": "  Max ", "empty": "", "n": "416-818-9171"});
        let f = Fields::new(&v).unwrap();
        assert_eq!(f.text("age").unwrap().as_deref(), Some("7"));
        assert_eq!(f.text("name").unwrap().as_deref(), Some("Max"));
        assert_eq!(f.text("empty").unwrap(), None);
        assert_eq!(f.phone("n").unwrap().unwrap().as_str(), "+14168189171");
    }

    #[test]
    fn long_text_is_truncated_on_a_character_boundary() {
        // Two-byte and four-byte characters: a cut by bytes would split one.
        let long = "é🐈".repeat(1500);
        let v = json!({ "reason": long, "short": " fine ", "o": {"x": 1} });
        let f = Fields::new(&v).unwrap();
        let cut = f.text_truncated("reason", MAX_TEXT).unwrap().unwrap();
        assert_eq!(cut.chars().count(), MAX_TEXT);
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
        assert_eq!(
            f.text_truncated("short", MAX_TEXT).unwrap().as_deref(),
            Some("fine")
        );
        assert_eq!(f.text_truncated("missing", MAX_TEXT).unwrap(), None);
        // Only the length is forgiven.
        assert!(f.text_truncated("o", MAX_TEXT).is_err());
        assert!(f.text("reason").is_err());
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("abcd", 0), "");
    }

    #[test]
    fn errors_name_the_argument() {
        let v = json!({"n": "user-provided number", "t": "{{callback_number}}", "o": {"x": 1}});
        let f = Fields::new(&v).unwrap();
        let e = f.phone("n").unwrap_err();
        assert!(e.message.starts_with("n \"user-provided number\""), "{e}");
        assert!(f.text("t").unwrap_err().message.contains("placeholder"));
        assert!(f.text("o").unwrap_err().message.contains("must be text"));
        assert!(Fields::new(&json!([1])).is_err());
        assert!(
            f.required_text("missing", "ask")
                .unwrap_err()
                .message
                .contains("missing is required")
        );
    }
}
