//! The chaos suite (issue 9): the real emulator over HTTP, real `flyjobs worker` processes as
//! machines, a real Postgres (stopped and started for scenario d), and injected faults.
//!
//! ```text
//! flyjobs-chaos [--short] [--only abcde] [--flyjobs PATH]
//! ```
//!
//! Scenarios: (a) jobs of 50–500 ms while ~20% of busy machines are SIGKILLed; (b) the
//! production path (a parent machine, `FLY_MACHINE_ID` set) with ~20% of API requests answered
//! 429/503/capacity/late and dropped create responses; (c) two scalers on one store with creates
//! answered 3 s late; (d) Postgres stopped mid-run (30 s; 5 s with `--short`) and started again;
//! (e) a worker command that crashes at boot. Each prints one line of figures and the run fails
//! (exit 1) when a figure breaks its promise: a lost job anywhere, more machines than the limit,
//! more duplicate runs than killed machines in (a), more than 5 machines created for (e).
//!
//! Run it through `tests/chaos/run.sh` (release build, throwaway Postgres). Without
//! `FLYJOBS_TEST_DATABASE_URL` the queue is SQLite and (d) is skipped, loudly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use flyjobs::job::{JobId, NewJob};
use flyjobs::machines::Machines;
use flyjobs::machines::types::*;
use flyjobs::scaler::{Scaler, ScalerOptions};
use flyjobs::store::WorkerState;
use flyjobs::{Client, Config, Result as FjResult};
use flyjobs_emulator::{EmulatorHandle, EmulatorSettings, Faults};
use rand::Rng;

struct Args {
    short: bool,
    only: String,
    flyjobs: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        short: false,
        only: "abcde".into(),
        flyjobs: std::env::current_exe()?
            .parent()
            .context("no directory of the chaos binary")?
            .join("flyjobs"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--short" => args.short = true,
            "--only" => args.only = it.next().context("--only needs scenario letters")?,
            "--flyjobs" => args.flyjobs = it.next().context("--flyjobs needs a path")?.into(),
            other => {
                bail!("unknown argument {other:?} (use --short, --only abcde, --flyjobs PATH)")
            }
        }
    }
    if !args.flyjobs.exists() {
        bail!(
            "the flyjobs binary {} does not exist: build it (cargo build -p flyjobs-cli) or pass --flyjobs",
            args.flyjobs.display()
        );
    }
    Ok(args)
}

/// One scenario's line.
#[derive(Debug, Default)]
struct Figures {
    name: &'static str,
    jobs: usize,
    lost: usize,
    duplicates: usize,
    dead: usize,
    max_machines: usize,
    limit: usize,
    created: usize,
    orphans: usize,
    wall: Duration,
    extra: String,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chaos {:<28} jobs={:<5} lost={} dup={} dead={} max_machines={}/{} created={} orphans={} wall={:.1}s{}",
            self.name,
            self.jobs,
            self.lost,
            self.duplicates,
            self.dead,
            self.max_machines,
            self.limit,
            self.created,
            self.orphans,
            self.wall.as_secs_f64(),
            if self.extra.is_empty() {
                String::new()
            } else {
                format!(" {}", self.extra)
            }
        )
    }
}

/// Emulator, a queue database and a directory where jobs record their runs.
struct Harness {
    dir: tempfile::TempDir,
    emulator: EmulatorHandle,
    machines: Arc<dyn Machines>,
    app: String,
    url: String,
    flyjobs: PathBuf,
}

