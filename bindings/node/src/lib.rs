//! Node glue for flyjobs (napi-rs): the native half of the `flyjobs` npm package in node/.
//!
//! Glue only, over the binding surface (`flyjobs_binding`): values cross as JS objects through
//! napi's `serde-json` support, every core call runs on the core's own runtime and comes back as
//! a Promise (nothing blocks the event loop), and errors cross as their view (see [`js_error`]).
//! node/src/*.ts is the public API on top of these classes; node/src/native.ts declares them.
//!
//! Threads: Rust never calls into JavaScript from its own threads. A call spawns its future on
//! [`flyjobs_binding::runtime::handle`] (where the core's pools and timers live) and napi's
//! runtime only awaits the join handle, then resolves the Promise on the JS thread.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flyjobs_binding as surface;
use napi::bindgen_prelude::{Either, PromiseRaw, ToNapiValue};
use napi::{Env, Status};
use napi_derive::napi;
use serde_json::{Value, json};

/// Prefix of a rejected call's message: the rest is the error view as JSON, which
/// node/src/errors.ts turns into a `FlyJobsError`. Not text a person reads.
const ERROR_MARK: &str = "\u{1}flyjobs-error:";

/// The error of a core call as a napi error carrying the view of the error.
fn js_error(e: &surface::Error) -> napi::Error {
    view_error(&surface::error_view(e))
}

fn view_error(view: &Value) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("{ERROR_MARK}{view}"))
}

/// A bug on our side (a panic in a core task), never a crash of the node process.
fn internal(what: impl std::fmt::Display) -> napi::Error {
    view_error(&json!({
        "kind": "internal",
        "message": format!("internal error in flyjobs (please report it): {what}"),
        "retryable": false,
        "status": null,
        "request_id": null,
        "job_id": null,
        "causes": [],
    }))
}

/// Runs a core future on the core's runtime and hands its result to JS as a Promise.
fn promise<'e, T, F>(env: &'e Env, fut: F) -> napi::Result<PromiseRaw<'e, T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = surface::Result<T>> + Send + 'static,
{
    let task = surface::runtime::handle().spawn(fut);
    env.spawn_future(async move {
        match task.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(js_error(&e)),
            Err(join) => Err(internal(join)),
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `open(options, defaultWorkerCommand, localApiCommand?) -> Promise<NativeClient>`: options
/// under the core's names (node/src/config.ts maps camelCase once). Off Fly, a non-empty
/// `localApiCommand` (`node <flyjobs>/dist/cli.js local-api`) makes the local Machines API one
/// daemon shared by every process of the app (cluster workers); empty runs it in this process.
#[napi]
pub fn open(
    env: &Env,
    options: Value,
    default_worker_command: Vec<String>,
    local_api_command: Option<Vec<String>>,
) -> napi::Result<PromiseRaw<'_, NativeClient>> {
    let how = surface::OpenOptions {
        default_worker_command,
        local_api_command: local_api_command.unwrap_or_default(),
    };
    promise(env, async move {
        let client = surface::open_with(&options, how).await?;
        Ok(NativeClient {
            inner: Mutex::new(Some(client)),
        })
    })
}

/// `serveLocalApi(stateDir) -> Promise<void>`: the app's shared local Machines API (`flyjobs
/// local-api STATE` of the package's CLI). Resolves when no process of the app is left and its
/// machines are stopped, or on SIGTERM/SIGINT.
#[napi]
pub fn serve_local_api(env: &Env, state_dir: String) -> napi::Result<PromiseRaw<'_, ()>> {
    promise(
        env,
        async move { surface::serve_local_api(&state_dir).await },
    )
}

/// A core client; `None` once closed.
#[napi]
pub struct NativeClient {
    inner: Mutex<Option<surface::Client>>,
}

#[napi]
impl NativeClient {
    fn get(&self) -> napi::Result<surface::Client> {
        lock(&self.inner).clone().ok_or_else(|| {
            js_error(&surface::Error::new(
                surface::ErrorKind::Shutdown,
                "the client is closed",
            ))
        })
    }

    /// `enqueue(job) -> Promise<job>`.
    #[napi]
    pub fn enqueue<'e>(&self, env: &'e Env, job: Value) -> napi::Result<PromiseRaw<'e, Value>> {
        let client = self.get()?;
        promise(env, async move { surface::enqueue(&client, &job).await })
    }

    /// `enqueueMany(jobs) -> Promise<job[]>`: one transaction.
    #[napi]
    pub fn enqueue_many<'e>(
        &self,
        env: &'e Env,
        jobs: Value,
    ) -> napi::Result<PromiseRaw<'e, Value>> {
        let client = self.get()?;
        promise(
            env,
            async move { surface::enqueue_many(&client, &jobs).await },
        )
    }

    /// `call(name, arg) -> Promise<value>`: the admin calls (`job`, `jobs`, `cancel`,
    /// `discard`, `retry`, `clear`, `stats`, `workers`, `machines`, `config`, `localApiUrl`,
    /// `startScaler`), one entry point so that a new admin call needs no new glue.
    #[napi]
    pub fn call<'e>(
        &self,
        env: &'e Env,
        name: String,
        arg: Option<Value>,
    ) -> napi::Result<PromiseRaw<'e, Value>> {
        let client = self.get()?;
        let arg = arg.unwrap_or(Value::Null);
        // JS names are camelCase (`localApiUrl`); the surface's are snake_case.
        let name = snake_case(&name);
        promise(
            env,
            async move { surface::call(&client, &name, &arg).await },
        )
    }

    /// `worker(options) -> Promise<NativeWorker>` (`queues`, `concurrency`, `wait`, `pool`).
    #[napi]
    pub fn worker<'e>(
        &self,
        env: &'e Env,
        options: Value,
    ) -> napi::Result<PromiseRaw<'e, NativeWorker>> {
        let client = self.get()?;
        let shutdown_timeout = client.config().shutdown_timeout().as_secs_f64();
        promise(env, async move {
            let worker = surface::worker(&client, &options).await?;
            Ok(NativeWorker {
                inner: worker,
                shutdown_timeout,
            })
        })
    }

    /// `close() -> Promise<void>`: idempotent.
    #[napi]
    pub fn close<'e>(&self, env: &'e Env) -> napi::Result<PromiseRaw<'e, ()>> {
        let taken = lock(&self.inner).take();
        promise(env, async move {
            if let Some(client) = taken {
                surface::shutdown(&client).await?;
            }
            Ok(())
        })
    }

    /// `closeSync()`: `close` blocking the JS thread, for a process `'exit'` handler (which
    /// cannot wait for a Promise): the scaler stops and gives back its leader lock, and this
    /// process stops counting as a user of the shared local Machines API. Idempotent.
    #[napi]
    pub fn close_sync(&self) -> napi::Result<()> {
        match lock(&self.inner).take() {
            Some(client) => {
                surface::runtime::block_on(surface::shutdown(&client)).map_err(|e| js_error(&e))
            }
            None => Ok(()),
        }
    }
}

