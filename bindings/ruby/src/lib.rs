//! Ruby glue for flyjobs (magnus): the native half of the `flyjobs` gem in ruby/.
//!
//! Glue only, over the binding surface (`flyjobs_binding`): JSON text in and out, the error
//! mapping ([`error`]), the GVL bridge ([`gvl`]). Every behaviour, option name, default and
//! parser lives below it. Rust defines positional `_name` methods under `FlyJobs::Native`;
//! ruby/lib/flyjobs/*.rb defines the public API with keyword arguments on top of them.
//!
//! Threads: Rust never calls into Ruby from its own threads. A Ruby thread that waits for the
//! core (the worker's next job, an enqueue, the next log records) releases the GVL while it
//! waits and takes it back to hand the result to Ruby.
#![allow(unsafe_code)] // rb_thread_call_without_gvl (gvl.rs) has no safe wrapper.

mod client;
mod error;
mod gvl;
mod value;
mod worker;

use flyjobs_binding as surface;
use magnus::Error;

/// `FlyJobs::Native._option_specs -> json`: the one vocabulary of settings.
fn option_specs() -> String {
    surface::option_specs().to_string()
}

/// `FlyJobs::Native._resolve_config(options_json, env_json) -> json`: the shared vectors.
fn resolve_config(options: String, env: String) -> Result<String, Error> {
    error::guard(|ruby| {
        let (options, env) = (
            error::json_arg(ruby, "options", &options)?,
            error::json_arg(ruby, "env", &env)?,
        );
        surface::resolve_config(&options, &env)
            .map(|v| v.to_string())
            .map_err(|e| error::to_ruby(ruby, &e))
    })
}

/// `FlyJobs::Native._logs_install(filter) -> bool`.
fn logs_install(filter: String) -> bool {
    surface::logs::install(&filter)
}

/// `FlyJobs::Native._logs_drain(seconds) -> json`: `{"records": [{level, target, message}], "dropped": n}`.
fn logs_drain(seconds: f64) -> Result<String, Error> {
    error::guard(|ruby| {
        let wait = surface::wait_slice(seconds, std::time::Duration::from_secs(2));
        let (records, dropped) = match gvl::without_gvl(move |_| surface::logs::drain(wait)) {
            gvl::Ran::Done(r) => r,
            gvl::Ran::Panicked(p) => return Err(error::internal(ruby, &p)),
            // Ruby raises the pending interrupt once this returns.
            gvl::Ran::Interrupted => (Vec::new(), 0),
        };
        Ok(serde_json::json!({ "records": records, "dropped": dropped }).to_string())
    })
}

/// `FlyJobs::Native._serve_local_api(state_dir)`: the app's shared local Machines API (a
/// process of its own, started by the gem; see `FlyJobs.local_api_command`). Returns when no
/// process of the app is left and its machines are stopped.
fn serve_local_api(state_dir: String) -> Result<(), Error> {
    error::guard(|ruby| {
        // Not `client::block`: this runs for the daemon's whole life, so it must never run with
        // the GVL held. An interrupt already pending: return, and Ruby raises it.
        match gvl::without_gvl(move |_| {
            surface::runtime::block_on(surface::serve_local_api(&state_dir))
        }) {
            gvl::Ran::Done(r) => r.map_err(|e| error::to_ruby(ruby, &e)),
            gvl::Ran::Panicked(p) => Err(error::internal(ruby, &p)),
            gvl::Ran::Interrupted => Ok(()),
        }
    })
}

/// `FlyJobs::Native._log_for_test(level, message)`: a core log record, for the forwarding test.
fn log_for_test(level: String, message: String) {
    surface::logs::emit(&level, &message);
}

// `#[magnus::init]` generates the undocumented `Init_flyjobs_ruby` that Ruby calls on `require`
// (a `#[no_mangle]` symbol, exported from the cdylib whatever the module's visibility).
#[allow(missing_docs)]
mod entry {
    use magnus::{Error, Ruby, function, prelude::*};

    use crate::{client, error, worker};

    /// `require "flyjobs_ruby"`: defines `FlyJobs::Native` and its classes.
    #[magnus::init(name = "flyjobs_ruby")]
    fn init(ruby: &Ruby) -> Result<(), Error> {
        let flyjobs = ruby.define_module("FlyJobs")?;
        let native = flyjobs.define_module("Native")?;
        native.define_singleton_method("_error_kinds", function!(error::kinds, 0))?;
        native.define_singleton_method("_error_for_test", function!(error::for_test, 1))?;
        native.define_singleton_method("_option_specs", function!(super::option_specs, 0))?;
        native.define_singleton_method("_resolve_config", function!(super::resolve_config, 2))?;
        native.define_singleton_method("_logs_install", function!(super::logs_install, 1))?;
        native.define_singleton_method("_logs_drain", function!(super::logs_drain, 1))?;
        native.define_singleton_method("_log_for_test", function!(super::log_for_test, 2))?;
        native.define_singleton_method("_serve_local_api", function!(super::serve_local_api, 1))?;
        native.const_set("DASHBOARD_MAX_BODY", super::surface::DASHBOARD_MAX_BODY)?;
        client::define(ruby, native)?;
        worker::define(ruby, native)?;
        Ok(())
    }
}
