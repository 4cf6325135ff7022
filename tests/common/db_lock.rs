//! A durable write made slow on purpose: the test holds the database's write lock (SQLite: the
//! whole database, `BEGIN IMMEDIATE`; PostgreSQL: one table, `LOCK TABLE … IN SHARE ROW
//! EXCLUSIVE MODE`, which lets reads through and makes inserts wait), so lifeline's next write
//! there waits until [`DbLock::release`]. SQLite's busy timeout in lifeline is 5 s: hold it for
//! less.
#![allow(dead_code)]

use sqlx::Connection;

/// A held lock.
pub enum DbLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl DbLock {
    /// Takes the lock on `table` (all of the database on SQLite).
    pub async fn hold(url: &str, table: &str) -> Self {
        if url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(url)
                .await
                .expect("open sqlite");
            sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .expect("take the sqlite write lock");
            DbLock::Sqlite(conn)
        } else {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("open pg");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "BEGIN; LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"
            )))
            .execute(&mut conn)
            .await
            .expect("lock the table");
            DbLock::Postgres(conn)
        }
    }

    /// Lets the waiting writes through.
    pub async fn release(self) {
        match self {
            DbLock::Sqlite(mut conn) => {
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("release");
                let _ = conn.close().await;
            }
            DbLock::Postgres(mut conn) => {
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("release");
                let _ = conn.close().await;
            }
        }
    }
}
