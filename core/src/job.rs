//! Jobs: what is enqueued ([`NewJob`]), what is stored ([`Job`]), their states ([`JobState`]) and
//! the record of a job's own exception ([`Failure`]).
//!
//! ```
//! use flyjobs::job::{NewJob, JobState};
//! let job = NewJob::new("mail", serde_json::json!({"user_id": 42}))
//!     .name("WelcomeMailer")
//!     .priority(-5)
//!     .max_attempts(3);
//! assert_eq!(job.queue, "mail");
//! assert_eq!(JobState::Ready.as_str(), "ready");
//! ```
//!
//! Lifecycle: `scheduled` (run_at in the future) / `ready` → `running` (claimed under a lease) →
//! `completed`, or back to `scheduled` for a retry, or `dead` when attempts (or lost leases) are
//! exhausted; `discarded` when the job or an operator gives up on it. A scheduled job whose
//! `run_at` has passed is claimable as it is: promotion to `ready` is cosmetic.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The id of a stored job (the database's sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<i64> for JobId {
    fn from(v: i64) -> Self {
        JobId(v)
    }
}

/// Where a job is in its life. The snake_case names are stable: they are stored in the database
/// and shown by every binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for its `run_at` (enqueued for later, or waiting for a retry).
    Scheduled,
    /// Runnable now.
    Ready,
    /// Claimed by a worker under a lease.
    Running,
    /// Finished successfully.
    Completed,
    /// Attempts (or lost leases) exhausted; kept for inspection and manual retry.
    Dead,
    /// Given up on purposely (by the job, the caller or an operator).
    Discarded,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Running,
        JobState::Completed,
        JobState::Dead,
        JobState::Discarded,
    ];

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Discarded => "discarded",
        }
    }

    /// Whether the job still waits to run or is running (the states a unique key guards).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            JobState::Scheduled | JobState::Ready | JobState::Running
        )
    }

    /// Whether the job reached an end state (subject to retention pruning).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Dead | JobState::Discarded
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("unknown job state {s:?}")))
    }
}

/// A job's own exception, recorded on the job as data (it is not an [`Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The exception class (`ActiveRecord::RecordNotFound`, `ValueError`, `TypeError`, ...).
    pub class: String,
    /// The exception message.
    pub message: String,
    /// Backtrace lines, innermost first; may be empty.
    #[serde(default)]
    pub backtrace: Vec<String>,
}

impl Failure {
    /// The class recorded when a worker lost its lease (it died or stopped extending it).
    pub const LEASE_LOST: &'static str = "FlyJobs::LeaseLost";
    /// The class recorded when a run passed its queue's `max_cost_per_job`.
    pub const COST_LIMIT_EXCEEDED: &'static str = "FlyJobs::CostLimitExceeded";

    /// A failure without a backtrace.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            class: class.into(),
            message: message.into(),
            backtrace: Vec::new(),
        }
    }

    /// Attach a backtrace.
    #[must_use]
    pub fn with_backtrace(mut self, backtrace: Vec<String>) -> Self {
        self.backtrace = backtrace;
        self
    }
}

/// A job to enqueue. Build it with [`NewJob::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Queue name: 1–64 characters of `[A-Za-z0-9_.-]`.
    pub queue: String,
    /// The language side's serialized job (opaque to the core); at most `max_payload_bytes`
    /// once encoded as JSON.
    pub payload: serde_json::Value,
    /// Lower runs first, as in Active Job (default 0).
    pub priority: i32,
    /// Run no earlier than this (`None`: now).
    pub run_at: Option<DateTime<Utc>>,
    /// Total runs allowed before the job goes dead (`None`: the queue's retry policy).
    pub max_attempts: Option<u32>,
    /// Display name (the job class).
    pub name: String,
    /// The image the job was enqueued under (`FLY_IMAGE_REF`), so workers of that image run it.
    pub image_ref: Option<String>,
    /// While a job with this key is pending, enqueue returns that job instead of a new one.
    pub unique_key: Option<String>,
    /// The machine shape key the job runs on: `""` (the default) is the queue's default
    /// machine; anything else is an opaque canonical key made by the placement code (e.g.
    /// `performance-2x` or `performance-2x@ams,fra`), compared by equality only.
    #[serde(default)]
    pub shape: String,
}

