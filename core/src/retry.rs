//! The retry policy: pure `(attempt, max_attempts, jitter) -> Retry { at } | Dead`.
//!
//! The policy never reads a clock or a global RNG: the caller passes `now` and an RNG (or the
//! jitter value itself), so the schedule is reproducible and shared as vectors
//! (`tests/vectors/retry.json`) with the Ruby, Python and Node suites.
//!
//! The default is Sidekiq's curve: after the `n`-th retry count (`n = attempt - 1`, so the first
//! failure has `n = 0`) wait `n⁴ + 15 + jitter × (n + 1)` seconds with `jitter = rand(10)`, and
//! allow 25 runs in total.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use flyjobs::retry::{Outcome, RetryPolicy};
//! let p = RetryPolicy::default();
//! let now = Utc.timestamp_opt(0, 0).unwrap();
//! // First failure (attempt 1), jitter 3: 0 + 15 + 3 × 1 = 18 s.
//! assert_eq!(p.decide_with_jitter(1, None, 3, now), Outcome::Retry { at: now + chrono::Duration::seconds(18) });
//! // The 25th run failed: dead.
//! assert_eq!(p.decide_with_jitter(25, None, 0, now), Outcome::Dead);
//! ```

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::error::{Error, Result};

/// Sidekiq's default: 25 runs in total.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// What happens to a job after a failed run. Its serialised form is what every binding shows:
/// `{"outcome":"retry","at":"2026-12-01T17:00:00Z"}`, `{"outcome":"dead"}`, `{"outcome":"discard"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Run it again at `at`.
    Retry {
        /// When the next attempt becomes runnable.
        at: DateTime<Utc>,
    },
    /// Attempts exhausted: move it to the dead set.
    Dead,
    /// Give up without the dead set (chosen by callers, never by the policy).
    Discard,
}

/// How long to wait before the next attempt.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// Sidekiq: `n⁴ + 15 + jitter × (n + 1)` seconds, `n = attempt - 1`, `jitter ∈ 0..=9`.
    Sidekiq,
    /// The same delay every time (jitter ignored).
    Fixed(Duration),
    /// `base × 2^(attempt-1)` capped at `max`, plus `jitter` seconds.
    Exponential {
        /// First delay.
        base: Duration,
        /// Largest delay.
        max: Duration,
    },
}

/// A retry policy. Pure and deterministic: the RNG (or the jitter) comes from the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Runs allowed in total (a job's own `max_attempts` overrides it).
    pub max_attempts: u32,
    /// The delay curve.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::Sidekiq,
        }
    }
}

impl RetryPolicy {
    /// Largest jitter value [`RetryPolicy::decide`] draws (Sidekiq's `rand(10)` is 0..=9).
    pub const MAX_JITTER: u32 = 9;

    /// A policy with `max_attempts` runs and the given curve; `max_attempts` must be ≥ 1.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Result<Self> {
        if max_attempts == 0 {
            return Err(Error::invalid("max_attempts must be >= 1, got 0"));
        }
        Ok(RetryPolicy {
            max_attempts,
            backoff,
        })
    }

    /// The delay after run number `attempt` (1-based) failed, with a given jitter (0..=9).
    pub fn delay(&self, attempt: u32, jitter: u32) -> Duration {
        let n = u64::from(attempt.max(1) - 1);
        let jitter = u64::from(jitter.min(Self::MAX_JITTER));
        match &self.backoff {
            Backoff::Sidekiq => Duration::from_secs(
                n.saturating_pow(4)
                    .saturating_add(15)
                    .saturating_add(jitter * (n + 1)),
            ),
            Backoff::Fixed(d) => *d,
            Backoff::Exponential { base, max } => {
                let factor = 1u32.checked_shl(n.min(31) as u32).unwrap_or(u32::MAX);
                base.saturating_mul(factor).min(*max) + Duration::from_secs(jitter)
            }
        }
    }

    /// The outcome after run number `attempt` failed, with the jitter given explicitly.
    /// `job_max_attempts` (the job's own setting) overrides the policy's.
    pub fn decide_with_jitter(
        &self,
        attempt: u32,
        job_max_attempts: Option<u32>,
        jitter: u32,
        now: DateTime<Utc>,
    ) -> Outcome {
        let max = job_max_attempts.unwrap_or(self.max_attempts);
        if attempt >= max {
            return Outcome::Dead;
        }
        let delay = chrono::Duration::from_std(self.delay(attempt, jitter))
            .unwrap_or(chrono::Duration::MAX);
        Outcome::Retry {
            at: now
                .checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The outcome after run number `attempt` failed, drawing the jitter from `rng`.
    pub fn decide(
        &self,
        attempt: u32,
        job_max_attempts: Option<u32>,
        now: DateTime<Utc>,
        rng: &mut impl Rng,
    ) -> Outcome {
        let jitter = rng.random_range(0..=Self::MAX_JITTER);
        self.decide_with_jitter(attempt, job_max_attempts, jitter, now)
    }
}

/// A default policy plus per-queue overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicies {
    /// Used by queues without an override.
    pub default: RetryPolicy,
    /// Per-queue overrides.
    pub per_queue: HashMap<String, RetryPolicy>,
}

