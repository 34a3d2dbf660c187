//! PostgreSQL-only store tests: heavy concurrency, server restart, migrations.
//! Run through `scripts/with-postgres.sh`; without FLYJOBS_TEST_DATABASE_URL they fail unless
//! FLYJOBS_SKIP_PG=1.

mod store_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flyjobs::job::{JobId, NewJob};
use flyjobs::store::{self, ClaimRequest, JobFilter, Store, StoreOptions};
use serde_json::json;

/// 8 concurrent claimers over 10,000 jobs: each job claimed and completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_ten_thousand_jobs_exactly_once() {
    let opts = StoreOptions {
        max_connections: Some(12),
        ..Default::default()
    };
    let Some(fx) = store_support::postgres(opts).await else {
        return;
    };
    let s = fx.store.clone();
    const N: usize = 10_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        s.enqueue_many(
            chunk
                .iter()
                .map(|i| NewJob::new("load", json!({"i": i})))
                .collect(),
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let req =
                    ClaimRequest::new(["load"], 25, format!("w{w}"), Duration::from_secs(300));
                let got = s.claim(req).await.unwrap();
                if got.is_empty() {
                    break;
                }
                for l in got {
                    s.complete(l.job.id, l.token).await.unwrap();
                    claimed.push(l.job.id);
                }
            }
            claimed
        }));
    }
    let mut all: Vec<JobId> = Vec::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        per_worker.push(ids.len());
        all.extend(ids);
    }
    assert_eq!(all.len(), N, "claims: {per_worker:?}");
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        N,
        "no job claimed twice"
    );
    let st = s.stats().await.unwrap();
    assert_eq!(
        (st[0].completed, st[0].ready, st[0].running),
        (N as u64, 0, 0)
    );
    // Every job ran once: one attempt, token 1.
    let mut after = None;
    loop {
        let page = s
            .list_jobs(JobFilter {
                limit: 1000,
                after_id: after,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        assert!(page.iter().all(|j| j.attempts == 1 && j.lease_token == 1));
    }
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "work was shared: {per_worker:?}"
    );
}

