//! What can still be read of a frame that does not parse: the id an answer must echo, so that a
//! tool call that arrived broken (cut short, invalid JSON, a field of the wrong type) still gets
//! an error the model can act on instead of silence until its tool deadline.

use serde::Deserialize;
use serde_json::Value;

/// The longest id worth echoing (real ones are UUIDs or short tokens).
const MAX_ID_CHARS: usize = 256;

/// A usable id: a non-empty string of reasonable length.
fn usable(id: String) -> Option<String> {
    (!id.is_empty() && id.chars().count() <= MAX_ID_CHARS).then_some(id)
}

/// The string member `key` of `object`, if it is a usable id.
pub(crate) fn id_member(object: &Value, key: &str) -> Option<String> {
    object
        .get(key)?
        .as_str()
        .map(str::to_owned)
        .and_then(usable)
}

/// The first usable string value of a member named one of `keys`, found in the raw `text` of a
/// frame that is not valid JSON as a whole: each `"key"` followed by `:` is tried, its value read
/// by serde_json as one JSON string (escapes included) from the text after the colon.
pub(crate) fn id_in_text(text: &str, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| {
        let quoted = format!("\"{key}\"");
        text.match_indices(&quoted).find_map(|(at, _)| {
            let rest = text[at + quoted.len()..].trim_start();
            let value = rest.strip_prefix(':')?.trim_start();
            let mut de = serde_json::Deserializer::from_str(value);
            String::deserialize(&mut de).ok().and_then(usable)
        })
    })
}

/// Why a frame could not be read, in words for the model (never quoting the frame).
pub(crate) fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "the message was cut short",
        serde_json::error::Category::Syntax => "the message is not valid JSON",
        serde_json::error::Category::Data => "the message does not have the expected fields",
        serde_json::error::Category::Io => "the message could not be read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_in_broken_text() {
        let cut = r#"{"type":"llm:tool-call","data":{"tool_call_id":"abc-1","name":"collect_info","args":{"concern":"my dog"#;
        assert_eq!(id_in_text(cut, &["tool_call_id"]).as_deref(), Some("abc-1"));
        let spaced = "{ \"tool_call_id\" :\n \"with \\\"quote\\\"\" , oops }";
        assert_eq!(
            id_in_text(spaced, &["tool_call_id"]).as_deref(),
            Some("with \"quote\"")
        );
        // The first key that has a string value wins; a key mentioned elsewhere is skipped.
        let mentioned = r#"{"note":"the \"invocationId\" field","invocationId":"inv-9","x":}"#;
        assert_eq!(
            id_in_text(mentioned, &["invocationId", "invocation_id"]).as_deref(),
            Some("inv-9")
        );
        assert_eq!(
            id_in_text(
                r#"{"invocation_id": "inv-2",,}"#,
                &["invocationId", "invocation_id"]
            )
            .as_deref(),
            Some("inv-2")
        );
    }

    #[test]
    fn unusable_ids_are_not_found() {
        assert_eq!(
            id_in_text(r#"{"tool_call_id": 42,"#, &["tool_call_id"]),
            None
        );
        assert_eq!(
            id_in_text(r#"{"tool_call_id": "","#, &["tool_call_id"]),
            None
        );
        assert_eq!(
            id_in_text(r#"{"tool_call_id": "unterminated"#, &["tool_call_id"]),
            None
        );
        let long = format!(r#"{{"tool_call_id": "{}""#, "x".repeat(300));
        assert_eq!(id_in_text(&long, &["tool_call_id"]), None);
        assert_eq!(id_in_text("not json at all", &["tool_call_id"]), None);
    }
}