impl Harness {
    async fn new(args: &Args, mut settings: EmulatorSettings) -> anyhow::Result<Harness> {
        let dir = tempfile::tempdir()?;
        let url = match std::env::var("FLYJOBS_TEST_DATABASE_URL") {
            Ok(base) => flyjobs::testing::fresh_postgres_database(&base).await?,
            Err(_) => format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display()),
        };
        settings.images.insert(
            flyjobs::fork::EMBEDDED_IMAGE.to_string(),
            flyjobs_emulator::Image {
                dir: dir.path().to_path_buf(),
                cmd: Vec::new(),
            },
        );
        let (emulator, machines) = flyjobs_embedded::start(settings).await?;
        Ok(Harness {
            dir,
            emulator,
            machines,
            app: flyjobs_embedded::EMBEDDED_APP.to_string(),
            url,
            flyjobs: args.flyjobs.clone(),
        })
    }

    fn runs_file(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    fn config(&self, queues: &str) -> flyjobs::ConfigBuilder {
        Config::builder()
            .database_url(self.url.clone())
            .queues(queues)
            .lookup(|_| None)
    }

    async fn client(
        &self,
        config: flyjobs::ConfigBuilder,
        machines: Arc<dyn Machines>,
    ) -> anyhow::Result<Client> {
        Ok(Client::builder(config.build()?)
            .machines(machines, self.app.clone())
            .default_worker_command(vec![self.flyjobs.display().to_string(), "worker".into()])
            .open()
            .await?)
    }

    /// `n` command jobs that sleep a random time in `ms` and then record their run.
    async fn enqueue(
        &self,
        client: &Client,
        queue: &str,
        n: usize,
        ms: std::ops::RangeInclusive<u64>,
    ) -> anyhow::Result<Vec<JobId>> {
        let runs = self.runs_file();
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| {
                let sleep = rand::rng().random_range(ms.clone()) as f64 / 1000.0;
                let script = format!("sleep {sleep:.3}; echo {i} >> '{}'", runs.display());
                let mut j = NewJob::new(queue, serde_json::json!({"argv": ["sh", "-c", script]}));
                j.name = "command".into();
                j
            })
            .collect();
        let mut ids = Vec::with_capacity(n);
        for chunk in jobs.chunks(500) {
            ids.extend(
                client
                    .enqueue_many(chunk.to_vec())
                    .await?
                    .into_iter()
                    .map(|j| j.id),
            );
        }
        Ok(ids)
    }

    /// Active machines now (created, starting, started), per the emulator.
    fn active(&self) -> Vec<flyjobs_emulator::MachineSnapshot> {
        self.emulator
            .machines(&self.app)
            .into_iter()
            .filter(|m| matches!(m.state.as_str(), "created" | "starting" | "started"))
            .collect()
    }

    /// Sample the active machines every 100 ms until `stop`; returns the peak.
    fn sampler(self: &Arc<Self>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
        let h = self.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(h.active().len());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    }

    /// Wait until every job of `ids` is completed or dead, or `within` passes (store errors,
    /// as in an outage, are waited out).
    async fn drain(&self, client: &Client, queue: &str, n: usize, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(stats) = client.stats().await
                && let Some(s) = stats.iter().find(|s| s.queue == queue)
                && (s.completed + s.dead) as usize >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Lost (neither completed nor dead), duplicates (runs beyond the first), dead.
    async fn outcome(
        &self,
        client: &Client,
        ids: &[JobId],
    ) -> anyhow::Result<(usize, usize, usize)> {
        let mut runs: HashMap<usize, usize> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(self.runs_file()) {
            for line in text.lines() {
                if let Ok(i) = line.trim().parse::<usize>() {
                    *runs.entry(i).or_default() += 1;
                }
            }
        }
        let (mut lost, mut dead) = (0, 0);
        for id in ids {
            match client.job(*id).await?.map(|j| j.state) {
                Some(flyjobs::job::JobState::Completed) => {}
                Some(flyjobs::job::JobState::Dead) => dead += 1,
                _ => lost += 1,
            }
        }
        let duplicates = runs.values().map(|c| c.saturating_sub(1)).sum();
        Ok((lost, duplicates, dead))
    }

    /// After the scalers stopped: machines still active once idle workers had time to leave,
    /// plus processes still running a job of this run.
    async fn orphans(&self, grace: Duration) -> usize {
        let until = Instant::now() + grace;
        while !self.active().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.active().len() + stray_processes(self.dir.path())
    }
}

/// Processes whose command line mentions `dir` (a job of this run), other than ours.
fn stray_processes(dir: &Path) -> usize {
    let needle = dir.display().to_string();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .chars()
                        .all(|c| c.is_ascii_digit())
                })
                .filter(|e| e.file_name().to_string_lossy() != me.as_str())
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

fn fast_scaler() -> ScalerOptions {
    ScalerOptions {
        interval: Duration::from_millis(500),
        ..ScalerOptions::default()
    }
}

