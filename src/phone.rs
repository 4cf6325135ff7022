//! Phone numbers: normalisation to E.164 and masking for logs.
//!
//! The original system had two diverging `normalizePhoneNumber` copies that only knew "+1"; here
//! there is one, and it refuses what it cannot make sense of instead of guessing.

use std::fmt;

/// Why a string is not a usable phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("contains characters that are not digits")]
    InvalidCharacters,
    #[error(
        "has {0} digits; a phone number has 10 (North American) or 8 to 15 with a country code"
    )]
    WrongLength(usize),
}

/// A number in E.164 form (`+` followed by 8 to 15 digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct E164(String);

impl E164 {
    /// Parses what a caller, a model or a carrier wrote: spaces, dashes, dots and brackets are
    /// ignored; 10 digits are a North American number; `00` is an international prefix.
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        let (explicit_plus, rest) = match trimmed.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                _ => return Err(PhoneError::InvalidCharacters),
            }
        }
        if digits.is_empty() {
            return Err(PhoneError::Empty);
        }
        let international = if explicit_plus {
            digits
        } else if let Some(after) = digits.strip_prefix("00") {
            after.to_string()
        } else if digits.len() == 10 && !digits.starts_with('0') && !digits.starts_with('1') {
            format!("1{digits}")
        } else if digits.len() == 11 && digits.starts_with('1') {
            digits
        } else {
            return Err(PhoneError::WrongLength(digits.len()));
        };
        if !(8..=15).contains(&international.len()) || international.starts_with('0') {
            return Err(PhoneError::WrongLength(international.len()));
        }
        Ok(Self(format!("+{international}")))
    }

    /// The number as `+digits`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last four digits, which is what a caller is told and what logs may show.
    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// Takes the inner string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Masks a phone number (or anything that may be one) for logs at info level: only the last
/// four characters stay readable.
pub fn mask(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if chars.len() <= 4 {
        return "****".to_string();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_forms_models_read_back() {
        for (raw, want) in [
            ("4168189171", "+14168189171"),
            ("(416) 818-9171", "+14168189171"),
            ("14168189171", "+14168189171"),
            ("+1 416 818 9171", "+14168189171"),
            ("+442079460958", "+442079460958"),
            ("0044 20 7946 0958", "+442079460958"),
        ] {
            assert_eq!(E164::parse(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        assert_eq!(E164::parse(""), Err(PhoneError::Empty));
        assert_eq!(
            E164::parse("user-provided number"),
            Err(PhoneError::InvalidCharacters)
        );
        assert_eq!(E164::parse("12345"), Err(PhoneError::WrongLength(5)));
        assert_eq!(
            E164::parse("020 7946 0958"),
            Err(PhoneError::WrongLength(11))
        );
        assert!(E164::parse("+1234567890123456").is_err());
    }

    #[test]
    fn masks_all_but_the_last_four() {
        assert_eq!(mask("+14168189171"), "****9171");
        assert_eq!(mask("12"), "****");
        assert_eq!(E164::parse("4168189171").unwrap().last4(), "9171");
    }
}