/// Retry `f` until it succeeds or `deadline` passes; returns the value and how many errors.
async fn until_ok<T, F, Fut>(deadline: Duration, mut f: F) -> (T, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = flyjobs::Result<T>>,
{
    let start = Instant::now();
    let mut errors = 0;
    loop {
        match f().await {
            Ok(v) => return (v, errors),
            Err(e) => {
                errors += 1;
                assert_eq!(e.kind(), flyjobs::ErrorKind::Store, "{e}");
                assert!(start.elapsed() < deadline, "store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A private Postgres cluster for the restart test: restarting the shared server of
/// with-postgres.sh would break the tests running next to this one.
struct OwnServer {
    pg_ctl: String,
    data: std::path::PathBuf,
    opts: String,
    url: String,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    fn start() -> OwnServer {
        let pg_ctl = std::env::var("PG_CTL")
            .expect("PG_CTL must be set (scripts/with-postgres.sh exports it)");
        let bin = std::path::Path::new(&pg_ctl)
            .parent()
            .unwrap()
            .to_path_buf();
        let dir = tempfile::tempdir().unwrap();
        run("chmod", &["755", dir.path().to_str().unwrap()]);
        let data = dir.path().join("data");
        run(
            "install",
            &[
                "-d",
                "-o",
                "postgres",
                "-g",
                "postgres",
                "-m",
                "700",
                data.to_str().unwrap(),
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let initdb = bin.join("initdb");
        run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                initdb.to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            data.display()
        );
        let log = data.join("server.log");
        run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &pg_ctl,
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        OwnServer {
            pg_ctl,
            data,
            opts,
            url,
            _dir: dir,
        }
    }

    fn restart(&self) {
        run(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &self.pg_ctl,
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &self.opts,
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        );
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &self.pg_ctl,
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let st = std::process::Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// Postgres restarted mid-test: enqueue and claim recover after a brief error, no job is lost,
/// and the NOTIFY listener reconnects. Runs its own cluster (binaries from PG_CTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_postgres_restart() {
    if store_support::pg_url().is_none() {
        return;
    }
    let server = OwnServer::start();
    let opts = StoreOptions::default();
    let s: Arc<dyn Store> = store::open(&server.url, opts.clone()).await.unwrap();
    // A second process-like store on the same schema: its enqueues reach `s` only via NOTIFY.
    let other = store::open(&server.url, opts.clone()).await.unwrap();
    let mut before = Vec::new();
    for i in 0..50 {
        before.push(s.enqueue(NewJob::new("r", json!(i))).await.unwrap().id);
    }
    let first = s
        .claim(ClaimRequest::new(["r"], 10, "w", Duration::from_secs(300)))
        .await
        .unwrap();
    assert_eq!(first.len(), 10);

    server.restart();

    // Completing the leases taken before the restart works once the pool has reconnected.
    for l in &first {
        until_ok(Duration::from_secs(30), || s.complete(l.job.id, l.token)).await;
    }
    let (new_job, _) = until_ok(Duration::from_secs(30), || {
        s.enqueue(NewJob::new("r", json!("after")))
    })
    .await;

    // The listener reconnects: a NOTIFY from the other store wakes `s`.
    let mut n = s.subscribe();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut woke = false;
    while Instant::now() < deadline && !woke {
        while n.wait(Duration::from_millis(300)).await {} // drain reconnect wake-ups
        until_ok(Duration::from_secs(10), || {
            other.enqueue(NewJob::new("r2", json!(1)))
        })
        .await;
        woke = n.wait(Duration::from_secs(2)).await;
    }
    assert!(woke, "listener did not reconnect after the restart");

    // Nothing lost: the 40 unclaimed jobs from before plus the new one are all claimable.
    let mut rest = HashSet::new();
    loop {
        let (got, _) = until_ok(Duration::from_secs(10), || {
            s.claim(ClaimRequest::new(
                ["r"],
                100,
                "w2",
                Duration::from_secs(300),
            ))
        })
        .await;
        if got.is_empty() {
            break;
        }
        for l in got {
            s.complete(l.job.id, l.token).await.unwrap();
            rest.insert(l.job.id);
        }
    }
    let expected: HashSet<JobId> = before[10..].iter().copied().chain([new_job.id]).collect();
    assert_eq!(rest, expected);
    other.close().await;
    s.close().await;
}

/// Opening twice (two processes starting at once) applies the migrations exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_open_migrates_once() {
    let Some(url) = store_support::pg_url() else {
        return;
    };
    let opts = StoreOptions {
        pg_schema: Some(store_support::fresh_schema()),
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        store::open(&url, opts.clone()),
        store::open(&url, opts.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let j = a.enqueue(NewJob::new("q", json!(1))).await.unwrap();
    assert_eq!(b.get_job(j.id).await.unwrap().unwrap().id, j.id);
    a.close().await;
    b.close().await;
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first.
fn plan_nodes(node: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    out.push(node.clone());
    if let Some(children) = node.get("Plans").and_then(|p| p.as_array()) {
        for c in children {
            plan_nodes(c, out);
        }
    }
}

/// The claim reads each queue off the claim index and stops after `limit` rows, whatever the
/// backlog: with 10,000 runnable jobs (in two of the three claimed queues, plus 2,000 of a
/// queue not claimed), the plan has an index scan on `flyjobs_jobs_claim`, no sequential scan
/// of the jobs table, and no Sort fed more than queues × limit rows. (The old `queue = ANY($1)`
/// claim sorted every runnable row.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_plan_uses_the_index_whatever_the_backlog() {
    let Some(url) = store_support::pg_url() else {
        return;
    };
    let opts = StoreOptions {
        pg_schema: Some(store_support::fresh_schema()),
        ..Default::default()
    };
    let s = store::postgres::PgStore::open(&url, opts).await.unwrap();
    // Bulk-load the backlog with one INSERT per queue (the store's own enqueue is tested
    // elsewhere; this keeps the test quick).
    for (queue, n, shape) in [("a", 6_000, ""), ("b", 4_000, ""), ("other", 2_000, "")] {
        sqlx::query(
            "INSERT INTO flyjobs_jobs (queue, payload, state, priority, run_at, created_at, shape) \
             SELECT $1, '{}'::jsonb, 'ready', (g % 3), now() - (g || ' ms')::interval, now(), $3 \
             FROM generate_series(1, $2) AS g",
        )
        .bind(queue)
        .bind(n)
        .bind(shape)
        .execute(s.pool())
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE flyjobs_jobs")
        .execute(s.pool())
        .await
        .unwrap();
    let limit = 5;
    let queues = ["a", "b", "c"];
    let check = |req: &ClaimRequest, plan: &serde_json::Value| {
        let mut nodes = Vec::new();
        plan_nodes(&plan[0]["Plan"], &mut nodes);
        let text = serde_json::to_string_pretty(plan).unwrap();
        assert!(
            nodes
                .iter()
                .any(|n| n["Node Type"] == "Index Scan" && n["Index Name"] == "flyjobs_jobs_claim"),
            "no index scan on flyjobs_jobs_claim for {req:?}:\n{text}"
        );
        for n in &nodes {
            assert!(
                !(n["Node Type"] == "Seq Scan" && n["Relation Name"] == "flyjobs_jobs"),
                "sequential scan of the jobs table for {req:?}:\n{text}"
            );
            if n["Node Type"] == "Sort" {
                // What the Sort was fed (a top-N sort reports only what it kept).
                let fed: f64 = n["Plans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        c["Actual Rows"].as_f64().unwrap_or(f64::MAX)
                            * c["Actual Loops"].as_f64().unwrap_or(1.0)
                    })
                    .sum();
                assert!(
                    fed <= (queues.len() * limit) as f64,
                    "a Sort over {fed} rows for {req:?}:\n{text}"
                );
            }
        }
        // The claim found its jobs (it was executed, then rolled back).
        let top = &plan[0]["Plan"];
        assert_eq!(top["Actual Rows"].as_f64(), Some(limit as f64), "{text}");
    };
    let plain = ClaimRequest::new(queues, limit, "w", Duration::from_secs(60));
    check(&plain, &s.explain_claim(&plain).await.unwrap());
    // The shape and image filters stay residual: same plan shape.
    let shaped = plain.clone().shape("").image(flyjobs::store::ImageFilter {
        image_ref: "app:v1".into(),
        or_enqueued_before: Some(chrono::Utc::now()),
    });
    check(&shaped, &s.explain_claim(&shaped).await.unwrap());
    // Nothing was claimed by the explains.
    let stats = s.stats().await.unwrap();
    assert!(stats.iter().all(|q| q.running == 0), "{stats:?}");
    // A real claim takes the first jobs in claim order across queues.
    let got = s.claim(plain).await.unwrap();
    assert_eq!(got.len(), limit);
    assert!(
        got.iter()
            .all(|l| l.job.priority == 0 && l.job.queue != "other")
    );
    let mut sorted = got.clone();
    sorted.sort_by_key(|l| (l.job.priority, l.job.run_at, l.job.id));
    assert_eq!(sorted, got);
    s.close().await;
}

/// The NOTIFY sent inside the enqueue and release statements reaches another process's
/// store (a second pool on the same schema), and a batch with in-batch and stored unique-key
/// duplicates answers each row with its holder, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_release_notify_other_stores() {
    let Some(url) = store_support::pg_url() else {
        return;
    };
    let opts = StoreOptions {
        pg_schema: Some(store_support::fresh_schema()),
        ..Default::default()
    };
    let a = store::open(&url, opts.clone()).await.unwrap();
    let b = store::open(&url, opts).await.unwrap();
    let mut wake = b.subscribe();
    // The listener's first (re)connect wakes once; drain it.
    let _ = wake.wait(Duration::from_secs(2)).await;
    let _ = wake.wait(Duration::from_millis(200)).await;
    let held = a
        .enqueue(NewJob::new("q", json!(0)).unique_key("k0"))
        .await
        .unwrap();
    assert!(wake.wait(Duration::from_secs(5)).await, "enqueue woke B");
    let batch = a
        .enqueue_many(vec![
            NewJob::new("q", json!(1)).unique_key("k1"),
            NewJob::new("r", json!(2)),
            NewJob::new("q", json!(3)).unique_key("k1"),
            NewJob::new("q", json!(4)).unique_key("k0"),
            NewJob::new("q", json!(5)).shape("performance-2x"),
        ])
        .await
        .unwrap();
    assert_eq!(batch.len(), 5);
    assert_eq!(batch[2], batch[0]);
    assert_eq!(batch[3], held);
    assert_eq!(batch[1].queue, "r");
    assert_eq!(batch[4].shape, "performance-2x");
    assert!(batch[0].id < batch[1].id && batch[1].id < batch[4].id);
    assert_eq!(
        a.list_jobs(JobFilter::default()).await.unwrap().len(),
        4,
        "duplicates were not inserted"
    );
    let _ = wake.wait(Duration::from_millis(500)).await;
    let l = b
        .claim(ClaimRequest::new(["r"], 1, "w", Duration::from_secs(60)))
        .await
        .unwrap()
        .remove(0);
    let _ = wake.wait(Duration::from_millis(200)).await;
    a.release(l.job.id, l.token).await.unwrap();
    assert!(wake.wait(Duration::from_secs(5)).await, "release woke B");
    a.close().await;
    b.close().await;
}
