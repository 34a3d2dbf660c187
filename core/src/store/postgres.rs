//! The PostgreSQL store (production: many web and worker machines share one database): what
//! is Postgres-only under [`SqlStore`].
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers skip each other's rows instead of
//! waiting. Enqueue, release, reap and retry send `NOTIFY flyjobs_jobs` (delivered on commit); a
//! background listener task turns notifications into wake-ups for [`Store::subscribe`] and
//! reconnects when the server restarts. The pool does not ping connections before handing them
//! out (a round trip per call): a query on a connection broken by a restart fails with a
//! retryable error, and callers (worker, scaler, bindings) retry.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Column, Postgres, Row, Transaction, TypeInfo};

use super::sql::{Arg, Backend, Cols, SqlStore, Stmt, job_from_row};
use super::{ClaimRequest, JobNotifier, Signal, StoreOptions, add, db_err, page_limit};
use crate::config::redact_url;
use crate::error::{Error, Result};
use crate::job::{Job, NewJob};

/// The NOTIFY channel for "jobs may be runnable" (payload: the queue name). A store in a
/// non-default schema uses `flyjobs_jobs_<schema>`, so stores sharing a database stay apart.
pub const CHANNEL: &str = "flyjobs_jobs";

/// Numbered migrations, applied in order once per database schema.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/postgres/0001_init.sql")),
    (
        2,
        "result",
        include_str!("migrations/postgres/0002_result.sql"),
    ),
    (
        3,
        "shape",
        include_str!("migrations/postgres/0003_shape.sql"),
    ),
    (4, "wake", include_str!("migrations/postgres/0004_wake.sql")),
    (
        5,
        "attempts",
        include_str!("migrations/postgres/0005_attempts.sql"),
    ),
];

/// Key of the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x666c_796a_6f62; // "flyjob"

const UNIQUE_CONFLICT: &str = "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
     AND state IN ('scheduled','ready','running') DO NOTHING";

/// Enqueue, in one statement and one round trip, for any number of jobs (arrays, one element
/// per job): ids are drawn up front so each input row knows its own; rows whose unique key a
/// pending job holds are skipped by the insert and answered with that job (an earlier row of
/// the same batch, or one already stored); `pg_notify` runs inside the statement (delivered
/// on commit) once per queue that got a job.
const ENQUEUE_SQL: &str = "WITH input AS MATERIALIZED (\
       SELECT t.*, nextval(pg_get_serial_sequence('flyjobs_jobs', 'id')) AS id \
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], \
                   $6::timestamptz[], $7::int4[], $8::text[], $9::text[], $10::text[]) \
            WITH ORDINALITY AS t(queue, name, payload, state, priority, run_at, max_attempts, \
                                 image_ref, unique_key, shape, ord)), \
     ins AS (\
       INSERT INTO flyjobs_jobs (id, queue, name, payload, state, priority, run_at, \
         max_attempts, image_ref, unique_key, created_at, shape) \
       SELECT id, queue, name, payload::jsonb, state, priority, run_at, max_attempts, \
         image_ref, unique_key, $11, shape FROM input ORDER BY ord \
       ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
         AND state IN ('scheduled','ready','running') DO NOTHING \
       RETURNING *), \
     notified AS (SELECT count(pg_notify($12, q.queue)) AS n \
       FROM (SELECT DISTINCT queue FROM ins) AS q) \
     SELECT i.ord, j.* FROM input i CROSS JOIN notified \
     CROSS JOIN LATERAL (\
       (SELECT * FROM ins WHERE ins.id = i.id) \
       UNION ALL (SELECT * FROM ins WHERE i.unique_key IS NOT NULL \
                  AND ins.unique_key = i.unique_key) \
       UNION ALL (SELECT * FROM flyjobs_jobs f WHERE i.unique_key IS NOT NULL \
                  AND f.unique_key = i.unique_key AND f.state IN ('scheduled','ready','running')) \
       LIMIT 1) j \
     ORDER BY i.ord";

