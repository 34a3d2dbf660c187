//! The durable queue: one [`Store`] trait, PostgreSQL (production) and SQLite (embedded default).
//!
//! Both are one implementation, [`sql::SqlStore`]: the state rules, the statements, binding and
//! row decoding exist once; [`postgres`] and [`sqlite`] hold only what differs (the claim and
//! enqueue mechanisms, wake-ups across processes, a few SQL texts, how values are bound).
//!
//! ```no_run
//! # async fn demo() -> flyjobs::Result<()> {
//! use std::time::Duration;
//! use flyjobs::job::{Failure, NewJob};
//! use flyjobs::retry::RetryPolicy;
//! use flyjobs::store::{self, ClaimRequest, StoreOptions};
//! let store = store::open("sqlite://jobs.db?mode=rwc", StoreOptions::default()).await?;
//! store.enqueue(NewJob::new("default", serde_json::json!({"n": 1}))).await?;
//! let leases = store
//!     .claim(ClaimRequest::new(["default"], 10, "worker-1", Duration::from_secs(60)))
//!     .await?;
//! for lease in leases {
//!     store.complete(lease.job.id, lease.token).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Lifecycle and concurrency
//! - A claim moves up to `limit` runnable jobs (`scheduled`/`ready` with `run_at <= now`, in
//!   order of priority, then run_at, then id) to `running` in one statement, counts an attempt,
//!   and hands out a [`Lease`]: owner, expiry and a *fencing token* that grows with every claim
//!   of the job. Postgres claims with `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait
//!   on each other's rows; SQLite claims inside `BEGIN IMMEDIATE` (one writer at a time).
//! - `complete`/`fail`/`extend`/`release` only act on a running job whose token still matches.
//!   If the lease expired and [`Store::reap_expired`] gave the job to someone else, the late
//!   call gets an [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) error and changes nothing.
//! - Reaping returns expired jobs to `ready` (the attempt stays counted); after
//!   `max_lost_leases` losses, or when attempts are exhausted, the job goes `dead` with a
//!   `FlyJobs::LeaseLost` failure.
//! - Every write that makes a job runnable wakes subscribers ([`Store::subscribe`]): Postgres
//!   `NOTIFY flyjobs_jobs` (a listener task reconnects after server restarts); for a SQLite
//!   file, a watcher task that polls `PRAGMA data_version` every 5 ms while anyone waits.
//! - Retention: finished jobs are kept for inspection, then deleted by
//!   [`Store::prune_finished`]: completed jobs after [`StoreOptions::retain_completed`] (default
//!   24 h, setting `retain_completed`), dead and discarded jobs after
//!   [`StoreOptions::retain_dead`] (default 183 days, setting `retain_dead`).
//! - Times are taken from the caller's clock (`Utc::now()` in the store methods, or the `now`
//!   argument); machines sharing a Postgres are expected to run NTP, as Fly machines do.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::job::{Failure, Job, JobId, JobState, NewJob};
use crate::retry::{Outcome, RetryPolicy};

pub mod boot_failures;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod usage;

/// A request to claim jobs.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Queues to take jobs from (any order; jobs are ordered by priority, run_at, id).
    pub queues: Vec<String>,
    /// Most jobs to claim (the worker's free slots).
    pub limit: usize,
    /// The claiming worker's id (its machine id).
    pub owner: String,
    /// How long the lease lasts unless extended.
    pub lease: Duration,
    /// Only jobs of this machine shape key (`Some("")`: only default-shape jobs); `None`: any.
    pub shape: Option<String>,
    /// Only jobs this worker's image may run; `None`: any image.
    pub image: Option<ImageFilter>,
}

/// Which jobs a worker of one image may claim (see [`ClaimRequest::image`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFilter {
    /// Jobs enqueued under this image ref.
    pub image_ref: String,
    /// When set, also jobs without an image ref and jobs enqueued (created) before this time
    /// (e.g. the release's deploy time: older jobs may run on the new image).
    pub or_enqueued_before: Option<DateTime<Utc>>,
}

impl ImageFilter {
    /// Only jobs enqueued under `image_ref`.
    pub fn only(image_ref: impl Into<String>) -> Self {
        ImageFilter {
            image_ref: image_ref.into(),
            or_enqueued_before: None,
        }
    }
}

