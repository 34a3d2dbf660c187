//! Reliability (issue 9): each test reproduces one way flyjobs broke, against real parts: the
//! emulator over HTTP whose machines are real `flyjobs worker` processes, real SQLite stores.
//! Faults the emulator does not offer are injected by thin wrappers around the real client and
//! store (a create answered late, a store that stops answering).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flyjobs::job::{Failure, Job, JobId, JobState, NewJob};
use flyjobs::machines::Machines;
use flyjobs::machines::types::*;
use flyjobs::retry::{Outcome, RetryPolicy};
use flyjobs::scaler::{Scaler, ScalerOptions};
use flyjobs::store::boot_failures::BootFailure;
use flyjobs::store::{
    ClaimRequest, JobFilter, JobNotifier, Lease as JobLease, QueueStats, ReapCounts, Store,
    WorkerInfo, WorkerState,
};
use flyjobs::worker::WorkerOptions;
use flyjobs::{Client, Config, Error, Result};
use flyjobs_emulator::{EmulatorHandle, EmulatorSettings};

const BIN: &str = env!("CARGO_BIN_EXE_flyjobs");

struct Env {
    client: Client,
    emulator: EmulatorHandle,
    app: String,
    dir: tempfile::TempDir,
}

/// The emulator (instant, unthrottled) plus a client on a fresh SQLite queue; `wrap` may put a
/// fault injector around the Machines client the scaler uses.
async fn setup(
    queues: &str,
    tweak: impl FnOnce(flyjobs::ConfigBuilder) -> flyjobs::ConfigBuilder,
    wrap: impl FnOnce(Arc<dyn Machines>) -> Arc<dyn Machines>,
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let defaults = Config::builder()
        .database_url(url)
        .queues(queues)
        .lease_duration(Duration::from_secs(2))
        .boot_timeout(Duration::from_secs(60))
        .lookup(|_| None);
    let config = tweak(defaults).build().unwrap();
    let mut settings = EmulatorSettings::for_tests();
    settings.images.insert(
        flyjobs::fork::EMBEDDED_IMAGE.to_string(),
        flyjobs_emulator::Image {
            dir: dir.path().to_path_buf(),
            cmd: Vec::new(),
        },
    );
    let (emulator, machines) = flyjobs_embedded::start(settings).await.unwrap();
    let app = flyjobs_embedded::EMBEDDED_APP.to_string();
    let client = Client::builder(config)
        .machines(wrap(machines.clone()), app.clone())
        .default_worker_command(vec![BIN.to_string(), "worker".into()])
        .open()
        .await
        .unwrap();
    Env {
        client,
        emulator,
        app,
        dir,
    }
}

impl Env {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    async fn enqueue_sh(&self, queue: &str, script: &str) -> JobId {
        let mut job = NewJob::new(queue, serde_json::json!({"argv": ["sh", "-c", script]}));
        job.name = "command".into();
        self.client.enqueue(job).await.unwrap().id
    }

    async fn scaler(&self, options: ScalerOptions) -> Arc<Scaler> {
        Arc::new(self.client.build_scaler(options).await.unwrap())
    }

    async fn job(&self, id: JobId) -> Job {
        self.client.store().get_job(id).await.unwrap().unwrap()
    }

    fn active(&self) -> usize {
        self.emulator
            .machines(&self.app)
            .iter()
            .filter(|m| matches!(m.state.as_str(), "created" | "starting" | "started"))
            .count()
    }
}

fn fast_loop() -> ScalerOptions {
    ScalerOptions {
        interval: Duration::from_millis(200),
        ..ScalerOptions::default()
    }
}

// ---- 1: two scalers, slow creates -------------------------------------------------------------

/// The Machines API performs a create at once but answers it `delay` later (a slow network or
/// a loaded API): the machine exists and is listed while its creator still waits.
#[derive(Debug)]
struct SlowCreates {
    inner: Arc<dyn Machines>,
    delay: Duration,
}

