//! One error type for everything flyjobs does.
//!
//! [`Error`] is opaque: callers ask it questions ([`Error::kind`], [`Error::is_retryable`],
//! [`Error::status`], [`Error::request_id`]) instead of matching a variant zoo. The kind names
//! ([`ErrorKind::as_str`]) are stable and shared by the Ruby, Python and Node bindings, which map
//! each kind to one exception class (`FlyJobs::NotFoundError`, `flyjobs.errors.NotFoundError`,
//! a JS `Error` with `code = "not_found"`).
//!
//! A job's own exception is *not* an `Error`: it is data recorded on the job
//! (see [`crate::job::Failure`]).
//!
//! ```
//! use flyjobs::{Error, ErrorKind};
//! let e = Error::new(ErrorKind::Config, "FLYJOBS_MAX_MACHINES must be >= 0, got -1");
//! assert_eq!(e.kind().as_str(), "config");
//! assert!(!e.is_retryable());
//! ```

use std::fmt;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in words that are the same in every language binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad or missing settings (names the setting).
    Config,
    /// Missing or rejected credentials (HTTP 401/403).
    Auth,
    /// The machine, app, job or lease does not exist (HTTP 404).
    NotFound,
    /// The request conflicts with the current state: a lease held by someone else, a name
    /// taken, a stale fencing token (HTTP 409/412).
    Conflict,
    /// Too many requests (HTTP 429).
    RateLimited,
    /// No capacity to place a machine (412/409/422 with `insufficient_capacity`).
    Capacity,
    /// A deadline passed: wait timed out (HTTP 408), a request took too long.
    Timeout,
    /// The request was malformed or a value is out of range (HTTP 400/422, bad input).
    Invalid,
    /// Any other answer from the Machines API (5xx and the unexpected).
    Api,
    /// The connection failed before an answer arrived.
    Transport,
    /// The durable store (database) failed.
    Store,
    /// A value could not be encoded or decoded (JSON payloads, API bodies).
    Serialization,
    /// The operation was refused because the worker or client is shutting down.
    Shutdown,
}

impl ErrorKind {
    /// Every kind, in declaration order (used by bindings to declare their exception classes).
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Config,
        ErrorKind::Auth,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::RateLimited,
        ErrorKind::Capacity,
        ErrorKind::Timeout,
        ErrorKind::Invalid,
        ErrorKind::Api,
        ErrorKind::Transport,
        ErrorKind::Store,
        ErrorKind::Serialization,
        ErrorKind::Shutdown,
    ];

    /// The stable snake_case name shared by every binding.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Capacity => "capacity",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Api => "api",
            ErrorKind::Transport => "transport",
            ErrorKind::Store => "store",
            ErrorKind::Serialization => "serialization",
            ErrorKind::Shutdown => "shutdown",
        }
    }

    /// The kind named `name` ([`ErrorKind::as_str`]).
    pub fn parse(name: &str) -> Result<ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| Error::invalid(format!("unknown error kind {name:?}")))
    }

    /// Whether an error of this kind is worth retrying by default (the request itself was fine;
    /// the world was busy or flaky). Individual errors may override it.
    pub fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::Capacity
                | ErrorKind::Timeout
                | ErrorKind::Transport
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every flyjobs operation.
pub struct Error {
    kind: ErrorKind,
    retryable: bool,
    message: String,
    status: Option<u16>,
    request_id: Option<String>,
    job_id: Option<i64>,
    source: Option<BoxError>,
}

/// An [`Error`] as plain data: the stable form in which errors cross into every language
/// (`FlyJobs::Error#kind/#retryable?/#status/#request_id/#job_id`, Python's `FlyJobsError`
/// attributes, JS `code`/`retryable`/`status`/`requestId`/`jobId`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorView {
    /// [`ErrorKind::as_str`]: `config`, `not_found`, …
    pub kind: String,
    /// The message, without the kind (it names the problem: a setting, a job, a machine).
    pub message: String,
    /// Whether the same call may succeed if retried.
    pub retryable: bool,
    /// The HTTP status of the answer behind it, if any.
    pub status: Option<u16>,
    /// The Machines API's `fly-request-id`, if it sent one (quote it to Fly support).
    pub request_id: Option<String>,
    /// The job concerned, if any.
    pub job_id: Option<i64>,
    /// The causes, outermost first.
    pub causes: Vec<String>,
}

