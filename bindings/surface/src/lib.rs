//! The binding surface: what the Ruby (magnus), Python (pyo3) and Node (napi-rs) glue wraps,
//! and all it wraps. Every behaviour is in the core (`flyjobs`) or the embedded default
//! (`flyjobs-embedded`); this crate only shapes it for a foreign runtime:
//!
//! - **Values cross as plain data** ([`serde_json::Value`]): options, jobs, filters, failures
//!   in; jobs, outcomes, stats, machines and errors out. A binding converts its native values
//!   to and from JSON-like data (Ruby and Python: JSON text or their dict/Hash; Node: napi's
//!   serde support) and does nothing else with them.
//! - **Every call is an `async fn`**. Ruby and Python run it with
//!   [`flyjobs::runtime::block_on`] with their lock released; Node awaits it as a Promise.
//! - **Waiting for jobs never blocks a language for long**: [`Slot::poll_next`] returns after
//!   at most the time given, keeping the claim in flight for the next call.
//! - **Errors are data**: [`error_view`] gives kind, message, retryable, status, request id and
//!   job id; each binding maps `kind` to one exception class (the vectors in
//!   `tests/vectors/errors.json` list them).
//! - **Logs**: [`logs`] captures the core's `tracing` events so the language can write them to
//!   its own logger (`Rails.logger`, Python `logging`, Node `console`).
//!
//! | call | in | out |
//! |---|---|---|
//! | [`open`] | options map, default worker command | [`Client`] |
//! | [`enqueue`] | job map (`queue`, `payload`, `name`, `priority`, `run_at`, `max_attempts`, `unique_key`) | job |
//! | [`enqueue_many`] | list of job maps | list of jobs (all or nothing) |
//! | [`job`] | id | job or null |
//! | [`jobs`] | filter map (`queue`, `state`, `name`, `limit`, `after_id`) | list of jobs |
//! | [`cancel`], [`discard`], [`retry`] | id | job |
//! | [`clear`] | queue | count |
//! | [`stats`], [`workers`], [`machines`] | — | list |
//! | [`call`] | name (one of [`CALLS`]), argument | what that call returns |
//! | [`config`] | — | the resolved settings (token redacted) |
//! | [`start_scaler`], [`shutdown`] | — | — |
//! | [`worker`] | worker options map (`queues`, `concurrency`, `wait`, `pool`) | [`Worker`] |
//! | [`Worker::slot`] → [`Slot::poll_next`] | max wait | [`Poll`]: job lease, pending, done |
//! | [`BlockingSlot::next_blocking`], [`BlockingSlot::complete_then_next`] | (lease,) max wait, give-up signal | [`Poll`], on the calling thread |
//! | [`lease_job`] | lease | the job |
//! | [`complete`], [`fail`], [`release`] | lease (+ failure map `class`, `message`, `backtrace`) | — / outcome |
//! | [`complete_with`] | lease, result (any value) | — |
//! | [`complete_later`] | lease | — (recorded by the worker's group commit; the caller goes on) |
//! | [`Worker::quiet`], [`Worker::stop`] | — / grace | — |
//! | [`error_view`] | error | error map |

use std::time::Duration;

use serde_json::{Value, json};

pub use flyjobs::error::ErrorView;
pub use flyjobs::job::Job;
pub use flyjobs::worker::{Poll, Slot, Worker, WorkerLease};
pub use flyjobs::{Client, Config, Error, ErrorKind, Result};

pub mod blocking_slot;
pub mod logs;

pub use blocking_slot::BlockingSlot;

/// The process-wide tokio runtime (rebuilt after `fork()`), for bindings that block.
pub use flyjobs::runtime;

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    Ok(serde_json::to_value(v)?)
}

fn object<'a>(what: &str, v: &'a Value) -> Result<&'a serde_json::Map<String, Value>> {
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(EMPTY.get_or_init(serde_json::Map::new)),
        other => Err(Error::config(format!("{what} must be a map, got {other}"))),
    }
}

