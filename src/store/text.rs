//! Text the database can store, on both engines.
//!
//! PostgreSQL refuses NUL (U+0000) in `text` ("invalid byte sequence for encoding \"UTF8\":
//! 0x00", SQLSTATE 22021) and `\u0000` in `jsonb` ("unsupported Unicode escape sequence",
//! SQLSTATE 22P05). Nothing else a Rust `String` can hold is refused: the database encoding is
//! UTF-8 and a `String` is always valid UTF-8. SQLite stores NUL, but its text functions
//! (`length`, `LIKE`, `instr`) stop at it, so the rows would read differently on the two
//! engines.
//!
//! A stray NUL in what a caller said is almost always garbage from a client, and the caller's
//! request matters far more than that one character. So lifeline never refuses a write because
//! of it: every value the call path, the delivery worker and staff actions write goes through
//! [`escaped`] first (one line at the top of each store method), on both engines, and
//! U+0000 becomes U+FFFD (the replacement character, which shows staff that something was
//! there). Which fields changed is logged (their names, never their content), counted in
//! `lifeline_text_sanitized_total{kind}`, and for a tool call kept in its row's
//! `tool_data.sanitized`.
//!
//! The mapping is deterministic, so lookups escape their keys the same way: a repeated tool call
//! whose id holds a NUL finds its first invocation, and a call whose id holds one is found again.
//!
//! Should a value ever reach the database unescaped, [`is_unstorable`] recognises the refusal,
//! which the store reports as [`StoreError::Unstorable`](super::StoreError::Unstorable): a
//! permanent, precise error, never a database outage.

use std::borrow::Cow;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::models::{
    CallStatusUpdate, CallbackFilter, NewCall, NewCallEvent, NewCallbackRequest, NewToolCallLog,
    NewTransferAttempt, Plan, Recorded, TransferFinish,
};
use super::queue::{
    AlertOutcome, AlertRecord, AlertSend, DeliveryOutcome, DeliveryRecord, StaffAction,
};

/// The character that replaces one the database cannot store.
pub const REPLACEMENT: char = '\u{FFFD}';

/// SQLSTATE `character_not_in_repertoire`: NUL in a `text` value.
const NUL_IN_TEXT: &str = "22021";
/// SQLSTATE `untranslatable_character`: `\u0000` in a `jsonb` value.
const NUL_IN_JSON: &str = "22P05";

/// Whether the database can store `s` as it is.
pub fn is_storable(s: &str) -> bool {
    !s.contains('\0')
}

/// `s` as the database can store it: borrowed when it already can.
pub fn storable(s: &str) -> Cow<'_, str> {
    if is_storable(s) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.replace('\0', &REPLACEMENT.to_string()))
    }
}