/// Runnable jobs of one (queue, shape, image_ref) group, for the scaler ([`Store::ready_shapes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeDemand {
    /// Queue name.
    pub queue: String,
    /// Machine shape key (`""`: the queue's default machine).
    pub shape: String,
    /// The image the jobs were enqueued under.
    pub image_ref: Option<String>,
    /// Jobs runnable now (ready, or scheduled with run_at passed).
    pub ready: u64,
    /// When the oldest of them was enqueued.
    pub oldest_created_at: DateTime<Utc>,
}

impl ClaimRequest {
    /// A claim of up to `limit` jobs from `queues` for `owner`, leased for `lease`.
    pub fn new<Q: Into<String>>(
        queues: impl IntoIterator<Item = Q>,
        limit: usize,
        owner: impl Into<String>,
        lease: Duration,
    ) -> Self {
        ClaimRequest {
            queues: queues.into_iter().map(Into::into).collect(),
            limit,
            owner: owner.into(),
            lease,
            shape: None,
            image: None,
        }
    }

    /// Only jobs whose shape key is `key` (`""`: default-shape jobs only).
    #[must_use]
    pub fn shape(mut self, key: impl Into<String>) -> Self {
        self.shape = Some(key.into());
        self
    }

    /// Only jobs `filter` allows.
    #[must_use]
    pub fn image(mut self, filter: ImageFilter) -> Self {
        self.image = Some(filter);
        self
    }
}

/// A claimed job and the proof of the claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job, as it is after the claim (state `running`, attempts counted).
    pub job: Job,
    /// Fencing token: pass it to complete/fail/extend/release.
    pub token: i64,
    /// The worker holding the lease.
    pub owner: String,
    /// When the lease runs out unless extended.
    pub expires_at: DateTime<Utc>,
}

/// What [`Store::reap_expired`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapCounts {
    /// Jobs returned to `ready`.
    pub retried: u64,
    /// Jobs that went `dead` (too many lost leases or attempts exhausted).
    pub dead: u64,
}

/// A worker's lifecycle state, as the scaler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Registered, not yet claiming.
    Booting,
    /// Running at least one job.
    Live,
    /// Claiming but without jobs.
    Idle,
    /// Quiet or stopping: takes no new jobs.
    Stopping,
    /// Its machine suspended itself (a warm pool member); it carries on when resumed.
    Suspended,
}

impl WorkerState {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Booting => "booting",
            WorkerState::Live => "live",
            WorkerState::Idle => "idle",
            WorkerState::Stopping => "stopping",
            WorkerState::Suspended => "suspended",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        [
            WorkerState::Booting,
            WorkerState::Live,
            WorkerState::Idle,
            WorkerState::Stopping,
            WorkerState::Suspended,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
        .ok_or_else(|| Error::store(format!("unknown worker state {s:?} in the store")))
    }
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id (the machine id).
    pub id: String,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Jobs it runs at once.
    pub concurrency: u32,
    /// The image it runs.
    pub image_ref: Option<String>,
    /// Lifecycle state.
    pub state: WorkerState,
    /// Jobs running at the last heartbeat.
    pub running: u32,
    /// When it registered (set by the store).
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat (set by the store).
    pub last_heartbeat_at: DateTime<Utc>,
}

impl WorkerInfo {
    /// A booting worker serving `queues` with `concurrency` slots (timestamps are set on
    /// registration).
    pub fn new<Q: Into<String>>(
        id: impl Into<String>,
        queues: impl IntoIterator<Item = Q>,
        concurrency: u32,
    ) -> Self {
        let now = Utc::now();
        WorkerInfo {
            id: id.into(),
            queues: queues.into_iter().map(Into::into).collect(),
            concurrency,
            image_ref: None,
            state: WorkerState::Booting,
            running: 0,
            started_at: now,
            last_heartbeat_at: now,
        }
    }
}

/// Counts per queue, for the scaler, CLI and dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Runnable now (state ready, or scheduled with run_at passed).
    pub ready: u64,
    /// Waiting for a future run_at.
    pub scheduled: u64,
    /// Claimed.
    pub running: u64,
    /// In the dead set.
    pub dead: u64,
    /// Completed and not yet pruned.
    pub completed: u64,
    /// Discarded and not yet pruned.
    pub discarded: u64,
    /// How long the oldest runnable job has waited.
    pub oldest_ready_age: Option<Duration>,
    /// The next future run_at.
    pub next_scheduled_at: Option<DateTime<Utc>>,
}

