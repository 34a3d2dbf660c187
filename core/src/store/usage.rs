//! Machine usage for cost accounting ([`crate::cost`]): one cursor per worker machine (how far
//! its events are counted, and their sum) and billed seconds per queue per clock hour.
//!
//! Like the boot failures, the tables are created on first write (`CREATE TABLE IF NOT
//! EXISTS`), so that they need no migration; a store that never recorded usage reads as empty.
//! The SQL is written once: `$N` placeholders (SQLite reads them as parameters numbered in order
//! of first appearance), natural keys and `ON CONFLICT … DO UPDATE`, which both dialects accept;
//! the `dialect!` macro instantiates it for each pool type.

use chrono::{DateTime, Utc};

use crate::cost::{HourUsage, Seconds, UsageCursor};

const TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS flyjobs_machine_usage (\
     machine_id TEXT PRIMARY KEY, queue TEXT NOT NULL, cpu_kind TEXT NOT NULL, \
     cpus BIGINT NOT NULL, memory_mb BIGINT NOT NULL, through_ms BIGINT NOT NULL, \
     status TEXT NOT NULL, through_ids TEXT NOT NULL, started_s DOUBLE PRECISION NOT NULL, \
     suspended_s DOUBLE PRECISION NOT NULL, stopped_s DOUBLE PRECISION NOT NULL, \
     cost_usd DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS flyjobs_usage_hours (\
     queue TEXT NOT NULL, hour_ms BIGINT NOT NULL, started_s DOUBLE PRECISION NOT NULL, \
     suspended_s DOUBLE PRECISION NOT NULL, stopped_s DOUBLE PRECISION NOT NULL, \
     cost_usd DOUBLE PRECISION NOT NULL, PRIMARY KEY (queue, hour_ms))",
];

/// Insert a new cursor, or move an existing one forward only from where the caller read it
/// (`through_ms` = $13): two recorders racing never count the same interval twice.
const SAVE_CURSOR: &str = "INSERT INTO flyjobs_machine_usage (machine_id, queue, cpu_kind, \
     cpus, memory_mb, through_ms, status, through_ids, started_s, suspended_s, stopped_s, \
     cost_usd) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (machine_id) DO UPDATE SET through_ms = excluded.through_ms, \
     status = excluded.status, through_ids = excluded.through_ids, \
     started_s = excluded.started_s, suspended_s = excluded.suspended_s, \
     stopped_s = excluded.stopped_s, cost_usd = excluded.cost_usd \
     WHERE flyjobs_machine_usage.through_ms = $13";

const ADD_HOUR: &str = "INSERT INTO flyjobs_usage_hours (queue, hour_ms, started_s, \
     suspended_s, stopped_s, cost_usd) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (queue, hour_ms) DO UPDATE SET \
     started_s = flyjobs_usage_hours.started_s + excluded.started_s, \
     suspended_s = flyjobs_usage_hours.suspended_s + excluded.suspended_s, \
     stopped_s = flyjobs_usage_hours.stopped_s + excluded.stopped_s, \
     cost_usd = flyjobs_usage_hours.cost_usd + excluded.cost_usd";

const CURSORS: &str = "SELECT machine_id, queue, cpu_kind, cpus, memory_mb, through_ms, status, \
     through_ids, started_s, suspended_s, stopped_s, cost_usd FROM flyjobs_machine_usage \
     ORDER BY machine_id";

const HOURS: &str = "SELECT queue, hour_ms, started_s, suspended_s, stopped_s, cost_usd \
     FROM flyjobs_usage_hours WHERE hour_ms >= $1 ORDER BY hour_ms, queue";

fn missing_table(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|c| c == "42P01") || d.message().contains("no such table")
        }
        _ => false,
    }
}

