//! Opening a database, told in words an operator can act on: which file or server, and why it
//! cannot be used (a missing or read-only directory, a refused connection, a wrong password, a
//! TLS mismatch). [`super::connect_with_pool`] calls these around the engines' own `connect`.
//!
//! PostgreSQL is tried once, directly, before the pool is built: the pool retries a refused
//! connection until its acquire timeout, so an operator with a wrong port would wait 5 s for
//! "pool timed out", with the cause lost.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::config::redact_url;

/// How long the first PostgreSQL connection may take before the server is called unreachable
/// (a firewall that drops packets gives no other answer).
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite URLs without a `mode` create their file: the embedded default must work in an empty
/// directory. `mode=ro`, `rw` or `memory` are kept as written.
pub(crate) fn sqlite_url_creating_file(url: &str) -> String {
    if sqlite_mode(url).is_some() || url.contains(":memory:") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The `mode=` of a `sqlite:` URL, if it has one.
fn sqlite_mode(url: &str) -> Option<&str> {
    let query = url.split_once('?').map(|(_, q)| q)?;
    query.split('&').find_map(|kv| kv.strip_prefix("mode="))
}

/// The file a `sqlite:` URL names (`None` for an in-memory database).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.contains(":memory:")).then(|| PathBuf::from(path))
}

/// Why the SQLite database at `url` could not be opened (`error` is what SQLite said).
pub(crate) fn explain_sqlite(url: &str, error: &sqlx::Error) -> String {
    let Some(path) = sqlite_path(url) else {
        return format!("cannot open SQLite database {url}: {error}");
    };
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let read_only_url = matches!(sqlite_mode(url), Some("ro" | "rw"));
    let reason = if !dir.is_dir() {
        format!(
            "the directory {} does not exist; create it (or mount the volume there), or point DATABASE_URL at another path",
            dir.display()
        )
    } else if !path.exists() && read_only_url {
        "the file does not exist and the URL's mode= does not allow creating it; remove mode= (or use mode=rwc) to create it".to_string()
    } else if !path.exists() && !dir_writable(&dir) {
        format!(
            "the directory {} is not writable by this process{}, so the file cannot be created{}",
            dir.display(),
            owner_note(&dir),
            VOLUME_HINT
        )
    } else if path.exists() && !file_writable(&path) {
        format!(
            "the file is not writable by this process{}{}",
            owner_note(&path),
            VOLUME_HINT
        )
    } else if path.exists() && !dir_writable(&dir) {
        format!(
            "the directory {} is not writable by this process{}: SQLite keeps its journal (-wal, -shm) next to the file{}",
            dir.display(),
            owner_note(&dir),
            VOLUME_HINT
        )
    } else {
        format!("{error}")
    };
    format!("cannot open SQLite database {shown}: {reason}")
}

/// What an operator on a container platform needs when a mounted volume belongs to root.
const VOLUME_HINT: &str = " (a volume mounted as root in a non-root container: give the directory to the container's user, or on Railway set RAILWAY_RUN_UID=0)";

fn dir_writable(dir: &Path) -> bool {
    // Only a real attempt answers for every case (ACLs, read-only mounts, user namespaces).
    let probe = dir.join(format!(".lifeline-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
    }
}

fn file_writable(path: &Path) -> bool {
    std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

#[cfg(unix)]
fn owner_note(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| format!(" (owned by uid {}, mode {:o})", m.uid(), m.mode() & 0o7777))
        .unwrap_or_default()
}

#[cfg(not(unix))]
fn owner_note(_path: &Path) -> String {
    String::new()
}

/// Connects once to the PostgreSQL server `url` names; `Err` says which server and why it
/// cannot be used.
pub(crate) async fn check_postgres(url: &str) -> Result<(), String> {
    let options: PgConnectOptions = url.parse().map_err(|e| {
        format!(
            "DATABASE_URL {} is not a PostgreSQL URL lifeline can use: {e}",
            redact_url(url)
        )
    })?;
    let target = match options.get_socket() {
        Some(socket) => format!("socket {}", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let who = format!(
        "database {:?} as user {:?}",
        options.get_database().unwrap_or(options.get_username()),
        options.get_username()
    );
    let outcome =
        tokio::time::timeout(PG_CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await;
    let reason = match outcome {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(_) => format!(
            "no answer within {} s (a firewall dropping packets, or the wrong host)",
            PG_CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => explain_postgres_error(&e),
    };
    Err(format!(
        "cannot connect to PostgreSQL at {target} ({who}): {reason}"
    ))
}

fn looks_like_tls(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "ssl"]
        .iter()
        .any(|w| m.contains(w))
}

fn tls_failed(e: &dyn std::fmt::Display) -> String {
    format!(
        "TLS failed: {e} (DATABASE_URL's sslmode and the server disagree: ?sslmode=verify-full \
         needs a certificate from a public authority, ?sslmode=require encrypts without checking \
         it, and a server without TLS needs ?sslmode=disable)"
    )
}

fn explain_postgres_error(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "connection refused: nothing listens there (is PostgreSQL running, and are the host and port in DATABASE_URL right?) [{e}]"
        ),
        // A refused handshake or certificate reaches us as an I/O error of the TLS stream.
        sqlx::Error::Io(e) if looks_like_tls(&e.to_string()) => tls_failed(e),
        sqlx::Error::Io(e) => format!("network error: {e} (check the host name in DATABASE_URL)"),
        sqlx::Error::Tls(e) => tls_failed(e),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let hint = match code.as_ref() {
                "28P01" | "28000" => {
                    " (authentication failed: check the user and password in DATABASE_URL, and pg_hba.conf)"
                }
                "3D000" => " (create the database, or fix its name in DATABASE_URL)",
                "53300" => " (the server has no free connection slot)",
                "57P03" => " (the server is starting up or shutting down; try again)",
                _ => "",
            };
            format!(
                "the server refused: {} [SQLSTATE {code}]{hint}",
                db.message()
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_without_a_mode_create_their_file() {
        assert_eq!(
            sqlite_url_creating_file("sqlite://x.db"),
            "sqlite://x.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite://x.db?cache=shared"),
            "sqlite://x.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite://x.db?mode=ro"),
            "sqlite://x.db?mode=ro"
        );
        assert_eq!(
            sqlite_url_creating_file("sqlite::memory:"),
            "sqlite::memory:"
        );
        assert_eq!(
            sqlite_path("sqlite:///data/l.db?mode=rwc"),
            Some(PathBuf::from("/data/l.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