/// Enqueue one job without a unique key: one INSERT, the NOTIFY in the same statement.
const ENQUEUE_ONE_SQL: &str = "WITH ins AS (\
       INSERT INTO flyjobs_jobs (queue, name, payload, state, priority, run_at, max_attempts, \
         image_ref, created_at, shape) \
       VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10) RETURNING *) \
     SELECT ins.*, pg_notify($11, ins.queue) IS NULL AS notified FROM ins";

/// The claim, in one statement: for each queue, the first `limit` runnable jobs in claim order,
/// read off the partial index `flyjobs_jobs_claim (queue, priority, run_at, id)` (a LATERAL
/// subquery per queue, so each is an index scan that stops after `limit` rows whatever the
/// backlog; `queue = ANY($1)` in one scan made Postgres sort the whole backlog), locked with
/// SKIP LOCKED so concurrent claimers pass each other; then the first `limit` of those across
/// queues are leased. The shape and image filters are residual predicates: most jobs have
/// shape '' and the filters only skip the few that do not match.
macro_rules! claim_sql {
    () => {
        "WITH candidates AS (\
       SELECT c.id, c.priority, c.run_at FROM unnest($1::text[]) AS q(name) \
       CROSS JOIN LATERAL (\
         SELECT j.id, j.priority, j.run_at FROM flyjobs_jobs j \
         WHERE j.queue = q.name AND j.state IN ('scheduled','ready') AND j.run_at <= $2 \
         AND ($6::text IS NULL OR j.shape = $6) \
         AND ($7::text IS NULL OR j.image_ref = $7 OR ($8::timestamptz IS NOT NULL \
              AND (j.image_ref IS NULL OR j.created_at < $8))) \
         ORDER BY j.priority, j.run_at, j.id LIMIT $3 FOR UPDATE SKIP LOCKED) c), \
     picked AS (SELECT id FROM candidates ORDER BY priority, run_at, id LIMIT $3) \
     UPDATE flyjobs_jobs AS j SET state = 'running', attempts = j.attempts + 1, \
       lease_owner = $4, lease_expires_at = $5, lease_token = j.lease_token + 1, \
       started_at = $2 \
     FROM picked WHERE j.id = picked.id RETURNING j.*"
    };
}

fn claim_query<'a>(
    sql: &'static str,
    req: &'a ClaimRequest,
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
) -> sqlx::query::Query<'a, Postgres, sqlx::postgres::PgArguments> {
    let mut queues = req.queues.clone();
    queues.sort_unstable();
    queues.dedup();
    sqlx::query(sql)
        .bind(queues)
        .bind(now)
        .bind(page_limit(req.limit))
        .bind(&req.owner)
        .bind(expires)
        .bind(req.shape.as_deref())
        .bind(req.image.as_ref().map(|f| f.image_ref.as_str()))
        .bind(req.image.as_ref().and_then(|f| f.or_enqueued_before))
}

/// The PostgreSQL implementation of [`Store`](super::Store).
pub type PgStore = SqlStore<PgBackend>;

