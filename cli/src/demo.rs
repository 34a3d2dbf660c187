//! `flyjobs demo`: the embedded default end to end. An in-process Machines API emulator whose
//! machines are local processes, a SQLite queue, 200 command jobs of mixed length in two queues
//! with different limits; live progress, then a summary read from the queue and from the
//! emulator's billing ledger.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flyjobs::job::{Job, JobState, NewJob};
use flyjobs::{Client, Config};

use crate::command::{payload, self_command};

/// Options of the demo.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 200)]
    jobs: u32,
    /// `fly` (Fly-like boot latencies: create 1.5 s, start 0.3 s) or `none`.
    #[arg(long, default_value = "fly")]
    latency: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 150)]
    timeout: u64,
}

const QUEUES: &str =
    "default:max_machines=4,concurrency=2,wait=2;reports:max_machines=2,concurrency=1,wait=2";

/// Run the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let db = format!("sqlite://{}/demo.sqlite3?mode=rwc", dir.path().display());
    let config = Config::builder()
        .database_url(db)
        .queues(QUEUES)
        .lease_duration(Duration::from_secs(10))
        .build()?;
    let mut settings = match args.latency.as_str() {
        "fly" => flyjobs_emulator::EmulatorSettings::default(),
        "none" => flyjobs_emulator::EmulatorSettings::for_tests(),
        other => bail!("--latency must be fly or none, got {other:?}"),
    };
    settings.images.insert(
        flyjobs::fork::EMBEDDED_IMAGE.to_string(),
        flyjobs_emulator::Image {
            dir: std::env::current_dir()?,
            cmd: self_command(),
        },
    );
    let (emulator, machines) = flyjobs_embedded::start(settings).await?;
    let app = flyjobs_embedded::EMBEDDED_APP.to_string();
    let client = Client::builder(config)
        .machines(machines.clone(), app.clone())
        .default_worker_command(self_command())
        .open()
        .await?;

    println!(
        "flyjobs demo: embedded Machines API at {}, queue in SQLite",
        emulator.base_url()
    );
    println!("  queues: {}", QUEUES.replace(';', "  |  "));

    let jobs = plan(args.jobs, dir.path());
    let total = jobs.len();
    let t0 = Instant::now();
    client.enqueue_many(jobs).await.context("enqueue")?;
    println!(
        "  enqueued {total} command jobs in {:.0} ms; starting the scaler\n",
        t0.elapsed().as_secs_f64() * 1e3
    );
    client.start_scaler().await?;

    let mut peak: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let stats = client.store().stats().await?;
        let (mut done, mut dead, mut pending) = (0, 0, 0);
        for s in &stats {
            done += s.completed;
            dead += s.dead;
            pending += s.ready + s.scheduled + s.running;
        }
        let per_queue = machines_per_queue(&emulator, &app);
        for (q, n) in &per_queue {
            let p = peak.entry(q.clone()).or_default();
            *p = (*p).max(*n);
        }
        let shown: Vec<String> = ["default", "reports"]
            .iter()
            .map(|q| format!("{q}: {} machines", per_queue.get(*q).copied().unwrap_or(0)))
            .collect();
        println!(
            "  [{:>5.1}s] done {done:>3}/{total}  dead {dead}  pending {pending:>3}   {}",
            t0.elapsed().as_secs_f64(),
            shown.join("  ")
        );
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            client.shutdown().await;
            bail!("demo did not finish within {} s", args.timeout);
        }
    }
    let elapsed = t0.elapsed();
    // What the dashboard's cost page shows, counted at the same moment as the ledger below.
    client.record_usage().await.context("machine usage")?;
    let ledger = emulator.ledger();
    let usage = client
        .usage(chrono::Utc::now() - chrono::Duration::hours(1))
        .await
        .context("machine usage")?;
    client.shutdown().await;

    let all = all_jobs(&client).await?;
    summary(&all, &ledger, &peak, elapsed);
    cost_summary(&usage, &ledger);
    emulator.shutdown().await;
    Ok(())
}

/// 200 jobs: most short (default), some long (reports), two reports on a `performance-2x`
/// machine of their own, one that needs 300 MB (OOM-killed on the 256 MB default, retried at
/// 512 MB), a few that fail once and succeed on their retry, two that always fail and end dead.
fn plan(n: u32, dir: &std::path::Path) -> Vec<NewJob> {
    let mut jobs = Vec::new();
    for i in 0..n {
        let mut machine = None;
        let (queue, secs, argv) = match i % 20 {
            // A report that asks for a bigger machine.
            0 if i < 40 => {
                machine = Some("performance-2x");
                ("reports", 1.0, vec!["sleep".into(), "1".into()])
            }
            // Holds 300 MB for a second: too much for the default 256 MB machine.
            1 if i < 20 => (
                "reports",
                1.0,
                vec![
                    "perl".into(),
                    "-e".into(),
                    "my $x = ''; vec($x, 300 * 1024 * 1024 - 1, 8) = 1; sleep 1".into(),
                ],
            ),
            // A report: 0.5–2 s.
            0..=3 => {
                let s = 0.5 + f64::from(i % 7) * 0.25;
                ("reports", s, vec!["sleep".into(), format!("{s:.2}")])
            }
            // Fails on its first attempt, succeeds on the retry (Sidekiq's curve: ~15–35 s later).
            5 if i < 80 => {
                let marker = dir.join(format!("once-{i}"));
                let script = format!(
                    "sleep 0.1; if [ -e '{m}' ]; then exit 0; else touch '{m}'; echo 'flaky: first attempt fails' >&2; exit 3; fi",
                    m = marker.display()
                );
                ("default", 0.1, vec!["sh".into(), "-c".into(), script])
            }
            // Always fails; one attempt only, so it lands in the dead set.
            7 if i < 40 => (
                "default",
                0.0,
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo 'broken job' >&2; exit 1".into(),
                ],
            ),
            _ => {
                let s = 0.05 + f64::from(i % 11) * 0.05;
                ("default", s, vec!["sleep".into(), format!("{s:.2}")])
            }
        };
        let _ = secs;
        let mut job = NewJob::new(queue, payload(&argv));
        job.name = "command".into();
        if argv[0] == "sh" && argv[2].starts_with("echo 'broken") {
            job.max_attempts = Some(1);
        }
        if let Some(m) = machine {
            job.shape = m.into();
        }
        jobs.push(job);
    }
    jobs
}