// ---- (a) SIGKILL busy machines ----------------------------------------------------------------

async fn kill(args: &Args) -> anyhow::Result<Figures> {
    let (n, limit) = if args.short { (100, 4) } else { (1000, 10) };
    let h = Arc::new(Harness::new(args, EmulatorSettings::for_tests()).await?);
    let queue = format!("a:max_machines={limit},concurrency=1,wait=1");
    let client = h
        .client(
            h.config(&queue).lease_duration(Duration::from_secs(5)),
            h.machines.clone(),
        )
        .await?;
    let started = Instant::now();
    let ids = h.enqueue(&client, "a", n, 50..=500).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = h.sampler(stop.clone());
    let scaler = Arc::new(client.build_scaler(fast_scaler()).await?).spawn();
    // Every 2 s, each machine busy with a job dies with probability 0.2: at any moment about
    // a fifth of the busy machines are being killed, all run long.
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (h, client, stop, kills) = (h.clone(), client.clone(), stop.clone(), kills.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let busy: HashSet<String> = client
                    .workers()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|w| w.state == WorkerState::Live)
                    .map(|w| w.id)
                    .collect();
                for m in h.active() {
                    if busy.contains(&m.id)
                        && rand::rng().random_bool(0.2)
                        && let Some(pid) = m.pid
                    {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        kills.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    h.drain(
        &client,
        "a",
        n,
        Duration::from_secs(if args.short { 240 } else { 900 }),
    )
    .await;
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = killer.await;
    let max_machines = sampler.await?;
    scaler.stop().await;
    let (lost, duplicates, dead) = h.outcome(&client, &ids).await?;
    let orphans = h.orphans(Duration::from_secs(20)).await;
    let kills = kills.load(Ordering::SeqCst);
    Ok(Figures {
        name: "(a) SIGKILL ~20% busy",
        jobs: n,
        lost,
        duplicates,
        dead,
        max_machines,
        limit,
        created: h.emulator.machines(&h.app).len(),
        orphans,
        wall,
        extra: format!("killed={kills}"),
    })
}

// ---- (b) production path with API faults -----------------------------------------------------

async fn faults(args: &Args) -> anyhow::Result<Figures> {
    let (n, limit) = if args.short { (60, 4) } else { (500, 8) };
    let h = Arc::new(Harness::new(args, EmulatorSettings::for_tests()).await?);
    // The parent: the app's own machine, whose config the workers are derived from. The
    // queue's URL reaches workers the way an app secret would: in the machine's env.
    let parent = h
        .machines
        .create_machine(
            &h.app,
            &CreateMachineRequest {
                config: MachineConfig {
                    image: Some(flyjobs::fork::EMBEDDED_IMAGE.to_string()),
                    env: Some(BTreeMap::from([
                        ("FLYJOBS_DATABASE_URL".to_string(), h.url.clone()),
                        ("FLYJOBS_LEASE_DURATION".to_string(), "5s".to_string()),
                    ])),
                    init: Some(MachineInit {
                        exec: Some(vec!["sleep".into(), "3600".into()]),
                        ..MachineInit::default()
                    }),
                    ..MachineConfig::default()
                },
                ..CreateMachineRequest::default()
            },
        )
        .await?;
    let queue = format!("b:max_machines={limit},concurrency=2,wait=1");
    let config = h
        .config(&queue)
        .app_name(h.app.clone())
        .machine_id(parent.id.clone())
        .api_token("chaos-token")
        .lease_duration(Duration::from_secs(5));
    let client = h.client(config, h.machines.clone()).await?;
    let scaler = Arc::new(client.build_scaler(fast_scaler()).await?);
    h.emulator.set_faults(Faults {
        rate_limited: 0.05,
        unavailable: 0.05,
        capacity: 0.05,
        delayed: 0.05,
        delay: Duration::from_millis(500),
        drop_after_create: 3,
        dropped_create: 0.05,
    });
    let started = Instant::now();
    let ids = h.enqueue(&client, "b", n, 50..=200).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = h.sampler(stop.clone());
    let handle = scaler.spawn();
    h.drain(
        &client,
        "b",
        n,
        Duration::from_secs(if args.short { 240 } else { 900 }),
    )
    .await;
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let max_machines = sampler.await?;
    handle.stop().await;
    h.emulator.set_faults(Faults::default());
    let (lost, duplicates, dead) = h.outcome(&client, &ids).await?;
    let orphans = h.orphans(Duration::from_secs(20)).await;
    // The parent is not a worker.
    let created = h.emulator.machines(&h.app).len() - 1;
    Ok(Figures {
        name: "(b) prod path, 20% API faults",
        jobs: n,
        lost,
        duplicates,
        dead,
        max_machines: max_machines.saturating_sub(1),
        limit,
        created,
        orphans: orphans.saturating_sub(1),
        wall,
        extra: String::new(),
    })
}

// ---- (c) two scalers, slow creates ------------------------------------------------------------

/// Creates performed at once but answered `delay` later.
#[derive(Debug)]
struct SlowCreates {
    inner: Arc<dyn Machines>,
    delay: Duration,
}

#[async_trait]
impl Machines for SlowCreates {
    async fn create_app(&self, req: &CreateAppRequest) -> FjResult<App> {
        self.inner.create_app(req).await
    }
    async fn get_app(&self, app: &str) -> FjResult<App> {
        self.inner.get_app(app).await
    }
    async fn create_machine(&self, app: &str, req: &CreateMachineRequest) -> FjResult<Machine> {
        let m = self.inner.create_machine(app, req).await;
        tokio::time::sleep(self.delay).await;
        m
    }
    async fn get_machine(&self, app: &str, id: &str) -> FjResult<Machine> {
        self.inner.get_machine(app, id).await
    }
    async fn list_machines(&self, app: &str, q: &ListMachinesQuery) -> FjResult<Vec<Machine>> {
        self.inner.list_machines(app, q).await
    }
    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
        lease: Option<&str>,
    ) -> FjResult<Machine> {
        self.inner.update_machine(app, id, req, lease).await
    }
    async fn start_machine(
        &self,
        app: &str,
        id: &str,
        lease: Option<&str>,
    ) -> FjResult<StartResponse> {
        self.inner.start_machine(app, id, lease).await
    }
    async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: &StopRequest,
        lease: Option<&str>,
    ) -> FjResult<()> {
        self.inner.stop_machine(app, id, req, lease).await
    }
    async fn suspend_machine(&self, app: &str, id: &str, lease: Option<&str>) -> FjResult<()> {
        self.inner.suspend_machine(app, id, lease).await
    }
    async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        lease: Option<&str>,
    ) -> FjResult<()> {
        self.inner.destroy_machine(app, id, force, lease).await
    }
    async fn wait_machine(&self, app: &str, id: &str, q: &WaitQuery) -> FjResult<WaitResponse> {
        self.inner.wait_machine(app, id, q).await
    }
    async fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: Option<u32>,
    ) -> FjResult<Vec<MachineEvent>> {
        self.inner.machine_events(app, id, limit).await
    }
    async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        req: &CreateLeaseRequest,
    ) -> FjResult<Lease> {
        self.inner.acquire_lease(app, id, req).await
    }
    async fn refresh_lease(
        &self,
        app: &str,
        id: &str,
        nonce: &str,
        ttl: Option<u64>,
    ) -> FjResult<Lease> {
        self.inner.refresh_lease(app, id, nonce, ttl).await
    }
    async fn get_lease(&self, app: &str, id: &str) -> FjResult<Lease> {
        self.inner.get_lease(app, id).await
    }
    async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> FjResult<()> {
        self.inner.release_lease(app, id, nonce).await
    }
    async fn get_metadata(&self, app: &str, id: &str) -> FjResult<BTreeMap<String, String>> {
        self.inner.get_metadata(app, id).await
    }
    async fn set_metadata(&self, app: &str, id: &str, key: &str, value: &str) -> FjResult<()> {
        self.inner.set_metadata(app, id, key, value).await
    }
    async fn delete_metadata(&self, app: &str, id: &str, key: &str) -> FjResult<()> {
        self.inner.delete_metadata(app, id, key).await
    }
    async fn machine_logs(&self, app: &str, id: &str) -> FjResult<Option<String>> {
        self.inner.machine_logs(app, id).await
    }
}