/// What is Postgres-only: the pool, the NOTIFY channel and its listener task.
#[derive(Debug)]
pub struct PgBackend {
    pool: PgPool,
    signal: Signal,
    channel: String,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // The listener task holds a pool handle; stop it so the pool can close.
        self.listener.abort();
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

impl SqlStore<PgBackend> {
    /// Connect, run migrations and start the NOTIFY listener.
    pub async fn open(url: &str, opts: StoreOptions) -> Result<Self> {
        let redacted = redact_url(url);
        let mut co = PgConnectOptions::from_str(url)
            .map_err(|e| Error::config(format!("invalid PostgreSQL URL {redacted:?}: {e}")))?;
        if let Some(schema) = &opts.pg_schema {
            if !valid_schema(schema) {
                return Err(Error::config(format!(
                    "invalid schema name {schema:?}: use lowercase letters, digits and _"
                )));
            }
            co = co.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.unwrap_or(10).max(2))
            .acquire_timeout(opts.connect_timeout)
            // No ping per acquire (a round trip on every call): a connection broken by a
            // server restart fails its query with a retryable error, and callers retry.
            .test_before_acquire(false)
            .connect_with(co)
            .await
            .map_err(|e| {
                Error::store(format!("cannot connect to PostgreSQL at {redacted}: {e}"))
                    .with_source(e)
                    .with_retryable(true)
            })?;
        migrate(&pool, opts.pg_schema.as_deref()).await?;
        let signal = Signal::new();
        let channel = match &opts.pg_schema {
            Some(schema) => format!("{CHANNEL}_{schema}"),
            None => CHANNEL.to_string(),
        };
        let listener = tokio::spawn(listen(pool.clone(), signal.clone(), channel.clone()));
        Ok(SqlStore {
            db: PgBackend {
                pool,
                signal,
                channel,
                listener,
            },
            opts,
        })
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// The plan Postgres runs for `req`'s claim (`EXPLAIN (ANALYZE, FORMAT JSON)`, executed in
    /// a transaction that is rolled back, so nothing is claimed). For tests and diagnosis.
    pub async fn explain_claim(&self, req: &ClaimRequest) -> Result<serde_json::Value> {
        let now = super::now();
        let expires = add(now, req.lease);
        let mut tx = self.db.begin("explain claim").await?;
        let sql = concat!("EXPLAIN (ANALYZE, FORMAT JSON) ", claim_sql!());
        let row = claim_query(sql, req, now, expires)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err("explain claim"))?;
        let plan: sqlx::types::Json<serde_json::Value> =
            row.try_get(0).map_err(db_err("explain claim"))?;
        tx.rollback()
            .await
            .map_err(db_err("explain claim: rollback"))?;
        Ok(plan.0)
    }
}

impl PgBackend {
    async fn insert(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        job: &NewJob,
        payload: &str,
        now: DateTime<Utc>,
    ) -> Result<Job> {
        let run_at = job.run_at.map_or(now, super::trunc);
        let state = super::initial_state(job, now);
        // A unique key held by a pending job returns that job; if it finishes between our
        // insert and our look-up, insert again.
        for _ in 0..5 {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO flyjobs_jobs (queue, name, payload, state, priority, run_at, \
                 max_attempts, image_ref, unique_key, created_at, shape) \
                 VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10, $11) {UNIQUE_CONFLICT} RETURNING *"
            )))
            .bind(&job.queue)
            .bind(&job.name)
            .bind(payload)
            .bind(state.as_str())
            .bind(job.priority)
            .bind(run_at)
            .bind(job.max_attempts.map(super::max_attempts_i32))
            .bind(&job.image_ref)
            .bind(&job.unique_key)
            .bind(now)
            .bind(&job.shape)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err("enqueue"))?;
            if let Some(row) = row {
                return job_from_row(&row);
            }
            let existing = sqlx::query(
                "SELECT * FROM flyjobs_jobs WHERE unique_key = $1 \
                 AND state IN ('scheduled','ready','running')",
            )
            .bind(&job.unique_key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_err("enqueue"))?;
            if let Some(row) = existing {
                return job_from_row(&row);
            }
        }
        Err(Error::store(format!(
            "enqueue: unique key {:?} kept changing hands; try again",
            job.unique_key
        ))
        .with_retryable(true))
    }

    async fn begin(&self, what: &str) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(db_err(what))
    }

    async fn notify(&self, tx: &mut Transaction<'static, Postgres>, queue: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(queue)
            .execute(&mut **tx)
            .await
            .map_err(db_err("notify"))?;
        Ok(())
    }

    async fn notify_pool(&self, queue: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(queue)
            .execute(&self.pool)
            .await
            .map_err(db_err("notify"))?;
        self.signal.wake();
        Ok(())
    }
}

/// The statement with `args` bound: times as `TIMESTAMPTZ`, JSON as `JSONB`, integers as
/// `INT8` (Postgres casts them to the `INTEGER` columns).
fn bind(sql: &'static str, args: Vec<Arg>) -> sqlx::query::Query<'static, Postgres, PgArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Arg::Int(v) => q.bind(v),
            Arg::Float(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
            Arg::Json(v) => q.bind(v.map(sqlx::types::Json)),
            Arg::IntList(v) => q.bind(v),
            Arg::TextList(v) => q.bind(v),
        };
    }
    q
}