/// A page of jobs for [`Store::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs of this class (the job's `name`: Active Job class, Python import path, …).
    pub name: Option<String>,
    /// Page size (0 means 100).
    pub limit: usize,
    /// Only ids greater than this (the last id of the previous page).
    pub after_id: Option<JobId>,
}

impl JobFilter {
    /// A filter from a map, as the bindings pass it: `{"queue": "mail", "state": "dead",
    /// "name": "WelcomeMailer", "limit": 50, "after_id": 1234}`; every key optional.
    pub fn from_value(value: &serde_json::Value) -> Result<JobFilter> {
        let mut f = JobFilter::default();
        let Some(map) = value.as_object() else {
            if value.is_null() {
                return Ok(f);
            }
            return Err(Error::invalid(format!(
                "a job filter must be a map, got {value}"
            )));
        };
        let bad = |k: &str, wants: &str, v: &serde_json::Value| {
            Error::invalid(format!("job filter {k} must be {wants}, got {v}"))
        };
        for (k, v) in map {
            if v.is_null() {
                continue;
            }
            match k.as_str() {
                "queue" => f.queue = Some(v.as_str().ok_or_else(|| bad(k, "a string", v))?.into()),
                "name" => f.name = Some(v.as_str().ok_or_else(|| bad(k, "a string", v))?.into()),
                "state" => {
                    f.state = Some(
                        v.as_str()
                            .ok_or_else(|| bad(k, "a job state", v))?
                            .parse()?,
                    );
                }
                "limit" => {
                    f.limit = v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(k, "an integer >= 0", v))?;
                }
                "after_id" => {
                    f.after_id = Some(JobId(v.as_i64().ok_or_else(|| bad(k, "a job id", v))?));
                }
                other => {
                    return Err(Error::invalid(format!(
                        "unknown job filter key {other:?} (known: queue, state, name, limit, after_id)"
                    )));
                }
            }
        }
        Ok(f)
    }
}

/// Settings of an opened store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest encoded payload enqueue accepts (default 1 MiB, `FLYJOBS_MAX_PAYLOAD_BYTES`).
    pub max_payload_bytes: usize,
    /// Leases a job may lose before it goes dead (default 3).
    pub max_lost_leases: u32,
    /// Runs allowed for jobs without their own `max_attempts`, used when reaping (default 25).
    pub default_max_attempts: u32,
    /// Pool size (default 10 for Postgres, 4 for SQLite files).
    pub max_connections: Option<u32>,
    /// Postgres only: the schema holding the tables (created if missing; default `public`).
    /// Tests use one schema per test.
    pub pg_schema: Option<String>,
    /// How long to wait for a connection before failing (default 10 s).
    pub connect_timeout: Duration,
    /// How long a completed job is kept before [`Store::prune_finished`] deletes it
    /// (default 24 hours, as Sidekiq keeps its history short; setting `retain_completed`,
    /// `FLYJOBS_RETAIN_COMPLETED`).
    pub retain_completed: Duration,
    /// How long dead and discarded jobs are kept (default 183 days, about six months, like
    /// Sidekiq's dead set), for inspection and manual retry (setting `retain_dead`,
    /// `FLYJOBS_RETAIN_DEAD`).
    pub retain_dead: Duration,
}

/// Most jobs one [`Store::prune_finished`] call deletes.
pub const PRUNE_BATCH: i64 = 10_000;

/// Default [`StoreOptions::retain_completed`]: 24 hours.
pub const DEFAULT_RETAIN_COMPLETED: Duration = Duration::from_secs(24 * 3600);
/// Default [`StoreOptions::retain_dead`]: 183 days.
pub const DEFAULT_RETAIN_DEAD: Duration = Duration::from_secs(183 * 24 * 3600);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_payload_bytes: config::DEFAULT_MAX_PAYLOAD_BYTES,
            max_lost_leases: 3,
            default_max_attempts: crate::retry::DEFAULT_MAX_ATTEMPTS,
            max_connections: None,
            pg_schema: None,
            connect_timeout: Duration::from_secs(10),
            retain_completed: DEFAULT_RETAIN_COMPLETED,
            retain_dead: DEFAULT_RETAIN_DEAD,
        }
    }
}

impl StoreOptions {
    /// Options that take the payload limit and the retention times from `config`.
    pub fn from_config(config: &Config) -> Self {
        StoreOptions {
            max_payload_bytes: config.max_payload_bytes(),
            retain_completed: config.retain_completed(),
            retain_dead: config.retain_dead(),
            ..Default::default()
        }
    }
}

