//! `FlyJobs::Native::{Worker, Slot, Lease}`: the core's worker, its slots and leases.
//!
//! Each Ruby thread of `FlyJobs::Worker#run` owns a `Slot`. `Slot#_next(seconds)` is the
//! surface's `poll_next` with the GVL released: a `Lease`, `nil` (the worker is done) or
//! `false` (nothing yet; call again: the claim in flight is kept by the core).

use flyjobs_binding as surface;
use magnus::{Error, IntoValue, Ruby, Value, method, prelude::*};

use crate::client::block;
use crate::error::{guard, json_arg, to_ruby};

/// Longest time one `_next` keeps a Ruby thread in native code: Ruby's interrupts (signals,
/// `Thread#kill`) are served between calls.
const MAX_SLICE: std::time::Duration = std::time::Duration::from_secs(2);

/// A core worker shared by the slots of its Ruby threads.
#[magnus::wrap(class = "FlyJobs::Native::Worker", free_immediately, size)]
pub struct RbWorker {
    inner: surface::Worker,
    shutdown_timeout: f64,
}

impl RbWorker {
    pub fn new(worker: surface::Worker, shutdown_timeout: f64) -> Self {
        RbWorker {
            inner: worker,
            shutdown_timeout,
        }
    }

    fn slot(&self) -> RbSlot {
        RbSlot {
            inner: self.inner.slot(),
        }
    }

    fn concurrency(&self) -> u32 {
        self.inner.concurrency()
    }

    fn shutdown_timeout(&self) -> f64 {
        self.shutdown_timeout
    }

    fn quiet(&self) {
        self.inner.quiet();
    }

    /// `#_stop(seconds)`: quiet, wait up to `seconds` for running jobs, release the rest, deregister.
    fn stop(&self, seconds: f64) -> Result<(), Error> {
        guard(|ruby| {
            let w = self.inner.clone();
            let grace = surface::wait_slice(seconds, std::time::Duration::MAX);
            block(ruby, async move {
                w.stop(grace).await;
                Ok(())
            })
        })
    }

    fn stopping(&self) -> bool {
        self.inner.stopping()
    }
}

/// One Ruby thread's handle on the worker.
#[magnus::wrap(class = "FlyJobs::Native::Slot", free_immediately, size)]
pub struct RbSlot {
    inner: surface::Slot,
}

impl RbSlot {
    /// `#_next(seconds) -> Lease | nil | false`.
    fn next(&self, seconds: f64) -> Result<Value, Error> {
        guard(|ruby| {
            let slice = surface::wait_slice(seconds, MAX_SLICE);
            let slot = &self.inner;
            match block(ruby, slot.poll_next(slice))? {
                surface::Poll::Pending => Ok(ruby.qfalse().as_value()),
                surface::Poll::Done => Ok(ruby.qnil().as_value()),
                surface::Poll::Job(lease) => Ok(RbLease::new(ruby, *lease)?.into_value_with(ruby)),
            }
        })
    }
}

/// A claimed job: read its fields, then `_complete`, `_fail` or `_release` it once.
#[magnus::wrap(class = "FlyJobs::Native::Lease", free_immediately, size)]
pub struct RbLease {
    lease: surface::HeldLease,
    job_id: i64,
    queue: String,
    name: String,
    attempts: i64,
    payload: String,
}

impl RbLease {
    fn new(ruby: &Ruby, lease: surface::WorkerLease) -> Result<Self, Error> {
        let job = lease.job();
        let payload = serde_json::to_string(&job.payload).map_err(|e| to_ruby(ruby, &e.into()))?;
        Ok(RbLease {
            job_id: job.id.0,
            queue: job.queue.clone(),
            name: job.name.clone(),
            attempts: i64::from(job.attempts),
            payload,
            lease: surface::HeldLease::new(lease),
        })
    }

    fn take(&self, ruby: &Ruby) -> Result<surface::WorkerLease, Error> {
        self.lease.take().map_err(|e| to_ruby(ruby, &e))
    }

    fn job_id(&self) -> i64 {
        self.job_id
    }
    fn queue(&self) -> String {
        self.queue.clone()
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn attempts(&self) -> i64 {
        self.attempts
    }
    fn payload(&self) -> String {
        self.payload.clone()
    }

    fn complete(&self) -> Result<(), Error> {
        guard(|ruby| {
            let lease = self.take(ruby)?;
            block(ruby, surface::complete(lease))
        })
    }

    /// `#_fail(failure_json) -> outcome_json` (`{"outcome":"retry","at":…}` or `{"outcome":"dead"}`).
    fn fail(&self, failure: String) -> Result<String, Error> {
        guard(|ruby| {
            let failure = json_arg(ruby, "failure", &failure)?;
            let lease = self.take(ruby)?;
            let outcome = block(ruby, async move { surface::fail(lease, &failure).await })?;
            Ok(outcome.to_string())
        })
    }

    fn release(&self) -> Result<(), Error> {
        guard(|ruby| {
            let lease = self.take(ruby)?;
            block(ruby, surface::release(lease))
        })
    }
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> Result<(), Error> {
    let worker = native.define_class("Worker", ruby.class_object())?;
    worker.define_method("_slot", method!(RbWorker::slot, 0))?;
    worker.define_method("_concurrency", method!(RbWorker::concurrency, 0))?;
    worker.define_method("_shutdown_timeout", method!(RbWorker::shutdown_timeout, 0))?;
    worker.define_method("_quiet", method!(RbWorker::quiet, 0))?;
    worker.define_method("_stop", method!(RbWorker::stop, 1))?;
    worker.define_method("_stopping", method!(RbWorker::stopping, 0))?;

    let slot = native.define_class("Slot", ruby.class_object())?;
    slot.define_method("_next", method!(RbSlot::next, 1))?;

    let lease = native.define_class("Lease", ruby.class_object())?;
    lease.define_method("job_id", method!(RbLease::job_id, 0))?;
    lease.define_method("queue", method!(RbLease::queue, 0))?;
    lease.define_method("name", method!(RbLease::name, 0))?;
    lease.define_method("attempts", method!(RbLease::attempts, 0))?;
    lease.define_method("payload", method!(RbLease::payload, 0))?;
    lease.define_method("_complete", method!(RbLease::complete, 0))?;
    lease.define_method("_fail", method!(RbLease::fail, 1))?;
    lease.define_method("_release", method!(RbLease::release, 0))?;
    Ok(())
}
