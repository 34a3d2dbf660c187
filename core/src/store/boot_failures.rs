//! Recorded boot failures of worker machines (a machine that exited or hung before its worker
//! registered), for the scaler's per-queue backoff and stop, `flyjobs status` and the admin
//! calls.
//!
//! The table is created on first write (`CREATE TABLE IF NOT EXISTS`, under a lock on
//! Postgres), so that it needs no migration of its own; reads of a store that never recorded
//! one find nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::{db_err, page_limit};
use crate::error::Result;

/// One worker machine that failed at boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootFailure {
    /// The queue it was booted for.
    pub queue: String,
    /// The release (image ref) it ran.
    pub release: String,
    /// The machine.
    pub machine_id: String,
    /// Its exit code, when it exited (None: it hung, or was killed without one).
    pub exit_code: Option<i32>,
    /// What happened, in words.
    pub reason: String,
    /// The last lines of the machine's log, when the API serves them.
    pub log_tail: String,
    /// When the scaler noticed.
    pub at: DateTime<Utc>,
    /// Cleared by a healthy boot of the queue or a reset: no longer counts toward the
    /// backoff and stop, still shown.
    pub cleared: bool,
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_us(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or_default()
}

const TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS flyjobs_boot_failures (\
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, release TEXT NOT NULL, \
    machine_id TEXT NOT NULL, exit_code INTEGER, reason TEXT NOT NULL, log_tail TEXT NOT NULL, \
    at_us INTEGER NOT NULL, cleared INTEGER NOT NULL DEFAULT 0)";

const TABLE_PG: &str = "CREATE TABLE IF NOT EXISTS flyjobs_boot_failures (\
    id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, release TEXT NOT NULL, \
    machine_id TEXT NOT NULL, exit_code INTEGER, reason TEXT NOT NULL, log_tail TEXT NOT NULL, \
    at_us BIGINT NOT NULL, cleared BOOLEAN NOT NULL DEFAULT FALSE)";

/// Rows kept: older ones are deleted on insert.
const KEEP: i64 = 1000;

fn missing_table(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|c| c == "42P01") || d.message().contains("no such table")
        }
        _ => false,
    }
}

pub(crate) async fn sqlite_record(pool: &SqlitePool, f: BootFailure) -> Result<()> {
    // The write lock up front: a deferred transaction that upgrades later fails with
    // SQLITE_BUSY_SNAPSHOT when another connection wrote in between.
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db_err("record boot failure"))?;
    sqlx::query(TABLE_SQLITE)
        .execute(&mut *tx)
        .await
        .map_err(db_err("record boot failure: table"))?;
    sqlx::query(
        "INSERT INTO flyjobs_boot_failures \
         (queue, release, machine_id, exit_code, reason, log_tail, at_us, cleared) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(&f.queue)
    .bind(&f.release)
    .bind(&f.machine_id)
    .bind(f.exit_code)
    .bind(&f.reason)
    .bind(&f.log_tail)
    .bind(us(f.at))
    .bind(f.cleared)
    .execute(&mut *tx)
    .await
    .map_err(db_err("record boot failure"))?;
    sqlx::query(
        "DELETE FROM flyjobs_boot_failures WHERE id <= (SELECT MAX(id) FROM flyjobs_boot_failures) - ?1",
    )
    .bind(KEEP)
    .execute(&mut *tx)
    .await
    .map_err(db_err("record boot failure: trim"))?;
    tx.commit().await.map_err(db_err("record boot failure"))
}

pub(crate) async fn sqlite_list(pool: &SqlitePool, limit: usize) -> Result<Vec<BootFailure>> {
    let rows = sqlx::query(
        "SELECT queue, release, machine_id, exit_code, reason, log_tail, at_us, cleared \
         FROM flyjobs_boot_failures ORDER BY id DESC LIMIT ?1",
    )
    .bind(page_limit(limit))
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Err(e) if missing_table(&e) => return Ok(Vec::new()),
        r => r.map_err(db_err("boot failures"))?,
    };
    rows.iter()
        .map(|r| {
            Ok(BootFailure {
                queue: r.try_get("queue").map_err(db_err("boot failures"))?,
                release: r.try_get("release").map_err(db_err("boot failures"))?,
                machine_id: r.try_get("machine_id").map_err(db_err("boot failures"))?,
                exit_code: r.try_get("exit_code").map_err(db_err("boot failures"))?,
                reason: r.try_get("reason").map_err(db_err("boot failures"))?,
                log_tail: r.try_get("log_tail").map_err(db_err("boot failures"))?,
                at: from_us(r.try_get("at_us").map_err(db_err("boot failures"))?),
                cleared: r.try_get("cleared").map_err(db_err("boot failures"))?,
            })
        })
        .collect()
}