/// Receives a wake-up whenever jobs may have become runnable.
///
/// Subscribe *before* the claim that came back empty: a wake-up sent between that claim and
/// [`JobNotifier::wait`] is not lost, because the notifier remembers the last signal it saw.
#[derive(Debug, Clone)]
pub struct JobNotifier {
    rx: watch::Receiver<u64>,
}

impl JobNotifier {
    /// Wait up to `timeout` for a wake-up; `true` if one came. Spurious wake-ups happen
    /// (all queues share the signal): claim again and wait again.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

/// The sending half of the wake-up signal, shared by a store and its listener task.
#[derive(Debug, Clone)]
pub(crate) struct Signal(Arc<watch::Sender<u64>>);

impl Signal {
    pub(crate) fn new() -> Self {
        Signal(Arc::new(watch::channel(0).0))
    }
    pub(crate) fn wake(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
    pub(crate) fn has_subscribers(&self) -> bool {
        self.0.receiver_count() > 0
    }
    pub(crate) fn subscribe(&self) -> JobNotifier {
        JobNotifier {
            rx: self.0.subscribe(),
        }
    }
}

/// The durable queue. Implemented by [`postgres::PgStore`] and [`sqlite::SqliteStore`].
///
/// Every method is one transaction: on error nothing was written.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Enqueue one job. With a unique key that a pending job already holds, returns that job.
    async fn enqueue(&self, job: NewJob) -> Result<Job>;

    /// Enqueue many jobs in one transaction (all or nothing), in order.
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>>;

    /// Claim up to `req.limit` runnable jobs of `req.queues`.
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Lease>>;

    /// Push the lease of a running job to now + `lease`; returns the new expiry.
    /// A stale token → `Conflict`.
    async fn extend(&self, id: JobId, token: i64, lease: Duration) -> Result<DateTime<Utc>>;

    /// Mark a running job completed. A stale token → `Conflict`, nothing changes.
    async fn complete(&self, id: JobId, token: i64) -> Result<Job> {
        self.complete_with(id, token, None).await
    }

    /// [`Store::complete`], recording what the job returned (`result`, shown by `job()`).
    async fn complete_with(
        &self,
        id: JobId,
        token: i64,
        result: Option<&serde_json::Value>,
    ) -> Result<Job>;

    /// Complete many running jobs at once, each `(id, token, result)` as
    /// [`Store::complete_with`] would (a worker's group commit: one statement for all of them).
    /// The outcome of each, in input order: `Ok`, or the `Conflict`/`NotFound` its own
    /// `complete` would give (a stale token changes nothing for that job; the others still
    /// complete). `Err`: the statement failed and nothing was written.
    async fn complete_many(
        &self,
        done: &[(JobId, i64, Option<serde_json::Value>)],
    ) -> Result<Vec<Result<()>>> {
        // One call per job, for stores without a batch statement.
        let mut out = Vec::with_capacity(done.len());
        for (id, token, result) in done {
            out.push(
                self.complete_with(*id, *token, result.as_ref())
                    .await
                    .map(drop),
            );
        }
        Ok(out)
    }

    /// Record a failed run and apply `policy` (retry at a later time, or dead). A stale token →
    /// `Conflict`, nothing changes.
    async fn fail(
        &self,
        id: JobId,
        token: i64,
        failure: Failure,
        policy: &RetryPolicy,
    ) -> Result<Outcome>;

    /// Discard a job. A running job needs its lease `token` (else `Conflict`); a waiting or dead
    /// job can be discarded without one. A completed job → `Conflict`.
    async fn discard(&self, id: JobId, token: Option<i64>, failure: Option<Failure>)
    -> Result<Job>;

    /// Move a dead or discarded job back to ready with its attempts reset.
    async fn retry_dead(&self, id: JobId) -> Result<Job>;

    /// Give a running job back untouched (graceful stop): ready again, the attempt not counted.
    async fn release(&self, id: JobId, token: i64) -> Result<Job>;

    /// Return jobs whose lease expired before `now` to ready (or dead after too many losses).
    async fn reap_expired(&self, now: DateTime<Utc>) -> Result<ReapCounts>;

