//! One tokio runtime per process, rebuilt after `fork()`, and a blocking facade for bindings.
//!
//! Puma, Unicorn, gunicorn and Python's multiprocessing fork the process after the app (and so
//! flyjobs) was loaded. A tokio runtime does not survive `fork()`: its worker threads exist only
//! in the parent. So the runtime remembers the pid that built it and a child builds its own on
//! first use. The parent's runtime object is leaked in the child on purpose: dropping it would
//! try to join threads that do not exist there.
//!
//! ```
//! let two = flyjobs::runtime::block_on(async { 1 + 1 });
//! assert_eq!(two, 2);
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::{Handle, Runtime};

struct Slot {
    pid: u32,
    runtime: Arc<Runtime>,
}

static RUNTIME: Mutex<Option<Slot>> = Mutex::new(None);

/// The process-wide runtime, built on first use in this process.
pub fn runtime() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.as_ref()
        && s.pid == pid
    {
        return s.runtime.clone();
    }
    if let Some(old) = slot.take() {
        // Built before a fork: its threads are gone in this process. Never drop it here.
        std::mem::forget(old.runtime);
    }
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flyjobs")
            .enable_all()
            .build()
            .expect("building a tokio runtime only fails when the OS refuses threads"),
    );
    *slot = Some(Slot {
        pid,
        runtime: runtime.clone(),
    });
    runtime
}

/// A handle to the current runtime: the caller's own if it runs inside one, else the
/// process-wide one.
pub fn handle() -> Handle {
    Handle::try_current().unwrap_or_else(|_| runtime().handle().clone())
}

/// Run `fut` to completion on the process-wide runtime, blocking this (non-runtime) thread.
/// Bindings call this with the GVL/GIL released.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    runtime().block_on(fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_runtime_within_a_process() {
        assert!(Arc::ptr_eq(&runtime(), &runtime()));
    }

    #[test]
    fn block_on_runs_timers() {
        let slept = block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            true
        });
        assert!(slept);
    }
}
