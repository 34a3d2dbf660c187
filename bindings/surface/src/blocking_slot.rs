//! [`BlockingSlot`]: a worker slot for languages whose threads block in native code with their
//! interpreter lock released (Ruby, Python), driven on the calling thread.
//!
//! The core's [`crate::Slot`] spawns a task per `next` and waits for its `JoinHandle`: every job
//! costs a spawn and two cross-thread wake-ups (the runtime thread that runs the task, then the
//! waiting thread), even when a lease claimed for this slot is already waiting. Here the
//! `Worker::next` future is kept between calls and polled by the caller's own thread (through
//! [`crate::runtime::block_on`]): a lease already claimed is handed out without any wake-up, and
//! a claim's query is driven by the thread that wants its result. A wait cut short (the time is
//! up, or the language wants its thread back for an interrupt) keeps the future for the next
//! call, so a claim in flight is never lost; a slot closed or dropped with a claim in flight
//! hands that future to the runtime to finish, and the lease it yields releases itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use crate::{Poll, Result, Worker, WorkerLease};

type NextFuture = Pin<Box<dyn Future<Output = Result<Option<WorkerLease>>> + Send>>;

/// One language thread's handle on a [`Worker`] (see the module docs).
pub struct BlockingSlot {
    worker: Worker,
    pending: Mutex<Option<NextFuture>>,
}

impl std::fmt::Debug for BlockingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingSlot")
            .field("worker", &self.worker)
            .finish()
    }
}

