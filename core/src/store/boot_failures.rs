//! Recorded boot failures of worker machines (a machine that exited or hung before its worker
//! registered), for the scaler's per-queue backoff and stop, `flyjobs status` and the admin
//! calls.
//!
//! The table is created on first write (`CREATE TABLE IF NOT EXISTS`, under a lock on
//! Postgres), so that it needs no migration of its own; reads of a store that never recorded
//! one find nothing. The statements are in [`super::sql`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One worker machine that failed at boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootFailure {
    /// The queue it was booted for.
    pub queue: String,
    /// The release (image ref) it ran.
    pub release: String,
    /// The machine.
    pub machine_id: String,
    /// Its exit code, when it exited (None: it hung, or was killed without one).
    pub exit_code: Option<i32>,
    /// What happened, in words.
    pub reason: String,
    /// The last lines of the machine's log, when the API serves them.
    pub log_tail: String,
    /// When the scaler noticed.
    pub at: DateTime<Utc>,
    /// Cleared by a healthy boot of the queue or a reset: no longer counts toward the
    /// backoff and stop, still shown.
    pub cleared: bool,
}
