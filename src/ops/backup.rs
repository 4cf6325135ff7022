//! `lifeline backup FILE`: a consistent copy of the SQLite database, taken while lifeline keeps
//! serving (`VACUUM INTO` reads one snapshot; writers carry on). PostgreSQL has its own tools.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// Copies the SQLite database `database_url` names into `target` (a new file); returns its size
/// in bytes.
pub async fn sqlite_backup(database_url: &str, target: &Path) -> Result<u64, String> {
    if !database_url.starts_with("sqlite:") {
        return Err(
            "lifeline backup copies SQLite databases; for PostgreSQL use pg_dump (e.g. \
             `pg_dump --format=custom \"$DATABASE_URL\" > lifeline.dump`) or your provider's backups"
                .into(),
        );
    }
    if target.exists() {
        return Err(format!(
            "{} exists: a backup never overwrites a file; choose a new name",
            target.display()
        ));
    }
    let target_text = target
        .to_str()
        .ok_or_else(|| format!("{} is not a UTF-8 path", target.display()))?;
    // The database must exist: a backup of a file this command just created would be empty.
    let options = SqliteConnectOptions::from_str(database_url)
        .map_err(|e| format!("DATABASE_URL: {e}"))?
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| format!("cannot open {database_url}: {e}"))?;
    let copied = sqlx::query("VACUUM INTO ?")
        .bind(target_text)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    copied.map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    std::fs::metadata(target)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", target.display()))
}
