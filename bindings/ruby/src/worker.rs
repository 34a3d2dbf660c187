//! `FlyJobs::Native::{Worker, Slot, Lease}`: the pull API of the core's worker.
//!
//! Each Ruby thread of `FlyJobs::Worker#run` owns a `Slot`. `Slot#_next(seconds)` waits for the
//! next lease with the GVL released, for at most `seconds`: it returns a `Lease`, `nil` (the
//! worker is done: idle `wait` elapsed, or quiet/stop) or `false` (nothing yet; call again). The
//! core's `next()` runs as a task on the runtime and its handle is kept between calls, so giving
//! control back to Ruby never cancels a claim half-way (no lease is lost to a timeout).

use std::sync::Mutex;
use std::time::Duration;

use magnus::{Error, IntoValue, Ruby, Value, method, prelude::*};
use tokio::task::JoinHandle;

use crate::client::block;
use crate::error::{guard, internal, to_ruby};
use crate::gvl::without_gvl;

type Next = JoinHandle<flyjobs::Result<Option<flyjobs::worker::WorkerLease>>>;

/// A core `Worker` shared by the slots of its Ruby threads.
#[magnus::wrap(class = "FlyJobs::Native::Worker", free_immediately, size)]
pub struct RbWorker {
    inner: flyjobs::worker::Worker,
    concurrency: u32,
}

impl RbWorker {
    pub fn new(worker: flyjobs::worker::Worker, concurrency: u32) -> Self {
        RbWorker {
            inner: worker,
            concurrency,
        }
    }

    fn slot(&self) -> RbSlot {
        RbSlot {
            worker: self.inner.clone(),
            pending: Mutex::new(None),
        }
    }

    fn concurrency(&self) -> u32 {
        self.concurrency
    }

    fn quiet(&self) {
        self.inner.quiet();
    }

    /// `#_stop(seconds)`: quiet, wait up to `seconds` for running jobs, release the rest, deregister.
    fn stop(&self, seconds: f64) -> Result<(), Error> {
        guard(|ruby| {
            let w = self.inner.clone();
            let deadline = Duration::from_secs_f64(if seconds.is_finite() {
                seconds.max(0.0)
            } else {
                0.0
            });
            block(ruby, async move {
                w.stop(deadline).await;
                Ok(())
            })
        })
    }

    fn stopping(&self) -> bool {
        self.inner.stopping()
    }
}

/// One Ruby thread's handle on the worker, with its in-flight `next()`.
#[magnus::wrap(class = "FlyJobs::Native::Slot", free_immediately, size)]
pub struct RbSlot {
    worker: flyjobs::worker::Worker,
    pending: Mutex<Option<Next>>,
}

impl RbSlot {
    /// `#_next(seconds) -> Lease | nil | false`.
    fn next(&self, seconds: f64) -> Result<Value, Error> {
        guard(|ruby| {
            let taken = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let mut handle = match taken {
                Some(h) => h,
                None => {
                    let w = self.worker.clone();
                    flyjobs::runtime::handle().spawn(async move { w.next().await })
                }
            };
            let slice = Duration::from_secs_f64(seconds.clamp(0.0, 2.0));
            let waited = without_gvl(|| {
                let r = flyjobs::runtime::block_on(async {
                    tokio::time::timeout(slice, &mut handle).await
                });
                (r, handle)
            });
            let (result, handle) = waited.map_err(|p| internal(ruby, &p))?;
            match result {
                Err(_elapsed) => {
                    *self
                        .pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
                    Ok(ruby.qfalse().as_value())
                }
                Ok(Err(join)) => Err(internal(ruby, &format!("worker task failed: {join}"))),
                Ok(Ok(Err(e))) => Err(to_ruby(ruby, &e)),
                Ok(Ok(Ok(None))) => Ok(ruby.qnil().as_value()),
                Ok(Ok(Ok(Some(lease)))) => Ok(RbLease::new(ruby, lease)?.into_value_with(ruby)),
            }
        })
    }
}

/// A claimed job: read its fields, then `_complete`, `_fail` or `_release` it once.
#[magnus::wrap(class = "FlyJobs::Native::Lease", free_immediately, size)]
pub struct RbLease {
    lease: Mutex<Option<flyjobs::worker::WorkerLease>>,
    job_id: i64,
    queue: String,
    name: String,
    attempts: i64,
    payload: String,
}

impl RbLease {
    fn new(ruby: &Ruby, lease: flyjobs::worker::WorkerLease) -> Result<Self, Error> {
        let job = lease.job();
        let payload = serde_json::to_string(&job.payload).map_err(|e| to_ruby(ruby, &e.into()))?;
        Ok(RbLease {
            job_id: job.id.0,
            queue: job.queue.clone(),
            name: job.name.clone(),
            attempts: i64::from(job.attempts),
            payload,
            lease: Mutex::new(Some(lease)),
        })
    }

    fn take(&self, ruby: &Ruby) -> Result<flyjobs::worker::WorkerLease, Error> {
        self.lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                to_ruby(
                    ruby,
                    &flyjobs::Error::new(
                        flyjobs::ErrorKind::Conflict,
                        format!(
                            "job {} was already completed, failed or released",
                            self.job_id
                        ),
                    ),
                )
            })
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
            block(ruby, async move { lease.complete().await })
        })
    }

    /// `#_fail(class, message, backtrace) -> String`: what the retry policy decided.
    fn fail(
        &self,
        class: String,
        message: String,
        backtrace: Vec<String>,
    ) -> Result<String, Error> {
        guard(|ruby| {
            let lease = self.take(ruby)?;
            let failure = flyjobs::job::Failure {
                class,
                message,
                backtrace,
            };
            let outcome = block(ruby, async move { lease.fail(failure).await })?;
            Ok(format!("{outcome:?}"))
        })
    }

    fn release(&self) -> Result<(), Error> {
        guard(|ruby| {
            let lease = self.take(ruby)?;
            block(ruby, async move { lease.release().await })
        })
    }
}

pub fn define(ruby: &Ruby, native: magnus::RModule) -> Result<(), Error> {
    let worker = native.define_class("Worker", ruby.class_object())?;
    worker.define_method("_slot", method!(RbWorker::slot, 0))?;
    worker.define_method("_concurrency", method!(RbWorker::concurrency, 0))?;
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
    lease.define_method("_fail", method!(RbLease::fail, 3))?;
    lease.define_method("_release", method!(RbLease::release, 0))?;
    Ok(())
}
