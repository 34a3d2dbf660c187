//! The one mapping from the core's errors to Ruby exceptions: `FlyJobs::<Kind>Error` (declared in
//! ruby/lib/flyjobs/errors.rb, looked up lazily by name), with the core's message, `retryable?`,
//! `status` and the cause chain as `causes`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use magnus::prelude::*;
use magnus::{Error, ExceptionClass, IntoValue, RModule, Ruby, Value};

use crate::gvl::panic_message;

/// Maps a core error to the Ruby exception of its kind.
pub fn to_ruby(ruby: &Ruby, err: &flyjobs::Error) -> Error {
    let class = error_class(ruby, err.kind().as_str());
    // The core's Display is "kind: message (HTTP status, fly-request-id id)"; the class already
    // says the kind.
    let text = err.to_string();
    let prefix = format!("{}: ", err.kind().as_str());
    let message = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    match build(ruby, class, &message, err, causes) {
        Ok(e) => e,
        Err(e) => e,
    }
}

fn build(
    ruby: &Ruby,
    class: ExceptionClass,
    message: &str,
    err: &flyjobs::Error,
    causes: Vec<String>,
) -> Result<Error, Error> {
    let exc = class.new_instance((message,))?;
    let set = |name: &str, value: Value| -> Result<(), Error> {
        let _: Value = exc.funcall("instance_variable_set", (name, value))?;
        Ok(())
    };
    set("@retryable", err.is_retryable().into_value_with(ruby))?;
    set("@status", err.status().into_value_with(ruby))?;
    set("@causes", ruby.ary_from_vec(causes).as_value())?;
    Ok(Error::from(exc))
}

/// `FlyJobs::NotFoundError` for "not_found"; `FlyJobs::Error` for a kind Ruby does not declare;
/// RuntimeError if errors.rb is not loaded at all.
fn error_class(ruby: &Ruby, kind: &str) -> ExceptionClass {
    let name: String = kind
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<String>()
        + "Error";
    let module: Result<RModule, Error> = ruby.class_object().const_get("FlyJobs");
    match module {
        Ok(m) => m
            .const_get::<_, ExceptionClass>(name.as_str())
            .or_else(|_| m.const_get::<_, ExceptionClass>("Error"))
            .unwrap_or_else(|_| ruby.exception_runtime_error()),
        Err(_) => ruby.exception_runtime_error(),
    }
}

/// A `FlyJobs::Error` for a bug on our side (a panic), never a Ruby `fatal`.
pub fn internal(ruby: &Ruby, what: &str) -> Error {
    let message = format!("internal error in flyjobs (please report it): {what}");
    let class = error_class(ruby, "internal");
    match class.new_instance((message.as_str(),)) {
        Ok(exc) => Error::from(exc),
        Err(e) => e,
    }
}

/// Runs a method body, turning a panic into a Ruby exception: no panic crosses FFI.
pub fn guard<T>(f: impl FnOnce(&Ruby) -> Result<T, Error>) -> Result<T, Error> {
    let ruby = Ruby::get().expect("magnus methods run on a Ruby thread");
    match catch_unwind(AssertUnwindSafe(|| f(&ruby))) {
        Ok(r) => r,
        Err(p) => Err(internal(&ruby, &panic_message(&*p))),
    }
}

/// `FlyJobs::Native._error_kinds`: every kind the core knows, for the test that checks that
/// errors.rb declares a class for each.
pub fn kinds() -> Vec<&'static str> {
    flyjobs::ErrorKind::ALL.iter().map(|k| k.as_str()).collect()
}

/// `FlyJobs::Native._error_for_test(kind, message)`: the exception the mapping makes for a core
/// error of `kind` (not raised), so the Ruby suite can check every kind's class and message.
pub fn for_test(kind: String, message: String) -> Result<magnus::Exception, Error> {
    let ruby = Ruby::get().expect("called from Ruby");
    let Some(k) = flyjobs::ErrorKind::ALL.iter().find(|k| k.as_str() == kind) else {
        return Err(Error::new(
            ruby.exception_arg_error(),
            format!("unknown kind {kind:?}"),
        ));
    };
    let err = to_ruby(&ruby, &flyjobs::Error::new(*k, message));
    Ok(err
        .value()
        .and_then(magnus::Exception::from_value)
        .expect("to_ruby makes an exception"))
}