impl Error {
    /// A new error of `kind` with a message that names the problem.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            retryable: kind.default_retryable(),
            message: message.into(),
            status: None,
            request_id: None,
            job_id: None,
            source: None,
        }
    }

    /// Shorthand for a [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Shorthand for an [`ErrorKind::Invalid`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid, message)
    }

    /// Shorthand for a [`ErrorKind::Store`] error.
    pub fn store(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Store, message)
    }

    /// Attach the underlying cause (kept in the `source()` chain).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attach the HTTP status of the answer that caused this error.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Attach the `fly-request-id` of the answer that caused this error.
    #[must_use]
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Attach the id of the job the failed operation concerned.
    #[must_use]
    pub fn with_job_id(mut self, job_id: impl Into<crate::job::JobId>) -> Self {
        self.job_id = Some(job_id.into().0);
        self
    }

    /// Mark an error that the caller already retried until its budget ran out: the message
    /// says so, and it is no longer retryable (retrying again at once would only repeat it).
    #[must_use]
    pub fn after_retries(mut self, attempts: u32, elapsed: std::time::Duration) -> Self {
        if attempts > 1 {
            self.message = format!(
                "{} (gave up after {attempts} attempts over {:.1}s)",
                self.message,
                elapsed.as_secs_f64()
            );
            self.retryable = false;
        }
        self
    }

    /// Override whether this particular error is worth retrying.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message, without kind or cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status, when the error came from an HTTP answer.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The Machines API's `fly-request-id`, when it sent one.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The id of the job concerned, when there is one.
    pub fn job_id(&self) -> Option<i64> {
        self.job_id
    }

    /// This error as plain data, for the language bindings.
    pub fn view(&self) -> ErrorView {
        let mut causes = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        ErrorView {
            kind: self.kind.as_str().to_string(),
            message: self.message.clone(),
            retryable: self.retryable,
            status: self.status,
            request_id: self.request_id.clone(),
            job_id: self.job_id,
            causes,
        }
    }

    /// The error a binding rebuilds from a view (tests, and errors that crossed a process).
    pub fn from_view(view: &ErrorView) -> Result<Error> {
        let kind = ErrorKind::parse(&view.kind)?;
        Ok(Error {
            kind,
            retryable: view.retryable,
            message: view.message.clone(),
            status: view.status,
            request_id: view.request_id.clone(),
            job_id: view.job_id,
            source: None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status}")?;
            if let Some(id) = &self.request_id {
                write!(f, ", fly-request-id {id}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("retryable", &self.retryable);
        if let Some(s) = self.status {
            d.field("status", &s);
        }
        if let Some(r) = &self.request_id {
            d.field("request_id", r);
        }
        if let Some(j) = self.job_id {
            d.field("job_id", &j);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new(ErrorKind::Serialization, e.to_string()).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_status_and_request_id() {
        let e = Error::new(ErrorKind::NotFound, "machine not found")
            .with_status(404)
            .with_request_id("01ABC");
        assert_eq!(
            e.to_string(),
            "not_found: machine not found (HTTP 404, fly-request-id 01ABC)"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn kind_names_are_unique_and_snake_case() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn retryable_defaults_follow_kind() {
        assert!(Error::new(ErrorKind::RateLimited, "x").is_retryable());
        assert!(!Error::new(ErrorKind::Conflict, "x").is_retryable());
        assert!(
            Error::new(ErrorKind::Api, "x")
                .with_retryable(true)
                .is_retryable()
        );
    }
}