async fn two_scalers(args: &Args) -> anyhow::Result<Figures> {
    let (n, limit) = if args.short { (40, 3) } else { (300, 3) };
    let h = Arc::new(Harness::new(args, EmulatorSettings::for_tests()).await?);
    let queue = format!("c:max_machines={limit},concurrency=2,wait=1");
    let slow: Arc<dyn Machines> = Arc::new(SlowCreates {
        inner: h.machines.clone(),
        delay: Duration::from_secs(3),
    });
    let a = h.client(h.config(&queue), slow.clone()).await?;
    let b = h.client(h.config(&queue), slow).await?;
    // A 1 s leader lock (interval 200 ms × 5): shorter than one create.
    let options = ScalerOptions {
        interval: Duration::from_millis(200),
        ..ScalerOptions::default()
    };
    let sa: Arc<Scaler> = Arc::new(a.build_scaler(options.clone()).await?);
    let sb: Arc<Scaler> = Arc::new(b.build_scaler(options).await?);
    let started = Instant::now();
    let ids = h.enqueue(&a, "c", n, 100..=300).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = h.sampler(stop.clone());
    let (ha, hb) = (sa.spawn(), sb.spawn());
    h.drain(
        &a,
        "c",
        n,
        Duration::from_secs(if args.short { 240 } else { 900 }),
    )
    .await;
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let max_machines = sampler.await?;
    ha.stop().await;
    hb.stop().await;
    let (lost, duplicates, dead) = h.outcome(&a, &ids).await?;
    let orphans = h.orphans(Duration::from_secs(20)).await;
    Ok(Figures {
        name: "(c) two scalers, 3 s creates",
        jobs: n,
        lost,
        duplicates,
        dead,
        max_machines,
        limit,
        created: h.emulator.machines(&h.app).len(),
        orphans,
        wall,
        extra: String::new(),
    })
}