/// Makes every string of `value` storable, object keys included; adds the path of each changed
/// string or key to `changed` (`path`, `path.key`, `path[2]`).
pub fn storable_json(value: &mut Value, path: &str, changed: &mut Vec<String>) {
    match value {
        Value::String(s) => escape_string(s, path, changed),
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                storable_json(item, &format!("{path}[{i}]"), changed);
            }
        }
        Value::Object(map) => {
            if map.keys().any(|k| !is_storable(k)) {
                // Keys cannot be renamed in place: rebuild the map. Two keys that differ only
                // by NUL against U+FFFD would collide; the later one wins, as in any JSON parse.
                let old = std::mem::take(map);
                let mut new = Map::with_capacity(old.len());
                for (key, v) in old {
                    let key = match storable(&key) {
                        Cow::Borrowed(_) => key,
                        Cow::Owned(escaped) => {
                            changed.push(join(path, &escaped));
                            escaped
                        }
                    };
                    new.insert(key, v);
                }
                *map = new;
            }
            for (key, v) in map.iter_mut() {
                storable_json(v, &join(path, key), changed);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn json_is_storable(value: &Value) -> bool {
    match value {
        Value::String(s) => is_storable(s),
        Value::Array(items) => items.iter().all(json_is_storable),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| is_storable(k) && json_is_storable(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

fn escape_string(s: &mut String, path: &str, changed: &mut Vec<String>) {
    if !is_storable(s) {
        *s = s.replace('\0', &REPLACEMENT.to_string());
        changed.push(path.to_string());
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Whether a database error is the refusal of text it cannot store (SQLSTATE 22021 or 22P05).
pub fn is_unstorable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == NUL_IN_TEXT || code == NUL_IN_JSON)
}

/// A value written to the database whose text can be made storable.
pub trait Escape {
    /// Whether any of its text cannot be stored as it is.
    fn needs_escape(&self) -> bool;

    /// Makes all of its text storable; adds the path of each changed field (under `path`) to
    /// `changed`.
    fn escape(&mut self, path: &str, changed: &mut Vec<String>);
}

/// `value` with all of its text storable: borrowed, with no copy, when nothing needed changing
/// (almost always). A change is logged with the changed fields' names and counted under `kind`.
pub fn escaped<'a, T: Escape + Clone>(kind: &'static str, value: &'a T) -> Cow<'a, T> {
    escaped_with(kind, value).0
}

/// Like [`escaped`], also returning the paths of the changed fields.
pub fn escaped_with<'a, T: Escape + Clone>(
    kind: &'static str,
    value: &'a T,
) -> (Cow<'a, T>, Vec<String>) {
    if !value.needs_escape() {
        return (Cow::Borrowed(value), Vec::new());
    }
    let mut owned = value.clone();
    let mut changed = Vec::new();
    owned.escape("", &mut changed);
    note(kind, &changed);
    (Cow::Owned(owned), changed)
}

/// A key or other text argument of a store method, storable.
pub fn key<'a>(kind: &'static str, s: &'a str) -> Cow<'a, str> {
    let escaped = storable(s);
    if let Cow::Owned(_) = escaped {
        note(kind, &[String::from("key")]);
    }
    escaped
}

/// Logs and counts escaped fields. The log names lifeline's own fields only (`tool_parameters`,
/// not `tool_parameters.<key>`): keys inside JSON are the model's, and may be a caller's words.
fn note(kind: &'static str, changed: &[String]) {
    metrics::counter!("lifeline_text_sanitized_total", "kind" => kind)
        .increment(changed.len() as u64);
    let mut fields: Vec<&str> = changed
        .iter()
        .map(|p| p.split(['.', '[']).next().unwrap_or(""))
        .collect();
    fields.dedup();
    tracing::warn!(
        kind,
        count = changed.len(),
        ?fields,
        "text the database cannot store (NUL) was stored with U+FFFD in its place"
    );
}

/// A log row to write, with its plan, as the database can store them: the paths of escaped
/// fields are kept in the row's `tool_data.sanitized`, so staff can tell a U+FFFD the model sent
/// from one lifeline wrote.
pub fn escaped_invocation<'a>(
    log: &'a NewToolCallLog,
    plan: &'a Plan,
) -> (Cow<'a, NewToolCallLog>, Cow<'a, Plan>) {
    if !log.needs_escape() && !plan.needs_escape() {
        return (Cow::Borrowed(log), Cow::Borrowed(plan));
    }
    let mut log = log.clone();
    let mut plan = plan.clone();
    let mut changed = Vec::new();
    log.escape("", &mut changed);
    plan.escape("plan", &mut changed);
    note("tool_call", &changed);
    if !log.tool_data.is_object() {
        log.tool_data = Value::Object(Map::new());
    }
    log.tool_data["sanitized"] = Value::from(changed);
    (Cow::Owned(log), Cow::Owned(plan))
}

/// Shadows a store method's argument with its storable form (one line at the top of the
/// method): `escape!(call, "call")` for a value implementing [`Escape`], `escape!(key call_ref,
/// "call")` for a `&str` used to look a row up.
macro_rules! escape {
    ($v:ident, $kind:literal) => {
        let $v = $crate::store::text::escaped($kind, $v);
        let $v = $v.as_ref();
    };
    (key $v:ident, $kind:literal) => {
        let $v = $crate::store::text::key($kind, $v);
        let $v: &str = &$v;
    };
}
pub(crate) use escape;

// --- the values the store writes ------------------------------------------------------------------

impl Escape for String {
    fn needs_escape(&self) -> bool {
        !is_storable(self)
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        escape_string(self, path, changed);
    }
}

impl Escape for Value {
    fn needs_escape(&self) -> bool {
        !json_is_storable(self)
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        storable_json(self, path, changed);
    }
}

impl<T: Escape> Escape for Option<T> {
    fn needs_escape(&self) -> bool {
        self.as_ref().is_some_and(Escape::needs_escape)
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        if let Some(v) = self {
            v.escape(path, changed);
        }
    }
}

impl<T: Escape> Escape for Box<T> {
    fn needs_escape(&self) -> bool {
        (**self).needs_escape()
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        (**self).escape(path, changed);
    }
}

impl<T: Escape> Escape for (Uuid, T) {
    fn needs_escape(&self) -> bool {
        self.1.needs_escape()
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        self.1.escape(path, changed);
    }
}

/// Implements [`Escape`] for a struct from the list of its fields that hold text.
macro_rules! escape_fields {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl Escape for $ty {
            fn needs_escape(&self) -> bool {
                $(self.$field.needs_escape())||+
            }

            fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
                $(self.$field.escape(&join(path, stringify!($field)), changed);)+
            }
        }
    };
}

escape_fields!(NewCall {
    tenant_id,
    call_ref,
    from_number,
    to_number,
    direction,
    status,
    account_sid,
    application_sid,
});

escape_fields!(CallStatusUpdate { status, detail });

escape_fields!(NewCallEvent { kind, detail });

escape_fields!(NewToolCallLog {
    tenant_id,
    call_ref,
    invocation_key,
    invocation_id,
    tool_name,
    canonical_tool,
    tool_parameters,
    callback_number,
    caller_name,
    urgency_level,
    ultravox_call_id,
    twilio_call_sid,
    tool_data,
});

escape_fields!(Recorded {
    result,
    error_message,
});

escape_fields!(NewCallbackRequest {
    tenant_id,
    call_sid,
    callback_number,
    caller_name,
    first_name,
    last_name,
    pet_name,
    species,
    breed,
    age,
    concern_description,
    urgency_reason,
    metadata,
});

escape_fields!(NewTransferAttempt {
    tenant_id,
    target_number,
    callback_number,
    caller_name,
    reason,
    pet_name,
});

escape_fields!(TransferFinish {
    dial_call_status,
    failure_reason,
    next,
    callback,
    failed_log,
});

escape_fields!(CallbackFilter {
    tenant_id,
    status,
    urgency,
});

escape_fields!(DeliveryRecord {
    worker_id,
    error,
    response_excerpt,
    frontend_response,
    outcome,
});

escape_fields!(AlertSend { target, error });

escape_fields!(AlertRecord {
    kind,
    worker_id,
    outcome,
});

impl Escape for Plan {
    fn needs_escape(&self) -> bool {
        match self {
            Plan::Run => false,
            Plan::Complete { outcome, callback } => {
                outcome.needs_escape() || callback.needs_escape()
            }
            Plan::Fail(outcome) => outcome.needs_escape(),
        }
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        match self {
            Plan::Run => {}
            Plan::Complete { outcome, callback } => {
                outcome.escape(&join(path, "outcome"), changed);
                callback.escape(&join(path, "callback"), changed);
            }
            Plan::Fail(outcome) => outcome.escape(&join(path, "outcome"), changed),
        }
    }
}

impl Escape for DeliveryOutcome {
    fn needs_escape(&self) -> bool {
        match self {
            DeliveryOutcome::DeadLetter { reason, .. } => reason.needs_escape(),
            DeliveryOutcome::Delivered
            | DeliveryOutcome::Retry { .. }
            | DeliveryOutcome::Deferred { .. } => false,
        }
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        if let DeliveryOutcome::DeadLetter { reason, .. } = self {
            reason.escape(&join(path, "reason"), changed);
        }
    }
}

impl Escape for AlertOutcome {
    fn needs_escape(&self) -> bool {
        match self {
            AlertOutcome::Sent => false,
            AlertOutcome::Retry { error, .. } | AlertOutcome::Failed { error } => {
                error.needs_escape()
            }
            AlertOutcome::Skipped { reason } => reason.needs_escape(),
        }
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        match self {
            AlertOutcome::Sent => {}
            AlertOutcome::Retry { error, .. } | AlertOutcome::Failed { error } => {
                error.escape(&join(path, "error"), changed);
            }
            AlertOutcome::Skipped { reason } => reason.escape(&join(path, "reason"), changed),
        }
    }
}

impl Escape for StaffAction {
    fn needs_escape(&self) -> bool {
        match self {
            StaffAction::Retry => false,
            StaffAction::Cancel { note } | StaffAction::Resolve { note } => note.needs_escape(),
        }
    }

    fn escape(&mut self, path: &str, changed: &mut Vec<String>) {
        match self {
            StaffAction::Retry => {}
            StaffAction::Cancel { note } | StaffAction::Resolve { note } => {
                note.escape(&join(path, "note"), changed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::Platform;

    #[test]
    fn nul_becomes_the_replacement_character_and_nothing_else_changes() {
        assert_eq!(storable("Tom\0mie\0"), "Tom\u{FFFD}mie\u{FFFD}");
        assert!(matches!(storable("Tommie"), Cow::Borrowed(_)));
        // Everything else a String holds is storable: other controls, emoji, U+FFFD itself.
        let odd = "\u{1}\u{7}\t\u{1F408}\u{FFFD}\u{10FFFF}";
        assert!(is_storable(odd));
        assert!(matches!(storable(odd), Cow::Borrowed(_)));
    }

    #[test]
    fn json_strings_and_keys_are_escaped_and_their_paths_reported() {
        let mut v = json!({
            "pet_name": "Tom\u{0}mie",
            "ok": "fine",
            "toy\u{0}": "ball",
            "list": ["a", "b\u{0}", {"deep\u{0}": "x\u{0}"}],
            "n": 7,
        });
        assert!(v.needs_escape());
        let mut changed = Vec::new();
        storable_json(&mut v, "args", &mut changed);
        assert_eq!(
            v,
            json!({
                "pet_name": "Tom\u{FFFD}mie",
                "ok": "fine",
                "toy\u{FFFD}": "ball",
                "list": ["a", "b\u{FFFD}", {"deep\u{FFFD}": "x\u{FFFD}"}],
                "n": 7,
            })
        );
        changed.sort();
        assert_eq!(
            changed,
            [
                "args.list[1]",
                "args.list[2].deep\u{FFFD}",
                "args.list[2].deep\u{FFFD}",
                "args.pet_name",
                "args.toy\u{FFFD}",
            ]
        );
        assert!(!v.needs_escape());
        // Serialised, nothing is left that PostgreSQL's jsonb refuses.
        assert!(!v.to_string().contains("\\u0000"));
    }

    fn log(args: Value, id: &str) -> NewToolCallLog {
        NewToolCallLog {
            id: Uuid::now_v7(),
            created_at: Utc::now(),
            tenant_id: "riverside".into(),
            platform: Platform::Jambonz,
            call_ref: "call-1".into(),
            call_id: None,
            invocation_key: format!("id:{id}"),
            invocation_id: Some(id.into()),
            tool_name: "collect_info".into(),
            canonical_tool: "collect_info".into(),
            tool_parameters: args,
            callback_number: None,
            caller_name: None,
            urgency_level: None,
            ultravox_call_id: None,
            twilio_call_sid: None,
            tool_data: json!({}),
        }
    }

    #[test]
    fn a_clean_invocation_is_not_copied() {
        let log = log(json!({"pet_name": "Tommie"}), "inv-1");
        let (l, p) = escaped_invocation(&log, &Plan::Run);
        assert!(matches!(l, Cow::Borrowed(_)) && matches!(p, Cow::Borrowed(_)));
    }

    #[test]
    fn an_invocation_keeps_the_paths_it_escaped_in_tool_data() {
        let log = log(json!({"pet_name": "Tom\u{0}mie"}), "inv\u{0}1");
        let outcome = Recorded::of(
            &Err(crate::domain::ToolError::validation("pet\u{0}")),
            Utc::now(),
            0.0,
        );
        let plan = Plan::Fail(outcome);
        let (l, p) = escaped_invocation(&log, &plan);
        assert_eq!(l.invocation_id.as_deref(), Some("inv\u{FFFD}1"));
        assert_eq!(l.invocation_key, "id:inv\u{FFFD}1");
        assert_eq!(l.tool_parameters["pet_name"], "Tom\u{FFFD}mie");
        let Plan::Fail(r) = p.as_ref() else {
            panic!("plan kind changed")
        };
        assert_eq!(r.error_message.as_deref(), Some("pet\u{FFFD}"));
        assert_eq!(
            l.tool_data["sanitized"],
            json!([
                "invocation_key",
                "invocation_id",
                "tool_parameters.pet_name",
                "plan.outcome.result.error.message",
                "plan.outcome.error_message",
            ])
        );
        assert!(!l.needs_escape() && !p.needs_escape());
    }

    #[test]
    fn refusals_of_nul_are_recognised_by_their_sqlstate() {
        // Other errors are not: a lost connection is an outage, not bad text.
        assert!(!is_unstorable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unstorable(&sqlx::Error::RowNotFound));
    }
}
