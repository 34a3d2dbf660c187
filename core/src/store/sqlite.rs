//! The SQLite store (embedded default: one host, e.g. a laptop with the emulator).
//!
//! WAL journal (readers do not block the writer), a busy timeout, and every write in a
//! `BEGIN IMMEDIATE` transaction: SQLite has one writer at a time, and taking the write lock up
//! front means two claimers never both read the same ready rows and then race to update them.
//! Wake-ups cross processes: a watcher task per store looks at `PRAGMA data_version` every
//! few milliseconds and wakes subscribers when another connection committed.
//!
//! Times are stored as INTEGER microseconds since the Unix epoch (exact comparison and order).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::{
    ClaimRequest, JobFilter, JobNotifier, Lease, QueueStats, ReapCounts, ShapeDemand, Signal,
    Store, StoreOptions, WorkerInfo, WorkerState, add, db_err, lease_lost_message, lease_mismatch,
    page_limit, parse_worker_state, validate_new,
};
use crate::config::redact_url;
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Failure, Job, JobId, JobState, NewJob, validate_queue};
use crate::retry::{Outcome, RetryPolicy};

/// Numbered migrations, applied in order once per database file.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/sqlite/0001_init.sql")),
    (
        2,
        "result",
        include_str!("migrations/sqlite/0002_result.sql"),
    ),
    (3, "shape", include_str!("migrations/sqlite/0003_shape.sql")),
    (4, "wake", include_str!("migrations/sqlite/0004_wake.sql")),
];

/// Bumps the counter other processes' watchers read (migration 0004).
const BUMP_WAKE: &str = "UPDATE flyjobs_wake SET n = n + 1 WHERE id = 1";

/// How often the watcher looks at `PRAGMA data_version` for writes by other connections.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// The SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    opts: StoreOptions,
    signal: Signal,
    /// Turns commits by other connections (other processes) into wake-ups; `None` for an
    /// in-memory database, which no other connection can see.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