impl NewJob {
    /// A job for `queue` with `payload`, priority 0, runnable now, default attempts.
    pub fn new(queue: impl Into<String>, payload: serde_json::Value) -> Self {
        NewJob {
            queue: queue.into(),
            payload,
            priority: 0,
            run_at: None,
            max_attempts: None,
            name: String::new(),
            image_ref: None,
            unique_key: None,
            shape: String::new(),
        }
    }

    /// Set the priority (lower runs first).
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Run no earlier than `at`.
    #[must_use]
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Allow at most `n` runs.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Set the display name (job class).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Record the image ref the job was enqueued under.
    #[must_use]
    pub fn image_ref(mut self, image_ref: impl Into<String>) -> Self {
        self.image_ref = Some(image_ref.into());
        self
    }

    /// Deduplicate on `key` while a job with it is pending.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Run on machines of shape `key` (`""`: the queue's default machine).
    #[must_use]
    pub fn shape(mut self, key: impl Into<String>) -> Self {
        self.shape = key.into();
        self
    }
}

/// A stored job: every column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Id assigned by the store.
    pub id: JobId,
    /// Queue name.
    pub queue: String,
    /// Display name (job class).
    pub name: String,
    /// The opaque payload.
    pub payload: serde_json::Value,
    /// Current state.
    pub state: JobState,
    /// Lower runs first.
    pub priority: i32,
    /// When the job becomes (or became) runnable.
    pub run_at: DateTime<Utc>,
    /// Runs started so far (a claim counts one; a release gives it back).
    pub attempts: u32,
    /// Runs allowed (`None`: the queue's retry policy decides).
    pub max_attempts: Option<u32>,
    /// Leases lost so far (the worker died or stopped extending).
    pub lost_leases: u32,
    /// The last failure, if any.
    pub last_error: Option<Failure>,
    /// What the job returned, if its worker recorded it ([`crate::worker::WorkerLease::complete_with`]).
    pub result: Option<serde_json::Value>,
    /// Image ref the job was enqueued under.
    pub image_ref: Option<String>,
    /// Deduplication key.
    pub unique_key: Option<String>,
    /// Machine shape key (`""`: the queue's default machine); see [`NewJob::shape`].
    #[serde(default)]
    pub shape: String,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the current or last run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached an end state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Worker holding the lease (while running).
    pub lease_owner: Option<String>,
    /// When the lease runs out (while running).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Fencing token of the latest lease: grows by one with every claim.
    pub lease_token: i64,
}

/// The keys of a job given as a map ([`NewJob::from_value`]): what every binding's enqueue
/// accepts.
pub const NEW_JOB_KEYS: &[&str] = &[
    "queue",
    "payload",
    "name",
    "priority",
    "run_at",
    "max_attempts",
    "unique_key",
    "shape",
    "machine",
    "region",
];

