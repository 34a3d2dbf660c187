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
//! - [`placement`]: a job's machine size and regions, and how memory grows after an OOM.
//! - [`fork`]: a worker machine's config, derived from the parent machine.
//! - [`scaler`]: queue depth → machines, within limits; the reaper.
//! - [`worker`]: the pull loop inside a worker machine.
//! - [`client`]: [`Client`], what the app holds.
//! - [`runtime`]: one fork-aware tokio runtime per process, for the bindings.

pub mod client;
pub mod config;
pub mod cost;
pub mod error;
pub mod fork;
pub mod job;
pub mod machines;
pub mod placement;
pub mod retry;
pub mod runtime;
pub mod scaler;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod worker;

pub use client::{Client, ClientBuilder};
pub use config::{Config, ConfigBuilder};
pub use error::{Error, ErrorKind, Result};