#[async_trait]
impl Machines for SlowCreates {
    async fn create_app(&self, req: &CreateAppRequest) -> Result<App> {
        self.inner.create_app(req).await
    }
    async fn get_app(&self, app: &str) -> Result<App> {
        self.inner.get_app(app).await
    }
    async fn create_machine(&self, app: &str, req: &CreateMachineRequest) -> Result<Machine> {
        let m = self.inner.create_machine(app, req).await;
        tokio::time::sleep(self.delay).await;
        m
    }
    async fn get_machine(&self, app: &str, id: &str) -> Result<Machine> {
        self.inner.get_machine(app, id).await
    }
    async fn list_machines(&self, app: &str, query: &ListMachinesQuery) -> Result<Vec<Machine>> {
        self.inner.list_machines(app, query).await
    }
    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
        lease: Option<&str>,
    ) -> Result<Machine> {
        self.inner.update_machine(app, id, req, lease).await
    }
    async fn start_machine(
        &self,
        app: &str,
        id: &str,
        lease: Option<&str>,
    ) -> Result<StartResponse> {
        self.inner.start_machine(app, id, lease).await
    }
    async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: &StopRequest,
        lease: Option<&str>,
    ) -> Result<()> {
        self.inner.stop_machine(app, id, req, lease).await
    }
    async fn suspend_machine(&self, app: &str, id: &str, lease: Option<&str>) -> Result<()> {
        self.inner.suspend_machine(app, id, lease).await
    }
    async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        lease: Option<&str>,
    ) -> Result<()> {
        self.inner.destroy_machine(app, id, force, lease).await
    }
    async fn wait_machine(&self, app: &str, id: &str, query: &WaitQuery) -> Result<WaitResponse> {
        self.inner.wait_machine(app, id, query).await
    }
    async fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<MachineEvent>> {
        self.inner.machine_events(app, id, limit).await
    }
    async fn acquire_lease(&self, app: &str, id: &str, req: &CreateLeaseRequest) -> Result<Lease> {
        self.inner.acquire_lease(app, id, req).await
    }
    async fn refresh_lease(
        &self,
        app: &str,
        id: &str,
        nonce: &str,
        ttl: Option<u64>,
    ) -> Result<Lease> {
        self.inner.refresh_lease(app, id, nonce, ttl).await
    }
    async fn get_lease(&self, app: &str, id: &str) -> Result<Lease> {
        self.inner.get_lease(app, id).await
    }
    async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<()> {
        self.inner.release_lease(app, id, nonce).await
    }
    async fn get_metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>> {
        self.inner.get_metadata(app, id).await
    }
    async fn set_metadata(&self, app: &str, id: &str, key: &str, value: &str) -> Result<()> {
        self.inner.set_metadata(app, id, key, value).await
    }
    async fn delete_metadata(&self, app: &str, id: &str, key: &str) -> Result<()> {
        self.inner.delete_metadata(app, id, key).await
    }
    async fn machine_logs(&self, app: &str, id: &str) -> Result<Option<String>> {
        self.inner.machine_logs(app, id).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_scalers_with_slow_creates_never_exceed_max_machines() {
    // Creates answer 3 s late; the leader lock lasts 1 s (interval 200 ms × 5). Without
    // renewal, the second scaler takes the lock during the first one's create, sees one
    // machine, creates another, and the first then creates its second: 3 > 2.
    let env = setup(
        "slow:max_machines=2,wait=2",
        |b| b,
        |m| {
            Arc::new(SlowCreates {
                inner: m,
                delay: Duration::from_secs(3),
            })
        },
    )
    .await;
    for _ in 0..10 {
        env.enqueue_sh("slow", "sleep 1").await;
    }
    let a = env.scaler(fast_loop()).await.spawn();
    let b = env.scaler(fast_loop()).await.spawn();
    let until = Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    while Instant::now() < until {
        let active = env.active();
        peak = peak.max(active);
        assert!(active <= 2, "{active} machines run with max_machines=2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak >= 1, "the scalers booted nothing");
    a.stop().await;
    b.stop().await;
    env.emulator.shutdown().await;
}

// ---- 2: the token never reaches a worker ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_the_parent_config_never_reaches_the_worker() {
    let canary = "FlyV1 fm2_canary-token-77aa";
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let mut settings = EmulatorSettings::for_tests();
    settings.images.insert(
        flyjobs::fork::EMBEDDED_IMAGE.to_string(),
        flyjobs_emulator::Image {
            dir: dir.path().to_path_buf(),
            cmd: Vec::new(),
        },
    );
    let (emulator, machines) = flyjobs_embedded::start(settings).await.unwrap();
    let app = flyjobs_embedded::EMBEDDED_APP.to_string();
    // The production path: a parent machine whose config.env holds tokens (a fly.toml [env]
    // mistake), and FLY_MACHINE_ID set, so the worker template is derived from it.
    let parent_env = BTreeMap::from([
        ("FLYJOBS_DATABASE_URL".to_string(), url.clone()),
        ("FLY_API_TOKEN".to_string(), canary.to_string()),
        ("FLY_API_TOKEN_DEPLOY".to_string(), canary.to_string()),
        ("FLYJOBS_ADMIN_TOKEN".to_string(), canary.to_string()),
        ("GREETING".to_string(), "hello".to_string()),
    ]);
    let parent = machines
        .create_machine(
            &app,
            &CreateMachineRequest {
                config: MachineConfig {
                    image: Some(flyjobs::fork::EMBEDDED_IMAGE.to_string()),
                    env: Some(parent_env),
                    init: Some(MachineInit {
                        exec: Some(vec!["sleep".into(), "600".into()]),
                        ..MachineInit::default()
                    }),
                    ..MachineConfig::default()
                },
                ..CreateMachineRequest::default()
            },
        )
        .await
        .unwrap();
    let config = |allow: Vec<String>| {
        Config::builder()
            .database_url(url.clone())
            .queues("secret:wait=1")
            .api_token(canary)
            .app_name(app.clone())
            .machine_id(parent.id.clone())
            .env_allowlist(allow)
            .lookup(|_| None)
            .build()
            .unwrap()
    };
    // An allowlist naming a token is refused when the scaler starts.
    let bad = Client::builder(config(vec!["FLY_API_TOKEN".into()]))
        .machines(machines.clone(), app.clone())
        .default_worker_command(vec![BIN.to_string(), "worker".into()])
        .open()
        .await
        .unwrap();
    let err = bad.build_scaler(fast_loop()).await.unwrap_err();
    assert!(
        err.to_string().contains("FLY_API_TOKEN") && err.to_string().contains("ALLOWLIST"),
        "{err}"
    );

    let client = Client::builder(config(Vec::new()))
        .machines(machines.clone(), app.clone())
        .default_worker_command(vec![BIN.to_string(), "worker".into()])
        .open()
        .await
        .unwrap();
    let mut job = NewJob::new(
        "secret",
        serde_json::json!({"argv": ["sh", "-c", "env > env.txt"]}),
    );
    job.name = "command".into();
    let id = client.enqueue(job).await.unwrap().id;
    let scaler = Arc::new(client.build_scaler(fast_loop()).await.unwrap()).spawn();
    let until = Instant::now() + Duration::from_secs(60);
    while client.store().get_job(id).await.unwrap().unwrap().state != JobState::Completed {
        assert!(Instant::now() < until, "the job did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let child_env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    assert!(
        child_env.contains("GREETING=hello"),
        "the parent's env is kept"
    );
    assert!(
        !child_env.contains("canary"),
        "a token reached the job: {child_env}"
    );
    let workers: Vec<Machine> = machines
        .list_machines(&app, &ListMachinesQuery::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.id != parent.id)
        .collect();
    assert!(!workers.is_empty());
    for m in workers {
        let body = serde_json::to_string(&m.config).unwrap();
        assert!(
            !body.contains("canary"),
            "token in a create request: {body}"
        );
    }
    scaler.stop().await;
    emulator.shutdown().await;
}

// ---- 4: a worker that crashes at boot ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_crashing_at_boot_backs_off_records_and_stops() {
    let env = setup(
        "crash:max_machines=1",
        |b| {
            // Crashes before it could register (appended flags become $0, $1… of sh).
            b.worker_command(vec![
                "sh".to_string(),
                "-c".to_string(),
                "echo 'cannot load config/app.rb' >&2; exit 3".to_string(),
            ])
        },
        |m| m,
    )
    .await;
    let id = env.enqueue_sh("crash", "true").await;
    let scaler = env
        .scaler(ScalerOptions {
            interval: Duration::from_millis(100),
            boot_failure_limit: 3,
            boot_backoff: Duration::from_millis(300),
            ..ScalerOptions::default()
        })
        .await;
    let handle = scaler.clone().spawn();
    // Without backoff the scaler creates a machine about every tick (100 ms); with it, three
    // boots (0, +0.3 s, +0.6 s after each failure) then none.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let created = env.emulator.machines(&env.app).len();
    assert_eq!(created, 3, "boots stop after 3 consecutive failures");
    let failures = env.client.store().boot_failures(10).await.unwrap();
    assert_eq!(failures.len(), 3, "{failures:?}");
    for f in &failures {
        assert_eq!(f.queue, "crash");
        assert_eq!(f.exit_code, Some(3), "{f:?}");
        assert!(f.log_tail.contains("cannot load config/app.rb"), "{f:?}");
        assert!(!f.cleared);
    }
    assert_eq!(env.job(id).await.state, JobState::Ready, "the job waits");
    let report = scaler.tick().await.unwrap();
    assert!(
        report.boots_held.contains_key("crash") && report.created.is_empty(),
        "{report:?}"
    );
    // `flyjobs scaler --reset-failures`: boots resume.
    let url = env.client.database_url().unwrap().to_string();
    let out = std::process::Command::new(BIN)
        .args(["scaler", "--reset-failures"])
        .env("FLYJOBS_DATABASE_URL", &url)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let until = Instant::now() + Duration::from_secs(10);
    while env.emulator.machines(&env.app).len() < 4 {
        assert!(Instant::now() < until, "no boot after the reset");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And `flyjobs status` shows them.
    let out = std::process::Command::new(BIN)
        .args(["status"])
        .env("FLYJOBS_DATABASE_URL", &url)
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("boot failures") && text.contains("cannot load config/app.rb"),
        "{text}"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

// ---- 5: killed workers do not stay registered -------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_is_deregistered_within_a_lease() {
    let env = setup("kill:wait=30", |b| b, |m| m).await;
    let started = env.path("started");
    env.enqueue_sh("kill", &format!("touch '{}'; sleep 60", started.display()))
        .await;
    let handle = env.scaler(fast_loop()).await.spawn();
    let until = Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(Instant::now() < until, "job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = env
        .emulator
        .machines(&env.app)
        .into_iter()
        .find(|m| m.state == "started")
        .unwrap();
    let workers = env.client.workers().await.unwrap();
    assert!(workers.iter().any(|w| w.id == victim.id), "{workers:?}");
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(victim.pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Its auto-destroyed machine leaves the list at once; the lease is 2 s. The old reaper
    // kept it for 10 leases (20 s).
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let workers = env.client.workers().await.unwrap();
        if !workers.iter().any(|w| w.id == victim.id) {
            break;
        }
        assert!(
            Instant::now() < until,
            "a killed worker is still registered: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.stop().await;
    env.emulator.shutdown().await;
}

// ---- 8: store outages -------------------------------------------------------------------------

/// A real store that can be switched off: while down, every call fails as a lost connection.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Store>,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::store("injected outage: connection refused").with_retryable(true))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    async fn enqueue(&self, job: NewJob) -> Result<Job> {
        self.check()?;
        self.inner.enqueue(job).await
    }
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        self.check()?;
        self.inner.enqueue_many(jobs).await
    }
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<JobLease>> {
        self.check()?;
        self.inner.claim(req).await
    }
    async fn extend(&self, id: JobId, token: i64, lease: Duration) -> Result<DateTime<Utc>> {
        self.check()?;
        self.inner.extend(id, token, lease).await
    }
    async fn complete_with(
        &self,
        id: JobId,
        token: i64,
        result: Option<&serde_json::Value>,
    ) -> Result<Job> {
        self.check()?;
        self.inner.complete_with(id, token, result).await
    }
    async fn fail(
        &self,
        id: JobId,
        token: i64,
        failure: Failure,
        policy: &RetryPolicy,
    ) -> Result<Outcome> {
        self.check()?;
        self.inner.fail(id, token, failure, policy).await
    }
    async fn discard(
        &self,
        id: JobId,
        token: Option<i64>,
        failure: Option<Failure>,
    ) -> Result<Job> {
        self.check()?;
        self.inner.discard(id, token, failure).await
    }
    async fn retry_dead(&self, id: JobId) -> Result<Job> {
        self.check()?;
        self.inner.retry_dead(id).await
    }
    async fn release(&self, id: JobId, token: i64) -> Result<Job> {
        self.check()?;
        self.inner.release(id, token).await
    }
    async fn reap_expired(&self, now: DateTime<Utc>) -> Result<ReapCounts> {
        self.check()?;
        self.inner.reap_expired(now).await
    }
    async fn promote_scheduled(&self, now: DateTime<Utc>) -> Result<u64> {
        self.check()?;
        self.inner.promote_scheduled(now).await
    }
    async fn register_worker(&self, worker: WorkerInfo) -> Result<()> {
        self.check()?;
        self.inner.register_worker(worker).await
    }
    async fn heartbeat_worker(&self, id: &str, running: u32) -> Result<()> {
        self.check()?;
        self.inner.heartbeat_worker(id, running).await
    }
    async fn set_worker_state(&self, id: &str, state: WorkerState) -> Result<()> {
        self.check()?;
        self.inner.set_worker_state(id, state).await
    }
    async fn deregister_worker(&self, id: &str) -> Result<()> {
        self.check()?;
        self.inner.deregister_worker(id).await
    }
    async fn prune_workers(&self, before: DateTime<Utc>) -> Result<u64> {
        self.check()?;
        self.inner.prune_workers(before).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.check()?;
        self.inner.workers().await
    }
    async fn stats(&self) -> Result<Vec<QueueStats>> {
        self.check()?;
        self.inner.stats().await
    }
    async fn ready_shapes(&self) -> Result<Vec<flyjobs::store::ShapeDemand>> {
        self.check()?;
        self.inner.ready_shapes().await
    }
    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.check()?;
        self.inner.list_jobs(filter).await
    }
    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.check()?;
        self.inner.get_job(id).await
    }
    async fn clear_queue(&self, queue: &str) -> Result<u64> {
        self.check()?;
        self.inner.clear_queue(queue).await
    }
    async fn prune_finished(&self, now: DateTime<Utc>) -> Result<u64> {
        self.check()?;
        self.inner.prune_finished(now).await
    }
    async fn try_acquire_leader(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        self.check()?;
        self.inner.try_acquire_leader(name, owner, ttl).await
    }
    async fn release_leader(&self, name: &str, owner: &str) -> Result<()> {
        self.check()?;
        self.inner.release_leader(name, owner).await
    }
    fn subscribe(&self) -> JobNotifier {
        self.inner.subscribe()
    }
    fn wakes_other_processes(&self) -> bool {
        self.inner.wakes_other_processes()
    }
    async fn close(&self) {
        self.inner.close().await;
    }
    async fn record_boot_failure(&self, failure: BootFailure) -> Result<()> {
        self.check()?;
        self.inner.record_boot_failure(failure).await
    }
    async fn boot_failures(&self, limit: usize) -> Result<Vec<BootFailure>> {
        self.check()?;
        self.inner.boot_failures(limit).await
    }
    async fn clear_boot_failures(&self, queue: Option<&str>) -> Result<u64> {
        self.check()?;
        self.inner.clear_boot_failures(queue).await
    }
    async fn run_now(&self, id: JobId) -> Result<Job> {
        self.check()?;
        self.inner.run_now(id).await
    }
    async fn finished_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.check()?;
        self.inner.finished_since(since, limit).await
    }
    async fn record_usage(
        &self,
        cursor: &flyjobs::cost::UsageCursor,
        read_through_ms: Option<i64>,
        hours: &[flyjobs::cost::HourUsage],
    ) -> Result<bool> {
        self.check()?;
        self.inner
            .record_usage(cursor, read_through_ms, hours)
            .await
    }
    async fn usage_cursors(&self) -> Result<Vec<flyjobs::cost::UsageCursor>> {
        self.check()?;
        self.inner.usage_cursors().await
    }
    async fn usage_hours(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<flyjobs::cost::HourUsage>> {
        self.check()?;
        self.inner.usage_hours(since).await
    }

    async fn requeue_on_shape(
        &self,
        id: flyjobs::job::JobId,
        token: i64,
        shape: &str,
        failure: &flyjobs::job::Failure,
    ) -> flyjobs::Result<bool> {
        self.check()?;
        self.inner.requeue_on_shape(id, token, shape, failure).await
    }

    async fn attempts(
        &self,
        id: flyjobs::job::JobId,
    ) -> flyjobs::Result<Vec<flyjobs::store::Attempt>> {
        self.check()?;
        self.inner.attempts(id).await
    }
}

async fn flaky_client(lease: Duration) -> (Client, Arc<Flaky>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let inner = flyjobs::store::open(&url, Default::default())
        .await
        .unwrap();
    let flaky = Arc::new(Flaky {
        inner,
        down: AtomicBool::new(false),
    });
    let config = Config::builder()
        .database_url(url)
        .lease_duration(lease)
        .lookup(|_| None)
        .build()
        .unwrap();
    let client = Client::builder(config)
        .store(flaky.clone())
        .open()
        .await
        .unwrap();
    (client, flaky, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_is_not_idleness() {
    let (client, flaky, _dir) = flaky_client(Duration::from_secs(30)).await;
    let mut opts = WorkerOptions::new(["out"]);
    opts.wait = flyjobs::config::Wait::Idle(Duration::from_secs(1));
    let worker = client.worker(opts).await.unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    let w = worker.clone();
    let next = tokio::spawn(async move { w.next().await });
    // Three times the idle wait, all of it failing to claim: the worker must not leave.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !next.is_finished(),
        "the worker left during the outage: {:?}",
        next.await
    );
    flaky.down.store(false, Ordering::SeqCst);
    let mut job = NewJob::new("out", serde_json::json!({"n": 1}));
    job.name = "command".into();
    let id = client.enqueue(job).await.unwrap().id;
    let lease = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("a job after the outage")
        .unwrap()
        .unwrap()
        .expect("the worker is still serving");
    assert_eq!(lease.job().id, id);
    lease.complete().await.unwrap();
    worker.stop(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completion_is_retried_through_an_outage() {
    let (client, flaky, _dir) = flaky_client(Duration::from_secs(30)).await;
    let worker = client.worker(WorkerOptions::new(["done"])).await.unwrap();
    let id = client
        .enqueue(NewJob::new("done", serde_json::json!({})))
        .await
        .unwrap()
        .id;
    let lease = worker.next().await.unwrap().unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    let done = tokio::spawn(lease.complete());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!done.is_finished(), "gave up during the outage");
    flaky.down.store(false, Ordering::SeqCst);
    done.await
        .unwrap()
        .expect("recorded once the store is back");
    let job = client.store().get_job(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts, 1);
    worker.stop(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completion_gives_up_when_the_lease_would_expire() {
    let (client, flaky, _dir) = flaky_client(Duration::from_secs(2)).await;
    let worker = client.worker(WorkerOptions::new(["late"])).await.unwrap();
    client
        .enqueue(NewJob::new("late", serde_json::json!({})))
        .await
        .unwrap();
    let lease = worker.next().await.unwrap().unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let r = lease.complete().await;
    assert!(r.is_err(), "cannot succeed while the store is down");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "stopped retrying near the lease's end, not later: {:?}",
        started.elapsed()
    );
    flaky.down.store(false, Ordering::SeqCst);
    worker.stop(Duration::ZERO).await;
}

// ---- 6 and 7: signals -------------------------------------------------------------------------

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_on_a_local_worker_does_not_fail_the_running_job() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let store = flyjobs::store::open(&url, Default::default())
        .await
        .unwrap();
    let done = dir.path().join("done");
    let mut job = NewJob::new(
        "term",
        serde_json::json!({"argv": ["sh", "-c", format!("sleep 2; touch '{}'", done.display())]}),
    );
    job.name = "command".into();
    let id = store.enqueue(job).await.unwrap().id;
    // The worker in its own group, as a shell runs a foreground job: Ctrl-C is SIGINT to the
    // whole group.
    let mut child = std::process::Command::new(BIN)
        .args(["worker", "--queues", "term", "--wait", "forever"])
        .env("FLYJOBS_DATABASE_URL", &url)
        .env("FLYJOBS_SHUTDOWN_TIMEOUT", "20")
        .current_dir(dir.path())
        .process_group(0)
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while store.get_job(id).await.unwrap().unwrap().state != JobState::Running {
        assert!(Instant::now() < until, "the job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Completed,
        "the job finished within the grace: {job:?}"
    );
    assert!(done.exists());
    assert!(job.last_error.is_none(), "{:?}", job.last_error);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_standalone_scaler_and_releases_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let store = flyjobs::store::open(&url, Default::default())
        .await
        .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["scaler"])
        .env("FLYJOBS_DATABASE_URL", &url)
        .env("FLYJOBS_EMULATOR_LATENCY", "none")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it leads: a probe cannot take the lock (if it can, give it back at once).
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if !store
            .try_acquire_leader("scaler", "probe", Duration::from_millis(1))
            .await
            .unwrap()
        {
            break;
        }
        store.release_leader("scaler", "probe").await.unwrap();
        assert!(Instant::now() < until, "the scaler never took the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(
        status.success(),
        "a quiet stop, not death by signal: {status:?}"
    );
    // The lock's TTL is 10 s: free right away only if it was released.
    assert!(
        store
            .try_acquire_leader("scaler", "probe", Duration::from_secs(1))
            .await
            .unwrap(),
        "the stopped scaler still holds the leader lock"
    );
}

// ---- 9 (cli part): enqueue --in -------------------------------------------------------------

#[test]
fn enqueue_in_overflow_is_a_clear_error_naming_in() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.sqlite3");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    for value in ["300000y", "18446744073709551615"] {
        let out = std::process::Command::new(BIN)
            .args(["enqueue", "--in", value, "--", "true"])
            .env("FLYJOBS_DATABASE_URL", &url)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{value}: {stderr}");
        assert!(stderr.contains("--in"), "{value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{value}: {stderr}");
    }
    assert!(!db.exists(), "nothing was written");
}