pub(crate) async fn sqlite_clear(pool: &SqlitePool, queue: Option<&str>) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE flyjobs_boot_failures SET cleared = 1 \
         WHERE cleared = 0 AND (?1 IS NULL OR queue = ?1)",
    )
    .bind(queue)
    .execute(pool)
    .await;
    match r {
        Err(e) if missing_table(&e) => Ok(0),
        r => Ok(r.map_err(db_err("clear boot failures"))?.rows_affected()),
    }
}

pub(crate) async fn pg_record(pool: &PgPool, f: BootFailure) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db_err("record boot failure"))?;
    // Concurrent first writers must not race on CREATE TABLE (pg_type unique violations).
    sqlx::query("SELECT pg_advisory_xact_lock(7403316240586511)")
        .execute(&mut *tx)
        .await
        .map_err(db_err("record boot failure: lock"))?;
    sqlx::query(TABLE_PG)
        .execute(&mut *tx)
        .await
        .map_err(db_err("record boot failure: table"))?;
    sqlx::query(
        "INSERT INTO flyjobs_boot_failures \
         (queue, release, machine_id, exit_code, reason, log_tail, at_us, cleared) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&f.queue)
    .bind(&f.release)
    .bind(&f.machine_id)
    .bind(f.exit_code)
    .bind(&f.reason)
    .bind(&f.log_tail)
    .bind(us(f.at))
    .bind(f.cleared)
    .execute(&mut *tx)
    .await
    .map_err(db_err("record boot failure"))?;
    sqlx::query(
        "DELETE FROM flyjobs_boot_failures WHERE id <= (SELECT MAX(id) FROM flyjobs_boot_failures) - $1",
    )
    .bind(KEEP)
    .execute(&mut *tx)
    .await
    .map_err(db_err("record boot failure: trim"))?;
    tx.commit().await.map_err(db_err("record boot failure"))
}

pub(crate) async fn pg_list(pool: &PgPool, limit: usize) -> Result<Vec<BootFailure>> {
    let rows = sqlx::query(
        "SELECT queue, release, machine_id, exit_code, reason, log_tail, at_us, cleared \
         FROM flyjobs_boot_failures ORDER BY id DESC LIMIT $1",
    )
    .bind(page_limit(limit))
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Err(e) if missing_table(&e) => return Ok(Vec::new()),
        r => r.map_err(db_err("boot failures"))?,
    };
    rows.iter()
        .map(|r| {
            Ok(BootFailure {
                queue: r.try_get("queue").map_err(db_err("boot failures"))?,
                release: r.try_get("release").map_err(db_err("boot failures"))?,
                machine_id: r.try_get("machine_id").map_err(db_err("boot failures"))?,
                exit_code: r.try_get("exit_code").map_err(db_err("boot failures"))?,
                reason: r.try_get("reason").map_err(db_err("boot failures"))?,
                log_tail: r.try_get("log_tail").map_err(db_err("boot failures"))?,
                at: from_us(r.try_get("at_us").map_err(db_err("boot failures"))?),
                cleared: r.try_get("cleared").map_err(db_err("boot failures"))?,
            })
        })
        .collect()
}

pub(crate) async fn pg_clear(pool: &PgPool, queue: Option<&str>) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE flyjobs_boot_failures SET cleared = TRUE \
         WHERE NOT cleared AND ($1::text IS NULL OR queue = $1)",
    )
    .bind(queue)
    .execute(pool)
    .await;
    match r {
        Err(e) if missing_table(&e) => Ok(0),
        r => Ok(r.map_err(db_err("clear boot failures"))?.rows_affected()),
    }
}
