//! Running core futures for Python: blocking with the GIL released, or as an asyncio future.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};

use flyjobs_binding as surface;
use futures::FutureExt;
use pyo3::prelude::*;

use crate::error::{internal, panic_message, to_py};

/// Runs a core future on the process-wide runtime (rebuilt after `fork()`), with the GIL
/// released so other Python threads run while the core waits. A panic becomes
/// `FlyJobsError(kind="internal")`: no panic crosses into Python.
pub fn block<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    T: Send,
    F: Future<Output = surface::Result<T>> + Send,
{
    let out = py.detach(move || catch_unwind(AssertUnwindSafe(|| surface::runtime::block_on(fut))));
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(py, &e)),
        Err(panic) => Err(internal(py, &panic_message(&*panic))),
    }
}

/// Runs a core future as a task on the runtime and returns an asyncio future of the running
/// loop, resolved (`flyjobs._bridge.resolve`, via `call_soon_threadsafe`) with `convert`'s
/// value or the mapped error. Needs a running event loop (call it from a coroutine).
pub fn awaitable<'py, T, F, C>(py: Python<'py>, fut: F, convert: C) -> PyResult<Bound<'py, PyAny>>
where
    T: Send + 'static,
    F: Future<Output = surface::Result<T>> + Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let future = event_loop.call_method0("create_future")?;
    let resolve = py.import("flyjobs._bridge")?.getattr("resolve")?.unbind();
    let (loop_ref, future_ref) = (event_loop.unbind(), future.clone().unbind());
    surface::runtime::handle().spawn(async move {
        let out = AssertUnwindSafe(fut).catch_unwind().await;
        Python::attach(move |py| {
            let (ok, value): (bool, Py<PyAny>) = match out {
                Ok(Ok(v)) => match convert(py, v) {
                    Ok(obj) => (true, obj),
                    Err(e) => (false, e.into_value(py).into_any()),
                },
                Ok(Err(e)) => (false, to_py(py, &e).into_value(py).into_any()),
                Err(panic) => (
                    false,
                    internal(py, &panic_message(&*panic))
                        .into_value(py)
                        .into_any(),
                ),
            };
            // Fails only when the loop is closed: then nobody awaits the result any more.
            let _ =
                loop_ref.call_method1(py, "call_soon_threadsafe", (resolve, future_ref, ok, value));
        });
    });
    Ok(future)
}

/// Converter for calls that answer JSON text.
pub fn json_text(py: Python<'_>, v: serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(pyo3::types::PyString::new(py, &v.to_string())
        .into_any()
        .unbind())
}