impl Cols for PgRow {
    fn int(&self, col: &str) -> sqlx::Result<Option<i64>> {
        // The schema mixes INTEGER and BIGINT columns; counts are BIGINT.
        match self.try_column(col)?.type_info().name() {
            "INT4" => Ok(self.try_get::<Option<i32>, _>(col)?.map(i64::from)),
            "INT2" => Ok(self.try_get::<Option<i16>, _>(col)?.map(i64::from)),
            _ => self.try_get(col),
        }
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
        self.try_get(col)
    }
    fn json(&self, col: &str) -> sqlx::Result<Option<serde_json::Value>> {
        Ok(self
            .try_get::<Option<sqlx::types::Json<serde_json::Value>>, _>(col)?
            .map(|j| j.0))
    }
}

#[async_trait]
impl Backend for PgBackend {
    type Row = PgRow;

    const REAP: &'static str = "UPDATE flyjobs_jobs SET \
           lost_leases = lost_leases + 1, \
           state = CASE WHEN lost_leases + 1 >= $2 OR attempts >= COALESCE(max_attempts, $3) \
                   THEN 'dead' ELSE 'ready' END, \
           finished_at = CASE WHEN lost_leases + 1 >= $2 OR attempts >= COALESCE(max_attempts, $3) \
                   THEN $1 ELSE NULL END, \
           last_error = jsonb_build_object('class', 'FlyJobs::LeaseLost', 'message', \
               $4 || ': worker ' || COALESCE(lease_owner, '?') || ', attempt ' || attempts::text \
               || ', lost lease ' || (lost_leases + 1)::text || ' of at most ' || $2::text, \
               'backtrace', '[]'::jsonb), \
           lease_expires_at = NULL \
         WHERE state = 'running' AND lease_expires_at < $1 \
         RETURNING state, queue";

    const COMPLETE_MANY: &'static str = "UPDATE flyjobs_jobs AS j SET state = 'completed', \
         finished_at = $4, lease_expires_at = NULL, result = d.jresult::jsonb \
         FROM unnest($1::int8[], $2::int8[], $3::text[]) AS d(jid, jtoken, jresult) \
         WHERE j.id = d.jid AND j.state = 'running' AND j.lease_token = d.jtoken \
         RETURNING j.id";

    const BOOT_FAILURES_TABLE: &'static str = "CREATE TABLE IF NOT EXISTS flyjobs_boot_failures (\
        id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, release TEXT NOT NULL, \
        machine_id TEXT NOT NULL, exit_code INTEGER, reason TEXT NOT NULL, log_tail TEXT NOT NULL, \
        at_us BIGINT NOT NULL, cleared BOOLEAN NOT NULL DEFAULT FALSE)";

    /// Concurrent first writers must not race on CREATE TABLE (pg_type unique violations).
    const DDL_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(7403316240586511)");

    async fn fetch_all(&self, sql: &'static str, args: Vec<Arg>) -> sqlx::Result<Vec<PgRow>> {
        bind(sql, args).fetch_all(&self.pool).await
    }

    async fn fetch_optional(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> sqlx::Result<Option<PgRow>> {
        bind(sql, args).fetch_optional(&self.pool).await
    }

    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> sqlx::Result<u64> {
        Ok(bind(sql, args).execute(&self.pool).await?.rows_affected())
    }

    async fn transaction(&self, stmts: Vec<Stmt>) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
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
        let rows = claim_query(claim_sql!(), req, now, expires)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claim"))?;
        rows.iter().map(job_from_row).collect()
    }

