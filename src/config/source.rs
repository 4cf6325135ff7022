//! Where the TOML configuration comes from — a file (`LIFELINE_CONFIG`) or the whole text in one
//! environment variable (`LIFELINE_CONFIG_TOML`, for platforms where mounting a file is awkward)
//! — and how a problem in it is pointed at: the line, the column and the table it is in.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// The environment variable that may hold the whole TOML configuration.
pub const CONFIG_TOML_VAR: &str = "LIFELINE_CONFIG_TOML";

/// The configuration text and the label its problems are reported under (the file's path, or
/// `LIFELINE_CONFIG_TOML`); `None` when neither source is set.
pub(super) fn read(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, PathBuf)>, ConfigError> {
    let inline = env(CONFIG_TOML_VAR).filter(|t| !t.trim().is_empty());
    match (path, inline) {
        (Some(path), Some(_)) => Err(ConfigError(vec![format!(
            "both LIFELINE_CONFIG ({}) and {CONFIG_TOML_VAR} are set: unset one, so it is clear which configuration runs",
            path.display()
        )])),
        (Some(path), None) => match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some((text, path.to_path_buf()))),
            Err(e) => Err(ConfigError(vec![format!(
                "LIFELINE_CONFIG: cannot read {}: {}{}",
                path.display(),
                e,
                if e.kind() == std::io::ErrorKind::NotFound {
                    " (a relative path is taken from the current directory)"
                } else {
                    ""
                }
            )])),
        },
        (None, Some(text)) => Ok(Some((text, PathBuf::from(CONFIG_TOML_VAR)))),
        (None, None) => Ok(None),
    }
}

/// A TOML error as `FILE, line L, column C (in [table]): message`, one line.
pub(super) fn located(path: &Path, text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    let Some(span) = error.span() else {
        return format!("{}: {message}", path.display());
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let table = enclosing_table(&text[..line_start])
        .map(|t| format!(" (in {t})"))
        .unwrap_or_default();
    let hint = misplaced_tenant_key(&message)
        .map(|k| {
            format!(
                "; `{k}` is a clinic's setting: put it in its [[tenants]] entry, before the \
                 entry's first [tenants.…] table"
            )
        })
        .unwrap_or_default();
    format!(
        "{}, line {line}, column {column}{table}: {message}{hint}",
        path.display()
    )
}

/// The key of an "unknown field" error when it is one that belongs to a `[[tenants]]` entry (a
/// common slip: written under the table that happened to come before it).
fn misplaced_tenant_key(message: &str) -> Option<&'static str> {
    const TENANT_KEYS: [&str; 5] = ["fallback", "tool_api_key", "numbers", "name", "id"];
    let field = message.strip_prefix("unknown field `")?.split('`').next()?;
    TENANT_KEYS.iter().find(|k| **k == field).copied()
}

/// The last `[table]` or `[[array]]` header among the lines before the error's own.
fn enclosing_table(before: &str) -> Option<&str> {
    before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| match l.find(']') {
            Some(end) if l.starts_with("[[") => l.get(..end + 2).unwrap_or(l),
            Some(end) => &l[..=end],
            None => l,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Doc {
            ultravox: Option<Inner>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            api_base: Option<String>,
        }
        let e = toml::from_str::<Doc>(text).unwrap_err();
        located(Path::new("x.toml"), text, &e)
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_line_column_and_table() {
        let text = "# top\n[ultravox]\napi_base = \"https://x\"\n  fallback = \"dial\"\n";
        let msg = error_of(text);
        assert!(
            msg.starts_with("x.toml, line 4, column 3 (in [ultravox]): unknown field `fallback`"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(msg.contains("is a clinic's setting"), "{msg}");
    }

    #[test]
    fn a_syntax_error_is_reported_with_its_line() {
        let msg = error_of("[ultravox]\napi_base = \n");
        assert!(msg.starts_with("x.toml, line 2, column"), "{msg}");
    }

    #[test]
    fn the_file_and_the_variable_cannot_both_be_set() {
        let env = |n: &str| (n == CONFIG_TOML_VAR).then(|| "[limits]".to_string());
        let err = read(Some(Path::new("a.toml")), &env).unwrap_err();
        assert!(err.to_string().contains("both LIFELINE_CONFIG"), "{err}");
        let (text, label) = read(None, &env).unwrap().unwrap();
        assert_eq!(text, "[limits]");
        assert_eq!(label, PathBuf::from(CONFIG_TOML_VAR));
        assert!(read(None, &|_| None).unwrap().is_none());
    }
}
