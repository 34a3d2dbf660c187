//! Idle overhead of the embedded client with the scaler on: what an idle web process pays.
//!
//! Opens the embedded client (in-process local Machines API) on a fresh PostgreSQL database,
//! starts the scaler with its default options, enqueues nothing, and prints
//! - the RSS it added to the process (VmRSS after the window minus VmRSS before flyjobs was
//!   touched; peak VmHWM too), and
//! - the database's commits per second over the window (`pg_stat_database.xact_commit` of the
//!   bench's own database, read by `psql` from the `postgres` database, so that the reads do not
//!   count themselves).
//!
//! `scripts/with-postgres.sh cargo run --release -p flyjobs-bench --bin idle -- [--seconds 60] [--no-scaler]`

use std::process::Command;
use std::time::{Duration, Instant};

use flyjobs::Config;

fn proc_status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /proc/self/status"))
}

fn psql_bin() -> String {
    if let Ok(p) = std::env::var("PSQL") {
        return p;
    }
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin/psql"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "psql".into())
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new(psql_bin())
        .args(["-X", "-A", "-t", "-q", "-d", url, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn xact_commit(admin: &str, db: &str) -> u64 {
    // Every psql session sees fresh statistics (a new backend, a new snapshot).
    psql(
        admin,
        &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"),
    )
    .parse()
    .expect("xact_commit")
}

fn main() {
    let mut seconds = 60u64;
    let mut scaler = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds N")
            }
            "--no-scaler" => scaler = false,
            other => panic!("unknown argument {other:?} (--seconds N, --no-scaler)"),
        }
    }
    let admin = std::env::var("FLYJOBS_TEST_DATABASE_URL")
        .expect("FLYJOBS_TEST_DATABASE_URL (run through scripts/with-postgres.sh)");
    let db = format!("flyjobs_idle_{:08x}", rand::random::<u32>());
    psql(&admin, &format!("CREATE DATABASE {db}"));
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("FLYJOBS_TEST_DATABASE_URL has no database name: {admin}"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::env::set_current_dir(dir.path()).expect("cd tempdir");

    let rss_before = proc_status_kb("VmRSS:");
    let config = Config::builder()
        .database_url(url)
        .queues("default:max_machines=2")
        .lookup(|_| None)
        .build()
        .expect("config");
    let client = flyjobs::runtime::block_on(async {
        let client = flyjobs_embedded::builder(config)
            .default_worker_command(vec!["true".into()])
            .open()
            .await
            .expect("open the embedded client");
        if scaler {
            client.start_scaler().await.expect("start the scaler");
        }
        client
    });
    // Let it settle: migrations, the first ticks, the first idle back-off steps.
    let settle = Duration::from_secs(10);
    std::thread::sleep(settle);
    let commits_before = xact_commit(&admin, &db);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let commits_after = xact_commit(&admin, &db);
    let elapsed = t.elapsed().as_secs_f64();
    let rss_after = proc_status_kb("VmRSS:");
    let hwm = proc_status_kb("VmHWM:");
    let commits = commits_after.saturating_sub(commits_before);
    println!(
        "idle {} for {elapsed:.0} s (after {} s to settle), PostgreSQL:",
        if scaler {
            "embedded client + scaler"
        } else {
            "embedded client, no scaler"
        },
        settle.as_secs()
    );
    println!(
        "  added RSS: {:.1} MB (VmRSS {:.1} -> {:.1} MB; peak VmHWM {:.1} MB)",
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  commits: {commits} in {elapsed:.0} s = {:.2}/s",
        commits as f64 / elapsed
    );
    flyjobs::runtime::block_on(client.shutdown());
}
