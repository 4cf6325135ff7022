//! Small checks shared by the sections' validation: blank values, phone numbers and base URLs,
//! each reported as a problem naming its key.

use secrecy::{ExposeSecret, SecretString};

use crate::phone::E164;

/// `raw` as a phone number, or a problem naming `label` and `field`.
pub(super) fn phone(
    label: &str,
    field: &str,
    raw: &str,
    problems: &mut Vec<String>,
) -> Option<E164> {
    match E164::parse(raw) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push(format!("{label}: {field} {raw:?} {e}"));
            None
        }
    }
}

/// A value left blank counts as not given.
pub(super) fn non_empty(opt: Option<String>) -> Option<String> {
    opt.filter(|s| !s.trim().is_empty())
}

/// A secret left blank counts as not given.
pub(super) fn non_empty_secret(opt: Option<SecretString>) -> Option<SecretString> {
    opt.filter(|s| !s.expose_secret().trim().is_empty())
}

/// The base URL of an API (`default` when not given), without its trailing slash.
pub(super) fn base_url(
    field: &str,
    given: Option<String>,
    default: &str,
    problems: &mut Vec<String>,
) -> String {
    let url = non_empty(given).unwrap_or_else(|| default.to_string());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        problems.push(format!("{field} must be an http(s) URL (got {url:?})"));
    }
    url.trim_end_matches('/').to_string()
}
