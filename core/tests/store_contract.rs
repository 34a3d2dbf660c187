//! The store contract: every case runs against SQLite (a temp file) and PostgreSQL (a fresh
//! schema per test, from FLYJOBS_TEST_DATABASE_URL; see store_support for the skip policy).

mod store_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flyjobs::ErrorKind;
use flyjobs::job::{Failure, JobState, NewJob};
use flyjobs::retry::{Backoff, Outcome, RetryPolicy};
use flyjobs::store::{
    ClaimRequest, ImageFilter, JobFilter, ShapeDemand, Store, StoreOptions, WorkerInfo, WorkerState,
};
use serde_json::json;

/// Contract tests run with a small payload limit so the over-limit case is cheap.
const LIMIT: usize = 4096;

fn opts() -> StoreOptions {
    StoreOptions {
        max_payload_bytes: LIMIT,
        max_lost_leases: 3,
        retain_completed: Duration::from_secs(3600),
        retain_dead: Duration::from_secs(10 * 24 * 3600),
        ..Default::default()
    }
}

fn claim(queues: &[&str], limit: usize, owner: &str) -> ClaimRequest {
    ClaimRequest::new(
        queues.iter().copied(),
        limit,
        owner,
        Duration::from_secs(60),
    )
}

fn immediate_retry(max: u32) -> RetryPolicy {
    RetryPolicy::new(max, Backoff::Fixed(Duration::ZERO)).unwrap()
}

macro_rules! contract {
    ($backend:ident: $($name:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fx) = super::store_support::$backend(super::opts()).await else {
                        return;
                    };
                    super::cases::$name(fx.store.clone()).await;
                    fx.store.close().await;
                }
            )*
        }
    };
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        contract!(sqlite: $($name),*);
        contract!(postgres: $($name),*);
    };
}

both!(
    enqueue_round_trips,
    scheduled_jobs_wait_for_run_at,
    claim_orders_by_priority_run_at_id,
    claim_respects_queues_and_limit,
    stale_token_is_refused,
    complete_many_completes_each_and_refuses_stale_tokens,
    complete_records_the_result,
    fail_retries_then_dies,
    release_gives_job_back_untouched,
    extend_moves_expiry,
    reaped_job_is_claimed_again_and_late_complete_refused,
    lost_leases_end_in_dead,
    enqueue_many_is_all_or_nothing,
    enqueue_many_stores_what_enqueue_stores,
    unique_key_dedupes_pending,
    bad_input_is_rejected_cleanly,
    discard_rules,
    workers_registry,
    stats_per_queue,
    list_and_get,
    clear_queue_and_class_filter,
    prune_finished_jobs,
    leader_lock,
    enqueue_wakes_subscribers,
    concurrent_claimers_take_each_job_once,
    shape_round_trips_and_defaults_to_empty,
    claim_filters_by_shape,
    claim_filters_by_image,
    ready_shapes_groups_runnable_jobs,
    every_failed_run_is_in_the_attempt_history,
);

mod cases {
    use super::*;

    /// Each way a run ends in a failure adds one entry (error, retry with the same error, a
    /// lost lease, an OOM requeue, dead); a graceful release, a success and a discard without
    /// a reason add none; deleting the job deletes its history.
    pub async fn every_failed_run_is_in_the_attempt_history(s: Arc<dyn Store>) {
        let j = s.enqueue(NewJob::new("h", json!(1))).await.unwrap();
        let p = immediate_retry(25);
        let same = Failure::new("E", "same").with_backtrace(vec!["job.rb:3".into()]);
        for worker in ["w1", "w2"] {
            let l = s.claim(claim(&["h"], 1, worker)).await.unwrap().remove(0);
            s.fail(j.id, l.token, same.clone(), &p).await.unwrap();
        }
        // Given back untouched: not a failed run.
        let l = s.claim(claim(&["h"], 1, "w3")).await.unwrap().remove(0);
        s.release(j.id, l.token).await.unwrap();
        // Lost: the reaper records it.
        s.claim(ClaimRequest::new(["h"], 1, "w4", Duration::from_millis(50)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(s.reap_expired(Utc::now()).await.unwrap().retried, 1);
        // OOM-killed: back on a bigger machine.
        let l = s.claim(claim(&["h"], 1, "w5")).await.unwrap().remove(0);
        let oom = Failure::new("FlyJobs::OutOfMemory", "oom_killed at 256 MB");
        assert!(
            s.requeue_on_shape(j.id, l.token, "shared-cpu-1x:512", &oom)
                .await
                .unwrap()
        );
        // The last run fails for good.
        let l = s.claim(claim(&["h"], 1, "w6")).await.unwrap().remove(0);
        let last = Failure::new("E", "last");
        assert_eq!(
            s.fail(j.id, l.token, last.clone(), &immediate_retry(5))
                .await
                .unwrap(),
            Outcome::Dead
        );
        let history = s.attempts(j.id).await.unwrap();
        let seen: Vec<(u32, Option<&str>, JobState, &str)> = history
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.machine.as_deref(),
                    a.outcome,
                    a.error.message.as_str(),
                )
            })
            .collect();
        assert_eq!(seen.len(), 5, "{history:#?}");
        assert_eq!(seen[0], (1, Some("w1"), JobState::Scheduled, "same"));
        assert_eq!(seen[1], (2, Some("w2"), JobState::Scheduled, "same"));
        assert_eq!(
            (seen[2].0, seen[2].1, seen[2].2),
            (3, Some("w4"), JobState::Ready)
        );
        assert_eq!(history[2].error.class, Failure::LEASE_LOST);
        assert_eq!(
            seen[3],
            (4, Some("w5"), JobState::Ready, "oom_killed at 256 MB")
        );
        assert_eq!(seen[4], (5, Some("w6"), JobState::Dead, "last"));
        assert_eq!(history[0].error, same, "class, message and backtrace");
        for a in &history {
            let started = a.started_at.expect("a run has a start");
            assert!(
                started <= a.ended_at + chrono::Duration::seconds(1),
                "{a:?}"
            );
        }