// ---- (d) Postgres down mid-run ----------------------------------------------------------------

fn pg_ctl(action: &str) -> anyhow::Result<()> {
    let ctl = std::env::var("PG_CTL")?;
    let data = std::env::var("PGDATA_DIR")?;
    let opts = std::env::var("PG_OPTS")?;
    let log = Path::new(&data)
        .parent()
        .context("PGDATA_DIR has no parent")?
        .join("server.log");
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", "postgres", "--", &ctl, "-D", &data, "-w"]);
    match action {
        "stop" => cmd.args(["-m", "fast", "stop"]),
        _ => cmd.args(["-l", &log.display().to_string(), "-o", &opts, "start"]),
    };
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "pg_ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn db_outage(args: &Args) -> anyhow::Result<Option<Figures>> {
    if std::env::var("FLYJOBS_TEST_DATABASE_URL").is_err() || std::env::var("PG_CTL").is_err() {
        return Ok(None);
    }
    let (n, limit, down) = if args.short {
        (100, 3, Duration::from_secs(5))
    } else {
        (600, 5, Duration::from_secs(30))
    };
    let h = Arc::new(Harness::new(args, EmulatorSettings::for_tests()).await?);
    let queue = format!("d:max_machines={limit},concurrency=4,wait=2");
    let client = h.client(h.config(&queue), h.machines.clone()).await?;
    let started = Instant::now();
    let ids = h.enqueue(&client, "d", n, 200..=500).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = h.sampler(stop.clone());
    let scaler = Arc::new(client.build_scaler(fast_scaler()).await?).spawn();
    // Mid-run: a third of the jobs done.
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let done = client
            .stats()
            .await?
            .iter()
            .find(|s| s.queue == "d")
            .map_or(0, |s| s.completed as usize);
        if done >= n / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created_before = h.emulator.machines(&h.app).len();
    pg_ctl("stop")?;
    tokio::time::sleep(down).await;
    pg_ctl("start")?;
    let created_during = h.emulator.machines(&h.app).len() - created_before;
    h.drain(
        &client,
        "d",
        n,
        Duration::from_secs(if args.short { 240 } else { 900 }),
    )
    .await;
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let max_machines = sampler.await?;
    scaler.stop().await;
    let (lost, duplicates, dead) = h.outcome(&client, &ids).await?;
    let orphans = h.orphans(Duration::from_secs(20)).await;
    if std::env::var_os("FLYJOBS_CHAOS_LOGS").is_some() {
        for m in h.emulator.machines(&h.app) {
            let log = h.emulator.logs(&h.app, &m.id).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            eprintln!("--- machine {} ({})", m.id, m.state);
            for line in tail.into_iter().rev() {
                eprintln!("    {line}");
            }
        }
    }
    Ok(Some(Figures {
        name: if args.short {
            "(d) Postgres down 5 s"
        } else {
            "(d) Postgres down 30 s"
        },
        jobs: n,
        lost,
        duplicates,
        dead,
        max_machines,
        limit,
        created: h.emulator.machines(&h.app).len(),
        orphans,
        wall,
        extra: format!("created_while_down={created_during}"),
    }))
}

