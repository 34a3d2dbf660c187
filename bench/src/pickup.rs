//! Pickup latency: from `enqueue` in one process to a waiting worker in another process holding
//! the job, as an app and its worker machine see it. SQLite (the embedded default: the cross-process
//! wake-up is `PRAGMA data_version`) and PostgreSQL (`LISTEN/NOTIFY`; needs
//! `FLYJOBS_TEST_DATABASE_URL`). One job at a time, 10–30 ms apart, so the worker is always
//! waiting; p50 / p90 / p99 / max over `--jobs` jobs.
//!
//! `cargo build --release -p flyjobs-bench && scripts/with-postgres.sh target/release/pickup --jobs 300`

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flyjobs::config::Wait;
use flyjobs::job::NewJob;
use flyjobs::worker::WorkerOptions;

const QUEUE: &str = "pickup";

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
}

async fn client(url: &str) -> flyjobs::Client {
    let config = flyjobs::Config::builder()
        .database_url(url)
        .build()
        .expect("config");
    flyjobs::Client::builder(config)
        .open()
        .await
        .expect("client")
}

/// The worker process: prints `ready`, then `<job id> <µs since the epoch>` as it gets each job.
async fn worker(url: &str, jobs: usize) {
    let client = client(url).await;
    let mut opts = WorkerOptions::new([QUEUE]);
    opts.concurrency = 1;
    opts.wait = Wait::Forever;
    let worker = client.worker(opts).await.expect("worker");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for _ in 0..jobs {
        let lease = worker.next().await.expect("next").expect("a job");
        let at = now_us();
        writeln!(out, "{} {at}", lease.job().id).unwrap();
        out.flush().unwrap();
        lease.complete().await.expect("complete");
    }
    worker.stop(Duration::ZERO).await;
}

/// Enqueue `jobs` jobs one by one while a worker process waits; the latencies in ms, sorted.
async fn measure(url: &str, jobs: usize) -> Vec<f64> {
    let client = client(url).await;
    client.clear(QUEUE).await.expect("clear");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--worker", url, &jobs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("worker process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // Let the worker reach its wait (first claim done, subscribed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = std::collections::HashMap::new();
    for i in 0..jobs {
        let t = now_us();
        let job = client
            .enqueue(NewJob::new(QUEUE, serde_json::json!({ "i": i })))
            .await
            .expect("enqueue");
        sent.insert(job.id, t);
        tokio::time::sleep(Duration::from_millis(10 + rand::random::<u64>() % 20)).await;
    }
    let mut ms: Vec<f64> = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let line = lines.next().expect("a line per job").unwrap();
        let (id, at) = line.split_once(' ').unwrap();
        let t = sent[&flyjobs::job::JobId(id.parse().unwrap())];
        ms.push((at.parse::<u128>().unwrap() - t) as f64 / 1000.0);
    }
    child.wait().expect("worker exit");
    ms.sort_by(f64::total_cmp);
    ms
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        return worker(&args[2], args[3].parse().unwrap()).await;
    }
    let jobs = match args.iter().position(|a| a == "--jobs") {
        Some(i) => args[i + 1].parse().expect("--jobs N"),
        None => 300,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut stores = vec![(
        "SQLite",
        format!("sqlite://{}/pickup.db?mode=rwc", dir.path().display()),
    )];
    match std::env::var("FLYJOBS_TEST_DATABASE_URL") {
        Ok(url) => stores.push(("PostgreSQL", url)),
        Err(_) => eprintln!("FLYJOBS_TEST_DATABASE_URL unset: SQLite only"),
    }
    println!(
        "pickup: enqueue in one process → a waiting worker in another holds the job ({jobs} jobs, one at a time)"
    );
    println!("| store | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, url) in stores {
        let ms = measure(&url, jobs).await;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pct(&ms, 0.5),
            pct(&ms, 0.9),
            pct(&ms, 0.99),
            ms[ms.len() - 1]
        );
    }
}