/// Largest request body the mounted dashboard accepts (a handler reads one byte more at most).
#[napi]
pub const DASHBOARD_MAX_BODY: u32 = surface::DASHBOARD_MAX_BODY as u32;

/// A core worker shared by the slots of its JS loops.
#[napi]
pub struct NativeWorker {
    inner: surface::Worker,
    shutdown_timeout: f64,
}

#[napi]
impl NativeWorker {
    /// One loop's handle: each of the N loops of `concurrency` polls its own slot.
    #[napi]
    pub fn slot(&self) -> NativeSlot {
        NativeSlot {
            inner: Arc::new(self.inner.slot()),
        }
    }

    /// Jobs at once.
    #[napi(getter)]
    pub fn concurrency(&self) -> u32 {
        self.inner.concurrency()
    }

    /// Seconds a stopping worker gives running jobs (the `shutdown_timeout` option).
    #[napi(getter)]
    pub fn shutdown_timeout(&self) -> f64 {
        self.shutdown_timeout
    }

    /// Claim nothing new; running jobs go on.
    #[napi]
    pub fn quiet(&self) {
        self.inner.quiet();
    }

    /// Whether quiet or stopping.
    #[napi(getter)]
    pub fn stopping(&self) -> bool {
        self.inner.stopping()
    }

    /// `stop(seconds) -> Promise<void>`: quiet, wait up to `seconds` for running jobs, release
    /// the rest, deregister.
    #[napi]
    pub fn stop<'e>(&self, env: &'e Env, seconds: f64) -> napi::Result<PromiseRaw<'e, ()>> {
        let worker = self.inner.clone();
        let grace = surface::wait_slice(seconds, Duration::MAX);
        promise(env, async move {
            worker.stop(grace).await;
            Ok(())
        })
    }
}

/// One JS loop's handle on the worker.
#[napi]
pub struct NativeSlot {
    inner: Arc<surface::Slot>,
}

