//! The PostgreSQL store (production: many web and worker machines share one database).
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
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{
    ClaimRequest, JobFilter, JobNotifier, Lease, QueueStats, ReapCounts, ShapeDemand, Signal,
    Store, StoreOptions, WorkerInfo, WorkerState, add, db_err, lease_lost_message, lease_mismatch,
    page_limit, parse_worker_state, validate_new,
};
use crate::config::redact_url;
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Failure, Job, JobId, JobState, NewJob, validate_queue};
use crate::retry::{Outcome, RetryPolicy};

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

/// The PostgreSQL implementation of [`Store`].
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    opts: StoreOptions,
    signal: Signal,
    channel: String,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
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

impl PgStore {
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
        Ok(PgStore {
            pool,
            opts,
            signal,
            channel,
            listener,
        })
    }

    /// The underlying pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The plan Postgres runs for `req`'s claim (`EXPLAIN (ANALYZE, FORMAT JSON)`, executed in
    /// a transaction that is rolled back, so nothing is claimed). For tests and diagnosis.
    pub async fn explain_claim(&self, req: &ClaimRequest) -> Result<serde_json::Value> {
        let now = super::now();
        let expires = add(now, req.lease);
        let mut tx = self.begin("explain claim").await?;
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

    async fn insert(
        &self,
        tx: &mut Transaction<'static, Postgres>,
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

    async fn current(&self, id: JobId) -> Result<Option<(JobState, i64)>> {
        let row = sqlx::query("SELECT state, lease_token FROM flyjobs_jobs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("look up job"))?;
        row.map(|r| -> Result<_> {
            let st: String = r.try_get("state").map_err(db_err("decode job"))?;
            Ok((
                st.parse()?,
                r.try_get("lease_token").map_err(db_err("decode job"))?,
            ))
        })
        .transpose()
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

fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> Result<T> {
    row.try_get(col).map_err(db_err("decode row"))
}

fn job_from_row(row: &PgRow) -> Result<Job> {
    let state: String = get(row, "state")?;
    let last_error: Option<sqlx::types::Json<Failure>> = get(row, "last_error")?;
    Ok(Job {
        id: JobId(get(row, "id")?),
        queue: get(row, "queue")?,
        name: get(row, "name")?,
        payload: get(row, "payload")?,
        state: state.parse()?,
        priority: get(row, "priority")?,
        run_at: get(row, "run_at")?,
        attempts: get::<i32>(row, "attempts")?.max(0) as u32,
        max_attempts: get::<Option<i32>>(row, "max_attempts")?.map(|m| m.max(0) as u32),
        lost_leases: get::<i32>(row, "lost_leases")?.max(0) as u32,
        last_error: last_error.map(|j| j.0),
        result: get(row, "result")?,
        image_ref: get(row, "image_ref")?,
        unique_key: get(row, "unique_key")?,
        shape: get(row, "shape")?,
        created_at: get(row, "created_at")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        lease_owner: get(row, "lease_owner")?,
        lease_expires_at: get(row, "lease_expires_at")?,
        lease_token: get(row, "lease_token")?,
    })
}

fn worker_from_row(row: &PgRow) -> Result<WorkerInfo> {
    let queues: String = get(row, "queues")?;
    let state: String = get(row, "state")?;
    Ok(WorkerInfo {
        id: get(row, "id")?,
        queues: serde_json::from_str(&queues)?,
        concurrency: get::<i32>(row, "concurrency")?.max(0) as u32,
        image_ref: get(row, "image_ref")?,
        state: parse_worker_state(&state)?,
        running: get::<i32>(row, "running")?.max(0) as u32,
        started_at: get(row, "started_at")?,
        last_heartbeat_at: get(row, "last_heartbeat_at")?,
    })
}

fn failure_json(f: &Failure) -> Result<String> {
    Ok(serde_json::to_string(f)?)
}

#[async_trait]
impl Store for PgStore {
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
        let now = super::now();
        if let [job] = jobs.as_slice()
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
            let ord: i64 = get(r, "ord")?;
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

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Lease>> {
        if !super::rules::claim_wanted(&req)? {
            return Ok(Vec::new());
        }
        let now = super::now();
        let expires = add(now, req.lease);
        let rows = claim_query(claim_sql!(), &req, now, expires)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claim"))?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(super::rules::leases(jobs, &req, expires))
    }

    async fn extend(&self, id: JobId, token: i64, lease: Duration) -> Result<DateTime<Utc>> {
        let expires = add(super::now(), lease);
        let done = sqlx::query(
            "UPDATE flyjobs_jobs SET lease_expires_at = $3 \
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
        )
        .bind(id.0)
        .bind(token)
        .bind(expires)
        .execute(&self.pool)
        .await
        .map_err(db_err("extend"))?;
        if done.rows_affected() == 0 {
            return Err(lease_mismatch("extend", id, self.current(id).await?));
        }
        Ok(expires)
    }

    async fn complete_with(
        &self,
        id: JobId,
        token: i64,
        result: Option<&serde_json::Value>,
    ) -> Result<Job> {
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'completed', finished_at = $3, lease_expires_at = NULL, \
             result = $4 WHERE id = $1 AND state = 'running' AND lease_token = $2 RETURNING *",
        )
        .bind(id.0)
        .bind(token)
        .bind(super::now())
        .bind(result.map(sqlx::types::Json))
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
        // Two round trips and no transaction: attempts and max_attempts cannot change while
        // the token matches (only a claim changes them, and it changes the token too), and the
        // UPDATE re-checks the token.
        let row = sqlx::query(
            "SELECT attempts, max_attempts FROM flyjobs_jobs \
             WHERE id = $1 AND state = 'running' AND lease_token = $2",
        )
        .bind(id.0)
        .bind(token)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("fail"))?;
        let Some(row) = row else {
            return Err(lease_mismatch("fail", id, self.current(id).await?));
        };
        let outcome = super::rules::fail_outcome(
            get::<i32>(&row, "attempts")?.into(),
            get::<Option<i32>>(&row, "max_attempts")?.map(i64::from),
            policy,
            now,
        );
        let err = failure_json(&failure)?;
        let q = match outcome {
            Outcome::Retry { at } => sqlx::query(
                "UPDATE flyjobs_jobs SET state = 'scheduled', run_at = $2, last_error = $3::jsonb, \
                 lease_expires_at = NULL WHERE id = $1 AND state = 'running' AND lease_token = $4",
            )
            .bind(id.0)
            .bind(at)
            .bind(err)
            .bind(token),
            _ => sqlx::query(
                "UPDATE flyjobs_jobs SET state = 'dead', finished_at = $2, last_error = $3::jsonb, \
                 lease_expires_at = NULL WHERE id = $1 AND state = 'running' AND lease_token = $4",
            )
            .bind(id.0)
            .bind(now)
            .bind(err)
            .bind(token),
        };
        let n = q
            .execute(&self.pool)
            .await
            .map_err(db_err("fail"))?
            .rows_affected();
        if n == 0 {
            return Err(lease_mismatch("fail", id, self.current(id).await?));
        }
        Ok(outcome)
    }

    async fn discard(
        &self,
        id: JobId,
        token: Option<i64>,
        failure: Option<Failure>,
    ) -> Result<Job> {
        let mut tx = self.begin("discard").await?;
        let cur =
            sqlx::query("SELECT state, lease_token FROM flyjobs_jobs WHERE id = $1 FOR UPDATE")
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
        let err = failure.as_ref().map(failure_json).transpose()?;
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'discarded', finished_at = $2, \
             last_error = COALESCE($3::jsonb, last_error), lease_expires_at = NULL \
             WHERE id = $1 RETURNING *",
        )
        .bind(id.0)
        .bind(super::now())
        .bind(err)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err("discard"))?;
        tx.commit().await.map_err(db_err("discard: commit"))?;
        job_from_row(&row)
    }

    async fn retry_dead(&self, id: JobId) -> Result<Job> {
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready', attempts = 0, lost_leases = 0, run_at = $2, \
             finished_at = NULL, lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND state IN ('dead','discarded') RETURNING *",
        )
        .bind(id.0)
        .bind(super::now())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("retry"))?;
        match row {
            Some(r) => {
                let job = job_from_row(&r)?;
                self.notify_pool(&job.queue).await?;
                Ok(job)
            }
            None => Err(lease_mismatch("retry", id, self.current(id).await?)),
        }
    }

    async fn release(&self, id: JobId, token: i64) -> Result<Job> {
        // NOTIFY inside the statement: one round trip.
        let row = sqlx::query(
            "WITH released AS (\
               UPDATE flyjobs_jobs SET state = 'ready', attempts = GREATEST(attempts - 1, 0), \
               lease_owner = NULL, lease_expires_at = NULL, started_at = NULL \
               WHERE id = $1 AND state = 'running' AND lease_token = $2 RETURNING *) \
             SELECT r.*, pg_notify($3, r.queue) IS NULL AS notified FROM released r",
        )
        .bind(id.0)
        .bind(token)
        .bind(&self.channel)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("release"))?;
        match row {
            Some(r) => {
                self.signal.wake();
                job_from_row(&r)
            }
            None => Err(lease_mismatch("release", id, self.current(id).await?)),
        }
    }

    async fn reap_expired(&self, now: DateTime<Utc>) -> Result<ReapCounts> {
        // Concurrent reapers are safe: a row another reaper already moved no longer matches
        // `state = 'running'` when this UPDATE re-checks it after the row lock.
        let rows = sqlx::query(
            "UPDATE flyjobs_jobs SET \
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
             RETURNING state, queue",
        )
        .bind(now)
        .bind(self.opts.max_lost_leases.max(1) as i32)
        .bind(self.opts.default_max_attempts.max(1) as i32)
        .bind(lease_lost_message())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("reap"))?;
        let mut counts = ReapCounts::default();
        let mut queue = None;
        for r in &rows {
            if get::<String>(r, "state")? == "dead" {
                counts.dead += 1;
            } else {
                counts.retried += 1;
                queue = Some(get::<String>(r, "queue")?);
            }
        }
        if let Some(q) = queue {
            self.notify_pool(&q).await?;
        }
        Ok(counts)
    }

    async fn promote_scheduled(&self, now: DateTime<Utc>) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready' WHERE state = 'scheduled' AND run_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("promote"))?
        .rows_affected();
        if n > 0 {
            self.notify_pool("*").await?;
        }
        Ok(n)
    }

    async fn register_worker(&self, w: WorkerInfo) -> Result<()> {
        for q in &w.queues {
            validate_queue(q)?;
        }
        let now = super::now();
        sqlx::query(
            "INSERT INTO flyjobs_workers (id, queues, concurrency, image_ref, state, running, \
             started_at, last_heartbeat_at) VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, \
             concurrency = excluded.concurrency, image_ref = excluded.image_ref, \
             state = excluded.state, running = excluded.running, \
             started_at = excluded.started_at, last_heartbeat_at = excluded.last_heartbeat_at",
        )
        .bind(&w.id)
        .bind(serde_json::to_string(&w.queues)?)
        .bind(w.concurrency as i32)
        .bind(&w.image_ref)
        .bind(w.state.as_str())
        .bind(w.running as i32)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("register worker"))?;
        Ok(())
    }

    async fn heartbeat_worker(&self, id: &str, running: u32) -> Result<()> {
        let n = sqlx::query(
            "UPDATE flyjobs_workers SET running = $2, last_heartbeat_at = $3, \
             state = CASE WHEN state = 'stopping' THEN state WHEN $2 > 0 THEN 'live' ELSE 'idle' END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(running as i32)
        .bind(super::now())
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
        let n = sqlx::query("UPDATE flyjobs_workers SET state = $2 WHERE id = $1")
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
        sqlx::query("DELETE FROM flyjobs_workers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err("deregister worker"))?;
        Ok(())
    }

    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM flyjobs_workers WHERE last_heartbeat_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await
                .map_err(db_err("prune workers"))?
                .rows_affected(),
        )
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let rows = sqlx::query(
            "SELECT id, queues::text AS queues, concurrency, image_ref, state, running, \
             started_at, last_heartbeat_at FROM flyjobs_workers ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("list workers"))?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn stats(&self) -> Result<Vec<QueueStats>> {
        let now = super::now();
        let rows = sqlx::query(
            "SELECT queue, \
               count(*) FILTER (WHERE state IN ('scheduled','ready') AND run_at <= $1) AS ready, \
               count(*) FILTER (WHERE state IN ('scheduled','ready') AND run_at > $1) AS scheduled, \
               count(*) FILTER (WHERE state = 'running') AS running, \
               count(*) FILTER (WHERE state = 'dead') AS dead, \
               count(*) FILTER (WHERE state = 'completed') AS completed, \
               count(*) FILTER (WHERE state = 'discarded') AS discarded, \
               min(run_at) FILTER (WHERE state IN ('scheduled','ready') AND run_at <= $1) AS oldest, \
               min(run_at) FILTER (WHERE state IN ('scheduled','ready') AND run_at > $1) AS next \
             FROM flyjobs_jobs GROUP BY queue ORDER BY queue",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("stats"))?;
        rows.iter()
            .map(|r| {
                let oldest: Option<DateTime<Utc>> = get(r, "oldest")?;
                Ok(QueueStats {
                    queue: get(r, "queue")?,
                    ready: get::<i64>(r, "ready")? as u64,
                    scheduled: get::<i64>(r, "scheduled")? as u64,
                    running: get::<i64>(r, "running")? as u64,
                    dead: get::<i64>(r, "dead")? as u64,
                    completed: get::<i64>(r, "completed")? as u64,
                    discarded: get::<i64>(r, "discarded")? as u64,
                    oldest_ready_age: oldest.map(|o| (now - o).to_std().unwrap_or_default()),
                    next_scheduled_at: get(r, "next")?,
                })
            })
            .collect()
    }

    async fn ready_shapes(&self) -> Result<Vec<ShapeDemand>> {
        let rows = sqlx::query(
            "SELECT queue, shape, image_ref, count(*) AS ready, min(created_at) AS oldest \
             FROM flyjobs_jobs WHERE state IN ('scheduled','ready') AND run_at <= $1 \
             GROUP BY queue, shape, image_ref \
             ORDER BY queue, shape, image_ref NULLS FIRST",
        )
        .bind(super::now())
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
                    oldest_created_at: get(r, "oldest")?,
                })
            })
            .collect()
    }

    async fn list_jobs(&self, f: JobFilter) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM flyjobs_jobs WHERE ($1::text IS NULL OR state = $1) \
             AND ($2::text IS NULL OR queue = $2) AND ($5::text IS NULL OR name = $5) \
             AND id > $3 ORDER BY id LIMIT $4",
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
        sqlx::query("SELECT * FROM flyjobs_jobs WHERE id = $1")
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
            "DELETE FROM flyjobs_jobs WHERE queue = $1 AND state IN ('ready','scheduled')",
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
             AND finished_at < (CASE WHEN state = 'completed' THEN $1 ELSE $2 END) \
             LIMIT $3)",
        )
        .bind(completed_before)
        .bind(dead_before)
        .bind(super::PRUNE_BATCH)
        .execute(&self.pool)
        .await
        .map_err(db_err("prune"))?
        .rows_affected())
    }

    async fn try_acquire_leader(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = super::now();
        let row = sqlx::query(
            "INSERT INTO flyjobs_locks (name, owner, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
             WHERE flyjobs_locks.owner = excluded.owner OR flyjobs_locks.expires_at < $4 \
             RETURNING owner",
        )
        .bind(name)
        .bind(owner)
        .bind(add(now, ttl))
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("leader lock"))?;
        Ok(row.is_some())
    }

    async fn release_leader(&self, name: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM flyjobs_locks WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db_err("leader unlock"))?;
        Ok(())
    }

    fn subscribe(&self) -> JobNotifier {
        self.signal.subscribe()
    }

    async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }

    async fn record_boot_failure(&self, failure: super::boot_failures::BootFailure) -> Result<()> {
        super::boot_failures::pg_record(&self.pool, failure).await
    }

    async fn boot_failures(&self, limit: usize) -> Result<Vec<super::boot_failures::BootFailure>> {
        super::boot_failures::pg_list(&self.pool, limit).await
    }

    async fn clear_boot_failures(&self, queue: Option<&str>) -> Result<u64> {
        super::boot_failures::pg_clear(&self.pool, queue).await
    }

    async fn run_now(&self, id: JobId) -> Result<Job> {
        let row = sqlx::query(
            "UPDATE flyjobs_jobs SET state = 'ready', run_at = $2 \
             WHERE id = $1 AND state IN ('scheduled','ready') RETURNING *",
        )
        .bind(id.0)
        .bind(super::now())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("run now"))?;
        match row {
            Some(r) => {
                let job = job_from_row(&r)?;
                self.notify_pool(&job.queue).await?;
                Ok(job)
            }
            None => Err(lease_mismatch("run now", id, self.current(id).await?)),
        }
    }

    async fn finished_since(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM flyjobs_jobs WHERE state IN ('completed','dead','discarded') \
             AND finished_at >= $1 ORDER BY finished_at DESC LIMIT $2",
        )
        .bind(since)
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
        super::usage::pg::record(&self.pool, cursor, read_through_ms, hours).await
    }

    async fn usage_cursors(&self) -> Result<Vec<crate::cost::UsageCursor>> {
        super::usage::pg::cursors(&self.pool).await
    }

    async fn usage_hours(&self, since: DateTime<Utc>) -> Result<Vec<crate::cost::HourUsage>> {
        super::usage::pg::hours(&self.pool, since).await
    }

    async fn requeue_on_shape(
        &self,
        id: JobId,
        token: i64,
        shape: &str,
        failure: &Failure,
    ) -> Result<bool> {
        let queue = super::placement::pg_requeue_on_shape(
            &self.pool,
            id,
            token,
            shape,
            failure,
            super::now(),
        )
        .await?;
        let Some(queue) = queue else {
            return Ok(false);
        };
        self.notify_pool(&queue).await?;
        Ok(true)
    }
}
