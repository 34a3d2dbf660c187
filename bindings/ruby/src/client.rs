//! `FlyJobs::Native::Client`: open, enqueue, enqueue_many, start_scaler, worker, job, close.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use magnus::{Error, RArray, RHash, Ruby, TryConvert, Value, function, method, prelude::*};

use flyjobs::config::{QueueSettings, Wait};

use crate::error::{guard, to_ruby};
use crate::gvl::without_gvl;
use crate::worker::RbWorker;

/// A core `Client` (a cheap-to-clone handle); `None` once closed.
#[magnus::wrap(class = "FlyJobs::Native::Client", free_immediately, size)]
pub struct RbClient {
    inner: Mutex<Option<flyjobs::Client>>,
}

/// One row of `_enqueue_many`: the positional arguments of `_enqueue`.
type Row = (
    String,
    String,
    i32,
    Option<f64>,
    Option<u32>,
    Option<String>,
    Option<String>,
);

impl RbClient {
    fn get(&self, ruby: &Ruby) -> Result<flyjobs::Client, Error> {
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone().ok_or_else(|| {
            to_ruby(
                ruby,
                &flyjobs::Error::new(flyjobs::ErrorKind::Shutdown, "the client is closed"),
            )
        })
    }

    /// `Client._open(options_hash)`.
    fn open(opts: RHash) -> Result<Self, Error> {
        guard(|ruby| {
            let config = crate::options::config(ruby, opts)?;
            let client = block(ruby, flyjobs::Client::open(config))?;
            Ok(RbClient {
                inner: Mutex::new(Some(client)),
            })
        })
    }

    /// `#_enqueue(queue, payload_json, priority, run_at, max_attempts, name, unique_key) -> id`.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        queue: String,
        payload: String,
        priority: i32,
        run_at: Option<f64>,
        max_attempts: Option<u32>,
        name: Option<String>,
        unique_key: Option<String>,
    ) -> Result<i64, Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            let job = new_job(
                ruby,
                (
                    queue,
                    payload,
                    priority,
                    run_at,
                    max_attempts,
                    name,
                    unique_key,
                ),
            )?;
            let stored = block(ruby, async move { client.enqueue(job).await })?;
            Ok(stored.id.0)
        })
    }

    /// `#_enqueue_many([[queue, payload_json, priority, run_at, max_attempts, name, unique_key], ...]) -> [id]`.
    fn enqueue_many(&self, rows: RArray) -> Result<Vec<i64>, Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            let mut jobs = Vec::with_capacity(rows.len());
            for row in rows.into_iter() {
                jobs.push(new_job(ruby, Row::try_convert(row)?)?);
            }
            let stored = block(ruby, async move { client.enqueue_many(jobs).await })?;
            Ok(stored.into_iter().map(|j| j.id.0).collect())
        })
    }

    /// `#_start_scaler`: the embedded scaler in this process (server processes only).
    fn start_scaler(&self) -> Result<(), Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            block(ruby, async move { client.start_scaler().await })
        })
    }

    /// `#_set_default_worker_command(argv)`: what worker machines run unless
    /// `FLYJOBS_WORKER_COMMAND` says otherwise (the gem passes its `bin/fly-machine-worker`).
    fn set_default_worker_command(&self, argv: Vec<String>) -> Result<(), Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            block(ruby, async move {
                client.set_default_worker_command(argv).await;
                Ok(())
            })
        })
    }

    /// `#_worker(queues, concurrency, wait, pool)`: nil = the core's default for each; wait is
    /// seconds or a String ("600", "10m", "forever"); pool is "none", "stop" or "suspend".
    fn worker(
        &self,
        queues: Vec<String>,
        concurrency: Option<u32>,
        wait: Value,
        pool: Option<String>,
    ) -> Result<RbWorker, Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            let mut options = flyjobs::worker::WorkerOptions::new(queues);
            if let Some(c) = concurrency {
                options.concurrency = c;
            }
            if let Some(w) = wait_arg(ruby, wait)? {
                options.wait = w;
            }
            if let Some(p) = pool {
                options.pool = QueueSettings::default()
                    .apply("--pool", &format!("pool={p}"))
                    .map_err(|e| to_ruby(ruby, &e))?
                    .pool;
            }
            let concurrency = options.concurrency;
            let worker = block(ruby, async move { client.worker(options).await })?;
            Ok(RbWorker::new(worker, concurrency))
        })
    }

    /// `#_job(id) -> json or nil`: the stored job, every column.
    fn job(&self, id: i64) -> Result<Option<String>, Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            let job = block(ruby, async move {
                client.store().get_job(flyjobs::job::JobId(id)).await
            })?;
            job.map(|j| serde_json::to_string(&j).map_err(|e| to_ruby(ruby, &e.into())))
                .transpose()
        })
    }

    /// `#_database_url`: the queue's URL, as given or the core's embedded default.
    fn database_url(&self) -> Result<String, Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            match client.config().database_url() {
                Some(url) => Ok(url.to_string()),
                None => flyjobs::client::default_database_url().map_err(|e| to_ruby(ruby, &e)),
            }
        })
    }

    /// `#_emulator_url -> String or nil`: the embedded emulator's base URL, once started.
    fn emulator_url(&self) -> Result<Option<String>, Error> {
        guard(|ruby| {
            let client = self.get(ruby)?;
            block(ruby, async move { Ok(client.emulator_url().await) })
        })
    }

    /// `#_close`: idempotent.
    fn close(&self) -> Result<(), Error> {
        guard(|ruby| {
            let taken = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(client) = taken {
                block(ruby, async move {
                    client.shutdown().await;
                    Ok(())
                })?;
            }
            Ok(())
        })
    }
}