#[napi]
impl NativeSlot {
    /// `next(seconds) -> Promise<NativeLease | "pending" | "done">`: waits at most `seconds`;
    /// a claim still in flight is kept for the next call.
    #[napi]
    pub fn next<'e>(
        &self,
        env: &'e Env,
        seconds: f64,
    ) -> napi::Result<PromiseRaw<'e, Either<NativeLease, String>>> {
        let slot = self.inner.clone();
        let wait = surface::wait_slice(seconds, Duration::from_secs(3600));
        promise(env, async move {
            Ok(match slot.poll_next(wait).await? {
                surface::Poll::Job(lease) => Either::A(NativeLease::new(*lease)?),
                surface::Poll::Pending => Either::B("pending".to_string()),
                surface::Poll::Done => Either::B("done".to_string()),
            })
        })
    }
}

/// A claimed job: read `job`, then `complete`, `fail` or `release` it once.
#[napi]
pub struct NativeLease {
    lease: surface::HeldLease,
    job: Value,
}

impl NativeLease {
    fn new(lease: surface::WorkerLease) -> surface::Result<Self> {
        let job = surface::lease_job(&lease)?;
        Ok(NativeLease {
            job,
            lease: surface::HeldLease::new(lease),
        })
    }

    fn take(&self) -> napi::Result<surface::WorkerLease> {
        self.lease.take().map_err(|e| js_error(&e))
    }
}

#[napi]
impl NativeLease {
    /// The job as stored (`id`, `queue`, `name`, `attempts`, `payload`, …).
    #[napi(getter)]
    pub fn job(&self) -> Value {
        self.job.clone()
    }

    /// The job succeeded.
    #[napi]
    pub fn complete<'e>(&self, env: &'e Env) -> napi::Result<PromiseRaw<'e, ()>> {
        let lease = self.take()?;
        promise(env, surface::complete(lease))
    }

    /// The job succeeded: recorded by the worker's group commit while the slot runs its next
    /// job (no Promise to wait for).
    #[napi]
    pub fn complete_later(&self) -> napi::Result<()> {
        surface::complete_later(self.take()?);
        Ok(())
    }

    /// `fail({class, message, backtrace}) -> Promise<outcome>`: `{outcome: "retry", at}` or
    /// `{outcome: "dead"}`.
    #[napi]
    pub fn fail<'e>(&self, env: &'e Env, failure: Value) -> napi::Result<PromiseRaw<'e, Value>> {
        let lease = self.take()?;
        promise(env, async move { surface::fail(lease, &failure).await })
    }

    /// Give the job back untouched (graceful stop).
    #[napi]
    pub fn release<'e>(&self, env: &'e Env) -> napi::Result<PromiseRaw<'e, ()>> {
        let lease = self.take()?;
        promise(env, surface::release(lease))
    }
}

/// The one vocabulary of settings: `{options, queue_settings, worker_options}`.
#[napi]
pub fn option_specs() -> Value {
    surface::option_specs()
}

/// Options over a stand-in environment -> the resolved settings (the shared vectors).
#[napi]
pub fn resolve_config(options: Value, env: Value) -> napi::Result<Value> {
    surface::resolve_config(&options, &env).map_err(|e| js_error(&e))
}

/// Every error kind the core knows.
#[napi]
pub fn error_kinds() -> Vec<&'static str> {
    surface::ErrorKind::ALL.iter().map(|k| k.as_str()).collect()
}

/// Throws the error the glue makes for an error view (the shared error vectors).
#[napi]
pub fn throw_error_view(view: Value) -> napi::Result<()> {
    let parsed: surface::ErrorView = serde_json::from_value(view)
        .map_err(|e| napi::Error::new(Status::InvalidArg, format!("bad error view: {e}")))?;
    let view = serde_json::to_value(parsed).map_err(internal)?;
    Err(view_error(&view))
}

/// Capture the core's log events at `filter` (`FLYJOBS_LOG` wins); false if the process
/// already had a subscriber.
#[napi]
pub fn logs_install(filter: String) -> bool {
    surface::logs::install(&filter)
}

/// The records logged since the last call, without waiting: `{records: [{level, target,
/// message}], dropped}`. node/src/logs.ts calls it from an unref'd timer.
#[napi]
pub fn logs_drain() -> Value {
    let (records, dropped) = surface::logs::drain(Duration::ZERO);
    json!({ "records": records, "dropped": dropped })
}

/// `localApiUrl` -> `local_api_url`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