fn hour_from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// One SQL text, instantiated per pool type.
macro_rules! dialect {
    ($module:ident, $pool:ty, $begin:expr, $lock:expr) => {
        pub(crate) mod $module {
            use sqlx::Row;

            use super::*;
            use crate::error::Result;
            use crate::store::db_err;

            /// Save a machine's cursor (moved from `read_through_ms`, None if new) and add
            /// `hours`, in one transaction. `false`: another recorder moved the cursor first;
            /// nothing was written.
            pub(crate) async fn record(
                pool: &$pool,
                cursor: &UsageCursor,
                read_through_ms: Option<i64>,
                hours: &[HourUsage],
            ) -> Result<bool> {
                // SQLite: take the write lock up front. A deferred transaction that reads first
                // and writes later fails with SQLITE_BUSY_SNAPSHOT (no busy wait) when another
                // connection wrote in between.
                let mut tx = pool
                    .begin_with($begin)
                    .await
                    .map_err(db_err("record usage"))?;
                if let Some(lock) = $lock {
                    // Concurrent first writers must not race on CREATE TABLE.
                    sqlx::query(lock)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err("record usage: lock"))?;
                }
                for t in TABLES {
                    sqlx::query(t)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err("record usage: table"))?;
                }
                let saved = sqlx::query(SAVE_CURSOR)
                    .bind(&cursor.machine_id)
                    .bind(&cursor.queue)
                    .bind(&cursor.cpu_kind)
                    .bind(i64::from(cursor.cpus))
                    .bind(i64::from(cursor.memory_mb))
                    .bind(cursor.through_ms)
                    .bind(&cursor.status)
                    .bind(cursor.through_ids.join(","))
                    .bind(cursor.seconds.started)
                    .bind(cursor.seconds.suspended)
                    .bind(cursor.seconds.stopped)
                    .bind(cursor.cost_usd)
                    .bind(read_through_ms.unwrap_or(i64::MIN))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("record usage"))?
                    .rows_affected();
                if saved == 0 {
                    return Ok(false);
                }
                for h in hours {
                    sqlx::query(ADD_HOUR)
                        .bind(&h.queue)
                        .bind(h.hour.timestamp_millis())
                        .bind(h.seconds.started)
                        .bind(h.seconds.suspended)
                        .bind(h.seconds.stopped)
                        .bind(h.cost_usd)
                        .execute(&mut *tx)
                        .await
                        .map_err(db_err("record usage: hours"))?;
                }
                tx.commit().await.map_err(db_err("record usage"))?;
                Ok(true)
            }

            pub(crate) async fn cursors(pool: &$pool) -> Result<Vec<UsageCursor>> {
                let rows = match sqlx::query(CURSORS).fetch_all(pool).await {
                    Err(e) if missing_table(&e) => return Ok(Vec::new()),
                    r => r.map_err(db_err("usage"))?,
                };
                rows.iter()
                    .map(|r| {
                        let e = db_err("usage");
                        let ids: String = r.try_get("through_ids").map_err(e)?;
                        let get_f = |c: &str| r.try_get::<f64, _>(c).map_err(db_err("usage"));
                        let get_i = |c: &str| r.try_get::<i64, _>(c).map_err(db_err("usage"));
                        let get_s = |c: &str| r.try_get::<String, _>(c).map_err(db_err("usage"));
                        Ok(UsageCursor {
                            machine_id: get_s("machine_id")?,
                            queue: get_s("queue")?,
                            cpu_kind: get_s("cpu_kind")?,
                            cpus: u32::try_from(get_i("cpus")?).unwrap_or(0),
                            memory_mb: u32::try_from(get_i("memory_mb")?).unwrap_or(0),
                            through_ms: get_i("through_ms")?,
                            status: get_s("status")?,
                            through_ids: ids
                                .split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect(),
                            seconds: Seconds {
                                started: get_f("started_s")?,
                                suspended: get_f("suspended_s")?,
                                stopped: get_f("stopped_s")?,
                            },
                            cost_usd: get_f("cost_usd")?,
                        })
                    })
                    .collect()
            }

            pub(crate) async fn hours(
                pool: &$pool,
                since: DateTime<Utc>,
            ) -> Result<Vec<HourUsage>> {
                let rows = match sqlx::query(HOURS)
                    .bind(since.timestamp_millis())
                    .fetch_all(pool)
                    .await
                {
                    Err(e) if missing_table(&e) => return Ok(Vec::new()),
                    r => r.map_err(db_err("usage hours"))?,
                };
                rows.iter()
                    .map(|r| {
                        let get_f = |c: &str| r.try_get::<f64, _>(c).map_err(db_err("usage hours"));
                        Ok(HourUsage {
                            queue: r.try_get("queue").map_err(db_err("usage hours"))?,
                            hour: hour_from_ms(
                                r.try_get("hour_ms").map_err(db_err("usage hours"))?,
                            ),
                            seconds: Seconds {
                                started: get_f("started_s")?,
                                suspended: get_f("suspended_s")?,
                                stopped: get_f("stopped_s")?,
                            },
                            cost_usd: get_f("cost_usd")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

dialect!(
    sqlite,
    sqlx::sqlite::SqlitePool,
    "BEGIN IMMEDIATE",
    None::<&str>
);
dialect!(
    pg,
    sqlx::postgres::PgPool,
    "BEGIN",
    Some("SELECT pg_advisory_xact_lock(7403316240586512)")
);