    /// Relabel scheduled jobs whose run_at passed as ready (claims do not need it).
    async fn promote_scheduled(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Register (or re-register) a worker.
    async fn register_worker(&self, worker: WorkerInfo) -> Result<()>;

    /// Record a worker's heartbeat and how many jobs it runs (`live` if any, else `idle`,
    /// unless it is stopping). Unknown worker → `NotFound`.
    async fn heartbeat_worker(&self, id: &str, running: u32) -> Result<()>;

    /// Set a worker's state (e.g. `Stopping` on quiet).
    async fn set_worker_state(&self, id: &str, state: WorkerState) -> Result<()>;

    /// Remove a worker.
    async fn deregister_worker(&self, id: &str) -> Result<()>;

    /// Remove workers whose last heartbeat is older than `before`; returns how many.
    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64>;

    /// All registered workers, by id.
    async fn workers(&self) -> Result<Vec<WorkerInfo>>;

    /// Counts per queue (only queues with at least one job), by queue name.
    async fn stats(&self) -> Result<Vec<QueueStats>>;

    /// Runnable jobs (ready, or scheduled with run_at passed) counted per (queue, shape,
    /// image_ref), ordered by those keys (a missing image ref first).
    async fn ready_shapes(&self) -> Result<Vec<ShapeDemand>>;

    /// A page of jobs in id order.
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>>;

    /// One job, if it exists.
    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;

    /// Delete every waiting job (ready or scheduled, never run) of `queue`; returns how many.
    /// Running, dead and finished jobs stay.
    async fn clear_queue(&self, queue: &str) -> Result<u64>;

    /// Retention: delete completed jobs that finished more than
    /// [`StoreOptions::retain_completed`] before `now`, and dead and discarded jobs that
    /// finished more than [`StoreOptions::retain_dead`] before it; returns how many. Deletes at
    /// most [`PRUNE_BATCH`] jobs per call (short statements): call again while it returns that
    /// many. Meant for the scaler's tick (`store.prune_finished(Utc::now())`).
    async fn prune_finished(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Take or renew the named lock for `owner` for `ttl`; `true` if `owner` holds it now.
    /// Only one scaler per store acts at a time: the holder renews well before `ttl` runs out.
    async fn try_acquire_leader(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool>;

    /// Give up the named lock if `owner` holds it.
    async fn release_leader(&self, name: &str, owner: &str) -> Result<()>;

    /// A wake-up receiver for "jobs may be runnable".
    fn subscribe(&self) -> JobNotifier;
    /// Whether [`Store::subscribe`] also hears enqueues made by *other processes* (Postgres
    /// LISTEN/NOTIFY and a SQLite file's `data_version` watcher do; an in-memory SQLite
    /// database has no other process, and its waiters poll more often).
    fn wakes_other_processes(&self) -> bool {
        true
    }

    /// Close the pool and stop background tasks.
    async fn close(&self);

    // ---- boot failures (core/src/store/boot_failures.rs) ----

    /// Record a worker machine that failed at boot.
    async fn record_boot_failure(&self, failure: boot_failures::BootFailure) -> Result<()>;

    /// The most recent boot failures, newest first (cleared ones included, marked).
    async fn boot_failures(&self, limit: usize) -> Result<Vec<boot_failures::BootFailure>>;

    /// Mark the boot failures of `queue` (all queues: `None`) cleared, so that the scaler
    /// boots its machines again; returns how many were cleared.
    async fn clear_boot_failures(&self, queue: Option<&str>) -> Result<u64>;

    // ---- the dashboard's calls ----

    /// Make a waiting job (scheduled or ready) runnable now; other states are a conflict naming
    /// the job's state.
    async fn run_now(&self, id: JobId) -> Result<Job>;

    /// Jobs that reached an end state (completed, dead, discarded) at or after `since`, newest
    /// first, at most `limit` (0 means 100): the dashboard's throughput and latency charts.
    async fn finished_since(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<Job>>;

    // ---- machine usage for cost accounting (core/src/store/usage.rs) ----

    /// Save a machine's usage cursor, moved on from `read_through_ms` (None: a new machine),
    /// and add `hours` to the per-queue totals, atomically. `false` if another recorder moved
    /// the cursor first (nothing written).
    async fn record_usage(
        &self,
        cursor: &crate::cost::UsageCursor,
        read_through_ms: Option<i64>,
        hours: &[crate::cost::HourUsage],
    ) -> Result<bool>;

    /// Every machine's usage cursor.
    async fn usage_cursors(&self) -> Result<Vec<crate::cost::UsageCursor>>;

    /// Billed seconds and cost per queue per clock hour, from the hour holding `since` on.
    async fn usage_hours(&self, since: DateTime<Utc>) -> Result<Vec<crate::cost::HourUsage>>;

    // ---- placement (core/src/store/placement.rs) ----

    /// A running job (under lease `token`) back to `ready` now on machine shape `shape`,
    /// with `failure` as its last error (its machine was OOM-killed: the next attempt gets
    /// more memory). The attempt stays counted. False when the lease is no longer `token`.
    async fn requeue_on_shape(
        &self,
        id: JobId,
        token: i64,
        shape: &str,
        failure: &Failure,
    ) -> Result<bool>;

    /// The failed runs of job `id`, oldest first: each run that ended in a failure (an error,
    /// a lost lease, an OOM kill, a discard with a reason) as its failure was recorded.
    async fn attempts(&self, id: JobId) -> Result<Vec<Attempt>>;
}

/// One failed run of a job (see [`Store::attempts`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Which attempt it was (1 = the first run).
    pub attempt: u32,
    /// The worker (machine) that ran it.
    pub machine: Option<String>,
    /// When the run began.
    pub started_at: Option<DateTime<Utc>>,
    /// When its failure was recorded (the database's clock).
    pub ended_at: DateTime<Utc>,
    /// The state the job went to: `scheduled` (retry), `ready`, `dead` or `discarded`.
    pub outcome: JobState,
    /// What went wrong.
    pub error: Failure,
}

/// Open the store at `url`: `postgres://…`/`postgresql://…` or `sqlite:…` (e.g.
/// `sqlite://jobs.db?mode=rwc`, created if missing). Runs the migrations.
///
/// An unreachable database gives an [`ErrorKind::Store`](crate::ErrorKind::Store) error naming
/// the URL without its password.
pub async fn open(url: &str, opts: StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url, opts).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, opts).await?))
    } else {
        Err(Error::config(format!(
            "database URL must start with postgres://, postgresql:// or sqlite:, got {:?}",
            config::redact_url(url)
        )))
    }
}