/// Runs a core future to completion on the process-wide runtime with the GVL released.
pub fn block<T, F>(ruby: &Ruby, fut: F) -> Result<T, Error>
where
    F: std::future::Future<Output = flyjobs::Result<T>>,
{
    match without_gvl(move || flyjobs::runtime::block_on(fut)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_ruby(ruby, &e)),
        Err(panic) => Err(crate::error::internal(ruby, &panic)),
    }
}

fn new_job(ruby: &Ruby, row: Row) -> Result<flyjobs::job::NewJob, Error> {
    let (queue, payload, priority, run_at, max_attempts, name, unique_key) = row;
    let payload: serde_json::Value =
        serde_json::from_str(&payload).map_err(|e| to_ruby(ruby, &e.into()))?;
    let mut job = flyjobs::job::NewJob::new(queue, payload);
    job.priority = priority;
    job.run_at = match run_at {
        Some(t) => Some(timestamp(ruby, t)?),
        None => None,
    };
    job.max_attempts = max_attempts;
    if let Some(name) = name {
        job.name = name;
    }
    job.unique_key = unique_key;
    Ok(job)
}

fn timestamp(ruby: &Ruby, t: f64) -> Result<DateTime<Utc>, Error> {
    let secs = t.floor();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let dt = DateTime::from_timestamp(secs as i64, ((t - secs) * 1e9) as u32);
    dt.ok_or_else(|| {
        to_ruby(
            ruby,
            &flyjobs::Error::invalid(format!("run_at {t} is out of range")),
        )
    })
}

fn wait_arg(ruby: &Ruby, wait: Value) -> Result<Option<Wait>, Error> {
    if wait.is_nil() {
        return Ok(None);
    }
    if let Ok(s) = String::try_convert(wait) {
        return Wait::parse("--wait", &s)
            .map(Some)
            .map_err(|e| to_ruby(ruby, &e));
    }
    let secs = f64::try_convert(wait)?;
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(to_ruby(
            ruby,
            &flyjobs::Error::config(format!(
                "--wait must be seconds >= 0 or forever, got {secs}"
            )),
        ));
    }
    Ok(Some(Wait::Idle(std::time::Duration::from_secs_f64(secs))))
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> Result<(), Error> {
    let class = native.define_class("Client", ruby.class_object())?;
    class.define_singleton_method("_open", function!(RbClient::open, 1))?;
    class.define_method("_enqueue", method!(RbClient::enqueue, 7))?;
    class.define_method("_enqueue_many", method!(RbClient::enqueue_many, 1))?;
    class.define_method("_start_scaler", method!(RbClient::start_scaler, 0))?;
    class.define_method(
        "_set_default_worker_command",
        method!(RbClient::set_default_worker_command, 1),
    )?;
    class.define_method("_worker", method!(RbClient::worker, 4))?;
    class.define_method("_job", method!(RbClient::job, 1))?;
    class.define_method("_database_url", method!(RbClient::database_url, 0))?;
    class.define_method("_emulator_url", method!(RbClient::emulator_url, 0))?;
    class.define_method("_close", method!(RbClient::close, 0))?;
    Ok(())
}
