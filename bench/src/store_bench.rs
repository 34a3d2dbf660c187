//! Store throughput: jobs/s for enqueue (single, batches of 100) and claim + complete (1 and 4
//! claimers) on SQLite (a temp file) and PostgreSQL (`FLYJOBS_TEST_DATABASE_URL`, a fresh
//! schema), in one run. Not a timed test: it prints a Markdown table for BENCHMARKS.md.
//!
//! `scripts/with-postgres.sh cargo run -p flyjobs-bench --release -- [--jobs N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use flyjobs::job::NewJob;
use flyjobs::store::{self, ClaimRequest, Store, StoreOptions};
use serde_json::json;

/// Jobs claimed per claim call (a worker with 10 free slots).
const CLAIM_LIMIT: usize = 10;

fn payload(i: usize) -> serde_json::Value {
    // About the size of a serialized Active Job (~300 bytes).
    json!({
        "job_class": "WelcomeMailerJob", "job_id": format!("{i:08}-bench"),
        "queue_name": "default", "priority": null, "arguments": [{"_aj_globalid": format!("gid://app/User/{i}")}],
        "executions": 0, "exception_executions": {}, "locale": "en", "timezone": "UTC",
        "enqueued_at": "2026-11-27T21:00:00Z", "scheduled_at": null
    })
}

async fn enqueue_single(s: &Arc<dyn Store>, n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        s.enqueue(NewJob::new("single", payload(i)))
            .await
            .expect("enqueue");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn enqueue_batches(s: &Arc<dyn Store>, queue: &str, n: usize) -> f64 {
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let batch = (i..(i + 100).min(n))
            .map(|k| NewJob::new(queue, payload(k)))
            .collect();
        s.enqueue_many(batch).await.expect("enqueue_many");
        i += 100;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn drain(s: &Arc<dyn Store>, queue: &str, claimers: usize, n: usize) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..claimers {
        let s = s.clone();
        let queue = queue.to_string();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let req = ClaimRequest::new(
                    [queue.as_str()],
                    CLAIM_LIMIT,
                    format!("bench-{w}"),
                    Duration::from_secs(300),
                );
                let got = s.claim(req).await.expect("claim");
                if got.is_empty() {
                    return done;
                }
                for l in got {
                    s.complete(l.job.id, l.token).await.expect("complete");
                    done += 1;
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("claimer");
    }
    assert_eq!(total, n, "every job completed once");
    n as f64 / t.elapsed().as_secs_f64()
}

async fn run(name: &str, s: Arc<dyn Store>, n: usize) {
    let single = enqueue_single(&s, n / 5).await;
    let batch = enqueue_batches(&s, "c1", n).await;
    let c1 = drain(&s, "c1", 1, n).await;
    enqueue_batches(&s, "c4", n).await;
    let c4 = drain(&s, "c4", 4, n).await;
    println!("| {name} | {single:.0} | {batch:.0} | {c1:.0} | {c4:.0} |");
    s.close().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000usize);
    println!(
        "jobs per phase: {n} (single enqueue: {}), claim limit {CLAIM_LIMIT}, payload ~{} bytes\n",
        n / 5,
        serde_json::to_string(&payload(0))
            .map(|s| s.len())
            .unwrap_or(0)
    );
    println!(
        "| store | enqueue single (jobs/s) | enqueue batch of 100 (jobs/s) | claim+complete, 1 claimer (jobs/s) | claim+complete, 4 claimers (jobs/s) |"
    );
    println!("|---|---:|---:|---:|---:|");

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    run(
        "SQLite (WAL, file)",
        store::open(&url, StoreOptions::default())
            .await
            .expect("open sqlite"),
        n,
    )
    .await;

    match std::env::var("FLYJOBS_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let opts = StoreOptions {
                pg_schema: Some(format!("bench_{:08x}", rand::random::<u32>())),
                ..Default::default()
            };
            run(
                "PostgreSQL (loopback)",
                store::open(&url, opts).await.expect("open postgres"),
                n,
            )
            .await;
        }
        _ => eprintln!(
            "FLYJOBS_TEST_DATABASE_URL unset: PostgreSQL not measured (run through scripts/with-postgres.sh)"
        ),
    }
}