// ---- (e) a worker that crashes at boot ---------------------------------------------------------

async fn crash_at_boot(args: &Args) -> anyhow::Result<Figures> {
    let (n, limit, run) = if args.short {
        (5, 2, Duration::from_secs(20))
    } else {
        (5, 2, Duration::from_secs(300))
    };
    let h = Arc::new(Harness::new(args, EmulatorSettings::for_tests()).await?);
    let queue = format!("e:max_machines={limit}");
    let config = h.config(&queue).worker_command(vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo 'boom: cannot load the app' >&2; exit 1".to_string(),
    ]);
    let client = h.client(config, h.machines.clone()).await?;
    let started = Instant::now();
    let ids = h.enqueue(&client, "e", n, 50..=50).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = h.sampler(stop.clone());
    let scaler = Arc::new(client.build_scaler(fast_scaler()).await?).spawn();
    tokio::time::sleep(run).await;
    let wall = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let max_machines = sampler.await?;
    scaler.stop().await;
    let failures = client.store().boot_failures(100).await?;
    let with_log = failures
        .iter()
        .filter(|f| f.exit_code == Some(1) && f.log_tail.contains("boom"))
        .count();
    // Nothing ran, nothing may be gone: every job is still waiting.
    let mut lost = 0;
    for id in &ids {
        if client.job(*id).await?.is_none() {
            lost += 1;
        }
    }
    let orphans = h.orphans(Duration::from_secs(10)).await;
    Ok(Figures {
        name: "(e) worker crashes at boot",
        jobs: n,
        lost,
        duplicates: 0,
        dead: 0,
        max_machines,
        limit,
        created: h.emulator.machines(&h.app).len(),
        orphans,
        wall,
        extra: format!(
            "boot_failures={} (exit 1 + log: {with_log})",
            failures.len()
        ),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut broken: Vec<String> = Vec::new();
    let mut check = |f: &Figures, ok: bool, what: &str| {
        if !ok {
            broken.push(format!("{}: {what}", f.name));
        }
    };
    for s in args.only.chars() {
        let figures = match s {
            'a' => kill(&args).await?,
            'b' => faults(&args).await?,
            'c' => two_scalers(&args).await?,
            'd' => match db_outage(&args).await? {
                Some(f) => f,
                None => {
                    println!(
                        "chaos (d) SKIPPED: needs a restartable Postgres (run through scripts/with-postgres.sh)"
                    );
                    continue;
                }
            },
            'e' => crash_at_boot(&args).await?,
            other => bail!("unknown scenario {other:?} (a–e)"),
        };
        println!("{figures}");
        check(&figures, figures.lost == 0, "jobs lost");
        check(
            &figures,
            figures.max_machines <= figures.limit,
            "more machines than the limit",
        );
        check(&figures, figures.orphans == 0, "orphans left");
        if s == 'a' {
            let kills: usize = figures
                .extra
                .trim_start_matches("killed=")
                .parse()
                .unwrap_or(0);
            check(
                &figures,
                figures.duplicates <= kills,
                "more duplicate runs than killed machines",
            );
        }
        if s == 'e' {
            check(
                &figures,
                figures.created <= 5,
                "more than 5 machines created",
            );
        }
    }
    if !broken.is_empty() {
        bail!("chaos: {}", broken.join("; "));
    }
    Ok(())
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("FLYJOBS_LOG").unwrap_or_else(|_| "error".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let result = parse_args().and_then(|args| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(run(args))
    });
    if let Err(e) = result {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
}