    async fn enqueue_many(
        &self,
        jobs: &[NewJob],
        payloads: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>> {
        if let [job] = jobs
            && job.unique_key.is_none()
        {
            // The common case, one job without a unique key: a plain INSERT (the batch form's
            // UNNEST and unique-key answers cost more than they do here).
            let row = sqlx::query(ENQUEUE_ONE_SQL)
                .bind(&job.queue)
                .bind(&job.name)
                .bind(&payloads[0])
                .bind(super::initial_state(job, now).as_str())
                .bind(job.priority)
                .bind(job.run_at.map_or(now, super::trunc))
                .bind(job.max_attempts.map(super::max_attempts_i32))
                .bind(job.image_ref.as_deref())
                .bind(now)
                .bind(&job.shape)
                .bind(&self.channel)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err("enqueue"))?;
            self.signal.wake();
            return Ok(vec![job_from_row(&row)?]);
        }
        let rows = sqlx::query(ENQUEUE_SQL)
            .bind(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>())
            .bind(&payloads)
            .bind(
                jobs.iter()
                    .map(|j| super::initial_state(j, now).as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
            .bind(
                jobs.iter()
                    .map(|j| j.run_at.map_or(now, super::trunc))
                    .collect::<Vec<_>>(),
            )
            .bind(
                jobs.iter()
                    .map(|j| j.max_attempts.map(super::max_attempts_i32))
                    .collect::<Vec<_>>(),
            )
            .bind(
                jobs.iter()
                    .map(|j| j.image_ref.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                jobs.iter()
                    .map(|j| j.unique_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(jobs.iter().map(|j| j.shape.as_str()).collect::<Vec<_>>())
            .bind(now)
            .bind(&self.channel)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("enqueue"))?;
        let mut out: Vec<Option<Job>> = vec![None; jobs.len()];
        for r in &rows {
            let ord = r.int("ord").map_err(db_err("enqueue"))?.unwrap_or(0);
            if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| out.get_mut(i)) {
                *slot = Some(job_from_row(r)?);
            }
        }
        // A job whose unique key a concurrent enqueue took (committed after this statement's
        // snapshot, so the holder was invisible to it): look it up on its own.
        for (i, slot) in out.iter_mut().enumerate() {
            if slot.is_none() {
                let mut tx = self.begin("enqueue").await?;
                let job = self.insert(&mut tx, &jobs[i], &payloads[i], now).await?;
                self.notify(&mut tx, &job.queue).await?;
                tx.commit().await.map_err(db_err("enqueue: commit"))?;
                *slot = Some(job);
            }
        }
        self.signal.wake();
        Ok(out.into_iter().flatten().collect())
    }

    async fn wake(&self, queue: &str) -> Result<()> {
        self.notify_pool(queue).await
    }

    fn subscribe(&self) -> JobNotifier {
        self.signal.subscribe()
    }

    fn wakes_other_processes(&self) -> bool {
        true
    }

    async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }
}

/// Apply pending migrations under an advisory lock (several processes may open at once).
async fn migrate(pool: &PgPool, schema: Option<&str>) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db_err("migrate"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db_err("migrate: lock"))?;
    if let Some(schema) = schema {
        // The name was validated by `valid_schema` (lowercase, digits, _), so quoting is safe.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&mut *tx)
        .await
        .map_err(db_err("migrate: create schema"))?;
    }
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flyjobs_schema_migrations (\
         version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
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
        sqlx::query("INSERT INTO flyjobs_schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err("migrate: record version"))?;
    }
    tx.commit().await.map_err(db_err("migrate: commit"))?;
    Ok(())
}

/// Turn NOTIFYs into wake-ups. Runs until the store is dropped (the task is aborted) or the pool
/// closes. A lost connection is re-established; each (re)connect also wakes subscribers, since
/// notifications sent while disconnected are gone.
async fn listen(pool: PgPool, signal: Signal, channel: String) {
    loop {
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("flyjobs listener: connect failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::debug!("flyjobs listener: LISTEN failed: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        signal.wake();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => signal.wake(),
                // Connection lost: the next try_recv reconnects and re-LISTENs.
                Ok(None) => {
                    tracing::warn!("flyjobs listener: connection lost; reconnecting");
                    signal.wake();
                }
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!("flyjobs listener: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}
