//! The store calls the dashboard and cost accounting need (`run_now`, `finished_since`, machine
//! usage), on SQLite and PostgreSQL (see store_support for the skip policy).

mod store_support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flyjobs::ErrorKind;
use flyjobs::job::{Failure, JobState, NewJob};
use flyjobs::retry::{Backoff, Outcome, RetryPolicy};
use flyjobs::store::{ClaimRequest, Store, StoreOptions};
use serde_json::json;

async fn run_now_makes_a_scheduled_job_ready(s: Arc<dyn Store>) {
    let later = Utc::now() + chrono::Duration::hours(1);
    let job = s
        .enqueue(NewJob::new("dash", json!(1)).run_at(later))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    let claim = || ClaimRequest::new(["dash"], 5, "w", Duration::from_secs(60));
    assert!(s.claim(claim()).await.unwrap().is_empty());
    let now = s.run_now(job.id).await.unwrap();
    assert_eq!(now.state, JobState::Ready);
    assert!(now.run_at <= Utc::now());
    let leases = s.claim(claim()).await.unwrap();
    assert_eq!(leases.len(), 1);
    // a running job cannot be "run now": the error names the job
    let e = s.run_now(job.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.job_id(), Some(job.id.0));
    let e = s.run_now(flyjobs::job::JobId(i64::MAX)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

async fn finished_since_lists_end_states_newest_first(s: Arc<dyn Store>) {
    let start = Utc::now();
    let ids: Vec<_> = s
        .enqueue_many((0..3).map(|i| NewJob::new("fin", json!(i))).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    s.enqueue(NewJob::new("fin", json!("waiting"))).await.ok();
    let leases = s
        .claim(ClaimRequest::new(["fin"], 3, "w", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(leases.len(), 3);
    s.complete(leases[0].job.id, leases[0].token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let policy = RetryPolicy::new(1, Backoff::Fixed(Duration::ZERO)).unwrap();
    let out = s
        .fail(
            leases[1].job.id,
            leases[1].token,
            Failure::new("Boom", "no"),
            &policy,
        )
        .await
        .unwrap();
    assert_eq!(out, Outcome::Dead);
    // the third is still running: not finished
    let got = s.finished_since(start, 0).await.unwrap();
    let got_ids: Vec<_> = got.iter().map(|j| j.id).collect();
    assert_eq!(
        got_ids,
        vec![ids[1], ids[0]],
        "newest first, running and ready left out"
    );
    assert!(got.iter().all(|j| j.finished_at.is_some()));
    assert_eq!(s.finished_since(start, 1).await.unwrap().len(), 1);
    let future = Utc::now() + chrono::Duration::seconds(5);
    assert!(s.finished_since(future, 0).await.unwrap().is_empty());
}

async fn usage_is_recorded_once_per_interval(s: Arc<dyn Store>) {
    use flyjobs::cost::{self, Prices, UsageCursor};
    assert!(
        s.usage_cursors().await.unwrap().is_empty(),
        "no table yet reads as empty"
    );
    assert!(s.usage_hours(Utc::now()).await.unwrap().is_empty());
    let ev = |status: &str, ts: i64| -> flyjobs::machines::types::MachineEvent {
        serde_json::from_value(
            json!({"id": format!("{status}{ts}"), "status": status, "timestamp": ts}),
        )
        .unwrap()
    };
    let t0 = 500_000 * 3_600_000_i64; // an hour boundary
    let events = vec![ev("started", t0 + 1000), ev("created", t0)];
    let p = Prices::default();
    let mut c = UsageCursor::new("m1", "mail", ("shared", 1, 256), &events[1]).unwrap();
    let hours = cost::advance(&mut c, &events, t0 + 61_000, &p);
    assert!(s.record_usage(&c, None, &hours).await.unwrap());
    // the same new cursor again (a second recorder that read nothing): refused
    assert!(!s.record_usage(&c, None, &hours).await.unwrap());
    let read = s.usage_cursors().await.unwrap();
    assert_eq!(read, vec![c.clone()]);
    // move on from what was read: accepted, and the hour adds up
    let mut c2 = read[0].clone();
    let more = cost::advance(&mut c2, &events, t0 + 121_000, &p);
    assert!(
        s.record_usage(&c2, Some(c.through_ms), &more)
            .await
            .unwrap()
    );
    // a recorder that read the old cursor loses
    let mut stale = c.clone();
    let dup = cost::advance(&mut stale, &events, t0 + 121_000, &p);
    assert!(
        !s.record_usage(&stale, Some(c.through_ms), &dup)
            .await
            .unwrap()
    );
    let hours = s
        .usage_hours(chrono::DateTime::from_timestamp_millis(t0).unwrap())
        .await
        .unwrap();
    assert_eq!(hours.len(), 1);
    assert_eq!(hours[0].queue, "mail");
    assert!((hours[0].seconds.started - 120.0).abs() < 1e-9, "{hours:?}");
    assert!((hours[0].seconds.stopped - 1.0).abs() < 1e-9);
    assert!((hours[0].cost_usd - c2.cost_usd).abs() < 1e-12);
    assert_eq!(s.usage_cursors().await.unwrap()[0].seconds.started, 120.0);
}

macro_rules! backend {
    ($backend:ident: $($name:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fx) = super::store_support::$backend(super::StoreOptions::default()).await
                    else {
                        return;
                    };
                    super::$name(fx.store.clone()).await;
                    fx.store.close().await;
                }
            )*
        }
    };
}

backend!(
    sqlite: run_now_makes_a_scheduled_job_ready,
    finished_since_lists_end_states_newest_first,
    usage_is_recorded_once_per_interval
);
backend!(
    postgres: run_now_makes_a_scheduled_job_ready,
    finished_since_lists_end_states_newest_first,
    usage_is_recorded_once_per_interval
);