/// Validate a job before anything is written.
pub(crate) fn validate_new(job: &NewJob, max_payload_bytes: usize) -> Result<String> {
    crate::job::validate_queue(&job.queue)?;
    if let Some(n) = job.max_attempts
        && !(1..=i32::MAX as u32).contains(&n)
    {
        return Err(Error::invalid(format!(
            "max_attempts must be between 1 and {}, got {n} (queue {:?})",
            i32::MAX,
            job.queue
        )));
    }
    let payload = serde_json::to_string(&job.payload)?;
    if payload.len() > max_payload_bytes {
        return Err(Error::invalid(format!(
            "payload is {} bytes, over the limit of {} bytes (FLYJOBS_MAX_PAYLOAD_BYTES); \
             store large data elsewhere and enqueue a reference",
            payload.len(),
            max_payload_bytes
        )));
    }
    Ok(payload)
}

/// The job state rules, once for both dialects: the backends run the SQL and call these for
/// every decision that is not a WHERE clause.
pub(crate) mod rules {
    use super::*;

    /// Check a claim's queues; `false` when there is nothing to claim (limit 0, no queue).
    pub(crate) fn claim_wanted(req: &ClaimRequest) -> Result<bool> {
        for q in &req.queues {
            crate::job::validate_queue(q)?;
        }
        Ok(req.limit > 0 && !req.queues.is_empty())
    }

    /// Claimed jobs as leases for `req.owner`, in claim order (priority, run_at, id): the
    /// order the worker hands them to its slots.
    pub(crate) fn leases(jobs: Vec<Job>, req: &ClaimRequest, expires: DateTime<Utc>) -> Vec<Lease> {
        let mut leases: Vec<Lease> = jobs
            .into_iter()
            .map(|job| Lease {
                token: job.lease_token,
                owner: req.owner.clone(),
                expires_at: expires,
                job,
            })
            .collect();
        leases.sort_by_key(|l| (l.job.priority, l.job.run_at, l.job.id));
        leases
    }

    /// Whether a job in `state` with lease `current` may be discarded by a caller holding
    /// `token`: a running job only by its lease holder; a waiting or dead job by anyone (or
    /// the holder of its last token); a completed or discarded one never.
    pub(crate) fn may_discard(state: JobState, current: i64, token: Option<i64>) -> bool {
        match state {
            JobState::Running => token == Some(current),
            JobState::Scheduled | JobState::Ready | JobState::Dead => {
                token.is_none() || token == Some(current)
            }
            JobState::Completed | JobState::Discarded => false,
        }
    }

