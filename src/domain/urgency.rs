//! Urgency of a callback request, and the order the queue serves them in.
//!
//! The original system sorted the text `urgency_level DESC`, which put `critical` last. Here the
//! order is an explicit rank: critical (0), urgent (1), normal (2).

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};

/// How soon a caller needs a call back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    Critical,
    Urgent,
    Normal,
}

/// Phrases that mean "not urgent" and must not trip the keyword match ("non-emergency").
const NEGATIONS: [&str; 6] = [
    "non-emergency",
    "non emergency",
    "not an emergency",
    "not urgent",
    "non-urgent",
    "not critical",
];

/// Words that make a concern critical: danger to life now.
const CRITICAL: [&str; 12] = [
    "critical",
    "emergency",
    "life-threatening",
    "life threatening",
    "not breathing",
    "unconscious",
    "unresponsive",
    "seizure",
    "hit by a car",
    "hit by car",
    "poison",
    "bleeding heavily",
];

/// Words that make a concern urgent.
const URGENT: [&str; 5] = [
    "urgent",
    "asap",
    "as soon as possible",
    "right away",
    "vomiting blood",
];

/// Every phrase above, found in one pass.
static ANY_PHRASE: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::new(NEGATIONS.iter().chain(&CRITICAL).chain(&URGENT))
        .expect("a few short literal phrases")
});

impl Urgency {
    /// The value stored in `urgency_level` (as the original system wrote it).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Urgency::Critical => "critical",
            Urgency::Urgent => "urgent",
            Urgency::Normal => "normal",
        }
    }

    /// The queue order: lower is served first.
    pub(crate) fn rank(self) -> i32 {
        match self {
            Urgency::Critical => 0,
            Urgency::Urgent => 1,
            Urgency::Normal => 2,
        }
    }

    /// Parses an explicit level given by the model.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Some(Urgency::Critical),
            "urgent" | "high" => Some(Urgency::Urgent),
            "normal" | "routine" | "low" => Some(Urgency::Normal),
            _ => None,
        }
    }

    /// Derives the level from what the caller said: an explicit level wins; otherwise keywords in
    /// the texts (negated phrases such as "non-emergency" are ignored); otherwise `floor`.
    pub(crate) fn derive(explicit: Option<&str>, texts: &[&str], floor: Urgency) -> Self {
        if let Some(level) = explicit.and_then(Urgency::parse) {
            return level.min(floor);
        }
        let mut text = texts.join(" ").to_lowercase();
        // Most concerns hold none of the phrases: one pass over the text says so, where each
        // phrase's own search (below, which decides when one is there) set up a searcher first.
        if !ANY_PHRASE.is_match(&text) {
            return Urgency::Normal.min(floor);
        }
        // `replace` builds a new string even when there is nothing to replace: on the call
        // path, only when there is.
        for n in NEGATIONS {
            if text.contains(n) {
                text = text.replace(n, " ");
            }
        }
        let found = if CRITICAL.iter().any(|k| text.contains(k)) {
            Urgency::Critical
        } else if URGENT.iter().any(|k| text.contains(k)) {
            Urgency::Urgent
        } else {
            Urgency::Normal
        };
        found.min(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_sorts_first() {
        let mut v = vec![Urgency::Normal, Urgency::Critical, Urgency::Urgent];
        v.sort_by_key(|u| u.rank());
        assert_eq!(v, vec![Urgency::Critical, Urgency::Urgent, Urgency::Normal]);
    }

    #[test]
    fn derives_from_words_and_respects_negation() {
        let d = |t: &str| Urgency::derive(None, &[t], Urgency::Normal);
        assert_eq!(
            d("CRITICAL EMERGENCY: dog was hit by car"),
            Urgency::Critical
        );
        assert_eq!(d("my cat is having a seizure"), Urgency::Critical);
        assert_eq!(d("needs a refill, fairly urgent"), Urgency::Urgent);
        assert_eq!(d("non-emergency question about food"), Urgency::Normal);
        assert_eq!(d("prescription refill"), Urgency::Normal);
    }

    /// The one-pass check in front of the phrase-by-phrase rule changes no decision: every
    /// phrase alone, after each negation, and text where removing a negation joins a phrase.
    #[test]
    fn the_one_pass_check_decides_as_the_phrase_by_phrase_rule() {
        fn by_phrase(text: &str) -> Urgency {
            let mut text = text.to_lowercase();
            for n in NEGATIONS {
                text = text.replace(n, " ");
            }
            if CRITICAL.iter().any(|k| text.contains(k)) {
                Urgency::Critical
            } else if URGENT.iter().any(|k| text.contains(k)) {
                Urgency::Urgent
            } else {
                Urgency::Normal
            }
        }
        let mut texts: Vec<String> = [
            "",
            "prescription refill",
            "hit bynot urgentcar",
            "as soon asnon-urgent as possible",
            "NOT URGENT, just a question",
            "Seizure!",
            "non-emergency, but vomiting blood",
            "poisonous plant eaten",
        ]
        .map(String::from)
        .to_vec();
        for phrase in NEGATIONS.iter().chain(&CRITICAL).chain(&URGENT) {
            texts.push(format!("my dog: {phrase}."));
            texts.push(phrase.to_uppercase());
            for n in NEGATIONS {
                texts.push(format!("{n} {phrase}"));
            }
        }
        for text in &texts {
            assert_eq!(
                Urgency::derive(None, &[text], Urgency::Normal),
                by_phrase(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn explicit_level_wins_but_never_below_the_floor() {
        assert_eq!(
            Urgency::derive(Some("normal"), &["emergency"], Urgency::Normal),
            Urgency::Normal
        );
        assert_eq!(
            Urgency::derive(Some("normal"), &[], Urgency::Urgent),
            Urgency::Urgent
        );
        assert_eq!(
            Urgency::derive(None, &["dog hit by car"], Urgency::Urgent),
            Urgency::Critical
        );
    }
}
