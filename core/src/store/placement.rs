//! The one store call placement needs beyond the claim filters: give a running job back to
//! the queue on another machine shape (after its machine was OOM-killed), recording why.
//! Per-dialect functions, called from the two `Store` impls.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::db_err;
use crate::error::Result;
use crate::job::{Failure, JobId};

/// `running` (under `token`) → `ready` now, on `shape`, with `failure` as its last error. The
/// attempt that ran stays counted. Returns the job's queue (to wake its workers), or None when
/// the lease is no longer that one.
pub(crate) async fn sqlite_requeue_on_shape(
    pool: &SqlitePool,
    id: JobId,
    token: i64,
    shape: &str,
    failure: &Failure,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE flyjobs_jobs SET state = 'ready', run_at = ?3, shape = ?4, last_error = ?5, \
         lease_expires_at = NULL WHERE id = ?1 AND state = 'running' AND lease_token = ?2 \
         RETURNING queue",
    )
    .bind(id.0)
    .bind(token)
    .bind(now.timestamp_micros())
    .bind(shape)
    .bind(serde_json::to_string(failure)?)
    .fetch_optional(pool)
    .await
    .map_err(db_err("requeue on shape"))
}

/// The Postgres twin of [`sqlite_requeue_on_shape`].
pub(crate) async fn pg_requeue_on_shape(
    pool: &PgPool,
    id: JobId,
    token: i64,
    shape: &str,
    failure: &Failure,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE flyjobs_jobs SET state = 'ready', run_at = $3, shape = $4, \
         last_error = $5::jsonb, lease_expires_at = NULL \
         WHERE id = $1 AND state = 'running' AND lease_token = $2 RETURNING queue",
    )
    .bind(id.0)
    .bind(token)
    .bind(now)
    .bind(shape)
    .bind(serde_json::to_string(failure)?)
    .fetch_optional(pool)
    .await
    .map_err(db_err("requeue on shape"))
}