/// Open a client: `options` (keys of [`flyjobs::config::OPTIONS`]) over the environment and
/// defaults; worker machines run `default_worker_command` unless `worker_command` is
/// configured; off Fly the embedded default (local Machines API, SQLite file) applies, with
/// the local API inside this process. Apps with several processes use [`open_with`].
pub async fn open(options: &Value, default_worker_command: Vec<String>) -> Result<Client> {
    open_with(
        options,
        OpenOptions {
            default_worker_command,
            local_api_command: Vec::new(),
        },
    )
    .await
}

/// What a language package tells [`open_with`] about itself.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// What worker machines run unless `worker_command` is configured
    /// (`bin/fly-machine-worker`, `python -m flyjobs worker`, `flyjobs-worker`).
    pub default_worker_command: Vec<String>,
    /// The language's entry point of [`serve_local_api`] (the state directory is appended).
    /// Given: off Fly, the local Machines API is one daemon shared by every process of the app,
    /// and its machines outlive any one of them. Empty: it runs inside this process.
    pub local_api_command: Vec<String>,
}

/// [`open`] with the language's [`OpenOptions`].
pub async fn open_with(options: &Value, how: OpenOptions) -> Result<Client> {
    let config = Config::from_options(object("options", options)?)?;
    let mut b = if how.local_api_command.is_empty() {
        flyjobs_embedded::builder(config)
    } else {
        flyjobs_embedded::shared_builder(config, how.local_api_command)
    };
    if !how.default_worker_command.is_empty() {
        b = b.default_worker_command(how.default_worker_command);
    }
    b.open().await
}

/// Serve the app's shared local Machines API for the state directory given to the
/// `local_api_command` (blocks until no process of the app is left; then its machines are
/// stopped gracefully).
pub async fn serve_local_api(state_dir: &str) -> Result<()> {
    flyjobs_embedded::serve(std::path::Path::new(state_dir)).await
}

/// The resolved settings of a client as data (the token shown as `[REDACTED]`, the database
/// password as `***`).
pub fn config(client: &Client) -> Value {
    let mut v = config_view(client.config());
    v["database_url"] = json!(client.database_url().map(flyjobs::config::redact_url));
    v["worker_command"] = json!(client.worker_command());
    v
}

fn queue_view(q: &flyjobs::config::QueueSettings) -> Value {
    json!({
        "max_machines": q.max_machines,
        "min_machines": q.min_machines,
        "concurrency": q.concurrency,
        "wait": match q.wait {
            flyjobs::config::Wait::Forever => json!("forever"),
            flyjobs::config::Wait::Idle(d) => json!(d.as_secs_f64()),
        },
        "pool": q.pool.as_str(),
        "cpu_kind": q.size.cpu_kind,
        "cpus": q.size.cpus,
        "memory_mb": q.size.memory_mb,
        "region": q.regions,
        "max_attempts": q.max_attempts,
        "max_memory_mb": q.max_memory_mb,
        "budget": q.budget.as_ref().map(|b| match b {
            flyjobs::cost::Budget::UsdPerDay(usd) => json!({ "usd_per_day": usd }),
            flyjobs::cost::Budget::MachineHoursPerDay(h) => json!({ "machine_hours_per_day": h }),
        }),
        "max_cost_per_job": q.max_cost_per_job,
    })
}

/// Resolved settings as data: every option of [`flyjobs::config::OPTIONS`], queues expanded.
pub fn config_view(c: &Config) -> Value {
    let mut queues = serde_json::Map::new();
    queues.insert("*".into(), queue_view(c.queue("")));
    for (name, q) in c.queues() {
        queues.insert(name.clone(), queue_view(q));
    }
    json!({
        "api_token": c.api_token().map(|_| "[REDACTED]"),
        "api_hostname": c.api_hostname(),
        "app_name": c.app_name(),
        "image_ref": c.image_ref(),
        "machine_id": c.machine_id(),
        "region": c.region(),
        "database_url": c.database_url().map(flyjobs::config::redact_url),
        "queues": queues,
        "max_machines": c.max_machines(),
        "worker_app": c.worker_app(),
        "worker_command": c.worker_command(),
        "env_allowlist": c.env_allowlist(),
        "max_payload_bytes": c.max_payload_bytes(),
        "request_timeout": c.request_timeout().as_secs_f64(),
        "lease_duration": c.lease_duration().as_secs_f64(),
        "boot_timeout": c.boot_timeout().as_secs_f64(),
        "shutdown_timeout": c.shutdown_timeout().as_secs_f64(),
        "pin_for": c.pin_for().as_secs_f64(),
        "retain_completed": c.retain_completed().as_secs_f64(),
        "retain_dead": c.retain_dead().as_secs_f64(),
        "prices": c.prices(),
        "on_fly": c.on_fly(),
    })
}

