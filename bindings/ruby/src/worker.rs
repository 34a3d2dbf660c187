//! `FlyJobs::Native::{Worker, Slot, Lease}`: the core's worker, its slots and leases.
//!
//! Each Ruby thread of `FlyJobs::Worker#run` owns a `Slot`. `Slot#_next(seconds)` waits for
//! the next job on the calling thread with the GVL released (the surface's [`BlockingSlot`]: no
//! task spawned per job): a `Lease`, `nil` (the worker is done) or `false` (nothing yet; call
//! again: the claim in flight is kept). `Slot#_complete_next(lease, seconds)` records a job's
//! success and waits for the next one in the same call. A `Lease`'s `payload` is built as Ruby
//! objects straight from the core's parsed JSON, so the payload is never printed and re-parsed.
//!
//! [`BlockingSlot`]: surface::BlockingSlot

use flyjobs_binding as surface;
use magnus::{Error, IntoValue, Ruby, TypedData, Value, method, prelude::*};

use crate::client::block;
use crate::error::{guard, json_arg, to_ruby};
use crate::gvl::{Ran, without_gvl};

/// Longest time one `_next` keeps a Ruby thread in native code. Interrupts (Thread#raise,
/// signals) end a wait early through the unblocking function; this bounds the rest.
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
            inner: surface::BlockingSlot::new(self.inner.clone()),
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
    inner: surface::BlockingSlot,
}

impl RbSlot {
    /// `#_next(seconds) -> Lease | nil | false`.
    fn next(&self, seconds: f64) -> Result<Value, Error> {
        guard(|ruby| {
            let slice = surface::wait_slice(seconds, MAX_SLICE);
            let slot = &self.inner;
            let poll = without_gvl(|interrupt| slot.next_blocking(slice, interrupt.requested()));
            poll_value(ruby, poll)
        })
    }

    /// `#_complete_next(lease, seconds) -> Lease | nil | false`: `lease._complete`, then
    /// `_next(seconds)`, with one release of the GVL. An error completing is raised before any
    /// next job is claimed.
    fn complete_next(&self, lease: &RbLease, seconds: f64) -> Result<Value, Error> {
        guard(|ruby| {
            let done = lease.take(ruby)?;
            let slice = surface::wait_slice(seconds, MAX_SLICE);
            let slot = &self.inner;
            let mut done = Some(done);
            let poll = without_gvl(|interrupt| {
                let lease = done.take().expect("runs once");
                slot.complete_then_next(lease, slice, interrupt.requested())
            });
            match (poll, done) {
                // An interrupt was pending: nothing ran. Record the outcome all the same (the
                // job did run), with the GVL held; Ruby raises the interrupt after this returns.
                (Ran::Interrupted, Some(lease)) => {
                    surface::runtime::block_on(surface::complete(lease))
                        .map_err(|e| to_ruby(ruby, &e))?;
                    Ok(ruby.qfalse().as_value())
                }
                (poll, _) => poll_value(ruby, poll),
            }
        })
    }

    /// `#_close`: gives up a claim in flight (a job it finds goes back to the queue).
    fn close(&self) {
        self.inner.close();
    }
}

fn poll_value(ruby: &Ruby, poll: Ran<surface::Result<surface::Poll>>) -> Result<Value, Error> {
    match poll {
        Ran::Done(Ok(surface::Poll::Job(lease))) => Ok(RbLease::new(*lease).into_value_with(ruby)),
        Ran::Done(Ok(surface::Poll::Done)) => Ok(ruby.qnil().as_value()),
        // Interrupted: Ruby raises the pending interrupt as soon as this returns.
        Ran::Done(Ok(surface::Poll::Pending)) | Ran::Interrupted => Ok(ruby.qfalse().as_value()),
        Ran::Done(Err(e)) => Err(to_ruby(ruby, &e)),
        Ran::Panicked(p) => Err(crate::error::internal(ruby, &p)),
    }
}

/// A claimed job: read its fields, then `_complete`, `_fail` or `_release` it once.
#[magnus::wrap(class = "FlyJobs::Native::Lease", free_immediately, size)]
pub struct RbLease {
    lease: surface::HeldLease,
}

impl RbLease {
    fn new(lease: surface::WorkerLease) -> Self {
        RbLease {
            lease: surface::HeldLease::new(lease),
        }
    }

    fn take(&self, ruby: &Ruby) -> Result<surface::WorkerLease, Error> {
        self.lease.take().map_err(|e| to_ruby(ruby, &e))
    }

    fn job<R>(&self, f: impl FnOnce(&surface::Job) -> R) -> Result<R, Error> {
        guard(|ruby| self.lease.with_job(f).map_err(|e| to_ruby(ruby, &e)))
    }

    fn job_id(&self) -> i64 {
        self.lease.job_id()
    }
    fn queue(&self) -> Result<String, Error> {
        self.job(|j| j.queue.clone())
    }
    fn name(&self) -> Result<String, Error> {
        self.job(|j| j.name.clone())
    }
    fn attempts(&self) -> Result<i64, Error> {
        self.job(|j| i64::from(j.attempts))
    }
    /// The payload as Ruby objects (Hash, Array, String, Integer, Float, true/false/nil), as
    /// `JSON.parse` would give them, built from the core's parsed value.
    fn payload(&self) -> Result<Value, Error> {
        guard(|ruby| {
            self.lease
                .with_job(|j| crate::value::to_ruby(ruby, &j.payload))
                .map_err(|e| to_ruby(ruby, &e))?
        })
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
    slot.define_method("_complete_next", method!(RbSlot::complete_next, 2))?;
    slot.define_method("_close", method!(RbSlot::close, 0))?;

    let lease = native.define_class("Lease", ruby.class_object())?;
    lease.define_method("job_id", method!(RbLease::job_id, 0))?;
    lease.define_method("queue", method!(RbLease::queue, 0))?;
    lease.define_method("name", method!(RbLease::name, 0))?;
    lease.define_method("attempts", method!(RbLease::attempts, 0))?;
    lease.define_method("payload", method!(RbLease::payload, 0))?;
    lease.define_method("_complete", method!(RbLease::complete, 0))?;
    lease.define_method("_fail", method!(RbLease::fail, 1))?;
    lease.define_method("_release", method!(RbLease::release, 0))?;
    // Look the classes up now, while the extension loads. magnus otherwise does it the first
    // time it wraps an object, through a Ruby call whose failure it unwraps: a pending
    // Interrupt then panicked inside `_slot` (seen under GC.stress).
    RbWorker::class(ruby);
    RbSlot::class(ruby);
    RbLease::class(ruby);
    crate::client::RbClient::class(ruby);
    Ok(())
}
