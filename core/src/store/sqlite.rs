//! The SQLite store (embedded default: one host, e.g. a laptop with the emulator): what is
//! SQLite-only under [`SqlStore`].
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
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::sql::{Arg, Backend, Cols, SqlStore, Stmt, job_from_row};
use super::{ClaimRequest, JobNotifier, Signal, StoreOptions, db_err, page_limit};
use crate::config::redact_url;
use crate::error::{Error, Result};
use crate::job::{Job, NewJob};

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
    (
        5,
        "attempts",
        include_str!("migrations/sqlite/0005_attempts.sql"),
    ),
];

/// Bumps the counter other processes' watchers read (migration 0004). An enqueue needs none:
/// the watchers see the newest job id move.
const BUMP_WAKE: &str = "UPDATE flyjobs_wake SET n = n + 1 WHERE id = 1";

/// Enqueue many jobs without unique keys in one statement: `?1` is a JSON array of rows
/// `[queue, name, payload text, state, priority, run_at µs, max_attempts, image_ref, shape]`,
/// inserted in array order; `?2` is the enqueue time.
const ENQUEUE_BATCH: &str = "INSERT INTO flyjobs_jobs (queue, name, payload, state, priority, \
     run_at, max_attempts, image_ref, created_at, shape) \
     SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), \
       json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), \
       json_extract(value, '$[6]'), json_extract(value, '$[7]'), ?2, json_extract(value, '$[8]') \
     FROM json_each(?1) ORDER BY key RETURNING *";

/// How often the watcher looks at `PRAGMA data_version` for writes by other connections.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// How often the watcher copies the WAL back into the database file (a `PASSIVE` checkpoint,
/// which never blocks readers or writers). The pool's connections do not checkpoint
/// themselves (`wal_autocheckpoint=0`): SQLite's automatic checkpoint runs inside the commit
/// that crosses 1,000 pages, with its fsyncs, and cost an enqueue about 50 µs on average.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The WAL is cut back to this size after a checkpoint (a burst may have grown it).
const WAL_SIZE_LIMIT: &str = "67108864";

/// The SQLite implementation of [`Store`](super::Store).
pub type SqliteStore = SqlStore<SqliteBackend>;