    /// The `NotFound` error of a discard.
    pub(crate) fn discard_not_found(id: JobId) -> Error {
        Error::new(
            crate::ErrorKind::NotFound,
            format!("discard: job {id} not found"),
        )
        .with_job_id(id)
    }

    /// What a failed run leads to, from the stored counters (decoded leniently: negative
    /// values as 0, a stored max below 1 as 1) and `policy`, at the stores' precision.
    pub(crate) fn fail_outcome(
        attempts: i64,
        max_attempts: Option<i64>,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
    ) -> Outcome {
        let attempts = u32::try_from(attempts.max(0)).unwrap_or(u32::MAX);
        let max = max_attempts.map(|m| u32::try_from(m.max(1)).unwrap_or(u32::MAX));
        trunc_outcome(policy.decide(attempts, max, now, &mut rand::rng()))
    }
}

/// The state a new job starts in: scheduled when its run_at is in the future, else ready.
pub(crate) fn initial_state(job: &NewJob, now: DateTime<Utc>) -> JobState {
    if job.run_at.map_or(now, trunc) > now {
        JobState::Scheduled
    } else {
        JobState::Ready
    }
}

/// A validated `max_attempts` as the 32-bit integer both schemas store.
pub(crate) fn max_attempts_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A database error, tagged with what was being done (never the URL's password).
pub(crate) fn db_err(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| {
        // Connection trouble is worth retrying (a restart, a failover); constraint
        // violations and bad SQL are not.
        let retryable = matches!(
            e,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
        ) || matches!(&e, sqlx::Error::Database(d) if d.code().is_some_and(|c| {
            c.starts_with("57") || c.starts_with("08") || c == "40001" || c == "40P01"
        }));
        // A unique violation (SQLSTATE 23505; SQLite extended code 2067) is a conflict with
        // another pending job holding the same unique key (e.g. retrying a dead job whose key
        // was reused).
        let unique = matches!(&e, sqlx::Error::Database(d)
            if d.code().is_some_and(|c| c == "23505" || c == "2067"));
        let kind = if unique {
            crate::ErrorKind::Conflict
        } else {
            crate::ErrorKind::Store
        };
        Error::new(kind, format!("{what}: {e}"))
            .with_source(e)
            .with_retryable(retryable)
    }
}

/// The `Conflict`/`NotFound` error for a lease operation that matched no row.
pub(crate) fn lease_mismatch(op: &str, id: JobId, current: Option<(JobState, i64)>) -> Error {
    match current {
        None => Error::new(
            crate::ErrorKind::NotFound,
            format!("{op}: job {id} not found"),
        )
        .with_job_id(id),
        Some((state, token)) => Error::new(
            crate::ErrorKind::Conflict,
            format!(
                "{op}: job {id} is {state} with lease token {token}; the given lease is stale \
                 (it expired and the job was reaped or claimed again)"
            ),
        )
        .with_job_id(id),
    }
}

/// The failure recorded when a lease is lost.
pub(crate) fn lease_lost_message() -> &'static str {
    "the worker's lease expired (it died or stopped extending it)"
}

/// Check a `u32` from a `usize` limit without panicking.
pub(crate) fn page_limit(limit: usize) -> i64 {
    if limit == 0 {
        100
    } else {
        i64::try_from(limit.min(10_000)).unwrap_or(10_000)
    }
}

/// `now - d` without overflow panics, at the stores' precision.
pub(crate) fn sub(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    trunc(
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

/// `now + d` without overflow panics, at the stores' precision.
pub(crate) fn add(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    trunc(
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// A time cut to microseconds, the precision both databases keep, so that what a method
/// returns equals what a later read returns.
pub(crate) fn trunc(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The current time at the stores' precision.
pub(crate) fn now() -> DateTime<Utc> {
    trunc(Utc::now())
}

/// A retry outcome at the stores' precision.
pub(crate) fn trunc_outcome(o: Outcome) -> Outcome {
    match o {
        Outcome::Retry { at } => Outcome::Retry { at: trunc(at) },
        other => other,
    }
}

/// Parse a stored worker state.
pub(crate) fn parse_worker_state(s: &str) -> Result<WorkerState> {
    WorkerState::parse(s)
}
