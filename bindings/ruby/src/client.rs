//! `FlyJobs::Native::Client`: every call of the binding surface (`flyjobs_binding`), with
//! values as JSON text in and out (lib/flyjobs/client.rb generates and parses it).

use std::sync::Mutex;

use flyjobs_binding as surface;
use magnus::{Error, Ruby, function, method, prelude::*};
use serde_json::Value;

use crate::error::{guard, json_arg, to_ruby};
use crate::gvl::always;
use crate::worker::RbWorker;

/// A core client (a cheap-to-clone handle); `None` once closed.
#[magnus::wrap(class = "FlyJobs::Native::Client", free_immediately, size)]
pub struct RbClient {
    inner: Mutex<Option<surface::Client>>,
}

/// Runs a core future on the process-wide runtime with the GVL released (held if an interrupt
/// is already pending: the call still happens once, and Ruby raises the interrupt after it).
pub fn block<T, F>(ruby: &Ruby, fut: F) -> Result<T, Error>
where
    F: std::future::Future<Output = surface::Result<T>>,
{
    match always(move |_| surface::runtime::block_on(fut)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_ruby(ruby, &e)),
        Err(panic) => Err(crate::error::internal(ruby, &panic)),
    }
}

/// JSON text of a value the core returned.
fn text(v: &Value) -> String {
    v.to_string()
}

impl RbClient {
    fn get(&self, ruby: &Ruby) -> Result<surface::Client, Error> {
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone().ok_or_else(|| {
            to_ruby(
                ruby,
                &surface::Error::new(surface::ErrorKind::Shutdown, "the client is closed"),
            )
        })
    }

    /// `Client._open(options_json, default_worker_command, local_api_command)`.
    fn open(
        options: String,
        default_worker_command: Vec<String>,
        local_api_command: Vec<String>,
    ) -> Result<Self, Error> {
        guard(|ruby| {
            let options = json_arg(ruby, "options", &options)?;
            let how = surface::OpenOptions {
                default_worker_command,
                local_api_command,
            };
            let client = block(ruby, async move { surface::open_with(&options, how).await })?;
            Ok(RbClient {
                inner: Mutex::new(Some(client)),
            })
        })
    }

    /// `#_enqueue(job_json) -> id`.
    fn enqueue(&self, job: String) -> Result<i64, Error> {
        guard(|ruby| {
            let (client, job) = (self.get(ruby)?, json_arg(ruby, "job", &job)?);
            let stored = block(ruby, async move { surface::enqueue(&client, &job).await })?;
            Ok(stored["id"].as_i64().unwrap_or_default())
        })
    }

    /// `#_enqueue_many(jobs_json) -> [id]`.
    fn enqueue_many(&self, jobs: String) -> Result<Vec<i64>, Error> {
        guard(|ruby| {
            let (client, jobs) = (self.get(ruby)?, json_arg(ruby, "jobs", &jobs)?);
            let stored = block(
                ruby,
                async move { surface::enqueue_many(&client, &jobs).await },
            )?;
            Ok(stored
                .as_array()
                .map(|a| a.iter().filter_map(|j| j["id"].as_i64()).collect())
                .unwrap_or_default())
        })
    }

    /// `#_call(name, arg_json) -> json`: the admin calls (`job`, `jobs`, `cancel`, `discard`,
    /// `retry`, `clear`, `stats`, `workers`, `machines`, `config`, `local_api_url`,
    /// `start_scaler`), one entry point so that a new admin call needs no new glue.
    fn call(&self, name: String, arg: String) -> Result<String, Error> {
        guard(|ruby| {
            let (client, arg) = (self.get(ruby)?, json_arg(ruby, "argument", &arg)?);
            let out = block(ruby, async { surface::call(&client, &name, &arg).await })?;
            Ok(text(&out))
        })
    }

    /// `#_worker(options_json) -> Worker`.
    fn worker(&self, options: String) -> Result<RbWorker, Error> {
        guard(|ruby| {
            let (client, options) = (self.get(ruby)?, json_arg(ruby, "worker options", &options)?);
            let shutdown = client.config().shutdown_timeout().as_secs_f64();
            let worker = block(
                ruby,
                async move { surface::worker(&client, &options).await },
            )?;
            Ok(RbWorker::new(worker, shutdown))
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
                block(ruby, async move { surface::shutdown(&client).await })?;
            }
            Ok(())
        })
    }
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> Result<(), Error> {
    let class = native.define_class("Client", ruby.class_object())?;
    class.define_singleton_method("_open", function!(RbClient::open, 3))?;
    class.define_method("_enqueue", method!(RbClient::enqueue, 1))?;
    class.define_method("_enqueue_many", method!(RbClient::enqueue_many, 1))?;
    class.define_method("_call", method!(RbClient::call, 2))?;
    class.define_method("_worker", method!(RbClient::worker, 1))?;
    class.define_method("_close", method!(RbClient::close, 0))?;
    Ok(())
}
