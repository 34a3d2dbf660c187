//! Machine usage for cost accounting ([`crate::cost`]): one cursor per worker machine (how far
//! its events are counted, and their sum) and billed seconds per queue per clock hour.
//!
//! Like the boot failures, the tables are created on first write (`CREATE TABLE IF NOT
//! EXISTS`), so that they need no migration; a store that never recorded usage reads as empty.
//! The SQL is written once (natural keys and `ON CONFLICT … DO UPDATE`, which both dialects
//! accept) and run by [`super::sql::SqlStore`].

use super::sql::{Arg, args};
use crate::cost::{HourUsage, UsageCursor};

pub(crate) const TABLES: [&str; 2] = [
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
pub(crate) const SAVE_CURSOR: &str = "INSERT INTO flyjobs_machine_usage (machine_id, queue, cpu_kind, \
     cpus, memory_mb, through_ms, status, through_ids, started_s, suspended_s, stopped_s, \
     cost_usd) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (machine_id) DO UPDATE SET through_ms = excluded.through_ms, \
     status = excluded.status, through_ids = excluded.through_ids, \
     started_s = excluded.started_s, suspended_s = excluded.suspended_s, \
     stopped_s = excluded.stopped_s, cost_usd = excluded.cost_usd \
     WHERE flyjobs_machine_usage.through_ms = $13";

pub(crate) const ADD_HOUR: &str = "INSERT INTO flyjobs_usage_hours (queue, hour_ms, started_s, \
     suspended_s, stopped_s, cost_usd) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (queue, hour_ms) DO UPDATE SET \
     started_s = flyjobs_usage_hours.started_s + excluded.started_s, \
     suspended_s = flyjobs_usage_hours.suspended_s + excluded.suspended_s, \
     stopped_s = flyjobs_usage_hours.stopped_s + excluded.stopped_s, \
     cost_usd = flyjobs_usage_hours.cost_usd + excluded.cost_usd";

pub(crate) const CURSORS: &str = "SELECT machine_id, queue, cpu_kind, cpus, memory_mb, through_ms, status, \
     through_ids, started_s, suspended_s, stopped_s, cost_usd FROM flyjobs_machine_usage \
     ORDER BY machine_id";

pub(crate) const HOURS: &str = "SELECT queue, hour_ms, started_s, suspended_s, stopped_s, cost_usd \
     FROM flyjobs_usage_hours WHERE hour_ms >= $1 ORDER BY hour_ms, queue";

/// The parameters of [`SAVE_CURSOR`].
pub(crate) fn cursor_args(cursor: &UsageCursor, read_through_ms: Option<i64>) -> Vec<Arg> {
    args![
        &cursor.machine_id,
        &cursor.queue,
        &cursor.cpu_kind,
        cursor.cpus,
        cursor.memory_mb,
        cursor.through_ms,
        &cursor.status,
        cursor.through_ids.join(","),
        cursor.seconds.started,
        cursor.seconds.suspended,
        cursor.seconds.stopped,
        cursor.cost_usd,
        read_through_ms.unwrap_or(i64::MIN),
    ]
}

/// The parameters of [`ADD_HOUR`].
pub(crate) fn hour_args(h: &HourUsage) -> Vec<Arg> {
    args![
        &h.queue,
        h.hour.timestamp_millis(),
        h.seconds.started,
        h.seconds.suspended,
        h.seconds.stopped,
        h.cost_usd,
    ]
}
