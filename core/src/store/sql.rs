//! The store, written once for both dialects.
//!
//! [`SqlStore`] implements [`Store`]: the job state rules, the statements both dialects accept
//! (written once, `$N` placeholders: sqlx binds `$N` to the N-th argument on SQLite too), the
//! binding, the row decoding and the wake-ups. A [`Backend`] (Postgres, SQLite) supplies what
//! truly differs:
//! - how a typed [`Arg`] is bound (times: `TIMESTAMPTZ` on Postgres, INTEGER microseconds on
//!   SQLite; JSON: `JSONB` / TEXT) and how a column is read back ([`Cols`]);
//! - the claim (`FOR UPDATE SKIP LOCKED` per queue vs one statement under `BEGIN IMMEDIATE`) and
//!   the enqueue (one `UNNEST` statement with `NOTIFY` inside vs a loop in one transaction);
//! - the wake-up of other processes (`NOTIFY` vs the `flyjobs_wake` counter read through
//!   `PRAGMA data_version`);
//! - the few statement texts whose functions differ (the reaper's JSON builder, table DDL).
//!
//! sqlx's `Any` driver was the other option; it decodes neither times nor JSON and binds no
//! arrays (the Postgres claim and enqueue need them), so the dialects bind typed [`Arg`]s
//! themselves instead.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::boot_failures::BootFailure;
use super::{
    ClaimRequest, JobFilter, JobNotifier, Lease, QueueStats, ReapCounts, ShapeDemand, Store,
    StoreOptions, WorkerInfo, WorkerState, add, db_err, lease_lost_message, lease_mismatch, now,
    page_limit, parse_worker_state, rules, sub, validate_new,
};
use crate::cost::{HourUsage, Seconds, UsageCursor};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Failure, Job, JobId, JobState, NewJob, validate_queue};
use crate::retry::{Outcome, RetryPolicy};

/// A statement parameter. Each dialect binds it in its own representation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    Int(Option<i64>),
    Float(f64),
    Bool(bool),
    Text(Option<String>),
    Time(Option<DateTime<Utc>>),
    Json(Option<serde_json::Value>),
    /// A list, for statements over many rows (Postgres: an array; SQLite: a JSON array read
    /// with `json_each`).
    IntList(Vec<i64>),
    /// A list of texts or NULLs, as [`Arg::IntList`].
    TextList(Vec<Option<String>>),
}

impl Arg {
    /// `v` as a JSON parameter.
    pub(crate) fn json(v: &impl serde::Serialize) -> Result<Arg> {
        Ok(Arg::Json(Some(serde_json::to_value(v)?)))
    }
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Arg {
            fn from($v: $t) -> Arg {
                $e
            }
        })*
    };
}

arg_from! {
    i64 => |v| Arg::Int(Some(v)),
    i32 => |v| Arg::Int(Some(v.into())),
    u32 => |v| Arg::Int(Some(v.into())),
    Option<i64> => |v| Arg::Int(v),
    Option<i32> => |v| Arg::Int(v.map(Into::into)),
    f64 => |v| Arg::Float(v),
    bool => |v| Arg::Bool(v),
    &str => |v| Arg::Text(Some(v.to_owned())),
    &String => |v| Arg::Text(Some(v.clone())),
    String => |v| Arg::Text(Some(v)),
    Option<&str> => |v| Arg::Text(v.map(str::to_owned)),
    Option<String> => |v| Arg::Text(v),
    &Option<String> => |v| Arg::Text(v.clone()),
    DateTime<Utc> => |v| Arg::Time(Some(v)),
    Option<DateTime<Utc>> => |v| Arg::Time(v),
}

/// The parameters of one statement, in `$N` order.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$($crate::store::sql::Arg::from($a)),*]
    };
}
pub(crate) use args;

/// One statement of a [`Backend::transaction`].
#[derive(Debug)]
pub(crate) struct Stmt {
    pub(crate) sql: &'static str,
    pub(crate) args: Vec<Arg>,
    /// Roll the whole transaction back (and answer `false`) when this one changes no row.
    pub(crate) must_change: bool,
}

impl Stmt {
    pub(crate) fn new(sql: &'static str, args: Vec<Arg>) -> Stmt {
        Stmt {
            sql,
            args,
            must_change: false,
        }
    }
}

/// Reading a column of a row, whatever the dialect stores it as. `None`: SQL NULL.
pub(crate) trait Cols {
    fn int(&self, col: &str) -> sqlx::Result<Option<i64>>;
    fn float(&self, col: &str) -> sqlx::Result<Option<f64>>;
    fn flag(&self, col: &str) -> sqlx::Result<Option<bool>>;
    fn text(&self, col: &str) -> sqlx::Result<Option<String>>;
    fn time(&self, col: &str) -> sqlx::Result<Option<DateTime<Utc>>>;
    /// A JSON column, parsed (`JSONB` on Postgres, TEXT on SQLite).
    fn json(&self, col: &str) -> sqlx::Result<Option<serde_json::Value>>;
}

