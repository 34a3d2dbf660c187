//! Running Rust with Ruby's GVL released, so other Ruby threads run while the core waits
//! (a worker blocking on its queue, an enqueue waiting on the database).
//!
//! magnus does not wrap `rb_thread_call_without_gvl2`; rb-sys exposes it. The closure must not
//! touch any Ruby object or API: it runs while other Ruby threads may be mutating the VM.
//!
//! `_gvl2`, not `rb_thread_call_without_gvl`: the latter checks Ruby's pending interrupts
//! before and after the function and raises them by `longjmp`, straight over these Rust frames
//! (so a result such as a claimed lease would be leaked, never dropped). `_gvl2` returns instead,
//! and Ruby raises the interrupt once the method has returned to it, with every Rust value
//! dropped or handed over.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a wait looks whether Ruby asked for its thread back (see [`Interrupt`]).
const INTERRUPT_CHECK: Duration = Duration::from_millis(20);

/// Set when Ruby wants the waiting thread back (Thread#raise, Thread#kill, a signal for the
/// main thread, VM shutdown): Ruby calls the unblocking function, which only stores a flag
/// (it may run inside a signal handler, where a lock or a wake-up call is not safe), and
/// [`Interrupt::requested`] sees it within [`INTERRUPT_CHECK`].
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Resolves once Ruby asked for the thread back.
    pub async fn requested(self) {
        while !self.0.load(Ordering::SeqCst) {
            tokio::time::sleep(INTERRUPT_CHECK).await;
        }
    }
}

/// What [`without_gvl`] did.
pub enum Ran<R> {
    /// `f` ran and returned this.
    Done(R),
    /// `f` panicked (the panic's message): a panic must never unwind through Ruby's C frames.
    Panicked(String),
    /// An interrupt was already pending: `f` did not run (Ruby raises it once we return).
    Interrupted,
}

/// Runs `f` with the GVL released; `f` gets the [`Interrupt`] that Ruby sets when it wants this
/// thread back, and waits must end soon after it is set.
pub fn without_gvl<F, R>(f: F) -> Ran<R>
where
    F: FnOnce(Interrupt) -> R,
{
    struct Payload<F, R> {
        f: Option<F>,
        interrupt: Interrupt,
        out: Option<Result<R, String>>,
    }

    unsafe extern "C" fn trampoline<F: FnOnce(Interrupt) -> R, R>(
        data: *mut c_void,
    ) -> *mut c_void {
        // SAFETY: `data` is the `Payload` below, alive for the whole call and used by this
        // thread only (rb_thread_call_without_gvl2 runs the function on the calling thread).
        let p = unsafe { &mut *data.cast::<Payload<F, R>>() };
        if let Some(f) = p.f.take() {
            let interrupt = p.interrupt.clone();
            p.out = Some(
                catch_unwind(AssertUnwindSafe(|| f(interrupt))).map_err(|e| panic_message(&*e)),
            );
        }
        std::ptr::null_mut()
    }

    unsafe extern "C" fn unblock(data: *mut c_void) {
        // SAFETY: `data` is the AtomicBool inside `payload.interrupt`, alive until
        // rb_thread_call_without_gvl2 returns; Ruby calls this only until then. An atomic store
        // is async-signal-safe.
        let flag = unsafe { &*data.cast::<AtomicBool>() };
        flag.store(true, Ordering::SeqCst);
    }

    let mut payload = Payload {
        f: Some(f),
        interrupt: Interrupt::default(),
        out: None,
    };
    let flag = Arc::as_ptr(&payload.interrupt.0)
        .cast_mut()
        .cast::<c_void>();
    // SAFETY: the trampoline matches the expected signature and only touches `payload`, which
    // outlives the call; the unblocking function only touches the flag, which `payload` keeps
    // alive.
    unsafe {
        rb_sys::rb_thread_call_without_gvl2(
            Some(trampoline::<F, R>),
            (&raw mut payload).cast::<c_void>(),
            Some(unblock),
            flag,
        );
    }
    match payload.out {
        Some(Ok(r)) => Ran::Done(r),
        Some(Err(panic)) => Ran::Panicked(panic),
        None => Ran::Interrupted,
    }
}

/// Runs `f` with the GVL released when Ruby lets go of the thread, else (an interrupt is
/// pending, so `_gvl2` would not run it) with the GVL held: for work that must happen once
/// started, such as recording a job's outcome. `f` gets an [`Interrupt`] that is never set.
pub fn always<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce(Interrupt) -> R,
{
    let mut f = Some(f);
    let ran = without_gvl(|i| (f.take().expect("runs once"))(i));
    match ran {
        Ran::Done(r) => Ok(r),
        Ran::Panicked(p) => Err(p),
        Ran::Interrupted => {
            let f = f.take().expect("did not run");
            catch_unwind(AssertUnwindSafe(|| f(Interrupt::default())))
                .map_err(|e| panic_message(&*e))
        }
    }
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