impl NewJob {
    /// A job from a map, as the language packages pass it: `{"queue": "mail", "payload": …,
    /// "name": "WelcomeMailer", "priority": 0, "run_at": "2026-12-01T17:00:00Z" | 1764608400.5,
    /// "max_attempts": 3, "unique_key": "…", "machine": "performance-2x", "region": "ams,fra"}`.
    /// Only `payload` is required (`queue` defaults to `default`); null means unset. An unknown
    /// key or a bad value is an `invalid` error naming it; a size Fly does not sell is a
    /// `config` error listing the valid ones. `shape` (a key made by
    /// [`crate::placement::Shape::key`]) may stand for `machine` + `region`.
    pub fn from_value(value: &serde_json::Value) -> Result<NewJob> {
        let map = value.as_object().ok_or_else(|| {
            Error::invalid(format!("a job must be a map with a payload, got {value}"))
        })?;
        let bad = |key: &str, wants: &str, v: &serde_json::Value| {
            Error::invalid(format!("job {key} must be {wants}, got {v}"))
        };
        let mut job = NewJob::new("default", serde_json::Value::Null);
        let mut has_payload = false;
        let (mut machine, mut region) = (None, None);
        for (key, v) in map {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "queue" => {
                    job.queue = v
                        .as_str()
                        .ok_or_else(|| bad(key, "a string", v))?
                        .to_string();
                }
                "payload" => {
                    job.payload = v.clone();
                    has_payload = true;
                }
                "name" => {
                    job.name = v
                        .as_str()
                        .ok_or_else(|| bad(key, "a string", v))?
                        .to_string()
                }
                "priority" => {
                    job.priority = v
                        .as_i64()
                        .and_then(|p| i32::try_from(p).ok())
                        .ok_or_else(|| bad(key, "a 32-bit integer", v))?;
                }
                "run_at" => {
                    job.run_at = Some(timestamp(v).ok_or_else(|| {
                        bad(key, "an RFC 3339 time or seconds since the epoch", v)
                    })?)
                }
                "max_attempts" => {
                    job.max_attempts = Some(
                        v.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| bad(key, "an integer >= 1", v))?,
                    );
                }
                "unique_key" => {
                    job.unique_key = Some(
                        v.as_str()
                            .ok_or_else(|| bad(key, "a string", v))?
                            .to_string(),
                    );
                }
                "shape" => {
                    job.shape = v
                        .as_str()
                        .ok_or_else(|| bad(key, "a string", v))?
                        .to_string();
                }
                "machine" => machine = Some(v),
                "region" => region = Some(v),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown job key {other:?} (known: {})",
                        NEW_JOB_KEYS.join(", ")
                    )));
                }
            }
        }
        if !has_payload {
            return Err(Error::invalid(
                "a job needs a payload (any JSON value but null)",
            ));
        }
        if machine.is_some() || region.is_some() {
            if !job.shape.is_empty() {
                return Err(Error::invalid(
                    "a job takes either shape or machine/region, not both",
                ));
            }
            job.shape = crate::placement::Shape::from_job(machine, region)?.key();
        }
        Ok(job)
    }
}

/// A time given as RFC 3339 text or as seconds since the epoch (fractions allowed).
pub fn timestamp(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    match v {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => {
            let t = n.as_f64().filter(|t| t.is_finite())?;
            let secs = t.floor();
            if secs.abs() > 1e13 {
                return None;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            DateTime::from_timestamp(secs as i64, ((t - secs) * 1e9) as u32)
        }
        _ => None,
    }
}

/// Check a queue name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn validate_queue(queue: &str) -> Result<()> {
    let ok = (1..=64).contains(&queue.len())
        && queue
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid queue name {queue:?}: use 1-64 characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>().unwrap(), st);
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert!("bogus".parse::<JobState>().is_err());
    }

    #[test]
    fn queue_names_are_validated() {
        for ok in ["default", "a", "mail.high-1_x", &"q".repeat(64)] {
            validate_queue(ok).unwrap();
        }
        for bad in ["", "with space", "ünï", &"q".repeat(65), "a/b"] {
            let e = validate_queue(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Invalid);
            assert!(e.message().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn from_value_reads_an_optional_shape() {
        let plain = NewJob::from_value(&serde_json::json!({"payload": 1})).unwrap();
        assert_eq!(plain.shape, "");
        let shaped =
            NewJob::from_value(&serde_json::json!({"payload": 1, "shape": "performance-2x@ams"}))
                .unwrap();
        assert_eq!(shaped.shape, "performance-2x@ams");
        let e = NewJob::from_value(&serde_json::json!({"payload": 1, "shape": 2})).unwrap_err();
        assert!(e.message().contains("job shape must be a string"), "{e}");
    }

    #[test]
    fn job_id_displays_and_serializes_as_number() {
        assert_eq!(JobId(7).to_string(), "7");
        assert_eq!(serde_json::to_string(&JobId(7)).unwrap(), "7");
    }
}
