//! The store calls the dashboard needs (`run_now`, `finished_since`), on SQLite and PostgreSQL
//! (see store_support for the skip policy).

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

backend!(sqlite: run_now_makes_a_scheduled_job_ready, finished_since_lists_end_states_newest_first);
backend!(postgres: run_now_makes_a_scheduled_job_ready, finished_since_lists_end_states_newest_first);
