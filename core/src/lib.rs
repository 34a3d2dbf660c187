//! # flyjobs
//!
//! Background jobs on on-demand Fly Machines. The app enqueues a job into a durable queue
//! ([`store`]); a scaler boots, starts or resumes machines (copies of the running app) through the
//! Machines API ([`machines`]); each machine runs a worker that claims jobs with a lease, hands
//! them to the language (Ruby, Python, Node, or a shell command), records the outcome and retries
//! failures with backoff ([`retry`]); the machine goes away when the queue stays empty.
//!
//! Every behaviour lives in this crate; the language bindings are thin glue over it.
//!
//! Parts:
//! - [`config`]: settings, explicit option > env var > default, validated.
//! - [`error`]: one [`Error`] with a stable [`ErrorKind`].
//! - [`job`]: [`job::Job`], [`job::NewJob`], [`job::JobState`], [`job::Failure`].
//! - [`retry`]: the pure retry policy.
//! - [`machines`]: the Fly Machines API client.
//! - [`store`]: the durable queue (PostgreSQL in production, SQLite embedded).

pub mod config;
pub mod error;
pub mod job;
pub mod machines;
pub mod retry;
pub mod store;

pub use config::{Config, ConfigBuilder};
pub use error::{Error, ErrorKind, Result};
