//! End to end: the real emulator (machines are real local processes running `flyjobs worker`),
//! the real scaler and worker, SQLite and PostgreSQL queues.
//!
//! PostgreSQL tests need `FLYJOBS_TEST_DATABASE_URL` (scripts/with-postgres.sh sets it); they
//! fail without it unless `FLYJOBS_SKIP_PG=1` says to skip them, loudly.

use std::time::{Duration, Instant};

use flyjobs::job::{JobState, NewJob};
use flyjobs::machines::types::ListMachinesQuery;
use flyjobs::scaler::ScalerOptions;
use flyjobs::{Client, Config};

mod common;
use common::{BIN, Db, fast, setup, setup_with};

async fn boots_a_machine_for_a_new_job(db: Db) {
    let Some(env) = setup(db, "default:max_machines=2,wait=1", fast()).await else {
        return;
    };
    assert!(
        env.emulator.machines(&env.app).is_empty(),
        "nothing runs before a job arrives"
    );
    let out = env.path("ran");
    let id = env
        .enqueue_sh("default", &format!("echo hello > '{}'", out.display()))
        .await;
    let handle = env.scaler().await.spawn();
    env.wait_state(id, JobState::Completed, Duration::from_secs(30))
        .await;
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "hello");
    let machines = env.emulator.machines(&env.app);
    assert_eq!(machines.len(), 1, "one job, one machine: {machines:?}");
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_boots_a_machine_for_a_new_job() {
    boots_a_machine_for_a_new_job(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_boots_a_machine_for_a_new_job() {
    boots_a_machine_for_a_new_job(Db::Postgres).await;
}

async fn thousand_jobs_never_exceed_max_machines(db: Db) {
    let Some(env) = setup(db, "bulk:max_machines=3,concurrency=2,wait=1", fast()).await else {
        return;
    };
    let jobs: Vec<NewJob> = (0..1000)
        .map(|_| {
            let mut j = NewJob::new("bulk", serde_json::json!({"argv": ["true"]}));
            j.name = "command".into();
            j
        })
        .collect();
    env.client.enqueue_many(jobs).await.unwrap();
    let handle = env.scaler().await.spawn();
    let until = Instant::now() + Duration::from_secs(240);
    let mut peak = 0;
    loop {
        let active = env.active_machines().len();
        peak = peak.max(active);
        assert!(
            active <= 3,
            "{active} machines of a max_machines=3 queue are running"
        );
        let stats = env.client.store().stats().await.unwrap();
        let s = stats.iter().find(|s| s.queue == "bulk").unwrap();
        if s.completed == 1000 {
            break;
        }
        assert!(Instant::now() < until, "not done in time: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        peak >= 2,
        "a burst of 1000 jobs should get more than one machine (peak {peak})"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_thousand_jobs_never_exceed_max_machines() {
    thousand_jobs_never_exceed_max_machines(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_thousand_jobs_never_exceed_max_machines() {
    thousand_jobs_never_exceed_max_machines(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_leave_after_wait_and_forever_keeps_min_machines() {
    let Some(env) = setup(
        Db::Sqlite,
        "brief:wait=1;always:min_machines=1,wait=forever",
        fast(),
    )
    .await
    else {
        return;
    };
    let handle = env.scaler().await.spawn();
    let id = env.enqueue_sh("brief", "true").await;
    env.wait_state(id, JobState::Completed, Duration::from_secs(30))
        .await;
    // The brief worker leaves about 1 s after its last job; auto_destroy removes its machine.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let brief = env.active_of_queue("brief").await.len();
        if brief == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "brief worker still running long after wait=1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The forever queue keeps exactly one machine although it never had a job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let always = env.active_of_queue("always").await;
    assert_eq!(
        always.len(),
        1,
        "min_machines=1 with wait=forever keeps one machine: {always:?}"
    );
    assert_eq!(always[0].state_str(), "started");
    // The admin view says how long it has been up (the dashboard's machines page shows it).
    let info = env.client.machines().await.unwrap();
    let kept = info.iter().find(|m| m.id == always[0].id).unwrap();
    let up = chrono::Utc::now() - kept.started_at.expect("a started machine has a start time");
    assert!(
        up >= chrono::Duration::seconds(3) && up < chrono::Duration::seconds(60),
        "up for {up}"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_job_gets_a_machine_when_due_and_not_before() {
    let Some(env) = setup(Db::Sqlite, "later:wait=1", fast()).await else {
        return;
    };
    let handle = env.scaler().await.spawn();
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let mut job = NewJob::new("later", serde_json::json!({"argv": ["true"]}));
    job.name = "command".into();
    job.run_at = Some(run_at);
    let id = env.client.enqueue(job).await.unwrap().id;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.emulator.machines(&env.app).is_empty(),
        "a machine was booted before the job was due"
    );
    env.wait_state(id, JobState::Completed, Duration::from_secs(30))
        .await;
    let job = env.client.store().get_job(id).await.unwrap().unwrap();
    assert!(
        job.started_at.unwrap() >= run_at,
        "started {:?} before run_at {run_at}",
        job.started_at
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_job_never_loses_it() {
    let Some(env) = setup(Db::Sqlite, "term:wait=1", fast()).await else {
        return;
    };
    let started = env.path("started");
    let done = env.path("done");
    // Longer than the worker's shutdown grace (FLYJOBS_SHUTDOWN_TIMEOUT default 4 s): released.
    let id = env
        .enqueue_sh(
            "term",
            &format!(
                "echo x >> '{}'; sleep 6; echo x >> '{}'",
                started.display(),
                done.display()
            ),
        )
        .await;
    let handle = env.scaler().await.spawn();
    let until = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < until, "job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = env.active_machines();
    assert_eq!(first.len(), 1);
    // What Fly sends on stop.
    let stop = flyjobs::machines::types::StopRequest {
        signal: Some("SIGTERM".into()),
        timeout: Some("10s".into()),
        ..Default::default()
    };
    env.machines
        .stop_machine(&env.app, &first[0].id, &stop, None)
        .await
        .unwrap();
    env.wait_state(id, JobState::Completed, Duration::from_secs(60))
        .await;
    let runs = std::fs::read_to_string(&started).unwrap().lines().count();
    assert!(runs >= 2, "the released job ran again (runs: {runs})");
    let job = env.client.store().get_job(id).await.unwrap().unwrap();
    assert!(
        job.last_error.is_none(),
        "a release is not a failure: {:?}",
        job.last_error
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_machine_job_runs_again_elsewhere() {
    let Some(env) = setup(Db::Sqlite, "kill:wait=2", fast()).await else {
        return;
    };
    let started = env.path("started");
    let id = env
        .enqueue_sh(
            "kill",
            &format!("echo $FLY_MACHINE_ID >> '{}'; sleep 2", started.display()),
        )
        .await;
    let handle = env.scaler().await.spawn();
    let until = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < until, "job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = env.active_machines().pop().expect("a running machine");
    let pid = victim.pid.expect("a started machine has a process");
    // The whole machine dies at once: its process group.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    env.wait_state(id, JobState::Completed, Duration::from_secs(60))
        .await;
    let machines: Vec<String> = std::fs::read_to_string(&started)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(machines.len() >= 2, "ran again: {machines:?}");
    assert_ne!(
        machines[0],
        machines[machines.len() - 1],
        "the second run was on another machine"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn suspended_pool_machine_is_resumed_instead_of_created() {
    let Some(env) = setup(
        Db::Sqlite,
        "pool:wait=1,pool=suspend,max_machines=1",
        fast(),
    )
    .await
    else {
        return;
    };
    let scaler = env.scaler().await;
    let a = env.enqueue_sh("pool", "true").await;
    let first = scaler.tick().await.unwrap();
    assert_eq!(first.created.get("pool"), Some(&1));
    env.wait_state(a, JobState::Completed, Duration::from_secs(30))
        .await;
    // Idle for wait=1: the worker suspends its own machine.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let ms = env.emulator.machines(&env.app);
        if ms.len() == 1 && ms[0].state == "suspended" {
            break;
        }
        assert!(
            Instant::now() < until,
            "worker never suspended itself: {ms:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = env.enqueue_sh("pool", "true").await;
    let second = scaler.tick().await.unwrap();
    assert_eq!(second.resumed.get("pool"), Some(&1), "{second:?}");
    assert!(
        second.created.is_empty(),
        "no new machine while a suspended one exists: {second:?}"
    );
    env.wait_state(b, JobState::Completed, Duration::from_secs(30))
        .await;
    assert_eq!(
        env.emulator.machines(&env.app).len(),
        1,
        "still one machine"
    );
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_request_carries_no_token() {
    let canary = "FlyV1 fm2_canary-token-5f2e";
    let Some(env) = setup_with(Db::Sqlite, "secret:wait=1", fast(), &[], |b| {
        b.api_token(canary)
    })
    .await
    else {
        return;
    };
    let id = env.enqueue_sh("secret", "env > env.txt").await;
    let handle = env.scaler().await.spawn();
    env.wait_state(id, JobState::Completed, Duration::from_secs(30))
        .await;
    let child_env = std::fs::read_to_string(env.path("env.txt")).unwrap();
    assert!(
        !child_env.contains("canary-token"),
        "the token reached the machine"
    );
    assert!(
        !child_env.contains("FLY_API_TOKEN"),
        "the token variable reached the machine"
    );
    // The create request as the emulator stored it: only flyjobs' own settings in config.env.
    let m = &env
        .machines
        .list_machines(&env.app, &ListMachinesQuery::default())
        .await
        .unwrap()[0];
    let config = serde_json::to_string(&m.config).unwrap();
    assert!(
        !config.contains("canary-token"),
        "token in the create request: {config}"
    );
    let keys: Vec<String> = m
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_keys()
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("FLYJOBS_")),
        "only flyjobs settings in config.env: {keys:?}"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_one_scaler_acts_per_store() {
    let Some(env) = setup(Db::Sqlite, "one:max_machines=2,wait=1", fast()).await else {
        return;
    };
    let a = env.scaler().await;
    let b = env.scaler().await;
    for _ in 0..5 {
        env.enqueue_sh("one", "sleep 1").await;
    }
    let (ra, rb) = tokio::join!(a.tick(), b.tick());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.leader != rb.leader, "exactly one leader: {ra:?} {rb:?}");
    let created: u32 = ra.created.values().chain(rb.created.values()).sum();
    assert_eq!(created, 2, "max_machines=2 honoured across both scalers");
    // The follower stays a follower while the leader keeps ticking.
    let (ra, rb) = tokio::join!(a.tick(), b.tick());
    assert!(ra.unwrap().leader != rb.unwrap().leader);
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_that_never_registers_is_destroyed_after_boot_timeout() {
    let Some(env) = setup_with(Db::Sqlite, "stuck:max_machines=1", fast(), &[], |b| {
        // A worker that hangs before registering (appended flags become $0, $1… of sh).
        b.worker_command(vec![
            "sh".to_string(),
            "-c".to_string(),
            "sleep 60".to_string(),
        ])
        .boot_timeout(Duration::from_secs(1))
    })
    .await
    else {
        return;
    };
    let scaler = env.scaler().await;
    env.enqueue_sh("stuck", "true").await;
    let first = scaler.tick().await.unwrap();
    assert_eq!(first.created.get("stuck"), Some(&1));
    let stuck_id = env.active_machines()[0].id.clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = scaler.tick().await.unwrap();
    assert_eq!(
        second.destroyed, 1,
        "the machine that never registered goes: {second:?}"
    );
    // A boot that timed out is a boot failure: recorded, and the next boot of the queue waits
    // for the backoff (2 s after the first failure).
    assert_eq!(second.boot_failures, 1, "{second:?}");
    assert!(second.created.is_empty(), "{second:?}");
    let failures = env.client.store().boot_failures(10).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].machine_id, stuck_id);
    assert!(failures[0].reason.contains("boot_timeout"), "{failures:?}");
    // Destroyed with force; the job still wants a machine: after the backoff a new one comes.
    let until = Instant::now() + Duration::from_secs(15);
    let third = loop {
        let r = scaler.tick().await.unwrap();
        if !r.created.is_empty() {
            break r;
        }
        assert!(r.boots_held.contains_key("stuck"), "{r:?}");
        assert!(Instant::now() < until, "no new machine after the backoff");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(third.created.get("stuck"), Some(&1));
    let ids: Vec<String> = env.active_machines().into_iter().map(|m| m.id).collect();
    assert!(!ids.contains(&stuck_id), "{ids:?}");
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_machine_of_an_older_release_is_not_reused() {
    let mut settings = fast();
    let dir2 = tempfile::tempdir().unwrap();
    settings.images.insert(
        "app:v2".into(),
        flyjobs_emulator::Image {
            dir: dir2.path().to_path_buf(),
            cmd: vec![],
        },
    );
    let Some(env) = setup(
        Db::Sqlite,
        "pinned:wait=1,pool=stop,max_machines=1",
        settings,
    )
    .await
    else {
        return;
    };
    let old = env.scaler().await;
    let a = env.enqueue_sh("pinned", "true").await;
    old.tick().await.unwrap();
    env.wait_state(a, JobState::Completed, Duration::from_secs(30))
        .await;
    // wait=1, pool=stop: the worker exits and its machine stays stopped.
    let until = Instant::now() + Duration::from_secs(20);
    while env
        .emulator
        .machines(&env.app)
        .first()
        .map(|m| m.state.clone())
        != Some("stopped".into())
    {
        assert!(
            Instant::now() < until,
            "{:?}",
            env.emulator.machines(&env.app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_id = env.emulator.machines(&env.app)[0].id.clone();
    drop(old);
    // A deploy: the app now runs image app:v2.
    let config = Config::builder()
        .database_url(format!(
            "sqlite://{}/q.sqlite3?mode=rwc",
            env.dir.path().display()
        ))
        .queues("pinned:wait=1,pool=stop,max_machines=1")
        .image_ref("app:v2")
        .lookup(|_| None)
        .build()
        .unwrap();
    let v2 = Client::builder(config)
        .machines(env.machines.clone(), env.app.clone())
        .default_worker_command(vec![BIN.to_string(), "worker".into()])
        .open()
        .await
        .unwrap();
    let scaler = v2.build_scaler(ScalerOptions::default()).await.unwrap();
    let b = env.enqueue_sh("pinned", "true").await;
    // The old leader's lock has to lapse (5 intervals of 200 ms) before the new scaler acts.
    let until = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let r = scaler.tick().await.unwrap();
        if r.leader {
            break r;
        }
        assert!(Instant::now() < until, "new scaler never became leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        report.destroyed, 1,
        "the old release's stopped machine is destroyed: {report:?}"
    );
    assert!(
        report.started.is_empty(),
        "old machine not reused: {report:?}"
    );
    assert_eq!(report.created.get("pinned"), Some(&1));
    env.wait_state(b, JobState::Completed, Duration::from_secs(30))
        .await;
    let m = env
        .machines
        .list_machines(&env.app, &ListMachinesQuery::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.id != old_id)
        .unwrap();
    assert_eq!(m.metadata_value("flyjobs_release"), Some("app:v2"));
    env.emulator.shutdown().await;
}

/// Cost accounting from the Machines API's events matches the emulator's billing ledger: the
/// recorder runs while machines boot, run jobs and are destroyed, as the scaler's tick does.
#[tokio::test(flavor = "multi_thread")]
async fn machine_usage_matches_the_emulator_ledger() {
    // Prices overridden so that a machine's cost is its started seconds × its one shared CPU.
    let Some(env) = setup_with(
        Db::Sqlite,
        "a:max_machines=2,wait=1;b:max_machines=1,wait=1",
        fast(),
        &[],
        |b| b.prices("shared_cpu_per_s=1, memory_gb_per_s=0, rootfs_gb=0"),
    )
    .await
    else {
        return;
    };
    let mut ids = Vec::new();
    for q in ["a", "a", "a", "b"] {
        ids.push(env.enqueue_sh(q, "sleep 1").await);
    }
    let handle = env.scaler().await.spawn();
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        env.client.record_usage().await.unwrap();
        let mut done = true;
        for id in &ids {
            done &= env.state(*id).await == JobState::Completed;
        }
        let alive = env
            .emulator
            .machines(&env.app)
            .iter()
            .any(|m| m.state != "destroyed");
        if done && !alive {
            break;
        }
        assert!(
            Instant::now() < until,
            "jobs did not finish and machines did not leave"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    handle.stop().await;
    env.client.record_usage().await.unwrap();
    let ledger = env.emulator.ledger();
    let usage = env
        .client
        .usage(chrono::Utc::now() - chrono::Duration::hours(2))
        .await
        .unwrap();
    assert_eq!(
        usage.machines.len(),
        ledger.machines.len(),
        "every machine is accounted: {usage:?}"
    );
    for m in &ledger.machines {
        let c = usage
            .machines
            .iter()
            .find(|c| c.machine_id == m.id)
            .unwrap_or_else(|| panic!("machine {} not accounted", m.id));
        assert_eq!(c.status, "destroyed");
        assert!(
            (c.cost_usd - c.seconds.started).abs() < 1e-9,
            "priced by the prices setting: ${} for {}s",
            c.cost_usd,
            c.seconds.started
        );
        let (ours, theirs) = (c.seconds.started, m.started_s);
        assert!(
            theirs > 0.5 && (ours - theirs).abs() <= 0.05 * theirs,
            "machine {}: started {ours:.3}s by its events, {theirs:.3}s by the ledger",
            m.id
        );
    }
    // the hourly totals per queue add up to the machines'
    let per_queue = usage.per_queue();
    for q in ["a", "b"] {
        let machines: f64 = usage
            .machines
            .iter()
            .filter(|c| c.queue == q)
            .map(|c| c.seconds.started)
            .sum();
        let hours = per_queue[q].0.started;
        assert!(
            (machines - hours).abs() < 1e-6,
            "{q}: {machines} vs {hours}"
        );
        assert!(per_queue[q].1 > 0.0, "{q} costs something");
    }
    let total: f64 = usage.machines.iter().map(|c| c.seconds.started).sum();
    eprintln!(
        "machine usage: {} machines, started {total:.3}s by events vs {:.3}s by the ledger",
        usage.machines.len(),
        ledger.started_s
    );
    assert!(
        (total - ledger.started_s).abs() <= 0.05 * ledger.started_s,
        "total started {total:.3}s vs ledger {:.3}s",
        ledger.started_s
    );
    env.emulator.shutdown().await;
}

/// A queue past its daily budget gets no machine, and the scaler's report says why; a queue
/// without one is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_past_its_budget_boots_nothing_and_says_so() {
    let Some(env) = setup(
        Db::Sqlite,
        "cheap:max_machines=1,wait=1,budget=$0.0000001/day;free:max_machines=1,wait=1",
        fast(),
    )
    .await
    else {
        return;
    };
    let scaler = env.scaler().await;
    let first = env.enqueue_sh("cheap", "sleep 0.5").await;
    let report = scaler.tick().await.unwrap();
    assert_eq!(
        report.created.get("cheap"),
        Some(&1),
        "nothing spent yet: {report:?}"
    );
    env.wait_state(first, JobState::Completed, Duration::from_secs(30))
        .await;
    // its worker leaves after wait=1 (else it would take the next job itself)
    let until = Instant::now() + Duration::from_secs(30);
    while !env.active_of_queue("cheap").await.is_empty() {
        assert!(Instant::now() < until, "the cheap machine never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // what the leader counts every few seconds; counted now for the test
    env.client.record_usage().await.unwrap();
    let spent = env
        .client
        .usage(flyjobs::cost::today_utc(chrono::Utc::now()))
        .await
        .unwrap()
        .per_queue();
    assert!(
        spent.get("cheap").is_some_and(|s| s.1 > 0.0000001),
        "{spent:?}"
    );
    let second = env.enqueue_sh("cheap", "true").await;
    let other = env.enqueue_sh("free", "true").await;
    let report = scaler.tick().await.unwrap();
    assert!(!report.created.contains_key("cheap"), "{report:?}");
    let why = &report.boots_held["cheap"];
    assert!(why.contains("over its budget"), "{why}");
    assert_eq!(report.created.get("free"), Some(&1), "{report:?}");
    env.wait_state(other, JobState::Completed, Duration::from_secs(30))
        .await;
    assert_eq!(
        env.state(second).await,
        JobState::Ready,
        "it waits for tomorrow"
    );
    // the dashboard says why
    let dash = flyjobs_dashboard::Dashboard::new(env.client.clone(), Default::default());
    let page = dash.handle(flyjobs_dashboard::Request::get("/")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("is over its budget") && page.body.contains("$0.0000001/day"),
        "{}",
        page.body
    );
    env.emulator.shutdown().await;
}

/// A run past its queue's `max_cost_per_job` is discarded with FlyJobs::CostLimitExceeded and
/// not retried; a cheaper run of the same queue completes. The worker prices its own machine
/// (from the Machines API) with the `prices` setting.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_max_cost_per_job_is_discarded_and_a_cheap_one_completes() {
    // $0.001 per second on a shared-cpu-1x; the limit is 2 s of it.
    let Some(env) = setup_with(
        Db::Sqlite,
        "capped:max_machines=2,wait=1,max_cost_per_job=$0.002",
        fast(),
        &[],
        |b| b.prices("shared_cpu_per_s=0.001,memory_gb_per_s=0"),
    )
    .await
    else {
        return;
    };
    let done = env.path("done");
    let runaway = env
        .enqueue_sh("capped", &format!("sleep 8; touch '{}'", done.display()))
        .await;
    let cheap = env.enqueue_sh("capped", "sleep 0.2").await;
    let handle = env.scaler().await.spawn();
    env.wait_state(cheap, JobState::Completed, Duration::from_secs(30))
        .await;
    let job = env
        .wait_state(runaway, JobState::Discarded, Duration::from_secs(30))
        .await;
    let error = job.last_error.expect("the reason is recorded");
    assert_eq!(error.class, "FlyJobs::CostLimitExceeded");
    assert!(
        error.message.contains("over max_cost_per_job $0.002"),
        "{}",
        error.message
    );
    let ran = (job.finished_at.unwrap() - job.started_at.unwrap()).as_seconds_f64();
    assert!((1.9..6.0).contains(&ran), "discarded after {ran} s");
    assert_eq!(job.attempts, 1, "not retried");
    // Concurrency 1: its machine ran nothing else, so it was stopped, and the job's code with it.
    let machine = job.lease_owner.expect("the machine it ran on");
    let until = Instant::now() + Duration::from_secs(20);
    while env
        .emulator
        .machines(&env.app)
        .iter()
        .any(|m| m.id == machine && m.state == "started")
    {
        assert!(Instant::now() < until, "machine {machine} still started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let since_start = (chrono::Utc::now() - job.started_at.unwrap())
        .to_std()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(since_start)).await;
    assert!(!done.exists(), "the runaway job's code ran to its end");
    handle.stop().await;
    env.emulator.shutdown().await;
}