/// Resolve `options` over `env` (a map standing in for the process environment) into
/// [`config_view`]: what the shared vectors (`tests/vectors/options.json`) check in every
/// language.
pub fn resolve_config(options: &Value, env: &Value) -> Result<Value> {
    let env: std::collections::BTreeMap<String, String> = object("env", env)?
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect();
    let config = Config::builder()
        .options(object("options", options)?)?
        .lookup(move |k| env.get(k).cloned())
        .build()?;
    Ok(config_view(&config))
}

/// Every option, queue setting and worker option with its env var, what it accepts, its
/// default and what it does: the one vocabulary, for each language's docs and accessors.
pub fn option_specs() -> Value {
    let specs = |list: &[flyjobs::config::OptionSpec]| -> Value {
        list.iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "env": s.env,
                    "accepts": s.kind.accepts(),
                    "default": s.default,
                    "doc": s.doc,
                })
            })
            .collect()
    };
    json!({
        "options": specs(flyjobs::config::OPTIONS),
        "queue_settings": specs(flyjobs::config::QUEUE_SETTINGS),
        "worker_options": specs(flyjobs::config::WORKER_OPTIONS),
    })
}

/// Enqueue one job given as a map (see [`flyjobs::job::NewJob::from_value`]).
pub async fn enqueue(client: &Client, job: &Value) -> Result<Value> {
    let job = flyjobs::job::NewJob::from_value(job)?;
    to_value(&client.enqueue(job).await?)
}

/// Enqueue a list of jobs in one transaction: all or none. A bad entry names its index.
pub async fn enqueue_many(client: &Client, jobs: &Value) -> Result<Value> {
    let list = jobs
        .as_array()
        .ok_or_else(|| Error::invalid(format!("enqueue_many takes a list of jobs, got {jobs}")))?;
    let parsed = list
        .iter()
        .enumerate()
        .map(|(i, j)| {
            flyjobs::job::NewJob::from_value(j)
                .map_err(|e| Error::invalid(format!("job {i}: {}", e.message())))
        })
        .collect::<Result<Vec<_>>>()?;
    to_value(&client.enqueue_many(parsed).await?)
}

/// One job, or null.
pub async fn job(client: &Client, id: i64) -> Result<Value> {
    to_value(&client.job(id.into()).await?)
}

/// A page of jobs (filter map: `queue`, `state`, `name`, `limit`, `after_id`).
pub async fn jobs(client: &Client, filter: &Value) -> Result<Value> {
    let filter = flyjobs::store::JobFilter::from_value(filter)?;
    to_value(&client.jobs(filter).await?)
}

/// Cancel a ready or scheduled job.
pub async fn cancel(client: &Client, id: i64) -> Result<Value> {
    to_value(&client.cancel(id.into()).await?)
}

/// Discard a waiting or dead job.
pub async fn discard(client: &Client, id: i64) -> Result<Value> {
    to_value(&client.discard(id.into()).await?)
}

/// Run a dead or discarded job again.
pub async fn retry(client: &Client, id: i64) -> Result<Value> {
    to_value(&client.retry(id.into()).await?)
}

/// Delete the waiting jobs of a queue; returns how many.
pub async fn clear(client: &Client, queue: &str) -> Result<u64> {
    client.clear(queue).await
}

/// Per-queue counts.
pub async fn stats(client: &Client) -> Result<Value> {
    to_value(&client.stats().await?)
}

/// Registered workers.
pub async fn workers(client: &Client) -> Result<Value> {
    to_value(&client.workers().await?)
}