/// Active worker machines per queue, read from the in-process emulator's own state: the
/// monitor must not spend the Machines API's rate limits, which belong to the scaler.
fn machines_per_queue(
    emulator: &flyjobs_emulator::EmulatorHandle,
    app: &str,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in emulator.machines(app) {
        if matches!(m.state.as_str(), "created" | "starting" | "started")
            && m.metadata.get("flyjobs_role").map(String::as_str) == Some("worker")
        {
            let q = m
                .metadata
                .get("flyjobs_queue")
                .cloned()
                .unwrap_or_else(|| "?".into());
            *out.entry(q).or_default() += 1;
        }
    }
    out
}

async fn all_jobs(client: &Client) -> anyhow::Result<Vec<Job>> {
    let mut out = Vec::new();
    for state in [JobState::Completed, JobState::Dead] {
        let mut after = None;
        loop {
            let page = client
                .jobs(flyjobs::store::JobFilter {
                    state: Some(state),
                    limit: 500,
                    after_id: after,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            out.extend(page);
        }
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Cost per queue as the dashboard shows it (from the machines' events), next to the emulator's
/// own ledger.
fn cost_summary(usage: &flyjobs::cost::Usage, ledger: &flyjobs_emulator::Ledger) {
    let per_queue = usage.per_queue();
    let started: f64 = per_queue.values().map(|(s, _)| s.started).sum();
    for (q, (secs, cost)) in &per_queue {
        println!(
            "  cost {q:<13}  ${cost:.5} ({:.1} machine-s started, at Fly's prices)",
            secs.started
        );
    }
    println!(
        "  started machine-s    {started:.1} by the machines' events (dashboard) vs {:.1} by the emulator ledger",
        ledger.started_s
    );
}

fn summary(
    jobs: &[Job],
    ledger: &flyjobs_emulator::Ledger,
    peak: &BTreeMap<String, usize>,
    elapsed: Duration,
) {
    let done = jobs
        .iter()
        .filter(|j| j.state == JobState::Completed)
        .count();
    let retried = jobs
        .iter()
        .filter(|j| j.state == JobState::Completed && j.attempts > 1)
        .count();
    let dead = jobs.iter().filter(|j| j.state == JobState::Dead).count();
    // Enqueue → start of the first attempt: what a user waits for a machine.
    let mut latency: Vec<f64> = jobs
        .iter()
        .filter(|j| j.attempts == 1)
        .filter_map(|j| j.started_at.map(|s| (s - j.created_at).as_seconds_f64()))
        .collect();
    latency.sort_by(f64::total_cmp);
    let busy: f64 = jobs
        .iter()
        .filter_map(|j| Some((j.finished_at? - j.started_at?).as_seconds_f64()))
        .sum();
    let billed = ledger.started_s + ledger.suspended_s;
    println!("\nsummary ({:.1} s)", elapsed.as_secs_f64());
    println!("  jobs done            {done} ({retried} after a retry)");
    println!("  jobs failed (dead)   {dead}");
    println!("  machines booted      {}", ledger.machines.len());
    for (q, n) in peak {
        println!("  peak machines {q:<8} {n}");
    }
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for j in jobs.iter().filter(|j| !j.shape.is_empty()) {
        *sizes.entry(j.shape.as_str()).or_default() += 1;
    }
    let sizes: Vec<String> = sizes.iter().map(|(s, n)| format!("{s} ×{n}")).collect();
    println!(
        "  per-job machine size {}",
        if sizes.is_empty() {
            "-".to_string()
        } else {
            sizes.join(", ")
        }
    );
    for j in jobs.iter().filter(|j| {
        j.last_error
            .as_ref()
            .is_some_and(|e| e.class == flyjobs::scaler::OUT_OF_MEMORY)
    }) {
        let e = j
            .last_error
            .as_ref()
            .map(|e| e.message.as_str())
            .unwrap_or_default();
        println!("  OOM escalation       job {} ({}): {e}", j.id, j.state);
    }
    println!(
        "  enqueue→start        p50 {:.2} s   p95 {:.2} s",
        percentile(&latency, 0.50),
        percentile(&latency, 0.95)
    );
    println!("  billed machine-s     {billed:.1} (emulator ledger: started + suspended)");
    // Busy job-seconds can exceed billed machine-seconds: a `default` machine runs 2 jobs at once.
    println!(
        "  busy job-s           {busy:.1}   ({:.2} job-s per billed machine-s; default runs 2 per machine)",
        if billed > 0.0 { busy / billed } else { 0.0 }
    );
}
