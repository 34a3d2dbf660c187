//! Ruby glue for flyjobs (magnus): the native half of the `flyjobs` gem in ruby/.
//!
//! Glue only: argument conversion, the error mapping ([`error`]), the GVL bridge ([`gvl`]).
//! Every behaviour and every default lives in the core crate. Rust defines positional `_name`
//! methods under `FlyJobs::Native`; ruby/lib/flyjobs/*.rb defines the public API with keyword
//! arguments on top of them.
//!
//! Threads: Rust never calls into Ruby from its own threads. A Ruby thread that waits for the
//! core (the worker's next job, an enqueue) releases the GVL while it waits and takes it back to
//! hand the result to Ruby.
#![allow(unsafe_code)] // rb_thread_call_without_gvl (gvl.rs) has no safe wrapper.

mod client;
mod error;
mod gvl;
mod options;
mod worker;

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
        native.define_singleton_method("_error_for_test", function!(error::for_test, 2))?;
        client::define(ruby, native)?;
        worker::define(ruby, native)?;
        Ok(())
    }
}
