//! flyjobs next to Sidekiq 6.4 + Redis (Debian), in the same run, interleaved A B A B:
//! no-op jobs/s through an in-process worker with 5 threads (flyjobs: the core's `Worker` with
//! 5 tasks, each `next()` then `complete_later()`, as the language worker threads do, timed
//! until every completion is committed; Sidekiq: `Sidekiq::Launcher`, concurrency 5, a plain
//! `Sidekiq::Worker`) draining a 1k and a 10k backlog, and enqueue µs/job (one job at a
//! time from one task/thread). Prints each round and the min and median of the ratios
//! flyjobs / Sidekiq (jobs/s: higher is better for flyjobs; enqueue: lower is better).
//!
//! `scripts/with-postgres.sh target/release/sidekiq-compare [--rounds 3] [--enqueue 1000]
//! [--backlogs 1000,10000]`
//! (after `cargo build --release -p flyjobs-bench`). Starts its own redis-server on loopback;
//! flyjobs runs on PostgreSQL (FLYJOBS_TEST_DATABASE_URL, a fresh schema per measurement) and,
//! for enqueue, also on SQLite (a temp file).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flyjobs::config::Wait;
use flyjobs::job::NewJob;
use flyjobs::store::{self, Store, StoreOptions};
use flyjobs::worker::WorkerOptions;
use serde_json::json;

const THREADS: u32 = 5;

fn payload(i: usize) -> serde_json::Value {
    // What Sidekiq stores for the same job, minus its bookkeeping: class and arguments.
    json!({"class": "NoopJob", "args": [i]})
}

fn schema() -> String {
    format!("bench_{}_{:08x}", std::process::id(), rand::random::<u32>())
}

async fn pg_store(url: &str) -> Arc<dyn Store> {
    let opts = StoreOptions {
        pg_schema: Some(schema()),
        ..Default::default()
    };
    store::open(url, opts).await.expect("open postgres")
}

