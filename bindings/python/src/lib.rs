//! Python glue for flyjobs (pyo3): the native half of the `flyjobs` package in python/, imported
//! as `flyjobs._native`.
//!
//! Glue only, over the binding surface (`flyjobs_binding`): JSON text in and out (the package's
//! Python code generates and parses it), the error mapping ([`error`]), the GIL bridge
//! ([`bridge`]). Every behaviour, option name, default and parser lives below it. The public
//! API with keyword arguments, the job decorator and the worker loop are in
//! python/src/flyjobs/*.py.
//!
//! Threads: a blocking call releases the GIL while the core works; an `_async` call returns an
//! asyncio future that a runtime task resolves through `loop.call_soon_threadsafe`.

mod bridge;
mod client;
mod error;
mod worker;

use flyjobs_binding as surface;
use pyo3::prelude::*;

/// `option_specs() -> json`: the one vocabulary of settings.
#[pyfunction]
fn option_specs() -> String {
    surface::option_specs().to_string()
}

/// `resolve_config(options_json, env_json) -> json`: what the shared vectors check.
#[pyfunction]
fn resolve_config(py: Python<'_>, options: &str, env: &str) -> PyResult<String> {
    let (options, env) = (
        error::json_arg(py, "options", options)?,
        error::json_arg(py, "env", env)?,
    );
    surface::resolve_config(&options, &env)
        .map(|v| v.to_string())
        .map_err(|e| error::to_py(py, &e))
}

/// `logs_install(filter) -> bool`.
#[pyfunction]
fn logs_install(filter: &str) -> bool {
    surface::logs::install(filter)
}

/// `logs_drain(seconds) -> json`: `{"records": [{level, target, message}], "dropped": n}`,
/// waiting up to `seconds` (at most 2) with the GIL released.
#[pyfunction]
fn logs_drain(py: Python<'_>, seconds: f64) -> String {
    let wait = surface::wait_slice(seconds, std::time::Duration::from_secs(2));
    let (records, dropped) = py.detach(move || surface::logs::drain(wait));
    serde_json::json!({ "records": records, "dropped": dropped }).to_string()
}

/// `error_kinds() -> [str]`: every kind the core knows.
#[pyfunction]
fn error_kinds() -> Vec<&'static str> {
    surface::ErrorKind::ALL.iter().map(|k| k.as_str()).collect()
}

/// `error_for_test(view_json) -> exception`: the exception the mapping makes for an error view
/// (not raised), so the Python suite can run the shared error vectors.
#[pyfunction]
fn error_for_test(py: Python<'_>, view: &str) -> PyResult<Py<PyAny>> {
    let view: surface::ErrorView = serde_json::from_str(view)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("bad error view: {e}")))?;
    Ok(error::from_view(py, &view).into_value(py).into_any())
}

/// `serve_local_api(state_dir)`: the app's shared local Machines API (`python -m flyjobs
/// local-api STATE`, started by the first process of the app that needs it). Returns when no
/// process of the app is left and its machines are stopped, or on SIGTERM/SIGINT.
#[pyfunction]
fn serve_local_api(py: Python<'_>, state_dir: String) -> PyResult<()> {
    bridge::block(
        py,
        async move { surface::serve_local_api(&state_dir).await },
    )
}

/// `panic_for_test(message)`: panics inside a blocking core call, to show that a panic comes
/// out as `flyjobs.FlyJobsError` (kind `internal`), never as a crash.
#[pyfunction]
fn panic_for_test(py: Python<'_>, message: String) -> PyResult<()> {
    bridge::block(py, async move {
        if !message.is_empty() {
            panic!("{message}");
        }
        Ok(())
    })
}

/// `flyjobs._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(option_specs, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(logs_install, m)?)?;
    m.add_function(wrap_pyfunction!(logs_drain, m)?)?;
    m.add_function(wrap_pyfunction!(error_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(error_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(serve_local_api, m)?)?;
    m.add("DASHBOARD_MAX_BODY", surface::DASHBOARD_MAX_BODY)?;
    m.add_class::<client::Client>()?;
    m.add_class::<worker::Worker>()?;
    m.add_class::<worker::Slot>()?;
    m.add_class::<worker::Lease>()?;
    Ok(())
}