impl RetryPolicies {
    /// The policy of `queue`.
    pub fn for_queue(&self, queue: &str) -> &RetryPolicy {
        self.per_queue.get(queue).unwrap_or(&self.default)
    }

    /// Override the policy of `queue`.
    #[must_use]
    pub fn with_queue(mut self, queue: impl Into<String>, policy: RetryPolicy) -> Self {
        self.per_queue.insert(queue.into(), policy);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn t0() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    #[derive(serde::Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        attempt: u32,
        jitter: u32,
        max_attempts: u32,
        expect: serde_json::Value,
    }

    #[test]
    fn vectors_match() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/retry.json"
        ))
        .expect("tests/vectors/retry.json is in the repo");
        let v: Vectors = serde_json::from_str(&text).unwrap();
        assert!(v.cases.len() >= 10);
        let p = RetryPolicy::default();
        for c in v.cases {
            let got = p.decide_with_jitter(c.attempt, Some(c.max_attempts), c.jitter, t0());
            let want = match c.expect.get("delay_seconds").and_then(|d| d.as_i64()) {
                Some(s) => Outcome::Retry {
                    at: t0() + chrono::Duration::seconds(s),
                },
                None => {
                    assert_eq!(c.expect, serde_json::json!("dead"));
                    Outcome::Dead
                }
            };
            assert_eq!(
                got, want,
                "attempt {} jitter {} max {}",
                c.attempt, c.jitter, c.max_attempts
            );
        }
    }

    #[test]
    fn job_override_beats_policy() {
        let p = RetryPolicy::default();
        assert_eq!(p.decide_with_jitter(3, Some(3), 0, t0()), Outcome::Dead);
        assert!(matches!(
            p.decide_with_jitter(3, None, 0, t0()),
            Outcome::Retry { .. }
        ));
        let ps = RetryPolicies::default().with_queue(
            "mail",
            RetryPolicy::new(2, Backoff::Fixed(Duration::from_secs(5))).unwrap(),
        );
        assert_eq!(
            ps.for_queue("mail").decide_with_jitter(2, None, 0, t0()),
            Outcome::Dead
        );
        assert_eq!(ps.for_queue("other").max_attempts, 25);
        assert!(RetryPolicy::new(0, Backoff::Sidekiq).is_err());
    }

    #[test]
    fn seeded_rng_is_deterministic() {
        let p = RetryPolicy::default();
        let a = p.decide(4, None, t0(), &mut rand::rngs::StdRng::seed_from_u64(7));
        let b = p.decide(4, None, t0(), &mut rand::rngs::StdRng::seed_from_u64(7));
        assert_eq!(a, b);
    }

    proptest! {
        #[test]
        fn base_delay_is_monotone(a in 1u32..200) {
            let p = RetryPolicy::default();
            prop_assert!(p.delay(a, 0) <= p.delay(a + 1, 0));
            let e = RetryPolicy::new(25, Backoff::Exponential { base: Duration::from_secs(1), max: Duration::from_secs(3600) }).unwrap();
            prop_assert!(e.delay(a, 0) <= e.delay(a + 1, 0));
        }

        #[test]
        fn jitter_stays_in_bounds(a in 1u32..100, seed in any::<u64>()) {
            let p = RetryPolicy::default();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            match p.decide(a, Some(1000), t0(), &mut rng) {
                Outcome::Retry { at } => {
                    let d = (at - t0()).to_std().unwrap();
                    prop_assert!(d >= p.delay(a, 0));
                    prop_assert!(d <= p.delay(a, RetryPolicy::MAX_JITTER));
                    let n = u64::from(a - 1);
                    prop_assert!(d - p.delay(a, 0) <= Duration::from_secs(9 * (n + 1)));
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