/// Largest request body the mounted dashboard accepts: a binding reads at most one byte more
/// from its server and hands that over, and the dashboard answers 413 past the limit.
pub const DASHBOARD_MAX_BODY: usize = flyjobs_dashboard::MAX_BODY;

/// Answer one request to the web dashboard, mounted in the app: `request` is a map with
/// `method`, `path` (as the server has it, with or without the mount: the dashboard takes the
/// mount off), `mount` (where the app mounted it), `query`, `headers` (every request header,
/// names in any case), `body` (read up to [`DASHBOARD_MAX_BODY`] + 1 bytes), and optionally
/// `read_only`; the answer is `{status, headers: [[name,
/// value], …], body}` for the app's web server to send as is. The HTML is rendered here: no
/// language renders pages.
pub async fn dashboard(client: &Client, request: &Value) -> Result<Value> {
    let read_only = match request.get("read_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(Error::invalid(format!(
                "dashboard option read_only must be true or false, got {other}"
            )));
        }
    };
    let req: flyjobs_dashboard::Request = serde_json::from_value(request.clone())
        .map_err(|e| Error::invalid(format!("dashboard request: {e}")))?;
    let dash = flyjobs_dashboard::Dashboard::new(
        client.clone(),
        flyjobs_dashboard::DashboardOptions { read_only },
    );
    to_value(&dash.handle(req).await)
}

/// Recent boot failures of worker machines, newest first.
pub async fn boot_failures(client: &Client) -> Result<Value> {
    to_value(&client.boot_failures(0).await?)
}

/// Worker machines as the Machines API reports them.
pub async fn machines(client: &Client) -> Result<Value> {
    to_value(&client.machines().await?)
}

/// The names [`call`] answers to.
pub const CALLS: &[&str] = &[
    "job",
    "attempts",
    "jobs",
    "cancel",
    "discard",
    "retry",
    "clear",
    "stats",
    "workers",
    "machines",
    "boot_failures",
    "reset_boot_failures",
    "dashboard",
    "config",
    "local_api_url",
    "start_scaler",
];

/// One entry point for the admin calls by name (one of [`CALLS`]), so that a binding needs no
/// glue of its own per call: `job`/`attempts`/`cancel`/`discard`/`retry` take a job id, `jobs` a filter
/// map, `clear` a queue name, `reset_boot_failures` a queue name or null (all), the others
/// nothing (null).
pub async fn call(client: &Client, name: &str, arg: &Value) -> Result<Value> {
    let id = || {
        arg.as_i64()
            .ok_or_else(|| Error::invalid(format!("{name} takes a job id, got {arg}")))
    };
    Ok(match name {
        "job" => job(client, id()?).await?,
        "attempts" => to_value(&client.attempts(flyjobs::job::JobId(id()?)).await?)?,
        "jobs" => jobs(client, arg).await?,
        "cancel" => cancel(client, id()?).await?,
        "discard" => discard(client, id()?).await?,
        "retry" => retry(client, id()?).await?,
        "clear" => {
            let queue = arg
                .as_str()
                .ok_or_else(|| Error::invalid(format!("clear takes a queue name, got {arg}")))?;
            Value::from(clear(client, queue).await?)
        }
        "stats" => stats(client).await?,
        "workers" => workers(client).await?,
        "machines" => machines(client).await?,
        "boot_failures" => boot_failures(client).await?,
        "reset_boot_failures" => {
            let queue = match arg {
                Value::Null => None,
                Value::String(q) => Some(q.as_str()),
                _ => {
                    return Err(Error::invalid(format!(
                        "reset_boot_failures takes a queue name or null (every queue), got {arg}"
                    )));
                }
            };
            Value::from(client.reset_boot_failures(queue).await?)
        }
        "dashboard" => dashboard(client, arg).await?,
        "config" => config(client),
        "local_api_url" => Value::from(local_api_url(client).await),
        "start_scaler" => {
            start_scaler(client).await?;
            Value::Null
        }
        other => {
            return Err(Error::invalid(format!(
                "no client call {other:?} (known: {})",
                CALLS.join(", ")
            )));
        }
    })
}

