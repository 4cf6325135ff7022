//! Reading back the few `&'static str` fields of the journaled values (a transfer's target role,
//! a callback request's reason, an error kind): each distinct string is allocated once for the
//! life of the process. These fields hold a handful of fixed words, so the set stays tiny.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Deserializer};

/// A fixed word. Spelled as an alias so that serde's derive does not take the field for text
/// borrowed from the input (which would tie every journaled record to a `'static` input).
pub type Word = &'static str;

fn intern(s: String) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(known) = seen.get(s.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// `deserialize_with` for a `&'static str` field.
pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    String::deserialize(d).map(intern)
}

/// `deserialize_with` for an `Option<&'static str>` field.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'static str>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(intern))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_word_is_allocated_once() {
        let a = super::intern("failed_transfer".to_string());
        let b = super::intern("failed_transfer".to_string());
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "failed_transfer");
    }
}