/// µs per `enqueue`, one job at a time (after 100 warm-up enqueues).
async fn flyjobs_enqueue_us(s: &Arc<dyn Store>, n: usize) -> f64 {
    for i in 0..100 {
        s.enqueue(NewJob::new("warm", payload(i)))
            .await
            .expect("enqueue");
    }
    let t = Instant::now();
    for i in 0..n {
        s.enqueue(NewJob::new("enq", payload(i)))
            .await
            .expect("enqueue");
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Jobs/s draining `backlog` no-op jobs through a worker with 5 slots.
async fn flyjobs_drain(s: Arc<dyn Store>, backlog: usize) -> f64 {
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(1000) {
        s.enqueue_many(
            chunk
                .iter()
                .map(|i| NewJob::new("default", payload(*i)))
                .collect(),
        )
        .await
        .expect("enqueue_many");
    }
    let config = flyjobs::Config::builder().build().expect("config");
    let client = flyjobs::Client::builder(config)
        .store(s.clone())
        .open()
        .await
        .expect("client");
    let mut opts = WorkerOptions::new(["default"]);
    opts.concurrency = THREADS;
    opts.wait = Wait::Forever;
    opts.id = Some(format!("bench-{}", rand::random::<u32>()));
    // Timed as the Sidekiq side is: from starting the worker to the last job's completion.
    let debug = std::env::var_os("FLYJOBS_BENCH_DEBUG").is_some();
    let t = Instant::now();
    let worker = client.worker(opts).await.expect("worker");
    let done = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(None));
    let tasks: Vec<_> = (0..THREADS)
        .map(|_| {
            let (worker, done, last) = (worker.clone(), done.clone(), last.clone());
            tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < backlog {
                    let Ok(Some(lease)) =
                        tokio::time::timeout(Duration::from_millis(500), worker.next())
                            .await
                            .unwrap_or(Ok(None))
                    else {
                        continue;
                    };
                    // As the Ruby and Python worker threads do: the completion goes to the
                    // worker's group commit and the slot takes its next job meanwhile.
                    lease.complete_later();
                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == backlog {
                        // The last job ran; the drain ends when its completion is committed.
                        while worker.running() > 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        *last.lock().expect("last") = Some(t.elapsed());
                    }
                    if debug && (n == 1 || n == backlog / 2) {
                        eprintln!("  {n} done after {:?}", t.elapsed());
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("worker task");
    }
    // The tasks that found no job left end within their 500 ms wait: not part of the drain.
    let took = last.lock().expect("last").expect("every job ran");
    let rate = backlog as f64 / took.as_secs_f64();
    worker.stop(Duration::ZERO).await;
    let completed: u64 = s
        .stats()
        .await
        .expect("stats")
        .iter()
        .map(|q| q.completed)
        .sum();
    assert_eq!(
        completed, backlog as u64,
        "every job completed in the store"
    );
    rate
}

struct Sidekiq {
    enqueue_us: f64,
    jobs_per_s: f64,
}

fn sidekiq(redis_url: &str, backlog: usize, enqueue_n: usize) -> Sidekiq {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sidekiq_side.rb");
    let out = Command::new("ruby")
        .args([
            script,
            redis_url,
            &backlog.to_string(),
            &enqueue_n.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run ruby");
    assert!(
        out.status.success(),
        "sidekiq side failed: {:?}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sidekiq JSON line");
    Sidekiq {
        enqueue_us: v["enqueue_us"].as_f64().expect("enqueue_us"),
        jobs_per_s: v["jobs_per_s"].as_f64().expect("jobs_per_s"),
    }
}

/// A redis-server on a free loopback port, stopped on drop.
struct Redis {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median)
}

/// `--backlogs 1000,10000,100000`: the backlogs drained each round, in order.
fn list_arg(name: &str, default: &[usize]) -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name}: {v}")))
                    .collect()
            })
            .unwrap_or_else(|| panic!("{name} needs a value")),
        None => default.to_vec(),
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let rounds = arg("--rounds", 3).max(1);
    let enqueue_n = arg("--enqueue", 1000).max(1);
    let pg = std::env::var("FLYJOBS_TEST_DATABASE_URL")
        .expect("FLYJOBS_TEST_DATABASE_URL: run through scripts/with-postgres.sh");
    let redis = Redis::start();
    let backlogs = list_arg("--backlogs", &[1_000, 10_000]);
    // ratios[kind] per round
    let mut drain: Vec<Vec<f64>> = vec![Vec::new(); backlogs.len()];
    let (mut enq_pg, mut enq_sqlite) = (Vec::new(), Vec::new());
    println!("round | what | flyjobs | Sidekiq | ratio");
    for round in 1..=rounds {
        for (k, &backlog) in backlogs.iter().enumerate() {
            // A then B, alternating which goes first each round.
            let run_a = || async { flyjobs_drain(pg_store(&pg).await, backlog).await };
            let (a, b) = if round % 2 == 1 {
                let a = run_a().await;
                (a, sidekiq(&redis.url, backlog, enqueue_n))
            } else {
                let b = sidekiq(&redis.url, backlog, enqueue_n);
                (run_a().await, b)
            };
            let r = a / b.jobs_per_s;
            drain[k].push(r);
            println!(
                "{round} | jobs/s, {backlog} backlog (PG) | {a:.0} | {:.0} | {r:.3}",
                b.jobs_per_s
            );
            if k == 0 {
                let s = pg_store(&pg).await;
                let us = flyjobs_enqueue_us(&s, enqueue_n).await;
                s.close().await;
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
                let lite = store::open(&url, StoreOptions::default())
                    .await
                    .expect("sqlite");
                let us_lite = flyjobs_enqueue_us(&lite, enqueue_n).await;
                lite.close().await;
                enq_pg.push(us / b.enqueue_us);
                enq_sqlite.push(us_lite / b.enqueue_us);
                println!(
                    "{round} | enqueue µs/job PG / SQLite | {us:.0} / {us_lite:.0} | {:.0} | {:.2} / {:.2}",
                    b.enqueue_us,
                    us / b.enqueue_us,
                    us_lite / b.enqueue_us
                );
            }
        }
    }
    println!();
    println!("| what | min ratio | median ratio |");
    println!("|---|---:|---:|");
    for (k, backlog) in backlogs.iter().enumerate() {
        let (min, med) = min_median(drain[k].clone());
        println!(
            "| no-op jobs/s, 5 threads, {backlog} backlog, PostgreSQL (flyjobs ÷ Sidekiq, higher is better) | {min:.3} | {med:.3} |"
        );
    }
    let (min, med) = min_median(enq_pg);
    println!(
        "| enqueue µs/job, PostgreSQL (flyjobs ÷ Sidekiq, lower is better) | {min:.2} | {med:.2} |"
    );
    let (min, med) = min_median(enq_sqlite);
    println!(
        "| enqueue µs/job, SQLite (flyjobs ÷ Sidekiq, lower is better) | {min:.2} | {med:.2} |"
    );
}
