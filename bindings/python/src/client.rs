//! `flyjobs._native.Client`: every call of the binding surface (`flyjobs_binding`), blocking
//! (GIL released) and as asyncio futures (`*_async`), with values as JSON text in and out
//! (python/src/flyjobs/client.py generates and parses it).

use std::sync::Mutex;

use flyjobs_binding as surface;
use pyo3::prelude::*;
use serde_json::Value;

use crate::bridge::{awaitable, block, json_text};
use crate::error::{json_arg, to_py};
use crate::worker::Worker;

/// A core client (a cheap-to-clone handle); `None` once closed.
#[pyclass(frozen, module = "flyjobs._native")]
pub struct Client {
    inner: Mutex<Option<surface::Client>>,
}

impl Client {
    fn new(client: surface::Client) -> Self {
        Client {
            inner: Mutex::new(Some(client)),
        }
    }

    fn get(&self, py: Python<'_>) -> PyResult<surface::Client> {
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone().ok_or_else(|| {
            to_py(
                py,
                &surface::Error::new(surface::ErrorKind::Shutdown, "the client is closed"),
            )
        })
    }

    fn take(&self) -> Option<surface::Client> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

fn open_options(
    default_worker_command: Vec<String>,
    local_api_command: Vec<String>,
) -> surface::OpenOptions {
    surface::OpenOptions {
        default_worker_command,
        local_api_command,
    }
}

/// The admin calls, by name: one entry point so that a new admin call needs no new glue.
async fn dispatch(client: surface::Client, name: String, arg: Value) -> surface::Result<Value> {
    surface::call(&client, &name, &arg).await
}

#[pymethods]
impl Client {
    /// `Client.open(options_json, default_worker_command, local_api_command=[])`: off Fly, a
    /// non-empty `local_api_command` (`python -m flyjobs local-api`) makes the local Machines API
    /// one daemon shared by every process of the app; empty runs it inside this process.
    #[staticmethod]
    #[pyo3(signature = (options, default_worker_command, local_api_command = Vec::new()))]
    fn open(
        py: Python<'_>,
        options: &str,
        default_worker_command: Vec<String>,
        local_api_command: Vec<String>,
    ) -> PyResult<Self> {
        let options = json_arg(py, "options", options)?;
        let how = open_options(default_worker_command, local_api_command);
        let client = block(py, async move { surface::open_with(&options, how).await })?;
        Ok(Client::new(client))
    }

    /// `Client.open_async(options_json, default_worker_command, local_api_command=[])
    /// -> Future[Client]`.
    #[staticmethod]
    #[pyo3(signature = (options, default_worker_command, local_api_command = Vec::new()))]
    fn open_async<'py>(
        py: Python<'py>,
        options: &str,
        default_worker_command: Vec<String>,
        local_api_command: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = json_arg(py, "options", options)?;
        let how = open_options(default_worker_command, local_api_command);
        awaitable(
            py,
            async move { surface::open_with(&options, how).await },
            |py, client| Ok(Py::new(py, Client::new(client))?.into_any()),
        )
    }

    /// `enqueue(job_json) -> job_json`.
    fn enqueue(&self, py: Python<'_>, job: &str) -> PyResult<String> {
        let (client, job) = (self.get(py)?, json_arg(py, "job", job)?);
        let stored = block(py, async move { surface::enqueue(&client, &job).await })?;
        Ok(stored.to_string())
    }

    /// `enqueue_async(job_json) -> Future[job_json]`.
    fn enqueue_async<'py>(&self, py: Python<'py>, job: &str) -> PyResult<Bound<'py, PyAny>> {
        let (client, job) = (self.get(py)?, json_arg(py, "job", job)?);
        awaitable(
            py,
            async move { surface::enqueue(&client, &job).await },
            json_text,
        )
    }

    /// `enqueue_many(jobs_json) -> [job]_json`: all or nothing.
    fn enqueue_many(&self, py: Python<'_>, jobs: &str) -> PyResult<String> {
        let (client, jobs) = (self.get(py)?, json_arg(py, "jobs", jobs)?);
        let stored = block(
            py,
            async move { surface::enqueue_many(&client, &jobs).await },
        )?;
        Ok(stored.to_string())
    }

    /// `enqueue_many_async(jobs_json) -> Future[[job]_json]`.
    fn enqueue_many_async<'py>(&self, py: Python<'py>, jobs: &str) -> PyResult<Bound<'py, PyAny>> {
        let (client, jobs) = (self.get(py)?, json_arg(py, "jobs", jobs)?);
        awaitable(
            py,
            async move { surface::enqueue_many(&client, &jobs).await },
            json_text,
        )
    }

    /// `call(name, arg_json) -> json`: `job`, `jobs`, `cancel`, `discard`, `retry`, `clear`,
    /// `stats`, `workers`, `machines`, `config`, `local_api_url`, `start_scaler`.
    fn call(&self, py: Python<'_>, name: String, arg: &str) -> PyResult<String> {
        let (client, arg) = (self.get(py)?, json_arg(py, "argument", arg)?);
        let out = block(py, dispatch(client, name, arg))?;
        Ok(out.to_string())
    }

    /// `call_async(name, arg_json) -> Future[json]`.
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        name: String,
        arg: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (client, arg) = (self.get(py)?, json_arg(py, "argument", arg)?);
        awaitable(py, dispatch(client, name, arg), json_text)
    }

    /// `worker(options_json) -> Worker`.
    fn worker(&self, py: Python<'_>, options: &str) -> PyResult<Worker> {
        let (client, options) = (self.get(py)?, json_arg(py, "worker options", options)?);
        let shutdown = client.config().shutdown_timeout().as_secs_f64();
        let worker = block(py, async move { surface::worker(&client, &options).await })?;
        Ok(Worker::new(worker, shutdown))
    }

    /// `close()`: idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match self.take() {
            Some(client) => block(py, async move { surface::shutdown(&client).await }),
            None => Ok(()),
        }
    }

    /// `close_async() -> Future[None]`: idempotent.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.take();
        awaitable(
            py,
            async move {
                match client {
                    Some(c) => surface::shutdown(&c).await,
                    None => Ok(()),
                }
            },
            |py, ()| Ok(py.None()),
        )
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none()
    }
}
