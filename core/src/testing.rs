//! Helpers for tests of flyjobs and of code built on it (feature `testing`).

use sqlx::Connection;

use crate::error::{Error, Result};

/// Create an empty database on the server of `base_url` (a `postgres://` URL) and return the
/// URL of the new database, so that tests running in parallel never share tables.
pub async fn fresh_postgres_database(base_url: &str) -> Result<String> {
    let mut url = url::Url::parse(base_url)
        .map_err(|e| Error::config(format!("bad test database URL: {e}")))?;
    let name = format!("flyjobs_test_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(base_url)
        .await
        .map_err(|e| Error::store(format!("cannot reach the test database: {e}")))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| Error::store(format!("CREATE DATABASE {name}: {e}")))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}
