//! `flyjobs._native.{Worker, Slot, Lease}`: the core's worker, its slots and leases.
//!
//! Each Python thread of `flyjobs.worker.Worker.run` owns a `Slot`. `Slot.next(seconds)` is the
//! surface's `poll_next` with the GIL released: a `Lease`, `None` (the worker is done) or
//! `False` (nothing yet; call again: the claim in flight is kept by the core). Slices are short
//! (at most [`MAX_SLICE`]) so Ctrl-C and signal handlers reach Python in between.

use flyjobs_binding as surface;
use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::bridge::block;
use crate::error::{json_arg, to_py};

/// Longest time one `next` keeps a Python thread in native code.
const MAX_SLICE: std::time::Duration = std::time::Duration::from_secs(1);

/// A core worker shared by the slots of its Python threads.
#[pyclass(frozen, module = "flyjobs._native")]
pub struct Worker {
    inner: surface::Worker,
    shutdown_timeout: f64,
}

impl Worker {
    pub fn new(worker: surface::Worker, shutdown_timeout: f64) -> Self {
        Worker {
            inner: worker,
            shutdown_timeout,
        }
    }
}

#[pymethods]
impl Worker {
    /// A new slot: one per thread running jobs.
    fn slot(&self) -> Slot {
        Slot {
            inner: self.inner.slot(),
        }
    }

    /// Jobs at once.
    #[getter]
    fn concurrency(&self) -> u32 {
        self.inner.concurrency()
    }

    /// Seconds a stopping worker gives running jobs (the `shutdown_timeout` option).
    #[getter]
    fn shutdown_timeout(&self) -> f64 {
        self.shutdown_timeout
    }

    /// Claim nothing new; running jobs finish. Safe in a signal handler.
    fn quiet(&self) {
        self.inner.quiet();
    }

    /// Quiet, wait up to `seconds` for running jobs, release the rest, deregister.
    fn stop(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let w = self.inner.clone();
        let grace = surface::wait_slice(seconds, std::time::Duration::MAX);
        block(py, async move {
            w.stop(grace).await;
            Ok(())
        })
    }

    /// Whether the worker was asked to quiet or stop.
    #[getter]
    fn stopping(&self) -> bool {
        self.inner.stopping()
    }
}

/// One Python thread's handle on the worker.
#[pyclass(frozen, module = "flyjobs._native")]
pub struct Slot {
    inner: surface::Slot,
}

#[pymethods]
impl Slot {
    /// `next(seconds) -> Lease | None | False`.
    fn next<'py>(&self, py: Python<'py>, seconds: f64) -> PyResult<Bound<'py, PyAny>> {
        let slice = surface::wait_slice(seconds, MAX_SLICE);
        let slot = &self.inner;
        match block(py, slot.poll_next(slice))? {
            surface::Poll::Pending => Ok(PyBool::new(py, false).to_owned().into_any()),
            surface::Poll::Done => Ok(py.None().into_bound(py)),
            surface::Poll::Job(lease) => Ok(Bound::new(py, Lease::new(py, *lease)?)?.into_any()),
        }
    }
}

/// A claimed job: read its fields, then `complete`, `fail` or `release` it once.
#[pyclass(frozen, module = "flyjobs._native")]
pub struct Lease {
    lease: surface::HeldLease,
    /// The job id.
    #[pyo3(get)]
    job_id: i64,
    /// Its queue.
    #[pyo3(get)]
    queue: String,
    /// Its name (`module:qualname`).
    #[pyo3(get)]
    name: String,
    /// Runs so far, this one included.
    #[pyo3(get)]
    attempts: i64,
    /// The payload as JSON text.
    #[pyo3(get)]
    payload: String,
}

impl Lease {
    fn new(py: Python<'_>, lease: surface::WorkerLease) -> PyResult<Self> {
        let job = lease.job();
        let payload = serde_json::to_string(&job.payload).map_err(|e| to_py(py, &e.into()))?;
        Ok(Lease {
            job_id: job.id.0,
            queue: job.queue.clone(),
            name: job.name.clone(),
            attempts: i64::from(job.attempts),
            payload,
            lease: surface::HeldLease::new(lease),
        })
    }

    fn take(&self, py: Python<'_>) -> PyResult<surface::WorkerLease> {
        self.lease.take().map_err(|e| to_py(py, &e))
    }
}

#[pymethods]
impl Lease {
    /// The job succeeded.
    fn complete(&self, py: Python<'_>) -> PyResult<()> {
        let lease = self.take(py)?;
        block(py, surface::complete(lease))
    }

    /// The job succeeded: recorded by the worker's group commit while this thread runs its
    /// next job (no wait for the database).
    fn complete_later(&self, py: Python<'_>) -> PyResult<()> {
        surface::complete_later(self.take(py)?);
        Ok(())
    }

    /// The job succeeded and returned `result_json` (kept as the job's `result`).
    fn complete_with(&self, py: Python<'_>, result: &str) -> PyResult<()> {
        let result = json_arg(py, "result", result)?;
        let lease = self.take(py)?;
        block(py, surface::complete_with(lease, result))
    }

    /// `fail(failure_json) -> outcome_json` (`{"outcome":"retry","at":…}` or `{"outcome":"dead"}`).
    fn fail(&self, py: Python<'_>, failure: &str) -> PyResult<String> {
        let failure = json_arg(py, "failure", failure)?;
        let lease = self.take(py)?;
        let outcome = block(py, async move { surface::fail(lease, &failure).await })?;
        Ok(outcome.to_string())
    }

    /// Give the job back untouched.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let lease = self.take(py)?;
        block(py, surface::release(lease))
    }
}