impl BlockingSlot {
    /// A slot on `worker`.
    pub fn new(worker: Worker) -> Self {
        BlockingSlot {
            worker,
            pending: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<NextFuture>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait on this thread, at most `max_wait` and until `give_up` resolves, for the next job.
    /// Call it from a thread outside the runtime (it blocks in [`crate::runtime::block_on`]);
    /// `Pending` keeps the claim in flight for the next call.
    pub fn next_blocking(
        &self,
        max_wait: Duration,
        give_up: impl Future<Output = ()>,
    ) -> Result<Poll> {
        let mut fut = self.lock().take().unwrap_or_else(|| {
            let w = self.worker.clone();
            Box::pin(async move { w.next().await })
        });
        let out = crate::runtime::block_on(async {
            tokio::select! {
                biased;
                r = &mut fut => Some(r),
                () = tokio::time::sleep(max_wait) => None,
                () = give_up => None,
            }
        });
        match out {
            None => {
                *self.lock() = Some(fut);
                Ok(Poll::Pending)
            }
            Some(Err(e)) => Err(e),
            Some(Ok(None)) => Ok(Poll::Done),
            Some(Ok(Some(lease))) => Ok(Poll::Job(Box::new(lease))),
        }
    }

    /// Hand `lease`'s success to the worker's group commit ([`WorkerLease::complete_later`]),
    /// then wait for the next job as [`BlockingSlot::next_blocking`] does: one call into native
    /// code per job instead of two, and the thread runs its next job while the completion is
    /// written (with others') in one statement. A completion that cannot be recorded is logged
    /// by the core; the job then runs again (at least once).
    pub fn complete_then_next(
        &self,
        lease: WorkerLease,
        max_wait: Duration,
        give_up: impl Future<Output = ()>,
    ) -> Result<Poll> {
        lease.complete_later();
        self.next_blocking(max_wait, give_up)
    }

    /// Give up any claim in flight: it finishes on the runtime and a lease it yields is handed
    /// straight back (released). The slot stays usable.
    pub fn close(&self) {
        if let Some(fut) = self.lock().take() {
            crate::runtime::handle().spawn(async move {
                // An unconsumed WorkerLease releases itself when dropped.
                drop(fut.await);
            });
        }
    }
}

impl Drop for BlockingSlot {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn worker() -> (crate::Client, Worker, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("q.db").display());
        let client = crate::open(&json!({ "database_url": url }), Vec::new())
            .await
            .unwrap();
        let w = crate::worker(
            &client,
            &json!({"queues": ["bq"], "concurrency": 2, "wait": "forever"}),
        )
        .await
        .unwrap();
        (client, w, dir)
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    /// The lease a poll must have found.
    fn job(poll: Result<Poll>) -> WorkerLease {
        match poll.unwrap() {
            Poll::Job(l) => *l,
            other => panic!("expected a job, got {other:?}"),
        }
    }

    /// Wait until job `id` is in `state` (a completion recorded in the background).
    fn wait_for_state(client: &crate::Client, id: i64, state: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let job = crate::runtime::block_on(crate::job(client, id)).unwrap();
            if job["state"] == state {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "job {id} is {}",
                job["state"]
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A wait that times out keeps its claim; the job enqueued afterwards comes out of the
    /// next call, and completing it then finds the following one.
    #[test]
    fn pending_keeps_the_claim_and_complete_then_next_hands_the_next_job() {
        let (client, w, _dir) = crate::runtime::block_on(worker());
        let slot = BlockingSlot::new(w.clone());
        assert!(matches!(
            slot.next_blocking(Duration::from_millis(20), never())
                .unwrap(),
            Poll::Pending
        ));
        let enqueue = |n: i64| {
            crate::runtime::block_on(crate::enqueue(
                &client,
                &json!({"queue": "bq", "payload": {"n": n}}),
            ))
            .unwrap()
        };
        let (first, second) = (enqueue(1), enqueue(2));
        let lease = job(slot.next_blocking(Duration::from_secs(30), never()));
        assert_eq!(lease.job().id.0, first["id"].as_i64().unwrap());
        let next = job(slot.complete_then_next(lease, Duration::from_secs(30), never()));
        assert_eq!(next.job().id.0, second["id"].as_i64().unwrap());
        wait_for_state(&client, first["id"].as_i64().unwrap(), "completed");
        crate::runtime::block_on(crate::complete(next)).unwrap();
        w.quiet();
        assert!(matches!(
            slot.next_blocking(Duration::from_secs(30), never())
                .unwrap(),
            Poll::Done
        ));
        crate::runtime::block_on(w.stop(Duration::ZERO));
    }

    /// `give_up` ends the wait at once (the language's interrupt), well before `max_wait`.
    #[test]
    fn give_up_ends_the_wait() {
        let (_client, w, _dir) = crate::runtime::block_on(worker());
        let slot = BlockingSlot::new(w.clone());
        let t = std::time::Instant::now();
        let r = slot
            .next_blocking(Duration::from_secs(60), std::future::ready(()))
            .unwrap();
        assert!(matches!(r, Poll::Pending));
        assert!(t.elapsed() < Duration::from_secs(30));
        crate::runtime::block_on(w.stop(Duration::ZERO));
    }

    /// A slot closed with a claim in flight gives the job that claim finds back to the queue:
    /// another slot gets it (a lease kept by the orphaned claim would hold it until it expired).
    #[test]
    fn close_releases_what_the_claim_in_flight_finds() {
        let (client, w, _dir) = crate::runtime::block_on(worker());
        let slot = BlockingSlot::new(w.clone());
        assert!(matches!(
            slot.next_blocking(Duration::from_millis(20), never())
                .unwrap(),
            Poll::Pending
        ));
        slot.close();
        let enqueued = crate::runtime::block_on(crate::enqueue(
            &client,
            &json!({"queue": "bq", "payload": 1}),
        ))
        .unwrap();
        let other = BlockingSlot::new(w.clone());
        // The job came back to the queue: the other slot gets it.
        let lease = job(other.next_blocking(Duration::from_secs(30), never()));
        assert_eq!(lease.job().id.0, enqueued["id"].as_i64().unwrap());
        crate::runtime::block_on(crate::complete(lease)).unwrap();
        crate::runtime::block_on(w.stop(Duration::ZERO));
    }
}
