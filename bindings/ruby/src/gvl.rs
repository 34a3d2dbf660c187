//! Running Rust with Ruby's GVL released, so other Ruby threads run while the core waits
//! (a worker blocking on its queue, an enqueue waiting on the database).
//!
//! magnus does not wrap `rb_thread_call_without_gvl`; rb-sys exposes it. The closure must not
//! touch any Ruby object or API: it runs while other Ruby threads may be mutating the VM.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f` with the GVL released. `Err(panic message)` if `f` panicked: a panic must never
/// unwind through Ruby's C frames, so it is caught here and reported by the caller.
///
/// No unblocking function is passed: Ruby's interrupts (signals, Thread#kill, Timeout) wait until
/// `f` returns, so callers keep every wait short (the worker polls in slices of at most a few
/// seconds and returns to Ruby in between).
pub fn without_gvl<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce() -> R,
{
    struct Payload<F, R> {
        f: Option<F>,
        out: Option<Result<R, String>>,
    }

    unsafe extern "C" fn trampoline<F: FnOnce() -> R, R>(data: *mut c_void) -> *mut c_void {
        // SAFETY: `data` is the `Payload` below, alive for the whole call and used by this
        // thread only (rb_thread_call_without_gvl runs the function on the calling thread).
        let p = unsafe { &mut *data.cast::<Payload<F, R>>() };
        if let Some(f) = p.f.take() {
            p.out = Some(catch_unwind(AssertUnwindSafe(f)).map_err(|e| panic_message(&*e)));
        }
        std::ptr::null_mut()
    }

    let mut payload = Payload {
        f: Some(f),
        out: None,
    };
    // SAFETY: the trampoline matches the expected signature and only touches `payload`, which
    // outlives the call; no unblocking function (see above).
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(trampoline::<F, R>),
            (&raw mut payload).cast::<c_void>(),
            None,
            std::ptr::null_mut(),
        );
    }
    payload
        .out
        .unwrap_or_else(|| Err("the function did not run".to_string()))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