/// What is SQLite-only: the pool and the `data_version` watcher.
#[derive(Debug)]
pub struct SqliteBackend {
    pool: SqlitePool,
    signal: Signal,
    /// Turns commits by other connections (other processes) into wake-ups; `None` for an
    /// in-memory database, which no other connection can see.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

/// Wake subscribers when another connection made jobs runnable: `PRAGMA data_version` on a
/// connection of our own changes when any other connection commits (a read of the WAL index
/// in shared memory, no disk I/O); then the newest job id (an enqueue) and the wake counter
/// (`flyjobs_wake`, bumped by release, retry, reap and promote) say whether that commit
/// brought work, so completions and heartbeats wake nobody. Looked at every [`WATCH_EVERY`]
/// while anyone is subscribed, so a worker in one process picks up a job enqueued by another
/// in milliseconds. The same connection checkpoints the WAL every [`CHECKPOINT_EVERY`].
async fn watch_data_version(co: SqliteConnectOptions, signal: Signal) {
    use sqlx::Connection;
    let mut conn: Option<sqlx::SqliteConnection> = None;
    let mut last: Option<i64> = None;
    let mut last_work: Option<(i64, i64)> = None;
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checkpoint = last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
        if !signal.has_subscribers() && !checkpoint {
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
        if checkpoint {
            last_checkpoint = tokio::time::Instant::now();
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *c)
                .await
            {
                tracing::debug!("flyjobs sqlite: checkpoint failed: {e}");
            }
            if !signal.has_subscribers() {
                continue;
            }
        }
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut *c)
            .await
        {
            Ok(v) if last == Some(v) => {}
            Ok(v) => {
                last = Some(v);
                // The file changed: wake only if the change made jobs runnable. Job ids are
                // AUTOINCREMENT, never reused: a new job always moves the newest id.
                match sqlx::query_as::<_, (i64, i64)>(
                    "SELECT (SELECT n FROM flyjobs_wake WHERE id = 1), \
                     (SELECT coalesce(max(id), 0) FROM flyjobs_jobs)",
                )
                .fetch_one(&mut *c)
                .await
                {
                    Ok(work) => {
                        if last_work.is_some_and(|l| l != work) {
                            signal.wake();
                        }
                        last_work = Some(work);
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

impl SqlStore<SqliteBackend> {
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
        // The watcher checkpoints (see CHECKPOINT_EVERY); a store without one (in memory) has
        // no WAL.
        let co = if memory {
            co
        } else {
            co.pragma("wal_autocheckpoint", "0")
                .pragma("journal_size_limit", WAL_SIZE_LIMIT)
        };
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
        Ok(SqlStore {
            db: SqliteBackend {
                pool,
                signal,
                watcher,
            },
            opts,
        })
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.db.pool
    }
}

impl SqliteBackend {
    async fn begin(&self, what: &str) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err(what))
    }

    /// Insert one job: a statement inside `conn`, which is a `BEGIN IMMEDIATE` transaction
    /// when the job has a unique key (see below) and may be the bare pool otherwise.
    async fn insert<'c, E>(
        conn: E,
        job: &NewJob,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>>
    where
        E: sqlx::Executor<'c, Database = Sqlite>,
    {
        let run_at = job.run_at.map_or(now, super::trunc);
        let state = super::initial_state(job, now);
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
        .fetch_optional(conn)
        .await
        .map_err(db_err("enqueue"))?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Insert one job, or answer the pending holder of its unique key. Inside `BEGIN
    /// IMMEDIATE` nobody else writes, so this needs no retry loop.
    async fn insert_in(
        tx: &mut Transaction<'static, Sqlite>,
        job: &NewJob,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<Job> {
        if let Some(stored) = Self::insert(&mut **tx, job, payload, now).await? {
            return Ok(stored);
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

/// The statement with `args` bound: times as INTEGER microseconds, JSON as TEXT.
fn bind(sql: &'static str, args: Vec<Arg>) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Float(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Time(v) => q.bind(v.map(us)),
            Arg::Json(v) => q.bind(v.map(|v| v.to_string())),
            Arg::IntList(v) => q.bind(serde_json::Value::from(v).to_string()),
            Arg::TextList(v) => q.bind(serde_json::Value::from(v).to_string()),
        };
    }
    q
}

impl Cols for SqliteRow {
    fn int(&self, col: &str) -> sqlx::Result<Option<i64>> {
        self.try_get(col)
    }
    fn float(&self, col: &str) -> sqlx::Result<Option<f64>> {
        self.try_get(col)
    }
    fn flag(&self, col: &str) -> sqlx::Result<Option<bool>> {
        self.try_get(col)
    }
    fn text(&self, col: &str) -> sqlx::Result<Option<String>> {
        self.try_get(col)
    }
    fn time(&self, col: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
        Ok(self.try_get::<Option<i64>, _>(col)?.map(from_us))
    }
    fn json(&self, col: &str) -> sqlx::Result<Option<serde_json::Value>> {
        self.try_get::<Option<String>, _>(col)?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| sqlx::Error::ColumnDecode {
                index: col.to_owned(),
                source: Box::new(e),
            })
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    type Row = SqliteRow;

    const REAP: &'static str = "UPDATE flyjobs_jobs SET \
           lost_leases = lost_leases + 1, \
           state = CASE WHEN lost_leases + 1 >= $2 OR attempts >= COALESCE(max_attempts, $3) \
                   THEN 'dead' ELSE 'ready' END, \
           finished_at = CASE WHEN lost_leases + 1 >= $2 OR attempts >= COALESCE(max_attempts, $3) \
                   THEN $1 ELSE NULL END, \
           last_error = json_object('class', 'FlyJobs::LeaseLost', 'message', \
               $4 || ': worker ' || COALESCE(lease_owner, '?') || ', attempt ' || attempts \
               || ', lost lease ' || (lost_leases + 1) || ' of at most ' || $2, \
               'backtrace', json('[]')), \
           lease_expires_at = NULL \
         WHERE state = 'running' AND lease_expires_at < $1 \
         RETURNING state, queue";

    /// The lists arrive as JSON arrays, joined on their index (`key`); a result is a JSON
    /// text, which `json_each` yields as plain TEXT (what the column stores).
    const COMPLETE_MANY: &'static str = "UPDATE flyjobs_jobs SET state = 'completed', \
         finished_at = $4, lease_expires_at = NULL, result = d.jresult \
         FROM (SELECT i.value AS jid, t.value AS jtoken, r.value AS jresult \
               FROM json_each($1) AS i JOIN json_each($2) AS t ON t.key = i.key \
               JOIN json_each($3) AS r ON r.key = i.key) AS d \
         WHERE flyjobs_jobs.id = d.jid AND flyjobs_jobs.state = 'running' \
           AND flyjobs_jobs.lease_token = d.jtoken \
         RETURNING id";

    const BOOT_FAILURES_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS flyjobs_boot_failures (\
        id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, release TEXT NOT NULL, \
        machine_id TEXT NOT NULL, exit_code INTEGER, reason TEXT NOT NULL, log_tail TEXT NOT NULL, \
        at_us INTEGER NOT NULL, cleared INTEGER NOT NULL DEFAULT 0)";

    /// `BEGIN IMMEDIATE` already holds the write lock.
    const DDL_LOCK: Option<&'static str> = None;

    async fn fetch_all(&self, sql: &'static str, args: Vec<Arg>) -> sqlx::Result<Vec<SqliteRow>> {
        bind(sql, args).fetch_all(&self.pool).await
    }

    async fn fetch_optional(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> sqlx::Result<Option<SqliteRow>> {
        bind(sql, args).fetch_optional(&self.pool).await
    }

    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> sqlx::Result<u64> {
        Ok(bind(sql, args).execute(&self.pool).await?.rows_affected())
    }

    async fn transaction(&self, stmts: Vec<Stmt>) -> sqlx::Result<bool> {
        // The write lock up front: a deferred transaction that reads first and writes later
        // fails with SQLITE_BUSY_SNAPSHOT (no busy wait) when another connection wrote in
        // between.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for s in stmts {
            let n = bind(s.sql, s.args).execute(&mut *tx).await?.rows_affected();
            if s.must_change && n == 0 {
                return Ok(false); // dropping `tx` rolls back
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn claim(
        &self,
        req: &ClaimRequest,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<Vec<Job>> {
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
        rows.iter().map(job_from_row).collect()
    }

    async fn enqueue_many(
        &self,
        jobs: &[NewJob],
        payloads: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>> {
        // One job without a unique key (what `perform_later` sends): one statement in
        // autocommit.
        if let ([job], [payload]) = (jobs, payloads.as_slice())
            && job.unique_key.is_none()
        {
            let stored = Self::insert(&self.pool, job, payload, now)
                .await?
                .ok_or_else(|| Error::store("enqueue: the insert returned no row"))?;
            self.signal.wake();
            return Ok(vec![stored]);
        }
        // A batch without unique keys (`perform_all_later`, `enqueue_many`): one INSERT … SELECT
        // over the rows as a JSON array, atomic as any statement is.
        if jobs.len() > 1 && jobs.iter().all(|j| j.unique_key.is_none()) {
            let rows: Vec<serde_json::Value> = jobs
                .iter()
                .zip(&payloads)
                .map(|(job, payload)| {
                    serde_json::json!([
                        job.queue,
                        job.name,
                        payload,
                        super::initial_state(job, now).as_str(),
                        job.priority,
                        us(job.run_at.map_or(now, super::trunc)),
                        job.max_attempts,
                        job.image_ref,
                        job.shape,
                    ])
                })
                .collect();
            let mut stored = sqlx::query(ENQUEUE_BATCH)
                .bind(serde_json::Value::from(rows).to_string())
                .bind(us(now))
                .fetch_all(&self.pool)
                .await
                .map_err(db_err("enqueue"))?
                .iter()
                .map(job_from_row)
                .collect::<Result<Vec<Job>>>()?;
            // RETURNING gives no order; ids are given in the SELECT's order.
            stored.sort_by_key(|j| j.id.0);
            self.signal.wake();
            return Ok(stored);
        }
        let mut tx = self.begin("enqueue").await?;
        let mut out = Vec::with_capacity(jobs.len());
        for (job, payload) in jobs.iter().zip(&payloads) {
            out.push(Self::insert_in(&mut tx, job, payload, now).await?);
        }
        tx.commit().await.map_err(db_err("enqueue: commit"))?;
        self.signal.wake();
        Ok(out)
    }

    /// This process's subscribers, and other processes' through the wake counter. Best
    /// effort: the change it announces is already committed.
    async fn wake(&self, _queue: &str) -> Result<()> {
        if let Err(e) = sqlx::query(BUMP_WAKE).execute(&self.pool).await {
            tracing::debug!("flyjobs sqlite: wake counter not bumped: {e}");
        }
        self.signal.wake();
        Ok(())
    }

    fn subscribe(&self) -> JobNotifier {
        self.signal.subscribe()
    }

    fn wakes_other_processes(&self) -> bool {
        self.watcher.is_some()
    }

    async fn close(&self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        self.pool.close().await;
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