/// Start the embedded scaler in this process (refused inside a worker machine).
pub async fn start_scaler(client: &Client) -> Result<()> {
    client.start_scaler().await
}

/// Stop the scaler and the local Machines API (if this process started them).
pub async fn shutdown(client: &Client) -> Result<()> {
    client.shutdown().await;
    Ok(())
}

/// The local Machines API's URL, once started.
pub async fn local_api_url(client: &Client) -> Option<String> {
    client.local_api_url().await
}

/// Start a worker in this process (options map: `queues`, `concurrency`, `wait`, `pool`).
pub async fn worker(client: &Client, options: &Value) -> Result<Worker> {
    let opts = flyjobs::worker::WorkerOptions::from_options(
        client.config(),
        object("worker options", options)?,
    )?;
    client.worker(opts).await
}

/// A claimed job as a binding object holds it: one outcome (complete, fail or release), then a
/// second attempt is a `Conflict` naming the job. The one place that rule lives for every
/// language.
#[derive(Debug)]
pub struct HeldLease {
    lease: std::sync::Mutex<Option<WorkerLease>>,
    job_id: i64,
}

impl HeldLease {
    /// Hold `lease` until its outcome.
    pub fn new(lease: WorkerLease) -> Self {
        HeldLease {
            job_id: lease.job().id.0,
            lease: std::sync::Mutex::new(Some(lease)),
        }
    }

    /// The job's id.
    pub fn job_id(&self) -> i64 {
        self.job_id
    }

    /// `f` of the job, while the lease is held (before its outcome); `Conflict` after.
    pub fn with_job<R>(&self, f: impl FnOnce(&flyjobs::job::Job) -> R) -> Result<R> {
        let guard = self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match guard.as_ref() {
            Some(lease) => Ok(f(lease.job())),
            None => Err(self.gone()),
        }
    }

    fn gone(&self) -> Error {
        Error::new(
            ErrorKind::Conflict,
            format!(
                "job {} was already completed, failed or released",
                self.job_id
            ),
        )
        .with_job_id(self.job_id)
    }

    /// Take the lease for its outcome; `Conflict` if it already had one.
    pub fn take(&self) -> Result<WorkerLease> {
        self.lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| self.gone())
    }
}

/// The job of a lease, as data.
pub fn lease_job(lease: &WorkerLease) -> Result<Value> {
    to_value(lease.job())
}

/// The job succeeded.
pub async fn complete(lease: WorkerLease) -> Result<()> {
    lease.complete().await
}

/// The job succeeded: recorded by the worker's group commit while the caller runs its next
/// job (what every language's worker loop does after a job that returned nothing).
pub fn complete_later(lease: WorkerLease) {
    lease.complete_later();
}

/// The job succeeded and returned `result` (any JSON value; shown as the job's `result`).
pub async fn complete_with(lease: WorkerLease, result: Value) -> Result<()> {
    lease.complete_with(Some(result)).await
}

/// The job raised: `failure` is `{"class": …, "message": …, "backtrace": [...]}`; returns the
/// retry policy's outcome (`{"outcome": "retry", "at": …}` or `{"outcome": "dead"}`).
pub async fn fail(lease: WorkerLease, failure: &Value) -> Result<Value> {
    let failure: flyjobs::job::Failure = serde_json::from_value(failure.clone()).map_err(|e| {
        Error::invalid(format!(
            "a failure is {{class, message, backtrace}}: {e}, got {failure}"
        ))
    })?;
    to_value(&lease.fail(failure).await?)
}

/// Give the job back untouched (graceful stop).
pub async fn release(lease: WorkerLease) -> Result<()> {
    lease.release().await
}

/// An error as data (see [`flyjobs::error::ErrorView`]).
pub fn error_view(e: &Error) -> Value {
    serde_json::to_value(e.view()).unwrap_or_else(|_| json!({"kind": "internal"}))
}

/// A poll of at most `seconds` (clamped to 0..=`max`), for bindings that give a number.
pub fn wait_slice(seconds: f64, max: Duration) -> Duration {
    if seconds.is_finite() && seconds > 0.0 {
        Duration::from_secs_f64(seconds).min(max)
    } else {
        Duration::ZERO
    }
}