/// Typed column access with clear errors.
struct Get<'r, R>(&'r R);

/// A column that must not be NULL.
fn need<T>(v: sqlx::Result<Option<T>>, col: &str) -> Result<T> {
    v.map_err(db_err("decode row"))?
        .ok_or_else(|| Error::store(format!("decode row: column {col} is NULL")))
}

impl<R: Cols> Get<'_, R> {
    fn int(&self, col: &str) -> Result<i64> {
        need(self.0.int(col), col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.0.int(col).map_err(db_err("decode row"))
    }
    /// A count or counter, read leniently (negative as 0).
    fn count(&self, col: &str) -> Result<u32> {
        Ok(u32::try_from(self.int(col)?.max(0)).unwrap_or(u32::MAX))
    }
    fn float(&self, col: &str) -> Result<f64> {
        need(self.0.float(col), col)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        need(self.0.flag(col), col)
    }
    fn text(&self, col: &str) -> Result<String> {
        need(self.0.text(col), col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.0.text(col).map_err(db_err("decode row"))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        need(self.0.time(col), col)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.0.time(col).map_err(db_err("decode row"))
    }
    fn opt_json<T: serde::de::DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        match self.0.json(col).map_err(db_err("decode row"))? {
            Some(v) => Ok(Some(serde_json::from_value(v)?)),
            None => Ok(None),
        }
    }
}

/// A `flyjobs_jobs` row.
pub(crate) fn job_from_row(r: &impl Cols) -> Result<Job> {
    let g = Get(r);
    Ok(Job {
        id: JobId(g.int("id")?),
        queue: g.text("queue")?,
        name: g.text("name")?,
        payload: need(r.json("payload"), "payload")?,
        state: g.text("state")?.parse()?,
        priority: i32::try_from(g.int("priority")?).unwrap_or(0),
        run_at: g.time("run_at")?,
        attempts: g.count("attempts")?,
        max_attempts: g
            .opt_int("max_attempts")?
            .map(|m| u32::try_from(m.max(0)).unwrap_or(u32::MAX)),
        lost_leases: g.count("lost_leases")?,
        last_error: g.opt_json("last_error")?,
        result: g.opt_json("result")?,
        image_ref: g.opt_text("image_ref")?,
        unique_key: g.opt_text("unique_key")?,
        shape: g.text("shape")?,
        created_at: g.time("created_at")?,
        started_at: g.opt_time("started_at")?,
        finished_at: g.opt_time("finished_at")?,
        lease_owner: g.opt_text("lease_owner")?,
        lease_expires_at: g.opt_time("lease_expires_at")?,
        lease_token: g.int("lease_token")?,
    })
}

fn worker_from_row(r: &impl Cols) -> Result<WorkerInfo> {
    let g = Get(r);
    Ok(WorkerInfo {
        id: g.text("id")?,
        queues: g.opt_json("queues")?.unwrap_or_default(),
        concurrency: g.count("concurrency")?,
        image_ref: g.opt_text("image_ref")?,
        state: parse_worker_state(&g.text("state")?)?,
        running: g.count("running")?,
        started_at: g.time("started_at")?,
        last_heartbeat_at: g.time("last_heartbeat_at")?,
    })
}