/// Wake subscribers when another connection made jobs runnable: `PRAGMA data_version` on a
/// connection of our own changes when any other connection commits (a read of the WAL index
/// in shared memory, no disk I/O); then the wake counter (`flyjobs_wake`, bumped by enqueue,
/// release, retry, reap and promote) says whether that commit brought work, so completions
/// and heartbeats wake nobody. Looked at every [`WATCH_EVERY`] while anyone is subscribed, so
/// a worker in one process picks up a job enqueued by another in milliseconds.
async fn watch_data_version(co: SqliteConnectOptions, signal: Signal) {
    use sqlx::Connection;
    let mut conn: Option<sqlx::SqliteConnection> = None;
    let mut last: Option<i64> = None;
    let mut last_wake: Option<i64> = None;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !signal.has_subscribers() {
            continue;
        }
        if conn.is_none() {
            match sqlx::SqliteConnection::connect_with(&co).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!("flyjobs sqlite watcher: connect failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut *c)
            .await
        {
            Ok(v) if last == Some(v) => {}
            Ok(v) => {
                last = Some(v);
                // The file changed: wake only if the change made jobs runnable.
                match sqlx::query_scalar::<_, i64>("SELECT n FROM flyjobs_wake WHERE id = 1")
                    .fetch_one(&mut *c)
                    .await
                {
                    Ok(n) => {
                        if last_wake.is_some_and(|l| l != n) {
                            signal.wake();
                        }
                        last_wake = Some(n);
                    }
                    Err(e) => {
                        tracing::debug!("flyjobs sqlite watcher: {e}");
                        signal.wake();
                    }
                }
            }
            Err(e) => {
                tracing::debug!("flyjobs sqlite watcher: {e}; reconnecting");
                conn = None;
                // A fresh connection has its own numbering: wake once rather than miss a write.
                last = None;
                signal.wake();
            }
        }
    }
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_us(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or_default()
}

impl SqliteStore {
    /// Open (creating if missing) the database at `url` and run migrations.
    pub async fn open(url: &str, opts: StoreOptions) -> Result<Self> {
        let redacted = redact_url(url);
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let co = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config(format!("invalid SQLite URL {redacted:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // Each connection to `:memory:` is its own database: keep exactly one, forever.
        let max = if memory {
            1
        } else {
            opts.max_connections.unwrap_or(4).max(1)
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .acquire_timeout(opts.connect_timeout.max(Duration::from_secs(30)))
            .connect_with(co.clone())
            .await
            .map_err(|e| {
                Error::store(format!("cannot open SQLite database {redacted}: {e}")).with_source(e)
            })?;
        migrate(&pool).await?;
        let signal = Signal::new();
        let watcher =
            (!memory).then(|| tokio::spawn(watch_data_version(co.clone(), signal.clone())));
        Ok(SqliteStore {
            pool,
            opts,
            signal,
            watcher,
        })
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Wake this process's subscribers and, through the wake counter, other processes'.
    /// Best effort: the change it announces is already committed.
    async fn wake(&self) {
        if let Err(e) = sqlx::query(BUMP_WAKE).execute(&self.pool).await {
            tracing::debug!("flyjobs sqlite: wake counter not bumped: {e}");
        }
        self.signal.wake();
    }

    async fn begin(&self, what: &str) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err(what))
    }

    async fn current(&self, id: JobId) -> Result<Option<(JobState, i64)>> {
        let row = sqlx::query("SELECT state, lease_token FROM flyjobs_jobs WHERE id = ?1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("look up job"))?;
        row.map(|r| -> Result<_> {
            let st: String = get(&r, "state")?;
            Ok((st.parse()?, get(&r, "lease_token")?))
        })
        .transpose()
    }

    async fn insert(
        tx: &mut Transaction<'static, Sqlite>,
        job: &NewJob,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<Job> {
        let run_at = job.run_at.map_or(now, super::trunc);
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Ready
        };
        // Inside BEGIN IMMEDIATE nobody else writes, so "insert or return the pending holder of
        // the unique key" needs no retry loop.
        let row = sqlx::query(
            "INSERT INTO flyjobs_jobs (queue, name, payload, state, priority, run_at, \
             max_attempts, image_ref, unique_key, created_at, shape) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
             AND state IN ('scheduled','ready','running') DO NOTHING RETURNING *",
        )
        .bind(&job.queue)
        .bind(&job.name)
        .bind(payload)
        .bind(state.as_str())
        .bind(job.priority)
        .bind(us(run_at))
        .bind(job.max_attempts.map(i64::from))
        .bind(&job.image_ref)
        .bind(&job.unique_key)
        .bind(us(now))
        .bind(&job.shape)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err("enqueue"))?;
        if let Some(row) = row {
            return job_from_row(&row);
        }
        let row = sqlx::query(
            "SELECT * FROM flyjobs_jobs WHERE unique_key = ?1 \
             AND state IN ('scheduled','ready','running')",
        )
        .bind(&job.unique_key)
        .fetch_one(&mut **tx)
        .await
        .map_err(db_err("enqueue"))?;
        job_from_row(&row)
    }
}

/// Apply pending migrations (BEGIN IMMEDIATE serializes concurrent openers of one file).
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(db_err("migrate"))?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flyjobs_schema_migrations (\
         version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_err("migrate: bookkeeping table"))?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM flyjobs_schema_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err("migrate: read versions"))?;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(db_err(&format!("migrate: {version:04}_{name}")))?;
        sqlx::query(
            "INSERT INTO flyjobs_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
        )
        .bind(version)
        .bind(name)
        .bind(us(super::now()))
        .execute(&mut *tx)
        .await
        .map_err(db_err("migrate: record version"))?;
    }
    tx.commit().await.map_err(db_err("migrate: commit"))?;
    Ok(())
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    col: &str,
) -> Result<T> {
    row.try_get(col).map_err(db_err("decode row"))
}

fn opt_time(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(get::<Option<i64>>(row, col)?.map(from_us))
}

fn job_from_row(row: &SqliteRow) -> Result<Job> {
    let state: String = get(row, "state")?;
    let payload: String = get(row, "payload")?;
    let last_error: Option<String> = get(row, "last_error")?;
    let result: Option<String> = get(row, "result")?;
    Ok(Job {
        id: JobId(get(row, "id")?),
        queue: get(row, "queue")?,
        name: get(row, "name")?,
        payload: serde_json::from_str(&payload)?,
        state: state.parse()?,
        priority: get(row, "priority")?,
        run_at: from_us(get(row, "run_at")?),
        attempts: get::<i64>(row, "attempts")?.max(0) as u32,
        max_attempts: get::<Option<i64>>(row, "max_attempts")?.map(|m| m.max(0) as u32),
        lost_leases: get::<i64>(row, "lost_leases")?.max(0) as u32,
        last_error: last_error.map(|s| serde_json::from_str(&s)).transpose()?,
        result: result.map(|s| serde_json::from_str(&s)).transpose()?,
        image_ref: get(row, "image_ref")?,
        unique_key: get(row, "unique_key")?,
        shape: get(row, "shape")?,
        created_at: from_us(get(row, "created_at")?),
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        lease_token: get(row, "lease_token")?,
    })
}

fn worker_from_row(row: &SqliteRow) -> Result<WorkerInfo> {
    let queues: String = get(row, "queues")?;
    let state: String = get(row, "state")?;
    Ok(WorkerInfo {
        id: get(row, "id")?,
        queues: serde_json::from_str(&queues)?,
        concurrency: get::<i64>(row, "concurrency")?.max(0) as u32,
        image_ref: get(row, "image_ref")?,
        state: parse_worker_state(&state)?,
        running: get::<i64>(row, "running")?.max(0) as u32,
        started_at: from_us(get(row, "started_at")?),
        last_heartbeat_at: from_us(get(row, "last_heartbeat_at")?),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, job: NewJob) -> Result<Job> {
        Ok(self.enqueue_many(vec![job]).await?.remove(0))
    }

    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        let payloads = jobs
            .iter()
            .map(|j| validate_new(j, self.opts.max_payload_bytes))
            .collect::<Result<Vec<_>>>()?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = super::now();
        let mut tx = self.begin("enqueue").await?;
        let mut out = Vec::with_capacity(jobs.len());
        for (job, payload) in jobs.iter().zip(&payloads) {
            out.push(Self::insert(&mut tx, job, payload, now).await?);
        }
        sqlx::query(BUMP_WAKE)
            .execute(&mut *tx)
            .await
            .map_err(db_err("enqueue"))?;
        tx.commit().await.map_err(db_err("enqueue: commit"))?;
        self.signal.wake();
        Ok(out)
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Lease>> {
        if !super::rules::claim_wanted(&req)? {
            return Ok(Vec::new());
        }
        let now = super::now();
        let expires = add(now, req.lease);
        let mut tx = self.begin("claim").await?;
        let rows = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'running', attempts = attempts + 1, \
               lease_owner = ?4, lease_expires_at = ?5, lease_token = lease_token + 1, \
               started_at = ?2 \
             WHERE id IN (SELECT id FROM flyjobs_jobs \
               WHERE state IN ('scheduled','ready') \
               AND queue IN (SELECT value FROM json_each(?1)) AND run_at <= ?2 \
               AND (?6 IS NULL OR shape = ?6) \
               AND (?7 IS NULL OR image_ref = ?7 OR (?8 IS NOT NULL \
                    AND (image_ref IS NULL OR created_at < ?8))) \
               ORDER BY priority, run_at, id LIMIT ?3) \
             RETURNING *",
        )
        .bind(serde_json::to_string(&req.queues)?)
        .bind(us(now))
        .bind(page_limit(req.limit))
        .bind(&req.owner)
        .bind(us(expires))
        .bind(req.shape.as_deref())
        .bind(req.image.as_ref().map(|f| f.image_ref.as_str()))
        .bind(
            req.image
                .as_ref()
                .and_then(|f| f.or_enqueued_before)
                .map(us),
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err("claim"))?;
        tx.commit().await.map_err(db_err("claim: commit"))?;
        let expires = from_us(us(expires));
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(super::rules::leases(jobs, &req, expires))
    }

    async fn extend(&self, id: JobId, token: i64, lease: Duration) -> Result<DateTime<Utc>> {
        let expires = add(super::now(), lease);
        let n = sqlx::query(
            "UPDATE flyjobs_jobs SET lease_expires_at = ?3 \
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
        )
        .bind(id.0)
        .bind(token)
        .bind(us(expires))
        .execute(&self.pool)
        .await
        .map_err(db_err("extend"))?
        .rows_affected();
        if n == 0 {
            return Err(lease_mismatch("extend", id, self.current(id).await?));
        }
        Ok(from_us(us(expires)))
    }

    async fn complete_with(
        &self,
        id: JobId,
        token: i64,
        result: Option<&serde_json::Value>,
    ) -> Result<Job> {
        let result = result.map(serde_json::to_string).transpose()?;
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'completed', finished_at = ?3, lease_expires_at = NULL, \
             result = ?4 WHERE id = ?1 AND state = 'running' AND lease_token = ?2 RETURNING *",
        )
        .bind(id.0)
        .bind(token)
        .bind(us(super::now()))
        .bind(result)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("complete"))?;
        match row {
            Some(r) => job_from_row(&r),
            None => Err(lease_mismatch("complete", id, self.current(id).await?)),
        }
    }

    async fn fail(
        &self,
        id: JobId,
        token: i64,
        failure: Failure,
        policy: &RetryPolicy,
    ) -> Result<Outcome> {
        let now = super::now();
        let mut tx = self.begin("fail").await?;
        let row = sqlx::query(
            "SELECT attempts, max_attempts FROM flyjobs_jobs \
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2",
        )
        .bind(id.0)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err("fail"))?;
        let Some(row) = row else {
            drop(tx);
            return Err(lease_mismatch("fail", id, self.current(id).await?));
        };
        let outcome = super::rules::fail_outcome(
            get::<i64>(&row, "attempts")?,
            get::<Option<i64>>(&row, "max_attempts")?,
            policy,
            now,
        );
        let err = serde_json::to_string(&failure)?;
        let q = match outcome {
            Outcome::Retry { at } => sqlx::query(
                "UPDATE flyjobs_jobs SET state = 'scheduled', run_at = ?2, last_error = ?3, \
                 lease_expires_at = NULL WHERE id = ?1",
            )
            .bind(id.0)
            .bind(us(at))
            .bind(err),
            _ => sqlx::query(
                "UPDATE flyjobs_jobs SET state = 'dead', finished_at = ?2, last_error = ?3, \
                 lease_expires_at = NULL WHERE id = ?1",
            )
            .bind(id.0)
            .bind(us(now))
            .bind(err),
        };
        q.execute(&mut *tx).await.map_err(db_err("fail"))?;
        tx.commit().await.map_err(db_err("fail: commit"))?;
        Ok(outcome)
    }

    async fn discard(
        &self,
        id: JobId,
        token: Option<i64>,
        failure: Option<Failure>,
    ) -> Result<Job> {
        let mut tx = self.begin("discard").await?;
        let cur = sqlx::query("SELECT state, lease_token FROM flyjobs_jobs WHERE id = ?1")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err("discard"))?;
        let Some(cur) = cur else {
            return Err(super::rules::discard_not_found(id));
        };
        let state: JobState = get::<String>(&cur, "state")?.parse()?;
        let cur_token: i64 = get(&cur, "lease_token")?;
        let allowed = super::rules::may_discard(state, cur_token, token);
        if !allowed {
            return Err(lease_mismatch("discard", id, Some((state, cur_token))));
        }
        let err = failure.as_ref().map(serde_json::to_string).transpose()?;
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'discarded', finished_at = ?2, \
             last_error = COALESCE(?3, last_error), lease_expires_at = NULL \
             WHERE id = ?1 RETURNING *",
        )
        .bind(id.0)
        .bind(us(super::now()))
        .bind(err)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err("discard"))?;
        tx.commit().await.map_err(db_err("discard: commit"))?;
        job_from_row(&row)
    }

    async fn retry_dead(&self, id: JobId) -> Result<Job> {
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready', attempts = 0, lost_leases = 0, run_at = ?2, \
             finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = ?1 AND state IN ('dead','discarded') RETURNING *",
        )
        .bind(id.0)
        .bind(us(super::now()))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("retry"))?;
        match row {
            Some(r) => {
                self.wake().await;
                job_from_row(&r)
            }
            None => Err(lease_mismatch("retry", id, self.current(id).await?)),
        }
    }

    async fn release(&self, id: JobId, token: i64) -> Result<Job> {
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready', attempts = MAX(attempts - 1, 0), \
             lease_owner = NULL, lease_expires_at = NULL, started_at = NULL \
             WHERE id = ?1 AND state = 'running' AND lease_token = ?2 RETURNING *",
        )
        .bind(id.0)
        .bind(token)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("release"))?;
        match row {
            Some(r) => {
                self.wake().await;
                job_from_row(&r)
            }
            None => Err(lease_mismatch("release", id, self.current(id).await?)),
        }
    }

    async fn reap_expired(&self, now: DateTime<Utc>) -> Result<ReapCounts> {
        let rows = sqlx::query(
            "UPDATE flyjobs_jobs SET \
               lost_leases = lost_leases + 1, \
               state = CASE WHEN lost_leases + 1 >= ?2 OR attempts >= COALESCE(max_attempts, ?3) \
                       THEN 'dead' ELSE 'ready' END, \
               finished_at = CASE WHEN lost_leases + 1 >= ?2 OR attempts >= COALESCE(max_attempts, ?3) \
                       THEN ?1 ELSE NULL END, \
               last_error = json_object('class', 'FlyJobs::LeaseLost', 'message', \
                   ?4 || ': worker ' || COALESCE(lease_owner, '?') || ', attempt ' || attempts \
                   || ', lost lease ' || (lost_leases + 1) || ' of at most ' || ?2, \
                   'backtrace', json('[]')), \
               lease_expires_at = NULL \
             WHERE state = 'running' AND lease_expires_at < ?1 \
             RETURNING state",
        )
        .bind(us(now))
        .bind(i64::from(self.opts.max_lost_leases.max(1)))
        .bind(i64::from(self.opts.default_max_attempts.max(1)))
        .bind(lease_lost_message())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("reap"))?;
        let mut counts = ReapCounts::default();
        for r in &rows {
            if get::<String>(r, "state")? == "dead" {
                counts.dead += 1;
            } else {
                counts.retried += 1;
            }
        }
        if counts.retried > 0 {
            self.wake().await;
        }
        Ok(counts)
    }

    async fn promote_scheduled(&self, now: DateTime<Utc>) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready' WHERE state = 'scheduled' AND run_at <= ?1",
        )
        .bind(us(now))
        .execute(&self.pool)
        .await
        .map_err(db_err("promote"))?
        .rows_affected();
        if n > 0 {
            self.wake().await;
        }
        Ok(n)
    }

    async fn register_worker(&self, w: WorkerInfo) -> Result<()> {
        for q in &w.queues {
            validate_queue(q)?;
        }
        let now = us(super::now());
        sqlx::query(
            "INSERT INTO flyjobs_workers (id, queues, concurrency, image_ref, state, running, \
             started_at, last_heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
             ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, \
             concurrency = excluded.concurrency, image_ref = excluded.image_ref, \
             state = excluded.state, running = excluded.running, \
             started_at = excluded.started_at, last_heartbeat_at = excluded.last_heartbeat_at",
        )
        .bind(&w.id)
        .bind(serde_json::to_string(&w.queues)?)
        .bind(i64::from(w.concurrency))
        .bind(&w.image_ref)
        .bind(w.state.as_str())
        .bind(i64::from(w.running))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("register worker"))?;
        Ok(())
    }

    async fn heartbeat_worker(&self, id: &str, running: u32) -> Result<()> {
        let n = sqlx::query(
            "UPDATE flyjobs_workers SET running = ?2, last_heartbeat_at = ?3, \
             state = CASE WHEN state = 'stopping' THEN state WHEN ?2 > 0 THEN 'live' ELSE 'idle' END \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(i64::from(running))
        .bind(us(super::now()))
        .execute(&self.pool)
        .await
        .map_err(db_err("heartbeat"))?
        .rows_affected();
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("heartbeat: worker {id:?} is not registered"),
            ));
        }
        Ok(())
    }

    async fn set_worker_state(&self, id: &str, state: WorkerState) -> Result<()> {
        let n = sqlx::query("UPDATE flyjobs_workers SET state = ?2 WHERE id = ?1")
            .bind(id)
            .bind(state.as_str())
            .execute(&self.pool)
            .await
            .map_err(db_err("set worker state"))?
            .rows_affected();
        if n == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("worker {id:?} is not registered"),
            ));
        }
        Ok(())
    }

    async fn deregister_worker(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM flyjobs_workers WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err("deregister worker"))?;
        Ok(())
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM flyjobs_workers WHERE last_heartbeat_at < ?1")
                .bind(us(before))
                .execute(&self.pool)
                .await
                .map_err(db_err("prune workers"))?
                .rows_affected(),
        )
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query("SELECT * FROM flyjobs_workers ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("list workers"))?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn stats(&self) -> Result<Vec<QueueStats>> {
        let now = super::now();
        let rows = sqlx::query(
            "SELECT queue, \
               count(*) FILTER (WHERE state IN ('scheduled','ready') AND run_at <= ?1) AS ready, \
               count(*) FILTER (WHERE state IN ('scheduled','ready') AND run_at > ?1) AS scheduled, \
               count(*) FILTER (WHERE state = 'running') AS running, \
               count(*) FILTER (WHERE state = 'dead') AS dead, \
               count(*) FILTER (WHERE state = 'completed') AS completed, \
               count(*) FILTER (WHERE state = 'discarded') AS discarded, \
               min(run_at) FILTER (WHERE state IN ('scheduled','ready') AND run_at <= ?1) AS oldest, \
               min(run_at) FILTER (WHERE state IN ('scheduled','ready') AND run_at > ?1) AS next \
             FROM flyjobs_jobs GROUP BY queue ORDER BY queue",
        )
        .bind(us(now))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("stats"))?;
        rows.iter()
            .map(|r| {
                let oldest = opt_time(r, "oldest")?;
                Ok(QueueStats {
                    queue: get(r, "queue")?,
                    ready: get::<i64>(r, "ready")? as u64,
                    scheduled: get::<i64>(r, "scheduled")? as u64,
                    running: get::<i64>(r, "running")? as u64,
                    dead: get::<i64>(r, "dead")? as u64,
                    completed: get::<i64>(r, "completed")? as u64,
                    discarded: get::<i64>(r, "discarded")? as u64,
                    oldest_ready_age: oldest.map(|o| (now - o).to_std().unwrap_or_default()),
                    next_scheduled_at: opt_time(r, "next")?,
                })
            })
            .collect()
    }

    async fn ready_shapes(&self) -> Result<Vec<ShapeDemand>> {
        // SQLite sorts NULL first in ascending order, as the Postgres query asks explicitly.
        let rows = sqlx::query(
            "SELECT queue, shape, image_ref, count(*) AS ready, min(created_at) AS oldest \
             FROM flyjobs_jobs WHERE state IN ('scheduled','ready') AND run_at <= ?1 \
             GROUP BY queue, shape, image_ref ORDER BY queue, shape, image_ref",
        )
        .bind(us(super::now()))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("ready shapes"))?;
        rows.iter()
            .map(|r| {
                Ok(ShapeDemand {
                    queue: get(r, "queue")?,
                    shape: get(r, "shape")?,
                    image_ref: get(r, "image_ref")?,
                    ready: get::<i64>(r, "ready")?.max(0) as u64,
                    oldest_created_at: from_us(get(r, "oldest")?),
                })
            })
            .collect()
    }

    async fn list_jobs(&self, f: JobFilter) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM flyjobs_jobs WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR queue = ?2) AND (?5 IS NULL OR name = ?5) AND id > ?3 \
             ORDER BY id LIMIT ?4",
        )
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.queue)
        .bind(f.after_id.map_or(0, |i| i.0))
        .bind(page_limit(f.limit))
        .bind(f.name)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("list jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        sqlx::query("SELECT * FROM flyjobs_jobs WHERE id = ?1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("get job"))?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn clear_queue(&self, queue: &str) -> Result<u64> {
        let n = sqlx::query(
            "DELETE FROM flyjobs_jobs WHERE queue = ?1 AND state IN ('ready','scheduled')",
        )
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(db_err("clear queue"))?
        .rows_affected();
        Ok(n)
    }

    async fn prune_finished(&self, now: DateTime<Utc>) -> Result<u64> {
        let completed_before = super::sub(now, self.opts.retain_completed);
        let dead_before = super::sub(now, self.opts.retain_dead);
        // Off the flyjobs_jobs_finished index, a bounded batch per statement.
        Ok(sqlx::query(
            "DELETE FROM flyjobs_jobs WHERE id IN (SELECT id FROM flyjobs_jobs \
             WHERE state IN ('completed','dead','discarded') \
             AND finished_at < (CASE WHEN state = 'completed' THEN ?1 ELSE ?2 END) \
             LIMIT ?3)",
        )
        .bind(us(completed_before))
        .bind(us(dead_before))
        .bind(super::PRUNE_BATCH)
        .execute(&self.pool)
        .await
        .map_err(db_err("prune"))?
        .rows_affected())
    }

    async fn try_acquire_leader(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = super::now();
        let row = sqlx::query(
            "INSERT INTO flyjobs_locks (name, owner, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE flyjobs_locks.owner = excluded.owner OR flyjobs_locks.expires_at < ?4 \
             RETURNING owner",
        )
        .bind(name)
        .bind(owner)
        .bind(us(add(now, ttl)))
        .bind(us(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("leader lock"))?;
        Ok(row.is_some())
    }

    async fn release_leader(&self, name: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM flyjobs_locks WHERE name = ?1 AND owner = ?2")
            .bind(name)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db_err("leader unlock"))?;
        Ok(())
    }

    fn wakes_other_processes(&self) -> bool {
        self.watcher.is_some()
    }

    fn subscribe(&self) -> JobNotifier {
        self.signal.subscribe()
    }

    async fn close(&self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        self.pool.close().await;
    }

    async fn record_boot_failure(&self, failure: super::boot_failures::BootFailure) -> Result<()> {
        super::boot_failures::sqlite_record(&self.pool, failure).await
    }

    async fn boot_failures(&self, limit: usize) -> Result<Vec<super::boot_failures::BootFailure>> {
        super::boot_failures::sqlite_list(&self.pool, limit).await
    }

    async fn clear_boot_failures(&self, queue: Option<&str>) -> Result<u64> {
        super::boot_failures::sqlite_clear(&self.pool, queue).await
    }

    async fn run_now(&self, id: JobId) -> Result<Job> {
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready', run_at = ?2 \
             WHERE id = ?1 AND state IN ('scheduled','ready') RETURNING *",
        )
        .bind(id.0)
        .bind(us(super::now()))
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("run now"))?;
        match row {
            Some(r) => {
                // Other processes' workers too (the wake counter), as retry does.
                self.wake().await;
                job_from_row(&r)
            }
            None => Err(lease_mismatch("run now", id, self.current(id).await?)),
        }
    }

    async fn finished_since(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM flyjobs_jobs WHERE state IN ('completed','dead','discarded') \
             AND finished_at >= ?1 ORDER BY finished_at DESC LIMIT ?2",
        )
        .bind(us(since))
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("finished jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    async fn record_usage(
        &self,
        cursor: &crate::cost::UsageCursor,
        read_through_ms: Option<i64>,
        hours: &[crate::cost::HourUsage],
    ) -> Result<bool> {
        super::usage::sqlite::record(&self.pool, cursor, read_through_ms, hours).await
    }

    async fn usage_cursors(&self) -> Result<Vec<crate::cost::UsageCursor>> {
        super::usage::sqlite::cursors(&self.pool).await
    }

    async fn usage_hours(&self, since: DateTime<Utc>) -> Result<Vec<crate::cost::HourUsage>> {
        super::usage::sqlite::hours(&self.pool, since).await
    }

    async fn requeue_on_shape(
        &self,
        id: JobId,
        token: i64,
        shape: &str,
        failure: &Failure,
    ) -> Result<bool> {
        let queue = super::placement::sqlite_requeue_on_shape(
            &self.pool,
            id,
            token,
            shape,
            failure,
            super::now(),
        )
        .await?;
        if queue.is_none() {
            return Ok(false);
        }
        // Runnable again: other processes' workers hear it through the wake counter.
        self.wake().await;
        Ok(true)
    }
}