        // A success and a discard without a reason add nothing.
        let ok = s.enqueue(NewJob::new("h2", json!(2))).await.unwrap();
        let l = s.claim(claim(&["h2"], 1, "w")).await.unwrap().remove(0);
        s.fail(ok.id, l.token, Failure::new("E", "once"), &p)
            .await
            .unwrap();
        let l = s.claim(claim(&["h2"], 1, "w")).await.unwrap().remove(0);
        s.complete(ok.id, l.token).await.unwrap();
        assert_eq!(s.attempts(ok.id).await.unwrap().len(), 1);
        let d = s.enqueue(NewJob::new("h2", json!(3))).await.unwrap();
        let l = s.claim(claim(&["h2"], 1, "w")).await.unwrap().remove(0);
        s.fail(d.id, l.token, Failure::new("E", "first"), &p)
            .await
            .unwrap();
        let l = s.claim(claim(&["h2"], 1, "w")).await.unwrap().remove(0);
        s.discard(d.id, Some(l.token), None).await.unwrap();
        assert_eq!(s.attempts(d.id).await.unwrap().len(), 1);

        // Pruning the jobs deletes their history.
        let later = Utc::now() + chrono::Duration::days(365);
        assert!(s.prune_finished(later).await.unwrap() >= 3);
        for id in [j.id, ok.id, d.id] {
            assert_eq!(s.attempts(id).await.unwrap(), vec![], "job {id}");
        }
    }

    pub async fn enqueue_round_trips(s: Arc<dyn Store>) {
        let job = s
            .enqueue(
                NewJob::new("mail", json!({"user": 42, "tags": ["a", "ü"]}))
                    .name("WelcomeMailer")
                    .priority(3)
                    .max_attempts(7)
                    .image_ref("registry.fly.io/app:v1"),
            )
            .await
            .unwrap();
        assert_eq!(job.state, JobState::Ready);
        assert_eq!(job.attempts, 0);
        let got = s.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(got, job);
        assert_eq!(got.payload, json!({"user": 42, "tags": ["a", "ü"]}));
        assert_eq!(got.name, "WelcomeMailer");
        assert_eq!(got.priority, 3);
        assert_eq!(got.max_attempts, Some(7));
        assert_eq!(got.image_ref.as_deref(), Some("registry.fly.io/app:v1"));
        assert!(got.last_error.is_none() && got.lease_owner.is_none());
    }

    pub async fn scheduled_jobs_wait_for_run_at(s: Arc<dyn Store>) {
        let later = s
            .enqueue(NewJob::new("q", json!(1)).run_at(Utc::now() + chrono::Duration::hours(1)))
            .await
            .unwrap();
        assert_eq!(later.state, JobState::Scheduled);
        let due = s
            .enqueue(NewJob::new("q", json!(2)).run_at(Utc::now() - chrono::Duration::seconds(5)))
            .await
            .unwrap();
        assert_eq!(due.state, JobState::Ready);
        let got = s.claim(claim(&["q"], 10, "w")).await.unwrap();
        assert_eq!(
            got.iter().map(|l| l.job.id).collect::<Vec<_>>(),
            vec![due.id]
        );
        // Promotion relabels due scheduled jobs only.
        assert_eq!(s.promote_scheduled(Utc::now()).await.unwrap(), 0);
        assert_eq!(
            s.promote_scheduled(Utc::now() + chrono::Duration::hours(2))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.get_job(later.id).await.unwrap().unwrap().state,
            JobState::Ready
        );
    }

    pub async fn claim_orders_by_priority_run_at_id(s: Arc<dyn Store>) {
        let t = Utc::now() - chrono::Duration::minutes(10);
        let a = s
            .enqueue(NewJob::new("q", json!("a")).priority(5))
            .await
            .unwrap();
        let b = s
            .enqueue(NewJob::new("q", json!("b")).priority(-1))
            .await
            .unwrap();
        let c = s
            .enqueue(NewJob::new("q", json!("c")).priority(5).run_at(t))
            .await
            .unwrap();
        let d = s
            .enqueue(NewJob::new("q", json!("d")).priority(5))
            .await
            .unwrap();
        let got: Vec<_> = s
            .claim(claim(&["q"], 10, "w"))
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.job.id)
            .collect();
        assert_eq!(got, vec![b.id, c.id, a.id, d.id]);
    }

    pub async fn claim_respects_queues_and_limit(s: Arc<dyn Store>) {
        for i in 0..5 {
            s.enqueue(NewJob::new("a", json!(i))).await.unwrap();
            s.enqueue(NewJob::new("b", json!(i))).await.unwrap();
        }
        let got = s.claim(claim(&["a"], 3, "w1")).await.unwrap();
        assert_eq!(got.len(), 3);
        for l in &got {
            assert_eq!(l.job.queue, "a");
            assert_eq!(l.job.state, JobState::Running);
            assert_eq!(l.job.attempts, 1);
            assert_eq!(l.owner, "w1");
            assert_eq!(l.job.lease_owner.as_deref(), Some("w1"));
            assert!(l.expires_at > Utc::now() + chrono::Duration::seconds(50));
        }
        assert_eq!(
            s.claim(claim(&["a", "b"], 100, "w2")).await.unwrap().len(),
            7
        );
        assert!(
            s.claim(claim(&["a", "b"], 100, "w2"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(s.claim(claim(&["a"], 0, "w2")).await.unwrap().is_empty());
        let e = s.claim(claim(&["bad queue"], 1, "w")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }

    pub async fn stale_token_is_refused(s: Arc<dyn Store>) {
        let j = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let l = s.claim(claim(&["q"], 1, "w")).await.unwrap().remove(0);
        let e = s.complete(j.id, l.token + 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(
            s.get_job(j.id).await.unwrap().unwrap(),
            l.job,
            "nothing changed"
        );
        let done = s.complete(j.id, l.token).await.unwrap();
        assert_eq!(done.state, JobState::Completed);
        assert!(done.finished_at.is_some());
        let e = s.complete(j.id, l.token).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let e = s
            .complete(flyjobs::job::JobId(999_999), 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = s
            .fail(
                j.id,
                l.token,
                Failure::new("E", "x"),
                &RetryPolicy::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
    }

    /// One call for many leases: each job gets its own outcome; a stale token, an unknown id
    /// or an already completed job is refused (and unchanged) while the others complete, with
    /// their results (a JSON string and a JSON null included).
    pub async fn complete_many_completes_each_and_refuses_stale_tokens(s: Arc<dyn Store>) {
        assert!(s.complete_many(&[]).await.unwrap().is_empty());
        for i in 0..4 {
            s.enqueue(NewJob::new("q", json!(i))).await.unwrap();
        }
        let leases = s.claim(claim(&["q"], 4, "w")).await.unwrap();
        assert_eq!(leases.len(), 4);
        let (a, b, c, d) = (&leases[0], &leases[1], &leases[2], &leases[3]);
        let text = json!("a string, not JSON text");
        let obj = json!({"rows": [1, 2.5, null], "note": "é"});
        let missing = flyjobs::job::JobId(999_999);
        let out = s
            .complete_many(&[
                (a.job.id, a.token, Some(obj.clone())),
                (b.job.id, b.token + 1, Some(json!(1))),
                (c.job.id, c.token, Some(text.clone())),
                (missing, 1, None),
                (d.job.id, d.token, Some(serde_json::Value::Null)),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 5);
        assert!(
            out[0].is_ok() && out[2].is_ok() && out[4].is_ok(),
            "{out:?}"
        );
        let e = out[1].as_ref().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(e.job_id(), Some(b.job.id.0));
        assert_eq!(out[3].as_ref().unwrap_err().kind(), ErrorKind::NotFound);

        let got = |id| {
            let s = s.clone();
            async move { s.get_job(id).await.unwrap().unwrap() }
        };
        let ja = got(a.job.id).await;
        assert_eq!(ja.state, JobState::Completed);
        assert!(ja.finished_at.is_some());
        assert_eq!(ja.lease_expires_at, None);
        assert_eq!(ja.result, Some(obj));
        assert_eq!(got(c.job.id).await.result, Some(text));
        let jd = got(d.job.id).await;
        assert_eq!(jd.state, JobState::Completed);
        assert_eq!(got(b.job.id).await, b.job, "the stale one is unchanged");

        // Completing the same jobs again: all refused, nothing changes.
        let again = s
            .complete_many(&[(a.job.id, a.token, None), (b.job.id, b.token, None)])
            .await
            .unwrap();
        assert_eq!(again[0].as_ref().unwrap_err().kind(), ErrorKind::Conflict);
        assert!(
            again[1].is_ok(),
            "b's own token still completes it: {again:?}"
        );
        assert_eq!(got(a.job.id).await, ja);
    }

    pub async fn complete_records_the_result(s: Arc<dyn Store>) {
        let a = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let b = s.enqueue(NewJob::new("q", json!(2))).await.unwrap();
        let mut leases = s.claim(claim(&["q"], 2, "w")).await.unwrap();
        let (la, lb) = (leases.remove(0), leases.remove(0));
        let value = json!({"rows": [1, 2.5, null], "note": "é"});
        let e = s
            .complete_with(a.id, la.token + 1, Some(&value))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(s.get_job(a.id).await.unwrap().unwrap().result, None);
        let done = s.complete_with(a.id, la.token, Some(&value)).await.unwrap();
        assert_eq!(done.result, Some(value.clone()));
        assert_eq!(s.get_job(a.id).await.unwrap().unwrap().result, Some(value));
        let plain = s.complete(b.id, lb.token).await.unwrap();
        assert_eq!(plain.state, JobState::Completed);
        assert_eq!(plain.result, None, "complete records no result");
    }

    pub async fn fail_retries_then_dies(s: Arc<dyn Store>) {
        // Default Sidekiq policy: the first retry is 15–24 s away.
        let j = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let l = s.claim(claim(&["q"], 1, "w")).await.unwrap().remove(0);
        let before = Utc::now();
        let fail = Failure::new("RuntimeError", "boom").with_backtrace(vec!["a.rb:1".into()]);
        let out = s
            .fail(j.id, l.token, fail.clone(), &RetryPolicy::default())
            .await
            .unwrap();
        let Outcome::Retry { at } = out else {
            panic!("{out:?}")
        };
        assert!(at >= before + chrono::Duration::seconds(15));
        assert!(at <= Utc::now() + chrono::Duration::seconds(25));
        let got = s.get_job(j.id).await.unwrap().unwrap();
        assert_eq!(got.state, JobState::Scheduled);
        assert_eq!(got.last_error, Some(fail));
        assert!(s.claim(claim(&["q"], 1, "w")).await.unwrap().is_empty());

        // Job-level max_attempts = 2 with immediate retries: fail, fail → dead.
        let j = s
            .enqueue(NewJob::new("r", json!(2)).max_attempts(2))
            .await
            .unwrap();
        let p = immediate_retry(25);
        let l = s.claim(claim(&["r"], 1, "w")).await.unwrap().remove(0);
        assert!(matches!(
            s.fail(j.id, l.token, Failure::new("E", "1"), &p)
                .await
                .unwrap(),
            Outcome::Retry { .. }
        ));
        let l = s.claim(claim(&["r"], 1, "w")).await.unwrap().remove(0);
        assert_eq!(l.job.attempts, 2);
        assert_eq!(
            s.fail(j.id, l.token, Failure::new("E", "2"), &p)
                .await
                .unwrap(),
            Outcome::Dead
        );
        let dead = s.get_job(j.id).await.unwrap().unwrap();
        assert_eq!(dead.state, JobState::Dead);
        assert!(dead.finished_at.is_some());
        assert_eq!(dead.last_error.unwrap().message, "2");
        let again = s.retry_dead(j.id).await.unwrap();
        assert_eq!((again.state, again.attempts), (JobState::Ready, 0));
        assert_eq!(
            s.retry_dead(j.id).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );

        // Retrying a dead job whose unique key a newer pending job holds is a conflict.
        let k = s
            .enqueue(NewJob::new("u", json!(1)).unique_key("k").max_attempts(1))
            .await
            .unwrap();
        let l = s.claim(claim(&["u"], 1, "w")).await.unwrap().remove(0);
        let out = s
            .fail(k.id, l.token, Failure::new("E", "x"), &p)
            .await
            .unwrap();
        assert_eq!(out, Outcome::Dead);
        s.enqueue(NewJob::new("u", json!(2)).unique_key("k"))
            .await
            .unwrap();
        let e = s.retry_dead(k.id).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert_eq!(
            s.get_job(k.id).await.unwrap().unwrap().state,
            JobState::Dead
        );
    }

    pub async fn release_gives_job_back_untouched(s: Arc<dyn Store>) {
        let j = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let l = s.claim(claim(&["q"], 1, "w")).await.unwrap().remove(0);
        assert_eq!(
            s.release(j.id, l.token + 7).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        let r = s.release(j.id, l.token).await.unwrap();
        assert_eq!((r.state, r.attempts), (JobState::Ready, 0));
        assert!(r.lease_expires_at.is_none());
        let l2 = s.claim(claim(&["q"], 1, "w2")).await.unwrap().remove(0);
        assert_eq!(l2.job.attempts, 1);
        assert!(l2.token > l.token);
    }

    pub async fn extend_moves_expiry(s: Arc<dyn Store>) {
        s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let l = s
            .claim(ClaimRequest::new(["q"], 1, "w", Duration::from_secs(5)))
            .await
            .unwrap()
            .remove(0);
        let new = s
            .extend(l.job.id, l.token, Duration::from_secs(600))
            .await
            .unwrap();
        assert!(new > l.expires_at + chrono::Duration::seconds(500));
        let got = s.get_job(l.job.id).await.unwrap().unwrap();
        assert_eq!(got.lease_expires_at, Some(new));
        // An extended lease is not reaped at the old expiry.
        let reaped = s
            .reap_expired(l.expires_at + chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(reaped.retried + reaped.dead, 0);
        let e = s
            .extend(l.job.id, l.token - 1, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
    }

    pub async fn reaped_job_is_claimed_again_and_late_complete_refused(s: Arc<dyn Store>) {
        let j = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        // Worker A claims with a short lease, then goes silent (no extend, no heartbeat).
        let a = s
            .claim(ClaimRequest::new(
                ["q"],
                1,
                "worker-a",
                Duration::from_millis(200),
            ))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            s.reap_expired(Utc::now()).await.unwrap().retried,
            0,
            "not yet expired"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let counts = s.reap_expired(Utc::now()).await.unwrap();
        assert_eq!((counts.retried, counts.dead), (1, 0));
        let got = s.get_job(j.id).await.unwrap().unwrap();
        assert_eq!(got.state, JobState::Ready);
        assert_eq!(got.attempts, 1, "the lost run counts");
        assert_eq!(got.lost_leases, 1);
        let err = got.last_error.unwrap();
        assert_eq!(err.class, Failure::LEASE_LOST);
        assert!(err.message.contains("worker-a"), "{}", err.message);

        let b = s
            .claim(claim(&["q"], 1, "worker-b"))
            .await
            .unwrap()
            .remove(0);
        assert!(b.token > a.token);
        assert_eq!(b.job.attempts, 2);
        // A comes back late: refused, and B's run is untouched.
        let e = s.complete(j.id, a.token).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let e = s
            .fail(
                j.id,
                a.token,
                Failure::new("E", "late"),
                &RetryPolicy::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(
            s.extend(j.id, a.token, Duration::from_secs(9))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict
        );
        assert_eq!(s.get_job(j.id).await.unwrap().unwrap(), b.job);
        assert_eq!(
            s.complete(j.id, b.token).await.unwrap().state,
            JobState::Completed
        );
    }

    pub async fn lost_leases_end_in_dead(s: Arc<dyn Store>) {
        // max_lost_leases = 3 (contract options).
        let j = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        for round in 1..=3 {
            let l = s.claim(claim(&["q"], 1, "w")).await.unwrap().remove(0);
            assert_eq!(l.job.id, j.id);
            let c = s
                .reap_expired(Utc::now() + chrono::Duration::hours(1))
                .await
                .unwrap();
            if round < 3 {
                assert_eq!((c.retried, c.dead), (1, 0), "round {round}");
            } else {
                assert_eq!((c.retried, c.dead), (0, 1), "round {round}");
            }
        }
        let dead = s.get_job(j.id).await.unwrap().unwrap();
        assert_eq!(dead.state, JobState::Dead);
        let err = dead.last_error.unwrap();
        assert_eq!(err.class, "FlyJobs::LeaseLost");
        assert!(
            err.message.contains("lost lease 3 of at most 3"),
            "{}",
            err.message
        );
        // Attempts exhausted also ends in dead on a lost lease.
        let k = s
            .enqueue(NewJob::new("q2", json!(1)).max_attempts(1))
            .await
            .unwrap();
        s.claim(claim(&["q2"], 1, "w")).await.unwrap();
        let c = s
            .reap_expired(Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(c.dead, 1);
        assert_eq!(
            s.get_job(k.id).await.unwrap().unwrap().state,
            JobState::Dead
        );
    }

    pub async fn enqueue_many_is_all_or_nothing(s: Arc<dyn Store>) {
        let bad = vec![
            NewJob::new("ok", json!(1)),
            NewJob::new("not ok!", json!(2)),
        ];
        assert_eq!(
            s.enqueue_many(bad).await.unwrap_err().kind(),
            ErrorKind::Invalid
        );
        let too_big = vec![
            NewJob::new("ok", json!(1)),
            NewJob::new("ok", json!("x".repeat(LIMIT + 1))),
        ];
        assert_eq!(
            s.enqueue_many(too_big).await.unwrap_err().kind(),
            ErrorKind::Invalid
        );
        assert!(
            s.list_jobs(JobFilter::default()).await.unwrap().is_empty(),
            "nothing written"
        );
        let jobs = s
            .enqueue_many((0..100).map(|i| NewJob::new("ok", json!(i))).collect())
            .await
            .unwrap();
        assert_eq!(jobs.len(), 100);
        assert!(jobs.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(jobs[42].payload, json!(42));
        assert!(s.enqueue_many(vec![]).await.unwrap().is_empty());
    }

    /// A batch (one statement on both dialects) stores each job exactly as a lone enqueue
    /// would: every field, ready or scheduled, in the batch's order.
    pub async fn enqueue_many_stores_what_enqueue_stores(s: Arc<dyn Store>) {
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        let jobs = || {
            vec![
                NewJob::new(
                    "bq",
                    json!({"s": "h\u{e9}llo \u{1F600}", "n": [1, null, {"k": "v"}]}),
                ),
                NewJob::new("bq", json!("text"))
                    .priority(-3)
                    .max_attempts(7)
                    .name("Mailer")
                    .image_ref("registry.fly.io/app:v2")
                    .shape("performance-2x"),
                NewJob::new("bq2", json!(42)).run_at(later),
            ]
        };
        let batch = s.enqueue_many(jobs()).await.unwrap();
        let mut alone = Vec::new();
        for job in jobs() {
            alone.push(s.enqueue(job).await.unwrap());
        }
        assert!(
            batch.windows(2).all(|w| w[0].id < w[1].id),
            "in the batch's order"
        );
        for (b, a) in batch.iter().zip(&alone) {
            assert_eq!(
                (
                    &b.queue,
                    &b.name,
                    &b.payload,
                    b.state,
                    b.priority,
                    b.max_attempts
                ),
                (
                    &a.queue,
                    &a.name,
                    &a.payload,
                    a.state,
                    a.priority,
                    a.max_attempts
                )
            );
            assert_eq!(
                (&b.image_ref, &b.shape, b.attempts),
                (&a.image_ref, &a.shape, a.attempts)
            );
            let stored = s.get_job(b.id).await.unwrap().unwrap();
            assert_eq!(
                (stored.payload, stored.run_at),
                (b.payload.clone(), b.run_at)
            );
        }
        assert_eq!(batch[2].state, JobState::Scheduled);
        assert_eq!(batch[2].run_at.timestamp(), later.timestamp());
        assert_eq!(batch[1].shape, "performance-2x");
    }

    pub async fn unique_key_dedupes_pending(s: Arc<dyn Store>) {
        let a = s
            .enqueue(NewJob::new("q", json!(1)).unique_key("user:1"))
            .await
            .unwrap();
        let b = s
            .enqueue(NewJob::new("q", json!(2)).unique_key("user:1"))
            .await
            .unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(b.payload, json!(1));
        let batch = s
            .enqueue_many(vec![
                NewJob::new("q", json!(3)).unique_key("user:2"),
                NewJob::new("q", json!(4)).unique_key("user:2"),
                NewJob::new("q", json!(5)).unique_key("user:1"),
            ])
            .await
            .unwrap();
        assert_eq!(batch[0].id, batch[1].id);
        assert_eq!(batch[2].id, a.id);
        // Still pending while running; free again once finished.
        let l = s.claim(claim(&["q"], 1, "w")).await.unwrap().remove(0);
        assert_eq!(l.job.id, a.id);
        assert_eq!(
            s.enqueue(NewJob::new("q", json!(6)).unique_key("user:1"))
                .await
                .unwrap()
                .id,
            a.id
        );
        s.complete(l.job.id, l.token).await.unwrap();
        let c = s
            .enqueue(NewJob::new("q", json!(7)).unique_key("user:1"))
            .await
            .unwrap();
        assert_ne!(c.id, a.id);
    }

    pub async fn bad_input_is_rejected_cleanly(s: Arc<dyn Store>) {
        let big = json!("x".repeat(LIMIT));
        let size = serde_json::to_string(&big).unwrap().len();
        let e = s.enqueue(NewJob::new("q", big)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(
            e.message().contains(&LIMIT.to_string()),
            "names the limit: {e}"
        );
        assert!(
            e.message().contains(&size.to_string()),
            "names the size: {e}"
        );
        for q in ["", "has space", &"x".repeat(65), "semi;colon"] {
            let e = s.enqueue(NewJob::new(q, json!(1))).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid);
            assert!(
                e.message().contains(&format!("{q:?}")),
                "names the queue: {e}"
            );
        }
        let e = s
            .enqueue(NewJob::new("q", json!(1)).max_attempts(0))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(
            s.list_jobs(JobFilter::default()).await.unwrap().is_empty(),
            "nothing written"
        );
        // Exactly at the limit is fine.
        let at_limit = json!("x".repeat(LIMIT - 2));
        s.enqueue(NewJob::new("q", at_limit)).await.unwrap();
    }

    pub async fn discard_rules(s: Arc<dyn Store>) {
        let waiting = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let d = s.discard(waiting.id, None, None).await.unwrap();
        assert_eq!(d.state, JobState::Discarded);
        assert!(d.finished_at.is_some());
        let running = s.enqueue(NewJob::new("q", json!(2))).await.unwrap();
        let l = s.claim(claim(&["q"], 1, "w")).await.unwrap().remove(0);
        assert_eq!(l.job.id, running.id);
        assert_eq!(
            s.discard(running.id, None, None).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        let d = s
            .discard(
                running.id,
                Some(l.token),
                Some(Failure::new("ActiveJob::DeserializationError", "gone")),
            )
            .await
            .unwrap();
        assert_eq!(d.state, JobState::Discarded);
        assert_eq!(
            d.last_error.unwrap().class,
            "ActiveJob::DeserializationError"
        );
        assert_eq!(
            s.discard(running.id, None, None).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        assert_eq!(
            s.discard(flyjobs::job::JobId(424_242), None, None)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            s.retry_dead(running.id).await.unwrap().state,
            JobState::Ready
        );
    }

    pub async fn workers_registry(s: Arc<dyn Store>) {
        let mut w = WorkerInfo::new("m-1", ["default", "mail"], 4);
        w.image_ref = Some("img:1".into());
        s.register_worker(w).await.unwrap();
        s.register_worker(WorkerInfo::new("m-2", ["default"], 1))
            .await
            .unwrap();
        let ws = s.workers().await.unwrap();
        assert_eq!(ws.len(), 2);
        assert_eq!(ws[0].id, "m-1");
        assert_eq!(ws[0].queues, vec!["default", "mail"]);
        assert_eq!((ws[0].concurrency, ws[0].state), (4, WorkerState::Booting));
        assert_eq!(ws[0].image_ref.as_deref(), Some("img:1"));
        s.heartbeat_worker("m-1", 3).await.unwrap();
        let w1 = s.workers().await.unwrap().remove(0);
        assert_eq!((w1.state, w1.running), (WorkerState::Live, 3));
        assert!(w1.last_heartbeat_at >= ws[0].last_heartbeat_at);
        s.heartbeat_worker("m-1", 0).await.unwrap();
        assert_eq!(s.workers().await.unwrap()[0].state, WorkerState::Idle);
        s.set_worker_state("m-1", WorkerState::Stopping)
            .await
            .unwrap();
        s.heartbeat_worker("m-1", 2).await.unwrap();
        assert_eq!(s.workers().await.unwrap()[0].state, WorkerState::Stopping);
        assert_eq!(
            s.heartbeat_worker("nope", 1).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        s.deregister_worker("m-2").await.unwrap();
        assert_eq!(s.workers().await.unwrap().len(), 1);
        assert_eq!(
            s.prune_workers(Utc::now() - chrono::Duration::hours(1))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            s.prune_workers(Utc::now() + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            1
        );
        assert!(s.workers().await.unwrap().is_empty());
    }

    pub async fn stats_per_queue(s: Arc<dyn Store>) {
        let past = Utc::now() - chrono::Duration::seconds(30);
        let future = Utc::now() + chrono::Duration::hours(1);
        s.enqueue(NewJob::new("a", json!(1)).run_at(past))
            .await
            .unwrap();
        s.enqueue(NewJob::new("a", json!(2))).await.unwrap();
        s.enqueue(NewJob::new("a", json!(3)).run_at(future))
            .await
            .unwrap();
        s.enqueue(NewJob::new("a", json!(4)).priority(-10))
            .await
            .unwrap();
        s.enqueue(NewJob::new("b", json!(5))).await.unwrap();
        let l = s.claim(claim(&["a"], 1, "w")).await.unwrap().remove(0); // the priority -10 one
        s.complete(l.job.id, l.token).await.unwrap();
        let l = s.claim(claim(&["b"], 1, "w")).await.unwrap().remove(0);
        s.fail(
            l.job.id,
            l.token,
            Failure::new("E", "x"),
            &immediate_retry(1),
        )
        .await
        .unwrap();
        s.enqueue(NewJob::new("b", json!(6))).await.unwrap();
        s.claim(claim(&["b"], 1, "w")).await.unwrap();

        let st = s.stats().await.unwrap();
        assert_eq!(st.len(), 2);
        let a = &st[0];
        assert_eq!(a.queue, "a");
        assert_eq!(
            (a.ready, a.scheduled, a.running, a.completed, a.dead),
            (2, 1, 0, 1, 0)
        );
        assert!(a.oldest_ready_age.unwrap() >= Duration::from_secs(29));
        assert_eq!(a.next_scheduled_at.unwrap().timestamp(), future.timestamp());
        let b = &st[1];
        assert_eq!(
            (b.ready, b.scheduled, b.running, b.completed, b.dead),
            (0, 0, 1, 0, 1)
        );
        assert!(b.oldest_ready_age.is_none() && b.next_scheduled_at.is_none());
    }

    pub async fn clear_queue_and_class_filter(s: Arc<dyn Store>) {
        let later = Utc::now() + chrono::Duration::hours(1);
        let mut jobs = Vec::new();
        for i in 0..6 {
            let mut j = NewJob::new("mail", json!(i)).name(if i % 2 == 0 { "A" } else { "B" });
            if i == 5 {
                j.run_at = Some(later);
            }
            jobs.push(j);
        }
        jobs.push(NewJob::new("other", json!("keep")).name("A"));
        s.enqueue_many(jobs).await.unwrap();
        let a = s
            .list_jobs(JobFilter {
                name: Some("A".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|j| j.name == "A"));
        // One running and one dead job survive a clear; ready and scheduled ones go.
        let running = s.claim(claim(&["mail"], 2, "w")).await.unwrap();
        s.fail(
            running[1].job.id,
            running[1].token,
            Failure::new("Boom", "x"),
            &immediate_retry(1),
        )
        .await
        .unwrap();
        assert_eq!(s.clear_queue("mail").await.unwrap(), 4);
        let left = s
            .list_jobs(JobFilter {
                queue: Some("mail".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut states: Vec<_> = left.iter().map(|j| j.state).collect();
        states.sort_by_key(|s| s.as_str());
        assert_eq!(states, vec![JobState::Dead, JobState::Running]);
        assert_eq!(s.clear_queue("mail").await.unwrap(), 0);
        assert_eq!(
            s.stats()
                .await
                .unwrap()
                .iter()
                .find(|q| q.queue == "other")
                .unwrap()
                .ready,
            1
        );
    }

    pub async fn list_and_get(s: Arc<dyn Store>) {
        let jobs = s
            .enqueue_many(
                (0..25)
                    .map(|i| NewJob::new(if i % 2 == 0 { "even" } else { "odd" }, json!(i)))
                    .collect(),
            )
            .await
            .unwrap();
        let page1 = s
            .list_jobs(JobFilter {
                queue: Some("even".into()),
                limit: 5,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page1.len(), 5);
        let page2 = s
            .list_jobs(JobFilter {
                queue: Some("even".into()),
                limit: 100,
                after_id: Some(page1[4].id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page2.len(), 8);
        assert!(page2[0].id > page1[4].id);
        s.claim(claim(&["odd"], 3, "w")).await.unwrap();
        let running = s
            .list_jobs(JobFilter {
                state: Some(JobState::Running),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(running.len(), 3);
        assert!(running.iter().all(|j| j.queue == "odd"));
        assert_eq!(
            s.get_job(jobs[3].id).await.unwrap().unwrap().payload,
            json!(3)
        );
        assert!(
            s.get_job(flyjobs::job::JobId(123_456_789))
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn prune_finished_jobs(s: Arc<dyn Store>) {
        // opts(): completed kept 1 h, dead and discarded 10 days.
        for i in 0..5 {
            s.enqueue(NewJob::new("q", json!(i))).await.unwrap();
        }
        let mut leases = s.claim(claim(&["q"], 3, "w")).await.unwrap().into_iter();
        for l in leases.by_ref().take(2) {
            s.complete(l.job.id, l.token).await.unwrap();
        }
        let dead = leases.next().unwrap();
        s.fail(
            dead.job.id,
            dead.token,
            Failure::new("E", "x"),
            &immediate_retry(1),
        )
        .await
        .unwrap();
        let waiting = s.list_jobs(JobFilter::default()).await.unwrap();
        let discarded = waiting.iter().find(|j| j.state == JobState::Ready).unwrap();
        s.discard(discarded.id, None, None).await.unwrap();
        let now = Utc::now();
        assert_eq!(s.prune_finished(now).await.unwrap(), 0, "all too recent");
        assert_eq!(
            s.prune_finished(now + chrono::Duration::minutes(59))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            s.prune_finished(now + chrono::Duration::minutes(61))
                .await
                .unwrap(),
            2,
            "completed jobs go after an hour"
        );
        assert_eq!(
            s.prune_finished(now + chrono::Duration::days(9))
                .await
                .unwrap(),
            0,
            "dead and discarded jobs stay ten days"
        );
        assert_eq!(
            s.prune_finished(now + chrono::Duration::days(11))
                .await
                .unwrap(),
            2
        );
        let left = s.list_jobs(JobFilter::default()).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].state, JobState::Ready);
    }

    pub async fn leader_lock(s: Arc<dyn Store>) {
        let ttl = Duration::from_millis(300);
        assert!(s.try_acquire_leader("scaler", "a", ttl).await.unwrap());
        assert!(!s.try_acquire_leader("scaler", "b", ttl).await.unwrap());
        assert!(
            s.try_acquire_leader("scaler", "a", ttl).await.unwrap(),
            "renew"
        );
        assert!(
            s.try_acquire_leader("other", "b", ttl).await.unwrap(),
            "locks are per name"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            s.try_acquire_leader("scaler", "b", ttl).await.unwrap(),
            "expired lock is taken over"
        );
        assert!(!s.try_acquire_leader("scaler", "a", ttl).await.unwrap());
        s.release_leader("scaler", "a").await.unwrap(); // not the holder: no effect
        assert!(!s.try_acquire_leader("scaler", "a", ttl).await.unwrap());
        s.release_leader("scaler", "b").await.unwrap();
        assert!(s.try_acquire_leader("scaler", "a", ttl).await.unwrap());
    }

    pub async fn enqueue_wakes_subscribers(s: Arc<dyn Store>) {
        let mut n = s.subscribe();
        // Drain start-up wake-ups (the Postgres listener signals when it connects).
        while n.wait(Duration::from_millis(300)).await {}
        assert!(!n.wait(Duration::from_millis(50)).await);
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s2.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        });
        assert!(n.wait(Duration::from_secs(5)).await);
        // A signal sent before wait() is not lost.
        s.enqueue(NewJob::new("q", json!(2))).await.unwrap();
        assert!(n.wait(Duration::from_millis(10)).await);
    }

    pub async fn concurrent_claimers_take_each_job_once(s: Arc<dyn Store>) {
        const N: usize = 1000;
        for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
            s.enqueue_many(chunk.iter().map(|i| NewJob::new("c", json!(i))).collect())
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let got = s.claim(claim(&["c"], 10, &format!("w{w}"))).await.unwrap();
                    if got.is_empty() {
                        break;
                    }
                    for l in got {
                        s.complete(l.job.id, l.token).await.unwrap();
                        seen.push(l.job.id);
                    }
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        assert_eq!(all.len(), N);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), N);
        let st = s.stats().await.unwrap();
        assert_eq!(st[0].completed, N as u64);
    }

    fn ids(leases: &[flyjobs::store::Lease]) -> Vec<flyjobs::job::JobId> {
        leases.iter().map(|l| l.job.id).collect()
    }

    pub async fn shape_round_trips_and_defaults_to_empty(s: Arc<dyn Store>) {
        let plain = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        assert_eq!(plain.shape, "");
        let shaped = s
            .enqueue(NewJob::new("q", json!(2)).shape("performance-2x@ams,fra"))
            .await
            .unwrap();
        assert_eq!(shaped.shape, "performance-2x@ams,fra");
        let got = s.get_job(shaped.id).await.unwrap().unwrap();
        assert_eq!(got, shaped);
        assert_eq!(
            serde_json::to_value(&got).unwrap()["shape"],
            "performance-2x@ams,fra"
        );
        let many = s
            .enqueue_many(vec![
                NewJob::from_value(&json!({"payload": 3, "shape": "shared-cpu-1x"})).unwrap(),
                NewJob::new("q", json!(4)),
            ])
            .await
            .unwrap();
        assert_eq!(many[0].shape, "shared-cpu-1x");
        assert_eq!(many[1].shape, "");
        // A claim without a shape filter takes every shape.
        let all = s.claim(claim(&["q", "default"], 10, "w")).await.unwrap();
        assert_eq!(all.len(), 4);
        let claimed = all.iter().find(|l| l.job.id == shaped.id).unwrap();
        assert_eq!(claimed.job.shape, "performance-2x@ams,fra");
    }

    pub async fn claim_filters_by_shape(s: Arc<dyn Store>) {
        let plain = s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
        let big = s
            .enqueue(NewJob::new("q", json!(2)).shape("performance-2x"))
            .await
            .unwrap();
        let other = s
            .enqueue(NewJob::new("q", json!(3)).shape("performance-2x@ams"))
            .await
            .unwrap();
        let got = s
            .claim(claim(&["q"], 10, "w").shape("performance-2x"))
            .await
            .unwrap();
        assert_eq!(ids(&got), vec![big.id]);
        let got = s.claim(claim(&["q"], 10, "w").shape("")).await.unwrap();
        assert_eq!(ids(&got), vec![plain.id]);
        assert!(
            s.claim(claim(&["q"], 10, "w").shape("nope"))
                .await
                .unwrap()
                .is_empty()
        );
        let got = s.claim(claim(&["q"], 10, "w")).await.unwrap();
        assert_eq!(ids(&got), vec![other.id]);
    }

    pub async fn claim_filters_by_image(s: Arc<dyn Store>) {
        let none = s.enqueue(NewJob::new("q", json!(0))).await.unwrap();
        let v1 = s
            .enqueue(NewJob::new("q", json!(1)).image_ref("app:v1"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cut = Utc::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let v1_late = s
            .enqueue(NewJob::new("q", json!(2)).image_ref("app:v1"))
            .await
            .unwrap();
        let v2 = s
            .enqueue(NewJob::new("q", json!(3)).image_ref("app:v2"))
            .await
            .unwrap();
        // Only v2's own jobs.
        let got = s
            .claim(claim(&["q"], 10, "w").image(ImageFilter::only("app:v2")))
            .await
            .unwrap();
        assert_eq!(ids(&got), vec![v2.id]);
        // v3 with a cut-off: its own (none), jobs without an image, and jobs enqueued before
        // the cut; not v1's job enqueued after it.
        let got = s
            .claim(claim(&["q"], 10, "w").image(ImageFilter {
                image_ref: "app:v3".into(),
                or_enqueued_before: Some(cut),
            }))
            .await
            .unwrap();
        assert_eq!(ids(&got), vec![none.id, v1.id]);
        let rest = s.claim(claim(&["q"], 10, "w")).await.unwrap();
        assert_eq!(ids(&rest), vec![v1_late.id]);
    }

    pub async fn ready_shapes_groups_runnable_jobs(s: Arc<dyn Store>) {
        assert!(s.ready_shapes().await.unwrap().is_empty());
        let t0 = Utc::now();
        let first = s.enqueue(NewJob::new("a", json!(1))).await.unwrap();
        s.enqueue(NewJob::new("a", json!(2))).await.unwrap();
        s.enqueue(NewJob::new("a", json!(3)).shape("performance-2x"))
            .await
            .unwrap();
        s.enqueue(
            NewJob::new("a", json!(4))
                .shape("performance-2x")
                .image_ref("app:v1"),
        )
        .await
        .unwrap();
        s.enqueue(NewJob::new("b", json!(5)).image_ref("app:v1"))
            .await
            .unwrap();
        // Not runnable: in the future, running, finished.
        s.enqueue(NewJob::new("a", json!(6)).run_at(Utc::now() + chrono::Duration::hours(1)))
            .await
            .unwrap();
        let running = s.enqueue(NewJob::new("c", json!(7))).await.unwrap();
        let done = s.enqueue(NewJob::new("d", json!(8))).await.unwrap();
        for q in ["c", "d"] {
            let l = s.claim(claim(&[q], 1, "w")).await.unwrap().remove(0);
            if q == "d" {
                assert_eq!(l.job.id, done.id);
                s.complete(l.job.id, l.token).await.unwrap();
            } else {
                assert_eq!(l.job.id, running.id);
            }
        }
        let got = s.ready_shapes().await.unwrap();
        let keys: Vec<_> = got
            .iter()
            .map(|d| {
                (
                    d.queue.as_str(),
                    d.shape.as_str(),
                    d.image_ref.as_deref(),
                    d.ready,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a", "", None, 2),
                ("a", "performance-2x", None, 1),
                ("a", "performance-2x", Some("app:v1"), 1),
                ("b", "", Some("app:v1"), 1),
            ]
        );
        let a: &ShapeDemand = &got[0];
        assert_eq!(a.oldest_created_at, first.created_at);
        assert!(a.oldest_created_at >= t0 - chrono::Duration::seconds(1));
        // A scheduled job whose run_at passed counts.
        s.enqueue(
            NewJob::new("e", json!(9)).run_at(Utc::now() + chrono::Duration::milliseconds(50)),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = s.ready_shapes().await.unwrap();
        assert!(
            got.iter().any(|d| d.queue == "e" && d.ready == 1),
            "{got:?}"
        );
    }
}

#[test]
fn retention_defaults_are_a_day_and_six_months() {
    let o = StoreOptions::default();
    assert_eq!(o.retain_completed, Duration::from_secs(24 * 3600));
    assert_eq!(o.retain_dead, Duration::from_secs(183 * 24 * 3600));
}

#[tokio::test]
async fn unreachable_database_error_hides_password() {
    let opts = StoreOptions {
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let e = flyjobs::store::open("postgres://app:hunter2@127.0.0.1:1/jobs", opts)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Store);
    let text = format!("{e} {e:?}");
    assert!(text.contains("127.0.0.1:1"), "names the URL: {text}");
    assert!(!text.contains("hunter2"), "no password: {text}");
    let e = flyjobs::store::open("mysql://u:pw@h/db", StoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!e.to_string().contains("pw@"), "{e}");
}

#[tokio::test]
async fn sqlite_in_memory_and_reopen() {
    let s = flyjobs::store::open("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    s.enqueue(NewJob::new("q", json!(1))).await.unwrap();
    assert_eq!(s.claim(claim(&["q"], 5, "w")).await.unwrap().len(), 1);
    // Reopening a file keeps its jobs and does not re-run migrations.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let a = flyjobs::store::open(&url, StoreOptions::default())
        .await
        .unwrap();
    a.enqueue(NewJob::new("q", json!(1))).await.unwrap();
    a.close().await;
    let b = flyjobs::store::open(&url, StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(b.list_jobs(JobFilter::default()).await.unwrap().len(), 1);
}

/// No commit copies the WAL into the database file (the pool's connections do not checkpoint,
/// which cost each enqueue ~50 µs on average); the store's watcher does, within about a
/// second, with nobody subscribed (a web process that only enqueues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_off_the_commit_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = flyjobs::store::open(&url, StoreOptions::default())
        .await
        .unwrap();
    // Let the watcher's first checkpoint (the migrations) pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = std::fs::metadata(&path).unwrap().len();
    for i in 0..1500 {
        store
            .enqueue(NewJob::new("q", json!({ "n": i, "pad": "x".repeat(200) })))
            .await
            .unwrap();
    }
    let wal = dir.path().join("c.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 4_500_000,
        "the WAL grew past SQLite's automatic checkpoint (1,000 pages, ~4.1 MB)"
    );
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = std::fs::metadata(&path).unwrap().len();
        if after > before + 300 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the database file did not grow: {before} -> {after} bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.stats().await.unwrap()[0].ready, 1500);
}

/// Two store handles on one SQLite file (as two processes have): an enqueue through one wakes
/// a waiter on the other, through `PRAGMA data_version` (before, SQLite wake-ups stayed in
/// the process that wrote and other processes polled every 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wakes_waiters_of_other_handles() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("x.db").display());
    let worker_side = flyjobs::store::open(&url, StoreOptions::default())
        .await
        .unwrap();
    let app_side = flyjobs::store::open(&url, StoreOptions::default())
        .await
        .unwrap();
    assert!(worker_side.wakes_other_processes());
    for i in 0..3 {
        let mut wake = worker_side.subscribe();
        assert!(
            worker_side
                .claim(claim(&["q"], 1, "w"))
                .await
                .unwrap()
                .is_empty()
        );
        // Let the watcher take its baseline, and drain wake-ups from our own writes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = wake.wait(Duration::from_millis(20)).await;
        assert!(
            !wake.wait(Duration::from_millis(100)).await,
            "no wake-up without a write"
        );
        let job = app_side.enqueue(NewJob::new("q", json!(i))).await.unwrap();
        assert!(
            wake.wait(Duration::from_secs(5)).await,
            "round {i}: the other handle's enqueue woke the waiter"
        );
        let got = worker_side.claim(claim(&["q"], 1, "w")).await.unwrap();
        assert_eq!(got[0].job.id, job.id);
        worker_side
            .complete(got[0].job.id, got[0].token)
            .await
            .unwrap();
    }
    // Writes that bring no work (a worker's registration and heartbeat, a completion) wake
    // nobody; a release (work again) does.
    let job = worker_side
        .enqueue(NewJob::new("q", json!("r")))
        .await
        .unwrap();
    let l = app_side
        .claim(claim(&["q"], 1, "w2"))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(l.job.id, job.id);
    let mut wake = worker_side.subscribe();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = wake.wait(Duration::from_millis(20)).await;
    app_side
        .register_worker(WorkerInfo::new("w2", ["q"], 1))
        .await
        .unwrap();
    app_side.heartbeat_worker("w2", 1).await.unwrap();
    assert!(
        !wake.wait(Duration::from_millis(300)).await,
        "a heartbeat is no work"
    );
    app_side.release(l.job.id, l.token).await.unwrap();
    assert!(wake.wait(Duration::from_secs(5)).await, "a release is work");
    let memory = flyjobs::store::open("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    assert!(!memory.wakes_other_processes());
}