/// What differs between the dialects; everything else is [`SqlStore`].
#[async_trait]
pub(crate) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A result row.
    type Row: Cols + Send + Sync;

    /// The reaper's UPDATE (`$1` now, `$2` max lost leases, `$3` default max attempts, `$4`
    /// the message; returns `state, queue`): the JSON builder differs.
    const REAP: &'static str;
    /// Complete many jobs in one statement (`$1` ids, `$2` tokens, `$3` results as JSON texts,
    /// lists in step; `$4` now), returning the `id` of each job it completed: the lists are
    /// unnested differently.
    const COMPLETE_MANY: &'static str;
    /// `CREATE TABLE IF NOT EXISTS flyjobs_boot_failures …` (the id column differs).
    const BOOT_FAILURES_TABLE: &'static str;
    /// Taken before a `CREATE TABLE IF NOT EXISTS` on first write, where concurrent creators
    /// race (Postgres: an advisory lock; SQLite's write lock is taken by `BEGIN IMMEDIATE`).
    const DDL_LOCK: Option<&'static str>;

    async fn fetch_all(&self, sql: &'static str, args: Vec<Arg>) -> sqlx::Result<Vec<Self::Row>>;
    async fn fetch_optional(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> sqlx::Result<Option<Self::Row>>;
    /// Rows changed.
    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> sqlx::Result<u64>;
    /// Run `stmts` in one transaction that takes the write lock up front (SQLite: `BEGIN
    /// IMMEDIATE`); `false` (rolled back) when a `must_change` statement changed nothing.
    async fn transaction(&self, stmts: Vec<Stmt>) -> sqlx::Result<bool>;

    /// Claim: the jobs as they are after the claim.
    async fn claim(
        &self,
        req: &ClaimRequest,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<Vec<Job>>;
    /// Insert validated jobs (`payloads`: their encoded payloads) all or nothing, in order; a
    /// unique key a pending job holds answers with that job. Wakes workers.
    async fn enqueue_many(
        &self,
        jobs: &[NewJob],
        payloads: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>>;

    /// Jobs of `queue` (`"*"`: any) may have become runnable: wake this process's waiters and
    /// other processes'.
    async fn wake(&self, queue: &str) -> Result<()>;
    fn subscribe(&self) -> JobNotifier;
    fn wakes_other_processes(&self) -> bool;
    async fn close(&self);
}

/// The [`Store`] over a [`Backend`]: [`super::postgres::PgStore`] and
/// [`super::sqlite::SqliteStore`].
#[derive(Debug)]
pub struct SqlStore<B> {
    pub(crate) db: B,
    pub(crate) opts: StoreOptions,
}

const CURRENT: &str = "SELECT state, lease_token FROM flyjobs_jobs WHERE id = $1";

const EXTEND: &str = "UPDATE flyjobs_jobs SET lease_expires_at = $3 \
     WHERE id = $1 AND state = 'running' AND lease_token = $2";

const COMPLETE: &str = "UPDATE flyjobs_jobs SET state = 'completed', finished_at = $3, \
     lease_expires_at = NULL, result = $4 \
     WHERE id = $1 AND state = 'running' AND lease_token = $2 RETURNING *";

/// attempts and max_attempts cannot change while the token matches (only a claim changes
/// them, and it changes the token too), and the UPDATE re-checks the token: two statements,
/// no transaction.
const FAIL_READ: &str = "SELECT attempts, max_attempts FROM flyjobs_jobs \
     WHERE id = $1 AND state = 'running' AND lease_token = $2";

const FAIL_RETRY: &str = "UPDATE flyjobs_jobs SET state = 'scheduled', run_at = $3, \
     last_error = $4, lease_expires_at = NULL \
     WHERE id = $1 AND state = 'running' AND lease_token = $2";

const FAIL_DEAD: &str = "UPDATE flyjobs_jobs SET state = 'dead', finished_at = $3, \
     last_error = $4, lease_expires_at = NULL \
     WHERE id = $1 AND state = 'running' AND lease_token = $2";

/// Discard the job as it was read (`$4` state, `$5` token): a concurrent change makes it
/// match nothing, and the caller reads and decides again.
const DISCARD: &str = "UPDATE flyjobs_jobs SET state = 'discarded', finished_at = $2, \
     last_error = COALESCE($3, last_error), lease_expires_at = NULL \
     WHERE id = $1 AND state = $4 AND lease_token = $5 RETURNING *";

const RETRY_DEAD: &str = "UPDATE flyjobs_jobs SET state = 'ready', attempts = 0, \
     lost_leases = 0, run_at = $2, finished_at = NULL, lease_owner = NULL, \
     lease_expires_at = NULL WHERE id = $1 AND state IN ('dead','discarded') RETURNING *";

const RELEASE: &str = "UPDATE flyjobs_jobs SET state = 'ready', \
     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
     lease_owner = NULL, lease_expires_at = NULL, started_at = NULL \
     WHERE id = $1 AND state = 'running' AND lease_token = $2 RETURNING *";

/// Written by the `flyjobs_jobs_attempt` trigger (migration 0005).
const ATTEMPTS: &str = "SELECT attempt, machine, started_at, ended_at, outcome, error \
     FROM flyjobs_attempts WHERE job_id = $1 ORDER BY ended_at, attempt";

const PROMOTE: &str =
    "UPDATE flyjobs_jobs SET state = 'ready' WHERE state = 'scheduled' AND run_at <= $1";

const REGISTER_WORKER: &str = "INSERT INTO flyjobs_workers (id, queues, concurrency, \
     image_ref, state, running, started_at, last_heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
     ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, \
     concurrency = excluded.concurrency, image_ref = excluded.image_ref, \
     state = excluded.state, running = excluded.running, \
     started_at = excluded.started_at, last_heartbeat_at = excluded.last_heartbeat_at";

const HEARTBEAT: &str = "UPDATE flyjobs_workers SET running = $2, last_heartbeat_at = $3, \
     state = CASE WHEN state = 'stopping' THEN state WHEN $2 > 0 THEN 'live' ELSE 'idle' END \
     WHERE id = $1";

const SET_WORKER_STATE: &str = "UPDATE flyjobs_workers SET state = $2 WHERE id = $1";
const DEREGISTER_WORKER: &str = "DELETE FROM flyjobs_workers WHERE id = $1";
const PRUNE_WORKERS: &str = "DELETE FROM flyjobs_workers WHERE last_heartbeat_at < $1";
const WORKERS: &str = "SELECT * FROM flyjobs_workers ORDER BY id";

const STATS: &str = "SELECT queue, \
     count(*) FILTER (WHERE state IN ('scheduled','ready') AND run_at <= $1) AS ready, \
     count(*) FILTER (WHERE state IN ('scheduled','ready') AND run_at > $1) AS scheduled, \
     count(*) FILTER (WHERE state = 'running') AS running, \
     count(*) FILTER (WHERE state = 'dead') AS dead, \
     count(*) FILTER (WHERE state = 'completed') AS completed, \
     count(*) FILTER (WHERE state = 'discarded') AS discarded, \
     min(run_at) FILTER (WHERE state IN ('scheduled','ready') AND run_at <= $1) AS oldest, \
     min(run_at) FILTER (WHERE state IN ('scheduled','ready') AND run_at > $1) AS next \
     FROM flyjobs_jobs GROUP BY queue ORDER BY queue";

const READY_SHAPES: &str = "SELECT queue, shape, image_ref, count(*) AS ready, \
     min(created_at) AS oldest FROM flyjobs_jobs \
     WHERE state IN ('scheduled','ready') AND run_at <= $1 \
     GROUP BY queue, shape, image_ref ORDER BY queue, shape, image_ref NULLS FIRST";

const LIST_JOBS: &str = "SELECT * FROM flyjobs_jobs WHERE ($1 IS NULL OR state = $1) \
     AND ($2 IS NULL OR queue = $2) AND ($3 IS NULL OR name = $3) AND id > $4 \
     ORDER BY id LIMIT $5";

const GET_JOB: &str = "SELECT * FROM flyjobs_jobs WHERE id = $1";

const CLEAR_QUEUE: &str =
    "DELETE FROM flyjobs_jobs WHERE queue = $1 AND state IN ('ready','scheduled')";

/// Off the flyjobs_jobs_finished index, a bounded batch per statement.
const PRUNE_FINISHED: &str = "DELETE FROM flyjobs_jobs WHERE id IN (SELECT id FROM flyjobs_jobs \
     WHERE state IN ('completed','dead','discarded') \
     AND finished_at < (CASE WHEN state = 'completed' THEN $1 ELSE $2 END) LIMIT $3)";

const ACQUIRE_LEADER: &str = "INSERT INTO flyjobs_locks (name, owner, expires_at) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
     WHERE flyjobs_locks.owner = excluded.owner OR flyjobs_locks.expires_at < $4 \
     RETURNING owner";

const RELEASE_LEADER: &str = "DELETE FROM flyjobs_locks WHERE name = $1 AND owner = $2";

const RUN_NOW: &str = "UPDATE flyjobs_jobs SET state = 'ready', run_at = $2 \
     WHERE id = $1 AND state IN ('scheduled','ready') RETURNING *";

const FINISHED_SINCE: &str = "SELECT * FROM flyjobs_jobs \
     WHERE state IN ('completed','dead','discarded') AND finished_at >= $1 \
     ORDER BY finished_at DESC LIMIT $2";

/// `running` (under the token) → `ready` now on another machine shape, with the failure as its
/// last error; the attempt that ran stays counted.
const REQUEUE_ON_SHAPE: &str = "UPDATE flyjobs_jobs SET state = 'ready', run_at = $3, \
     shape = $4, last_error = $5, lease_expires_at = NULL \
     WHERE id = $1 AND state = 'running' AND lease_token = $2 RETURNING queue";

const BOOT_FAILURE_INSERT: &str = "INSERT INTO flyjobs_boot_failures \
     (queue, release, machine_id, exit_code, reason, log_tail, at_us, cleared) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Boot failures kept: older ones are deleted on insert.
const BOOT_FAILURES_KEPT: i64 = 1000;

const BOOT_FAILURE_TRIM: &str = "DELETE FROM flyjobs_boot_failures \
     WHERE id <= (SELECT MAX(id) FROM flyjobs_boot_failures) - $1";

const BOOT_FAILURES: &str = "SELECT queue, release, machine_id, exit_code, reason, log_tail, \
     at_us, cleared FROM flyjobs_boot_failures ORDER BY id DESC LIMIT $1";

const CLEAR_BOOT_FAILURES: &str = "UPDATE flyjobs_boot_failures SET cleared = TRUE \
     WHERE NOT cleared AND ($1 IS NULL OR queue = $1)";

/// A store that never wrote a table created on first write reads it as empty.
fn missing_table(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().is_some_and(|c| c == "42P01") || d.message().contains("no such table")
        }
        _ => false,
    }
}

/// A job's state and lease token, if it exists.
async fn current<B: Backend>(db: &B, id: JobId) -> Result<Option<(JobState, i64)>> {
    let row = db
        .fetch_optional(CURRENT, args![id.0])
        .await
        .map_err(db_err("look up job"))?;
    row.map(|r| -> Result<_> {
        let g = Get(&r);
        Ok((g.text("state")?.parse()?, g.int("lease_token")?))
    })
    .transpose()
}

/// The job a lease operation returned, or the Conflict/NotFound of `op`.
async fn job_or_mismatch<B: Backend>(
    db: &B,
    op: &str,
    id: JobId,
    row: sqlx::Result<Option<B::Row>>,
) -> Result<Job> {
    match row.map_err(db_err(op))? {
        Some(r) => job_from_row(&r),
        None => Err(lease_mismatch(op, id, current(db, id).await?)),
    }
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn enqueue(&self, job: NewJob) -> Result<Job> {
        Ok(self.enqueue_many(vec![job]).await?.remove(0))
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        // Validate everything first: nothing is written if any job is bad.
        let payloads = jobs
            .iter()
            .map(|j| validate_new(j, self.opts.max_payload_bytes))
            .collect::<Result<Vec<_>>>()?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.db.enqueue_many(&jobs, payloads, now()).await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Lease>> {
        if !rules::claim_wanted(&req)? {
            return Ok(Vec::new());
        }
        let now = now();
        let expires = add(now, req.lease);
        let jobs = self.db.claim(&req, now, expires).await?;
        Ok(rules::leases(jobs, &req, expires))
    }

    async fn extend(&self, id: JobId, token: i64, lease: Duration) -> Result<DateTime<Utc>> {
        let expires = add(now(), lease);
        let n = self
            .db
            .execute(EXTEND, args![id.0, token, expires])
            .await
            .map_err(db_err("extend"))?;
        if n == 0 {
            return Err(lease_mismatch("extend", id, current(&self.db, id).await?));
        }
        Ok(expires)
    }

    async fn complete_with(
        &self,
        id: JobId,
        token: i64,
        result: Option<&serde_json::Value>,
    ) -> Result<Job> {
        let mut a = args![id.0, token, now()];
        a.push(Arg::Json(result.cloned()));
        let row = self.db.fetch_optional(COMPLETE, a).await;
        job_or_mismatch(&self.db, "complete", id, row).await
    }

    async fn complete_many(
        &self,
        done: &[(JobId, i64, Option<serde_json::Value>)],
    ) -> Result<Vec<Result<()>>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .fetch_all(
                B::COMPLETE_MANY,
                vec![
                    Arg::IntList(done.iter().map(|d| d.0.0).collect()),
                    Arg::IntList(done.iter().map(|d| d.1).collect()),
                    Arg::TextList(
                        done.iter()
                            .map(|d| d.2.as_ref().map(|v| v.to_string()))
                            .collect(),
                    ),
                    Arg::from(now()),
                ],
            )
            .await
            .map_err(db_err("complete"))?;
        let completed = rows
            .iter()
            .map(|r| Get(r).int("id"))
            .collect::<Result<std::collections::HashSet<i64>>>()?;
        let mut out = Vec::with_capacity(done.len());
        for (id, _, _) in done {
            out.push(if completed.contains(&id.0) {
                Ok(())
            } else {
                // Why this one was refused; the others are completed whatever this says.
                current(&self.db, *id)
                    .await
                    .and_then(|c| Err(lease_mismatch("complete", *id, c)))
            });
        }
        Ok(out)
    }

    async fn fail(
        &self,
        id: JobId,
        token: i64,
        failure: Failure,
        policy: &RetryPolicy,
    ) -> Result<Outcome> {
        let now = now();
        let row = self
            .db
            .fetch_optional(FAIL_READ, args![id.0, token])
            .await
            .map_err(db_err("fail"))?;
        let Some(row) = row else {
            return Err(lease_mismatch("fail", id, current(&self.db, id).await?));
        };
        let g = Get(&row);
        let outcome =
            rules::fail_outcome(g.int("attempts")?, g.opt_int("max_attempts")?, policy, now);
        let (sql, at) = match outcome {
            Outcome::Retry { at } => (FAIL_RETRY, at),
            _ => (FAIL_DEAD, now),
        };
        let mut a = args![id.0, token, at];
        a.push(Arg::json(&failure)?);
        let n = self.db.execute(sql, a).await.map_err(db_err("fail"))?;
        if n == 0 {
            return Err(lease_mismatch("fail", id, current(&self.db, id).await?));
        }
        Ok(outcome)
    }

    async fn discard(
        &self,
        id: JobId,
        token: Option<i64>,
        failure: Option<Failure>,
    ) -> Result<Job> {
        let err = match &failure {
            Some(f) => Arg::json(f)?,
            None => Arg::Json(None),
        };
        // Read, decide, then discard only the job as it was read; a concurrent change (a
        // claim, a completion) makes the UPDATE match nothing: read and decide again.
        for _ in 0..5 {
            let Some((state, token_now)) = current(&self.db, id).await? else {
                return Err(rules::discard_not_found(id));
            };
            if !rules::may_discard(state, token_now, token) {
                return Err(lease_mismatch("discard", id, Some((state, token_now))));
            }
            let mut a = args![id.0, now()];
            a.push(err.clone());
            a.extend(args![state.as_str(), token_now]);
            let row = self
                .db
                .fetch_optional(DISCARD, a)
                .await
                .map_err(db_err("discard"))?;
            if let Some(r) = row {
                return job_from_row(&r);
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("discard: job {id} kept changing; try again"),
        )
        .with_job_id(id)
        .with_retryable(true))
    }

    async fn retry_dead(&self, id: JobId) -> Result<Job> {
        let row = self.db.fetch_optional(RETRY_DEAD, args![id.0, now()]).await;
        let job = job_or_mismatch(&self.db, "retry", id, row).await?;
        self.db.wake(&job.queue).await?;
        Ok(job)
    }

    async fn release(&self, id: JobId, token: i64) -> Result<Job> {
        let row = self.db.fetch_optional(RELEASE, args![id.0, token]).await;
        let job = job_or_mismatch(&self.db, "release", id, row).await?;
        self.db.wake(&job.queue).await?;
        Ok(job)
    }

    async fn reap_expired(&self, now: DateTime<Utc>) -> Result<ReapCounts> {
        // Concurrent reapers are safe: a row another reaper already moved no longer matches
        // `state = 'running'` when the UPDATE re-checks it.
        let rows = self
            .db
            .fetch_all(
                B::REAP,
                args![
                    now,
                    self.opts.max_lost_leases.max(1),
                    self.opts.default_max_attempts.max(1),
                    lease_lost_message(),
                ],
            )
            .await
            .map_err(db_err("reap"))?;
        let mut counts = ReapCounts::default();
        let mut queue = None;
        for r in &rows {
            let g = Get(r);
            if g.text("state")? == JobState::Dead.as_str() {
                counts.dead += 1;
            } else {
                counts.retried += 1;
                queue = Some(g.text("queue")?);
            }
        }
        if let Some(q) = queue {
            self.db.wake(&q).await?;
        }
        Ok(counts)
    }

    async fn promote_scheduled(&self, now: DateTime<Utc>) -> Result<u64> {
        let n = self
            .db
            .execute(PROMOTE, args![now])
            .await
            .map_err(db_err("promote"))?;
        if n > 0 {
            self.db.wake("*").await?;
        }
        Ok(n)
    }

    async fn register_worker(&self, w: WorkerInfo) -> Result<()> {
        for q in &w.queues {
            validate_queue(q)?;
        }
        let mut a = args![&w.id];
        a.push(Arg::json(&w.queues)?);
        a.extend(args![
            w.concurrency,
            &w.image_ref,
            w.state.as_str(),
            w.running,
            now()
        ]);
        self.db
            .execute(REGISTER_WORKER, a)
            .await
            .map_err(db_err("register worker"))?;
        Ok(())
    }

    async fn heartbeat_worker(&self, id: &str, running: u32) -> Result<()> {
        let n = self
            .db
            .execute(HEARTBEAT, args![id, running, now()])
            .await
            .map_err(db_err("heartbeat"))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("heartbeat: worker {id:?} is not registered"),
            ));
        }
        Ok(())
    }

    async fn set_worker_state(&self, id: &str, state: WorkerState) -> Result<()> {
        let n = self
            .db
            .execute(SET_WORKER_STATE, args![id, state.as_str()])
            .await
            .map_err(db_err("set worker state"))?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("worker {id:?} is not registered"),
            ));
        }
        Ok(())
    }

    async fn deregister_worker(&self, id: &str) -> Result<()> {
        self.db
            .execute(DEREGISTER_WORKER, args![id])
            .await
            .map_err(db_err("deregister worker"))?;
        Ok(())
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        self.db
            .execute(PRUNE_WORKERS, args![before])
            .await
            .map_err(db_err("prune workers"))
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let rows = self
            .db
            .fetch_all(WORKERS, args![])
            .await
            .map_err(db_err("list workers"))?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn stats(&self) -> Result<Vec<QueueStats>> {
        let now = now();
        let rows = self
            .db
            .fetch_all(STATS, args![now])
            .await
            .map_err(db_err("stats"))?;
        rows.iter()
            .map(|r| {
                let g = Get(r);
                let n = |c: &str| -> Result<u64> { Ok(g.int(c)?.max(0) as u64) };
                Ok(QueueStats {
                    queue: g.text("queue")?,
                    ready: n("ready")?,
                    scheduled: n("scheduled")?,
                    running: n("running")?,
                    dead: n("dead")?,
                    completed: n("completed")?,
                    discarded: n("discarded")?,
                    oldest_ready_age: g
                        .opt_time("oldest")?
                        .map(|o| (now - o).to_std().unwrap_or_default()),
                    next_scheduled_at: g.opt_time("next")?,
                })
            })
            .collect()
    }

    async fn ready_shapes(&self) -> Result<Vec<ShapeDemand>> {
        let rows = self
            .db
            .fetch_all(READY_SHAPES, args![now()])
            .await
            .map_err(db_err("ready shapes"))?;
        rows.iter()
            .map(|r| {
                let g = Get(r);
                Ok(ShapeDemand {
                    queue: g.text("queue")?,
                    shape: g.text("shape")?,
                    image_ref: g.opt_text("image_ref")?,
                    ready: g.int("ready")?.max(0) as u64,
                    oldest_created_at: g.time("oldest")?,
                })
            })
            .collect()
    }

    async fn list_jobs(&self, f: JobFilter) -> Result<Vec<Job>> {
        let rows = self
            .db
            .fetch_all(
                LIST_JOBS,
                args![
                    f.state.map(|s| s.as_str()),
                    f.queue,
                    f.name,
                    f.after_id.map_or(0, |i| i.0),
                    page_limit(f.limit),
                ],
            )
            .await
            .map_err(db_err("list jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.db
            .fetch_optional(GET_JOB, args![id.0])
            .await
            .map_err(db_err("get job"))?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn clear_queue(&self, queue: &str) -> Result<u64> {
        self.db
            .execute(CLEAR_QUEUE, args![queue])
            .await
            .map_err(db_err("clear queue"))
    }

    async fn prune_finished(&self, now: DateTime<Utc>) -> Result<u64> {
        self.db
            .execute(
                PRUNE_FINISHED,
                args![
                    sub(now, self.opts.retain_completed),
                    sub(now, self.opts.retain_dead),
                    super::PRUNE_BATCH,
                ],
            )
            .await
            .map_err(db_err("prune"))
    }

    async fn try_acquire_leader(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = now();
        let row = self
            .db
            .fetch_optional(ACQUIRE_LEADER, args![name, owner, add(now, ttl), now])
            .await
            .map_err(db_err("leader lock"))?;
        Ok(row.is_some())
    }

    async fn release_leader(&self, name: &str, owner: &str) -> Result<()> {
        self.db
            .execute(RELEASE_LEADER, args![name, owner])
            .await
            .map_err(db_err("leader unlock"))?;
        Ok(())
    }

    fn subscribe(&self) -> JobNotifier {
        self.db.subscribe()
    }

    fn wakes_other_processes(&self) -> bool {
        self.db.wakes_other_processes()
    }

    async fn close(&self) {
        self.db.close().await;
    }

    async fn record_boot_failure(&self, f: BootFailure) -> Result<()> {
        let mut stmts = Vec::with_capacity(4);
        if let Some(lock) = B::DDL_LOCK {
            stmts.push(Stmt::new(lock, args![]));
        }
        stmts.push(Stmt::new(B::BOOT_FAILURES_TABLE, args![]));
        stmts.push(Stmt::new(
            BOOT_FAILURE_INSERT,
            args![
                &f.queue,
                &f.release,
                &f.machine_id,
                f.exit_code,
                &f.reason,
                &f.log_tail,
                f.at.timestamp_micros(),
                f.cleared,
            ],
        ));
        stmts.push(Stmt::new(BOOT_FAILURE_TRIM, args![BOOT_FAILURES_KEPT]));
        self.db
            .transaction(stmts)
            .await
            .map_err(db_err("record boot failure"))?;
        Ok(())
    }

    async fn boot_failures(&self, limit: usize) -> Result<Vec<BootFailure>> {
        let rows = match self
            .db
            .fetch_all(BOOT_FAILURES, args![page_limit(limit)])
            .await
        {
            Err(e) if missing_table(&e) => return Ok(Vec::new()),
            r => r.map_err(db_err("boot failures"))?,
        };
        rows.iter()
            .map(|r| {
                let g = Get(r);
                Ok(BootFailure {
                    queue: g.text("queue")?,
                    release: g.text("release")?,
                    machine_id: g.text("machine_id")?,
                    exit_code: g
                        .opt_int("exit_code")?
                        .map(|c| i32::try_from(c).unwrap_or(i32::MIN)),
                    reason: g.text("reason")?,
                    log_tail: g.text("log_tail")?,
                    at: DateTime::from_timestamp_micros(g.int("at_us")?).unwrap_or_default(),
                    cleared: g.flag("cleared")?,
                })
            })
            .collect()
    }

    async fn clear_boot_failures(&self, queue: Option<&str>) -> Result<u64> {
        match self.db.execute(CLEAR_BOOT_FAILURES, args![queue]).await {
            Err(e) if missing_table(&e) => Ok(0),
            r => r.map_err(db_err("clear boot failures")),
        }
    }

    async fn run_now(&self, id: JobId) -> Result<Job> {
        let row = self.db.fetch_optional(RUN_NOW, args![id.0, now()]).await;
        let job = job_or_mismatch(&self.db, "run now", id, row).await?;
        self.db.wake(&job.queue).await?;
        Ok(job)
    }

    async fn finished_since(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<Job>> {
        let rows = self
            .db
            .fetch_all(FINISHED_SINCE, args![since, page_limit(limit)])
            .await
            .map_err(db_err("finished jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    async fn record_usage(
        &self,
        cursor: &UsageCursor,
        read_through_ms: Option<i64>,
        hours: &[HourUsage],
    ) -> Result<bool> {
        use super::usage;
        let mut stmts = Vec::with_capacity(4 + hours.len());
        if let Some(lock) = B::DDL_LOCK {
            stmts.push(Stmt::new(lock, args![]));
        }
        for t in usage::TABLES {
            stmts.push(Stmt::new(t, args![]));
        }
        stmts.push(Stmt {
            must_change: true,
            ..Stmt::new(
                usage::SAVE_CURSOR,
                usage::cursor_args(cursor, read_through_ms),
            )
        });
        for h in hours {
            stmts.push(Stmt::new(usage::ADD_HOUR, usage::hour_args(h)));
        }
        self.db
            .transaction(stmts)
            .await
            .map_err(db_err("record usage"))
    }

    async fn usage_cursors(&self) -> Result<Vec<UsageCursor>> {
        let rows = match self.db.fetch_all(super::usage::CURSORS, args![]).await {
            Err(e) if missing_table(&e) => return Ok(Vec::new()),
            r => r.map_err(db_err("usage"))?,
        };
        rows.iter()
            .map(|r| {
                let g = Get(r);
                Ok(UsageCursor {
                    machine_id: g.text("machine_id")?,
                    queue: g.text("queue")?,
                    cpu_kind: g.text("cpu_kind")?,
                    cpus: u32::try_from(g.int("cpus")?).unwrap_or(0),
                    memory_mb: u32::try_from(g.int("memory_mb")?).unwrap_or(0),
                    through_ms: g.int("through_ms")?,
                    status: g.text("status")?,
                    through_ids: g
                        .text("through_ids")?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    seconds: seconds(&g)?,
                    cost_usd: g.float("cost_usd")?,
                })
            })
            .collect()
    }

    async fn usage_hours(&self, since: DateTime<Utc>) -> Result<Vec<HourUsage>> {
        let rows = match self
            .db
            .fetch_all(super::usage::HOURS, args![since.timestamp_millis()])
            .await
        {
            Err(e) if missing_table(&e) => return Ok(Vec::new()),
            r => r.map_err(db_err("usage hours"))?,
        };
        rows.iter()
            .map(|r| {
                let g = Get(r);
                Ok(HourUsage {
                    queue: g.text("queue")?,
                    hour: DateTime::from_timestamp_millis(g.int("hour_ms")?).unwrap_or_default(),
                    seconds: seconds(&g)?,
                    cost_usd: g.float("cost_usd")?,
                })
            })
            .collect()
    }

    async fn requeue_on_shape(
        &self,
        id: JobId,
        token: i64,
        shape: &str,
        failure: &Failure,
    ) -> Result<bool> {
        let mut a = args![id.0, token, now(), shape];
        a.push(Arg::json(failure)?);
        let row = self
            .db
            .fetch_optional(REQUEUE_ON_SHAPE, a)
            .await
            .map_err(db_err("requeue on shape"))?;
        let Some(row) = row else {
            return Ok(false);
        };
        // Runnable again: wake its workers, in other processes too.
        self.db.wake(&Get(&row).text("queue")?).await?;
        Ok(true)
    }

    async fn attempts(&self, id: JobId) -> Result<Vec<super::Attempt>> {
        let rows = self
            .db
            .fetch_all(ATTEMPTS, args![id.0])
            .await
            .map_err(db_err("attempts"))?;
        rows.iter()
            .map(|r| {
                let g = Get(r);
                Ok(super::Attempt {
                    attempt: g.count("attempt")?,
                    machine: g.opt_text("machine")?,
                    started_at: g.opt_time("started_at")?,
                    ended_at: g.time("ended_at")?,
                    outcome: g.text("outcome")?.parse()?,
                    error: need(r.json("error"), "error")
                        .and_then(|v| Ok(serde_json::from_value(v)?))?,
                })
            })
            .collect()
    }
}

fn seconds<R: Cols>(g: &Get<'_, R>) -> Result<Seconds> {
    Ok(Seconds {
        started: g.float("started_s")?,
        suspended: g.float("suspended_s")?,
        stopped: g.float("stopped_s")?,
    })
}
