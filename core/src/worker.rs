//! The loop inside a worker machine: claim → lease → hand the job to the language → complete /
//! fail; heartbeats; idle exit.
//!
//! The API is pull-style so that Rust never calls into Ruby, Python or JavaScript from one of
//! its own threads: the language calls [`Worker::next`] (with its GVL/GIL released while it
//! waits), runs the job itself, then calls [`WorkerLease::complete`] or [`WorkerLease::fail`].
//! Meanwhile a background task keeps every running job's lease alive and the worker's
//! registration fresh, so a job may run far longer than one lease.
//!
//! Lifecycle (Sidekiq's words): [`Worker::quiet`] stops claiming; [`Worker::stop`] waits for
//! running jobs until a deadline, then gives the rest back ([`crate::store::Store::release`])
//! and deregisters. With `wait`, [`Worker::next`] returns `None` once the worker has been idle
//! that long; a `suspend` pool member instead suspends its own machine and carries on when it is
//! resumed.
//!
//! ```no_run
//! # async fn run(client: flyjobs::Client) -> flyjobs::Result<()> {
//! use flyjobs::worker::WorkerOptions;
//! let worker = client.worker(WorkerOptions::new(["default"])).await?;
//! while let Some(lease) = worker.next().await? {
//!     println!("running {}", lease.job().name);
//!     lease.complete().await?;
//! }
//! worker.stop(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, PoolMode, Wait};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Failure, Job, JobId};
use crate::machines::Machines;
use crate::retry::{Outcome, RetryPolicy};
use crate::store::{ClaimRequest, ImageFilter, Lease, Store, WorkerInfo, WorkerState};

/// Longest a blocking wait sleeps before looking again (so signals and `quiet` are seen).
const POLL: Duration = Duration::from_secs(2);
/// The same for a store whose wake-ups do not cross processes (SQLite): a local file is cheap
/// to look at, and a job enqueued by the app should not wait for a 2 s poll.
const LOCAL_POLL: Duration = Duration::from_millis(200);

/// What a worker serves and how.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Queues to claim from, in no particular order (priority decides).
    pub queues: Vec<String>,
    /// Jobs run at once (the language runs that many threads/tasks calling `next`).
    pub concurrency: u32,
    /// How long to linger idle.
    pub wait: Wait,
    /// What to do when leaving idle: exit (`None`/`Stop`) or suspend the machine (`Suspend`).
    pub pool: PoolMode,
    /// The worker's id in the registry: the machine id on Fly, else `host-pid`.
    pub id: Option<String>,
    /// Claim only jobs of this machine shape key (`Some("")`: default-shape jobs); `None`:
    /// any shape (a worker run by hand).
    pub shape: Option<String>,
    /// Which releases' jobs it claims.
    pub release: ReleaseFilter,
}

/// Which jobs a worker claims by the release (image) that enqueued them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReleaseFilter {
    /// Every job (a worker run by hand; no image known).
    #[default]
    Any,
    /// A current-release machine: jobs of its image, of no image, or enqueued longer than
    /// `pin_for` ago.
    Current,
    /// An old-release machine booted for pinned jobs: only jobs of its image.
    Pinned,
}

impl WorkerOptions {
    /// Options for `queues`: concurrency 1, wait 600 s, no pool.
    pub fn new<I, S>(queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WorkerOptions {
            queues: queues.into_iter().map(Into::into).collect(),
            concurrency: 1,
            wait: Wait::Idle(Duration::from_secs(600)),
            pool: PoolMode::None,
            id: None,
            shape: None,
            release: ReleaseFilter::Any,
        }
    }
}

impl WorkerOptions {
    /// Options from a map (keys of [`crate::config::WORKER_OPTIONS`]: `queues`, `concurrency`,
    /// `wait`, `pool`), else their env vars (`FLYJOBS_WORKER_QUEUES`, …), else the settings of
    /// the worker's queue in `config` (the first queue's, when it serves several): what every
    /// language's worker command calls with its parsed flags.
    pub fn from_options(
        config: &Config,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<WorkerOptions> {
        Self::resolve(config, options, |k| std::env::var(k).ok())
    }

    /// [`WorkerOptions::from_options`] with env vars read through `env` (tests).
    pub fn resolve(
        config: &Config,
        options: &serde_json::Map<String, serde_json::Value>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<WorkerOptions> {
        use crate::config::{Origin, WORKER_OPTIONS, options as opt};
        for key in options.keys() {
            if !WORKER_OPTIONS.iter().any(|s| s.name == key) {
                return Err(opt::unknown(
                    &Origin::Option(String::new()),
                    "worker option",
                    key,
                    WORKER_OPTIONS,
                ));
            }
        }
        let value = |key: &str| -> Option<(Origin, serde_json::Value)> {
            if let Some(v) = options.get(key).filter(|v| !v.is_null()) {
                return Some((Origin::Option(key.into()), v.clone()));
            }
            let spec = WORKER_OPTIONS.iter().find(|s| s.name == key)?;
            env(spec.env)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (Origin::Env(spec.env.into()), serde_json::Value::String(v)))
        };
        let queues = match value("queues") {
            Some((o, v)) => {
                let q = opt::words(&o, &v)?;
                if q.is_empty() {
                    return Err(opt::bad_with(&o, "at least one queue name", &v));
                }
                for name in &q {
                    crate::job::validate_queue(name)
                        .map_err(|e| Error::config(format!("{o}: {}", e.message())))?;
                }
                q
            }
            None => vec!["default".to_string()],
        };
        let settings = config.queue(&queues[0]);
        let mut w = WorkerOptions::new(queues.clone());
        w.concurrency = match value("concurrency") {
            Some((o, v)) => opt::integer_u32(&o, 1, &v)?,
            None => settings.concurrency,
        };
        w.wait = match value("wait") {
            Some((o, v)) => Wait::from_value(&o, &v)?,
            None => settings.wait,
        };
        w.pool = match value("pool") {
            Some((o, v)) => PoolMode::from_value(&o, &v)?,
            None => settings.pool,
        };
        w.shape = match value("shape") {
            Some((o, v)) => match opt::text(&o, &v)?.trim() {
                "any" => None,
                "default" => Some(String::new()),
                key => Some(
                    crate::placement::Shape::parse(key)
                        .map_err(|e| Error::config(format!("{o}: {}", e.message())))?
                        .key(),
                ),
            },
            None => None,
        };
        w.release = match value("release") {
            Some((o, v)) => match opt::one_of(&o, &["any", "current", "pinned"], &v)?.as_str() {
                "current" => ReleaseFilter::Current,
                "pinned" => ReleaseFilter::Pinned,
                _ => ReleaseFilter::Any,
            },
            None => ReleaseFilter::Any,
        };
        Ok(w)
    }
}

struct Running {
    token: i64,
    lost: bool,
    /// The lease's expiry as last confirmed by the store (claim or extension).
    expires_at: chrono::DateTime<chrono::Utc>,
    /// When it was claimed (a spare older than [`SPARE_MAX_AGE`] goes back to the queue).
    claimed_at: Instant,
    /// When a caller took it to run; `None` while it is a spare.
    started: Option<Instant>,
    /// It ran and succeeded; its completion waits for the group commit
    /// ([`WorkerLease::complete_later`]).
    completing: bool,
}

impl Running {
    /// A lease just claimed, not yet handed to a caller.
    fn claimed(lease: &Lease) -> Running {
        Running {
            token: lease.token,
            lost: false,
            expires_at: lease.expires_at,
            claimed_at: Instant::now(),
            started: None,
            completing: false,
        }
    }
}

/// Claiming ahead. A worker whose jobs are short claims more than its waiting callers ask for,
/// so that one claim statement serves many jobs (Celery's prefetch, bounded by time rather
/// than by a count): it keeps as many spare leases as its slots would start within
/// `PREFETCH_HORIZON` at the recent run time, never more than `PREFETCH_MAX`. Jobs that run
/// longer than the horizon get no spares, so a job does not sit in one worker's hands while
/// another machine's slot is free.
const PREFETCH_HORIZON: Duration = Duration::from_millis(50);
/// The most spare leases a worker claims ahead.
const PREFETCH_MAX: usize = 64;
/// A spare not handed out this long after its claim (the jobs turned long) is given back by
/// the keep-alive task, untouched, for any worker to take.
const SPARE_MAX_AGE: Duration = Duration::from_secs(1);

/// How many leases to claim ahead for a worker of `concurrency` slots whose recent jobs ran
/// `run_time` each (`None`: none finished yet, so nothing is known and nothing is claimed ahead).
fn claim_ahead(concurrency: usize, run_time: Option<Duration>) -> usize {
    let Some(run_time) = run_time else { return 0 };
    let per_slot = PREFETCH_HORIZON.as_secs_f64() / run_time.as_secs_f64().max(1e-6);
    ((per_slot * concurrency as f64) as usize).min(PREFETCH_MAX)
}

/// How long a worker keeps retrying claims through a store outage before it gives up.
const STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// Most completions one group-commit statement records.
const GROUP_COMMIT_MAX: usize = 256;

/// A completion waiting for the worker's next group commit.
struct PendingComplete {
    id: JobId,
    token: i64,
    result: Option<serde_json::Value>,
    /// Who hears the outcome once the statement holding it committed (or failed).
    answer: Answer,
}

/// Who hears how a group-committed completion went.
enum Answer {
    /// A caller waiting for it ([`WorkerLease::complete_with`]).
    Waiting(tokio::sync::oneshot::Sender<Result<()>>),
    /// Nobody ([`WorkerLease::complete_later`]): the group commit ends the lease itself.
    Detached(Arc<Inner>),
}

impl Answer {
    fn send(self, id: JobId, token: i64, outcome: Result<()>) {
        match self {
            Answer::Waiting(done) => {
                let _ = done.send(outcome);
            }
            Answer::Detached(inner) => inner.completed_later(id, token, outcome),
        }
    }
}

/// The worker's group commit: completions that arrive while a statement is in flight go
/// together in the next one ([`Store::complete_many`]), so a busy worker writes one statement
/// for many jobs and a quiet one pays only a channel hop. Every caller hears its own outcome
/// after the statement that recorded it committed. Ends when the worker is dropped.
async fn group_commit(
    store: Arc<dyn Store>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PendingComplete>,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    while rx.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
        let items: Vec<_> = batch
            .iter_mut()
            .map(|p| (p.id, p.token, p.result.take()))
            .collect();
        match store.complete_many(&items).await {
            Ok(outcomes) => {
                for (p, outcome) in batch.drain(..).zip(outcomes) {
                    p.answer.send(p.id, p.token, outcome);
                }
            }
            Err(e) => {
                for p in batch.drain(..) {
                    let copy = Error::new(e.kind(), e.message())
                        .with_retryable(e.is_retryable())
                        .with_job_id(p.id);
                    p.answer.send(p.id, p.token, Err(copy));
                }
            }
        }
        // A store answering fewer outcomes than asked drops the rest: their callers see
        // the group commit end and retry on their own.
        batch.clear();
    }
}

struct Inner {
    id: String,
    opts: WorkerOptions,
    store: Arc<dyn Store>,
    retry: RetryPolicy,
    lease_duration: Duration,
    image_ref: Option<String>,
    pin_for: Duration,
    /// The machine's own API (tokenless in-machine socket), to suspend itself; None off Fly.
    self_api: Option<(Arc<dyn Machines>, String, String)>,
    running: Mutex<HashMap<JobId, Running>>,
    /// Leases claimed for other waiting callers of [`Worker::next`] (already in `running`, so
    /// the keep-alive extends them), handed out in claim order.
    spare: Mutex<VecDeque<Lease>>,
    /// Callers inside [`Worker::next`]: how many jobs the next claim asks for.
    waiting: AtomicUsize,
    /// Held by the one caller that claims; the others wait for its spare leases.
    claiming: tokio::sync::Mutex<()>,
    /// The recent run time of a job here (an exponential moving average, µs; 0: none yet),
    /// which sets how many leases a claim takes ahead.
    run_time_us: std::sync::atomic::AtomicU64,
    /// Completions for the group commit task.
    completions: tokio::sync::mpsc::UnboundedSender<PendingComplete>,
    last_activity: Mutex<Instant>,
    quiet: CancellationToken,
    closed: CancellationToken,
}

/// A worker: claims jobs of its queues for the language to run.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.id)
            .field("queues", &self.inner.opts.queues)
            .finish()
    }
}

impl Inner {
    /// The claim's image filter for this worker's release filter and image.
    fn image_filter(&self) -> Option<ImageFilter> {
        let image = self.image_ref.clone()?;
        match self.opts.release {
            ReleaseFilter::Any => None,
            ReleaseFilter::Pinned => Some(ImageFilter::only(image)),
            ReleaseFilter::Current => Some(ImageFilter {
                image_ref: image,
                or_enqueued_before: Some(
                    chrono::Utc::now()
                        - chrono::Duration::from_std(self.pin_for).unwrap_or_default(),
                ),
            }),
        }
    }
}

impl Worker {
    /// Register a worker and start its keep-alive task. Use [`crate::Client::worker`].
    pub(crate) async fn start(
        config: &Config,
        store: Arc<dyn Store>,
        self_api: Option<(Arc<dyn Machines>, String, String)>,
        opts: WorkerOptions,
    ) -> Result<Worker> {
        if opts.queues.is_empty() {
            return Err(Error::config("a worker needs at least one queue"));
        }
        for q in &opts.queues {
            crate::job::validate_queue(q)?;
        }
        if opts.concurrency == 0 {
            return Err(Error::config("worker concurrency must be >= 1"));
        }
        let id = opts
            .id
            .clone()
            .or_else(|| config.machine_id().map(str::to_string))
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        let (completions, pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(group_commit(store.clone(), pending));
        let inner = Arc::new(Inner {
            id: id.clone(),
            store: store.clone(),
            retry: RetryPolicy::default(),
            lease_duration: config.lease_duration(),
            image_ref: config.image_ref().map(str::to_string),
            pin_for: config.pin_for(),
            self_api,
            running: Mutex::new(HashMap::new()),
            spare: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            claiming: tokio::sync::Mutex::new(()),
            run_time_us: std::sync::atomic::AtomicU64::new(0),
            completions,
            last_activity: Mutex::new(Instant::now()),
            quiet: CancellationToken::new(),
            closed: CancellationToken::new(),
            opts,
        });
        inner.register(WorkerState::Idle).await?;
        info!(worker = %id, queues = ?inner.opts.queues, concurrency = inner.opts.concurrency, "worker registered");
        tokio::spawn(keep_alive(Arc::downgrade(&inner), inner.closed.clone()));
        Ok(Worker { inner })
    }

    /// The worker's id in the registry.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Jobs it runs at once (the language runs that many threads or tasks on it).
    pub fn concurrency(&self) -> u32 {
        self.inner.opts.concurrency
    }

    /// Wait for the next job; `None` means the worker should leave (idle `wait` elapsed, or
    /// quiet/stopping). Store outages are retried here, with backoff, for up to five minutes;
    /// time spent failing to claim is not idleness (the queue may be full), so a worker never
    /// leaves "idle" because its database was down.
    pub async fn next(&self) -> Result<Option<WorkerLease>> {
        let inner = &self.inner;
        let _waiting = Waiting::enter(inner);
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        loop {
            if inner.quiet.is_cancelled() {
                return Ok(None);
            }
            if let Some(lease) = inner.take_spare() {
                return Ok(Some(inner.hand_out(lease)));
            }
            // One claim at a time per worker: it claims for every waiting caller at once, and
            // the others, queued here, take the leases it left them.
            let _claiming = tokio::select! {
                g = inner.claiming.lock() => g,
                () = inner.quiet.cancelled() => return Ok(None),
            };
            if let Some(lease) = inner.take_spare() {
                return Ok(Some(inner.hand_out(lease)));
            }
            // Subscribe before claiming: a wake-up between an empty claim and the wait below
            // is remembered, not lost.
            let mut wakeups = inner.store.subscribe();
            let concurrency = inner.opts.concurrency as usize;
            let free = concurrency.saturating_sub(inner.lock_running().len());
            let limit = inner.waiting.load(Ordering::SeqCst).clamp(1, free.max(1))
                + claim_ahead(concurrency, inner.run_time());
            let claimed = inner
                .store
                .claim(ClaimRequest {
                    queues: inner.opts.queues.clone(),
                    limit,
                    owner: inner.id.clone(),
                    lease: inner.lease_duration,
                    shape: inner.opts.shape.clone(),
                    image: inner.image_filter(),
                })
                .await;
            match claimed {
                Ok(leases) => {
                    if failing_since.take().is_some() {
                        // Back from an outage: idleness counts from now, not from before it.
                        info!(worker = %inner.id, failures, "store reachable again");
                        inner.touch();
                    }
                    failures = 0;
                    if !leases.is_empty() {
                        // Claimed after quiet began: give them back untouched.
                        if inner.quiet.is_cancelled() {
                            for lease in leases {
                                let _ = inner.store.release(lease.job.id, lease.token).await;
                            }
                            return Ok(None);
                        }
                        inner.touch();
                        let mut leases = leases.into_iter();
                        let first = leases.next().expect("not empty");
                        {
                            let mut running = inner.lock_running();
                            for lease in std::iter::once(&first).chain(leases.as_slice()) {
                                running.insert(lease.job.id, Running::claimed(lease));
                            }
                        }
                        inner.lock_spare().extend(leases);
                        return Ok(Some(inner.hand_out(first)));
                    }
                }
                Err(e) => {
                    failures += 1;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    warn!(worker = %inner.id, error = %e, failures, "claim failed; retrying");
                    if since.elapsed() >= STORE_OUTAGE_LIMIT {
                        return Err(e);
                    }
                }
            }
            if let Wait::Idle(wait) = inner.opts.wait
                && failing_since.is_none()
            {
                let idle_for = inner.idle_for();
                if let Some(idle_for) = idle_for
                    && idle_for >= wait
                {
                    if inner.opts.pool == PoolMode::Suspend && inner.self_api.is_some() {
                        inner.suspend_self().await;
                        continue;
                    }
                    info!(worker = %inner.id, ?wait, "idle; leaving");
                    return Ok(None);
                }
            }
            let nap = if failures > 0 {
                Duration::from_millis(200 * u64::from(failures.min(10)))
            } else if inner.store.wakes_other_processes() {
                POLL
            } else {
                LOCAL_POLL
            };
            tokio::select! {
                _ = wakeups.wait(nap) => {}
                () = inner.quiet.cancelled() => {}
            }
        }
    }

    /// Stop claiming new jobs; running ones continue.
    pub fn quiet(&self) {
        if !self.inner.quiet.is_cancelled() {
            info!(worker = %self.inner.id, "quiet: claiming nothing new");
            self.inner.quiet.cancel();
            let inner = self.inner.clone();
            crate::runtime::handle().spawn(async move {
                inner.release_spares().await;
                let _ = inner
                    .store
                    .set_worker_state(&inner.id, WorkerState::Stopping)
                    .await;
            });
        }
    }

    /// Whether the worker is quiet or stopping (jobs may check it to cut long work short).
    pub fn stopping(&self) -> bool {
        self.inner.quiet.is_cancelled()
    }

    /// Leases held here: jobs running, spares claimed ahead, and completions handed to the
    /// group commit and not yet written (0 once everything is recorded).
    pub fn running(&self) -> usize {
        self.inner.lock_running().len()
    }

    /// Graceful stop: quiet, wait up to `deadline` for running jobs, release the rest (they run
    /// again elsewhere, untouched), deregister. Safe to call more than once.
    pub async fn stop(&self, deadline: Duration) {
        self.quiet();
        // Leases claimed for callers that never came back for them: nothing runs them.
        self.inner.release_spares().await;
        let until = Instant::now() + deadline;
        while self.running() > self.inner.completing() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Jobs that ran and wait for the group commit are done, whatever the deadline: wait
        // for their completions to be written (a release now would run them again). Past
        // their lease they would run again anyway.
        let until = Instant::now() + self.inner.lease_duration;
        while self.inner.completing() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left: Vec<(JobId, i64)> = self
            .inner
            .lock_running()
            .drain()
            .filter(|(_, r)| !r.completing)
            .map(|(id, r)| (id, r.token))
            .collect();
        for (id, token) in left {
            match self.inner.store.release(id, token).await {
                Ok(_) => info!(worker = %self.inner.id, job = %id, "released unfinished job"),
                Err(e) => {
                    warn!(worker = %self.inner.id, job = %id, error = %e, "release failed; the lease will expire")
                }
            }
        }
        if !self.inner.closed.is_cancelled() {
            self.inner.closed.cancel();
            if let Err(e) = self.inner.store.deregister_worker(&self.inner.id).await {
                warn!(worker = %self.inner.id, error = %e, "deregister failed");
            }
        }
    }
}

/// Counts a caller inside [`Worker::next`] (even one whose future is dropped mid-wait).
struct Waiting<'a>(&'a Inner);

impl<'a> Waiting<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(inner)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    fn lock_spare(&self) -> std::sync::MutexGuard<'_, VecDeque<Lease>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_spare(&self) -> Option<Lease> {
        self.lock_spare().pop_front()
    }

    /// A claimed lease (already in `running`) as the caller's job.
    fn hand_out(self: &Arc<Self>, lease: Lease) -> WorkerLease {
        debug!(worker = %self.id, job = %lease.job.id, "claimed");
        if let Some(r) = self.lock_running().get_mut(&lease.job.id) {
            r.started = Some(Instant::now());
        }
        WorkerLease {
            worker: self.clone(),
            lease: Some(lease),
        }
    }

    /// Give back the leases claimed for callers that did not take them (quiet, stop).
    async fn release_spares(&self) {
        let spares: Vec<Lease> = self.lock_spare().drain(..).collect();
        self.release_each(spares).await;
    }

    /// Give back the spares claimed longer than [`SPARE_MAX_AGE`] ago: the jobs here turned
    /// long, and another worker may have a free slot for them.
    async fn release_stale_spares(&self) {
        let stale: Vec<Lease> = {
            let running = self.lock_running();
            let mut spare = self.lock_spare();
            let old = |l: &Lease| {
                running
                    .get(&l.job.id)
                    .is_some_and(|r| r.claimed_at.elapsed() >= SPARE_MAX_AGE)
            };
            let (stale, fresh): (VecDeque<Lease>, VecDeque<Lease>) =
                spare.drain(..).partition(|l| old(l));
            *spare = fresh;
            stale.into()
        };
        if !stale.is_empty() {
            debug!(worker = %self.id, count = stale.len(), "giving back spare leases");
        }
        self.release_each(stale).await;
    }

    async fn release_each(&self, leases: Vec<Lease>) {
        for lease in leases {
            let _ = self.store.release(lease.job.id, lease.token).await;
            self.finish(lease.job.id);
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long nothing has run here; None while a job runs.
    fn idle_for(&self) -> Option<Duration> {
        if !self.lock_running().is_empty() {
            return None;
        }
        Some(
            self.last_activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }

    async fn register(&self, state: WorkerState) -> Result<()> {
        let mut info = WorkerInfo::new(
            self.id.clone(),
            self.opts.queues.clone(),
            self.opts.concurrency,
        );
        info.image_ref = self.image_ref.clone();
        info.state = state;
        self.store.register_worker(info).await
    }

    /// Run `op` (a write that ends a job's lease) until it succeeds, fails for good
    /// (stale lease, bad input), or the lease would expire before another attempt: a store
    /// outage must not turn a finished job into one that runs twice.
    async fn until_lease_ends<T, F, Fut>(&self, id: JobId, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match op().await {
                Ok(v) => {
                    if attempt > 1 {
                        info!(worker = %self.id, job = %id, attempt, "{what} recorded after retries");
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            let transient = e.kind() == ErrorKind::Store || e.is_retryable();
            let expires_at = self.lock_running().get(&id).map(|r| r.expires_at);
            let fits = expires_at.is_some_and(|t| {
                chrono::Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default() < t
            });
            if !transient || !fits {
                return Err(e);
            }
            warn!(worker = %self.id, job = %id, error = %e, attempt, "{what} failed; retrying while the lease holds");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The group commit's outcome for a [`WorkerLease::complete_later`]: end the lease, or
    /// retry on the side (as `complete` does) while the store does not answer.
    fn completed_later(self: Arc<Self>, id: JobId, token: i64, outcome: Result<()>) {
        match outcome {
            Ok(()) => self.finish(id),
            Err(e) if e.kind() == ErrorKind::Store || e.is_retryable() => {
                crate::runtime::handle().spawn(async move {
                    let store = self.store.clone();
                    let r = self
                        .until_lease_ends(id, "complete", || store.complete_with(id, token, None))
                        .await;
                    if let Err(e) = r {
                        warn!(worker = %self.id, job = %id, error = %e, "completion not recorded; the job will run again");
                    }
                    self.finish(id);
                });
            }
            Err(e) => {
                warn!(worker = %self.id, job = %id, error = %e, "completion not recorded");
                self.finish(id);
            }
        }
    }

    fn finish(&self, id: JobId) {
        let ran = self.lock_running().remove(&id).and_then(|r| r.started);
        if let Some(started) = ran {
            self.record_run_time(started.elapsed());
        }
        self.touch();
    }

    /// Jobs that ran and wait for the group commit to record their completion.
    fn completing(&self) -> usize {
        self.lock_running()
            .values()
            .filter(|r| r.completing)
            .count()
    }

    /// Fold a job's run time (hand-out to outcome) into the moving average.
    fn record_run_time(&self, took: Duration) {
        let took = (took.as_micros() as u64).max(1);
        let _ = self
            .run_time_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 { took } else { (avg * 7 + took) / 8 })
            });
    }

    /// The recent run time of a job here; `None` before the first finished.
    fn run_time(&self) -> Option<Duration> {
        match self.run_time_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Suspend this machine (a warm pool member). The call may never answer before the
    /// machine freezes; when it is resumed the loop simply carries on.
    async fn suspend_self(&self) {
        let Some((api, app, machine)) = &self.self_api else {
            return;
        };
        info!(worker = %self.id, "idle; suspending this machine");
        let _ = self.register(WorkerState::Suspended).await;
        if let Err(e) = api.suspend_machine(app, machine, None).await {
            warn!(worker = %self.id, error = %e, "suspend failed; staying up");
        }
        // Resumed (or the suspend failed): count idleness from now, and say we are back.
        self.touch();
        let _ = self.register(WorkerState::Idle).await;
    }
}

/// Heartbeat the registration and extend the lease of every running job, every third of the
/// lease duration, until the worker closes.
async fn keep_alive(inner: std::sync::Weak<Inner>, closed: CancellationToken) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => i.lease_duration / 3,
            None => return,
        };
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.release_stale_spares().await;
        let jobs: Vec<(JobId, i64)> = inner
            .lock_running()
            .iter()
            .filter(|(_, r)| !r.lost)
            .map(|(id, r)| (*id, r.token))
            .collect();
        match inner
            .store
            .heartbeat_worker(&inner.id, jobs.len() as u32)
            .await
        {
            Ok(()) => {}
            // The scaler took it for dead (silent longer than a lease, e.g. through a store
            // outage) and deregistered it: say we are alive again.
            Err(e) if e.kind() == ErrorKind::NotFound && !closed.is_cancelled() => {
                let state = if jobs.is_empty() {
                    WorkerState::Idle
                } else {
                    WorkerState::Live
                };
                if let Err(e) = inner.register(state).await {
                    warn!(worker = %inner.id, error = %e, "re-registration failed");
                }
            }
            Err(e) => warn!(worker = %inner.id, error = %e, "heartbeat failed"),
        }
        for (id, token) in jobs {
            match inner.store.extend(id, token, inner.lease_duration).await {
                Ok(expires_at) => {
                    if let Some(r) = inner.lock_running().get_mut(&id) {
                        r.expires_at = expires_at;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    warn!(worker = %inner.id, job = %id, "lease lost (reaped); its result will be refused");
                    if let Some(r) = inner.lock_running().get_mut(&id) {
                        r.lost = true;
                    }
                }
                Err(e) => {
                    warn!(worker = %inner.id, job = %id, error = %e, "lease extension failed")
                }
            }
        }
    }
}

/// A claimed job, leased to this worker until completed, failed or released. Dropping it
/// without an outcome releases it.
pub struct WorkerLease {
    worker: Arc<Inner>,
    lease: Option<Lease>,
}

impl std::fmt::Debug for WorkerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLease")
            .field("job", &self.lease.as_ref().map(|l| l.job.id))
            .finish()
    }
}

impl WorkerLease {
    /// The job to run.
    pub fn job(&self) -> &Job {
        &self
            .lease
            .as_ref()
            .expect("a lease holds its job until consumed")
            .job
    }

    fn take(&mut self) -> Lease {
        self.lease.take().expect("a lease is consumed once")
    }

    /// The job succeeded.
    pub async fn complete(self) -> Result<()> {
        self.complete_with(None).await
    }

    /// The job succeeded and returned `result` (kept on the job for frameworks that read
    /// results back, such as Django Tasks). A store that does not answer is retried, with
    /// backoff, for as long as the lease holds (the keep-alive task goes on extending it
    /// meanwhile): giving up earlier would run the job again elsewhere once the store is back.
    pub async fn complete_with(mut self, result: Option<serde_json::Value>) -> Result<()> {
        let lease = self.take();
        let (id, token) = (lease.job.id, lease.token);
        let completions = self.worker.completions.clone();
        let r = self
            .worker
            .until_lease_ends(id, "complete", || {
                let (completions, result) = (completions.clone(), result.clone());
                async move {
                    // Through the group commit: answered after the statement that recorded
                    // it committed, as a lone `complete_with` would be.
                    let ended = || {
                        Error::store(format!(
                            "complete: job {id}: the worker's group commit ended"
                        ))
                        .with_job_id(id)
                    };
                    let (done, answer) = tokio::sync::oneshot::channel();
                    completions
                        .send(PendingComplete {
                            id,
                            token,
                            result,
                            answer: Answer::Waiting(done),
                        })
                        .map_err(|_| ended())?;
                    answer.await.map_err(|_| ended())?
                }
            })
            .await;
        self.worker.finish(lease.job.id);
        r
    }

    /// The job succeeded: recorded by the worker's next group commit while the caller goes on
    /// to its next job (Ruby's and Python's worker threads do), instead of waiting for the
    /// statement as [`WorkerLease::complete`] does. Until it commits, the lease stays held and
    /// extended, and counts as running (so [`Worker::stop`] waits for it). A store that does
    /// not answer is retried while the lease holds; an outcome that cannot be recorded (the
    /// lease was lost) is logged, and the job runs again elsewhere: at least once, never lost.
    pub fn complete_later(mut self) {
        let lease = self.take();
        let (id, token) = (lease.job.id, lease.token);
        // The run ended now, not when the statement commits.
        let started = self.worker.lock_running().get_mut(&id).and_then(|r| {
            r.completing = true;
            r.started.take()
        });
        if let Some(started) = started {
            self.worker.record_run_time(started.elapsed());
        }
        let pending = PendingComplete {
            id,
            token,
            result: None,
            answer: Answer::Detached(self.worker.clone()),
        };
        if let Err(unsent) = self.worker.completions.send(pending) {
            // The group commit has ended (the worker is dropped): record it on its own.
            let Answer::Detached(inner) = unsent.0.answer else {
                unreachable!("sent as detached")
            };
            let e = Error::store(format!(
                "complete: job {id}: the worker's group commit ended"
            ))
            .with_retryable(true);
            inner.completed_later(id, token, Err(e));
        }
    }

    /// The job raised: record `failure`; the retry policy decides between another attempt
    /// (with backoff) and the dead set. Retried through a store outage like
    /// [`WorkerLease::complete`].
    pub async fn fail(mut self, failure: Failure) -> Result<Outcome> {
        let lease = self.take();
        let (store, id, token) = (self.worker.store.clone(), lease.job.id, lease.token);
        let retry = self.worker.retry.clone();
        let r = self
            .worker
            .until_lease_ends(id, "fail", || {
                let (store, failure, retry) = (store.clone(), failure.clone(), retry.clone());
                async move { store.fail(id, token, failure, &retry).await }
            })
            .await;
        self.worker.finish(lease.job.id);
        r
    }

    /// Give the job back untouched (its attempt does not count): for a graceful stop.
    pub async fn release(mut self) -> Result<()> {
        let lease = self.take();
        let r = self.worker.store.release(lease.job.id, lease.token).await;
        self.worker.finish(lease.job.id);
        r.map(drop)
    }
}

impl Drop for WorkerLease {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let worker = self.worker.clone();
            // Not consumed (the language side lost it): hand it back rather than wait for the
            // lease to expire.
            crate::runtime::handle().spawn(async move {
                let _ = worker.store.release(lease.job.id, lease.token).await;
                worker.finish(lease.job.id);
            });
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}

/// What [`Slot::poll_next`] found.
#[derive(Debug)]
pub enum Poll {
    /// A job to run now.
    Job(Box<WorkerLease>),
    /// Nothing within the time given; call again (the claim in flight is kept).
    Pending,
    /// The worker is done: idle `wait` elapsed, or it is quiet/stopping. Leave.
    Done,
}

type NextTask = tokio::task::JoinHandle<Result<Option<WorkerLease>>>;

/// One language thread's (or task's) handle on a [`Worker`], for callers that cannot await:
/// Ruby and Python threads that must return to their interpreter every so often (signals,
/// Ctrl-C, `Thread#kill`), and Node's event loop.
///
/// [`Slot::poll_next`] waits at most `max_wait` for the next job. The claim runs as a task on
/// the runtime and survives an early return: the next call picks up the same task, so a job
/// claimed just after the caller gave up waiting is handed out then, never lost or left leased.
/// Dropping a slot with a claim in flight hands any job it claims straight back (tokio drops a
/// detached task's output, and an unconsumed [`WorkerLease`] releases itself).
pub struct Slot {
    worker: Worker,
    pending: tokio::sync::Mutex<Option<NextTask>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("worker", &self.worker.inner.id)
            .finish()
    }
}

impl Worker {
    /// A new [`Slot`] on this worker: one per language thread running jobs.
    pub fn slot(&self) -> Slot {
        Slot {
            worker: self.clone(),
            pending: tokio::sync::Mutex::new(None),
        }
    }
}

impl Slot {
    /// Wait up to `max_wait` for the next job (see [`Poll`]). Errors are the store's, after
    /// [`Worker::next`]'s own retries.
    pub async fn poll_next(&self, max_wait: Duration) -> Result<Poll> {
        let mut pending = self.pending.lock().await;
        let mut task = match pending.take() {
            Some(t) => t,
            None => {
                let w = self.worker.clone();
                crate::runtime::handle().spawn(async move { w.next().await })
            }
        };
        match tokio::time::timeout(max_wait, &mut task).await {
            Err(_elapsed) => {
                *pending = Some(task);
                Ok(Poll::Pending)
            }
            Ok(Err(join)) => Err(Error::new(
                ErrorKind::Shutdown,
                format!("the worker's claim task ended abnormally: {join}"),
            )),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(None))) => Ok(Poll::Done),
            Ok(Ok(Ok(Some(lease)))) => Ok(Poll::Job(Box::new(lease))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;
    use crate::store::StoreOptions;

    async fn sqlite_worker(concurrency: u32) -> (Worker, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let store = crate::store::open(&url, StoreOptions::default())
            .await
            .unwrap();
        let mut opts = WorkerOptions::new(["q"]);
        opts.concurrency = concurrency;
        opts.wait = Wait::Forever;
        opts.id = Some("w1".into());
        let config = Config::builder().build().unwrap();
        let worker = Worker::start(&config, store.clone(), None, opts)
            .await
            .unwrap();
        (worker, store, dir)
    }

    /// Three idle slots get three jobs from one claim (one statement: one `started_at`), the
    /// first in claim order to the claimer, the others to the slots waiting behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_slots_share_one_claim() {
        let (worker, store, _dir) = sqlite_worker(3).await;
        let slots: Vec<Slot> = (0..3).map(|_| worker.slot()).collect();
        for slot in &slots {
            assert!(matches!(
                slot.poll_next(Duration::from_millis(50)).await.unwrap(),
                Poll::Pending
            ));
        }
        let jobs = store
            .enqueue_many(
                (0..4)
                    .map(|i| NewJob::new("q", serde_json::json!(i)))
                    .collect(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        for slot in &slots {
            loop {
                match slot.poll_next(Duration::from_secs(10)).await.unwrap() {
                    Poll::Job(l) => {
                        got.push(*l);
                        break;
                    }
                    Poll::Pending => continue,
                    Poll::Done => panic!("done"),
                }
            }
        }
        let mut ids: Vec<_> = got.iter().map(|l| l.job().id).collect();
        ids.sort();
        assert_eq!(ids, jobs[..3].iter().map(|j| j.id).collect::<Vec<_>>());
        let started: std::collections::HashSet<_> =
            got.iter().map(|l| l.job().started_at).collect();
        assert_eq!(
            started.len(),
            1,
            "one claim for the three slots: {started:?}"
        );
        // The fourth job was not claimed: no slot was waiting for it.
        assert_eq!(
            store.get_job(jobs[3].id).await.unwrap().unwrap().state,
            crate::job::JobState::Ready
        );
        for l in got {
            l.complete().await.unwrap();
        }
        worker.stop(Duration::from_secs(5)).await;
    }

    /// Leases claimed for callers that gave up are given back by `stop`, untouched, without
    /// waiting for the stop deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_releases_spare_leases_at_once() {
        let (worker, store, _dir) = sqlite_worker(3).await;
        let job = store
            .enqueue(NewJob::new("q", serde_json::json!(1)))
            .await
            .unwrap();
        // A spare as `next` leaves one: claimed for a caller that then went away.
        let lease = store
            .claim(ClaimRequest::new(["q"], 1, "w1", Duration::from_secs(60)))
            .await
            .unwrap()
            .remove(0);
        let inner = &worker.inner;
        inner
            .lock_running()
            .insert(lease.job.id, Running::claimed(&lease));
        inner.lock_spare().push_back(lease);
        let t = Instant::now();
        worker.stop(Duration::from_secs(30)).await;
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let job = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (crate::job::JobState::Ready, 0));
    }

    /// Concurrent completes go through the group commit: each returns once its job is
    /// completed in the store, with its own result; a lease that another worker took over
    /// meanwhile gets its Conflict while the others complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_completes_each_get_their_own_outcome() {
        let (worker, store, _dir) = sqlite_worker(4).await;
        enqueue(&store, 4).await;
        let mut leases = Vec::new();
        while leases.len() < 4 {
            leases.push(worker.next().await.unwrap().expect("a job"));
        }
        // The last lease goes stale: its job is given back and claimed by another worker
        // (as after a reap).
        let stale = leases.pop().unwrap();
        let stale_id = stale.job().id;
        let token = store.get_job(stale_id).await.unwrap().unwrap().lease_token;
        store.release(stale_id, token).await.unwrap();
        let other = store
            .claim(ClaimRequest::new(["q"], 4, "w2", Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(other.len(), 1);
        let ids: Vec<JobId> = leases.iter().map(|l| l.job().id).collect();
        let completes = leases.into_iter().map(|l| {
            let id = l.job().id;
            tokio::spawn(l.complete_with(Some(serde_json::json!({ "id": id.0 }))))
        });
        let completes: Vec<_> = completes.collect();
        let e = stale.complete().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        for c in completes {
            c.await.unwrap().unwrap();
        }
        for id in ids {
            let job = store.get_job(id).await.unwrap().unwrap();
            assert_eq!(job.state, crate::job::JobState::Completed);
            assert_eq!(job.result, Some(serde_json::json!({ "id": id.0 })));
        }
        let job = store.get_job(stale_id).await.unwrap().unwrap();
        assert_eq!(
            job.state,
            crate::job::JobState::Running,
            "the other worker's now"
        );
        assert_eq!(job.lease_owner.as_deref(), Some("w2"));
        worker.stop(Duration::from_secs(5)).await;
    }

    #[test]
    fn short_jobs_are_claimed_ahead_and_long_ones_are_not() {
        assert_eq!(claim_ahead(5, None), 0, "nothing known yet");
        assert_eq!(
            claim_ahead(5, Some(Duration::from_micros(100))),
            PREFETCH_MAX
        );
        // 10 ms jobs on 5 slots: 25 start within the 50 ms horizon.
        assert_eq!(claim_ahead(5, Some(Duration::from_millis(10))), 25);
        assert_eq!(claim_ahead(1, Some(Duration::from_millis(30))), 1);
        assert_eq!(claim_ahead(5, Some(Duration::from_millis(300))), 0);
        assert_eq!(claim_ahead(64, Some(Duration::from_secs(60))), 0);
    }

    /// Once its jobs are known to be short, one claim takes spare leases for the next jobs (one
    /// statement for many jobs), the spares run in claim order, and every job completes once;
    /// after jobs turn long, a claim takes only what the waiting callers ask for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_of_short_jobs_claims_ahead_and_of_long_jobs_does_not() {
        let (worker, store, _dir) = sqlite_worker(1).await;
        let ids = enqueue(&store, 30).await;
        let mut ran = Vec::new();
        // The first claim knows nothing of the run time: one job.
        let first = worker.next().await.unwrap().expect("a job");
        assert_eq!(
            running_in_store(&store).await,
            1,
            "no spares before a run time is known"
        );
        ran.push(first.job().id);
        first.complete().await.unwrap();
        // The next claim takes spares: the job just ran in microseconds.
        let second = worker.next().await.unwrap().expect("a job");
        let leased = running_in_store(&store).await;
        assert!(leased > 1 && leased <= 1 + PREFETCH_MAX, "{leased} leased");
        ran.push(second.job().id);
        second.complete().await.unwrap();
        while ran.len() < 30 {
            let lease = worker.next().await.unwrap().expect("a job");
            ran.push(lease.job().id);
            lease.complete().await.unwrap();
        }
        assert_eq!(ran, ids, "every job once, in claim order");
        // Jobs that now take 300 ms each: the next claim takes one.
        worker.inner.run_time_us.store(300_000, Ordering::Relaxed);
        enqueue(&store, 5).await;
        let lease = worker.next().await.unwrap().expect("a job");
        assert_eq!(running_in_store(&store).await, 1, "no spares for long jobs");
        lease.complete().await.unwrap();
        worker.stop(Duration::from_secs(5)).await;
    }

    /// A spare claimed longer than SPARE_MAX_AGE ago goes back to the queue untouched (its
    /// attempt does not count); a fresh one stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_spares_are_given_back() {
        let (worker, store, _dir) = sqlite_worker(1).await;
        enqueue(&store, 2).await;
        let leases = store
            .claim(ClaimRequest::new(["q"], 2, "w1", Duration::from_secs(60)))
            .await
            .unwrap();
        let (old, fresh) = (leases[0].job.id, leases[1].job.id);
        let inner = &worker.inner;
        for lease in leases {
            let mut r = Running::claimed(&lease);
            if lease.job.id == old {
                r.claimed_at = Instant::now() - SPARE_MAX_AGE;
            }
            inner.lock_running().insert(lease.job.id, r);
            inner.lock_spare().push_back(lease);
        }
        inner.release_stale_spares().await;
        let old = store.get_job(old).await.unwrap().unwrap();
        assert_eq!((old.state, old.attempts), (crate::job::JobState::Ready, 0));
        let fresh = store.get_job(fresh).await.unwrap().unwrap();
        assert_eq!(fresh.state, crate::job::JobState::Running);
        let lease = worker.next().await.unwrap().expect("the fresh spare");
        assert_eq!(lease.job().id, fresh.id);
        lease.complete().await.unwrap();
        worker.stop(Duration::from_secs(5)).await;
    }

    /// `complete_later` returns at once; the group commit completes the job, and `stop` waits
    /// for it even with no grace left. A stale lease's completion is refused (and logged), the job stays with the
    /// worker that holds it now, and the lease still ends here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn complete_later_records_in_the_background_and_stop_waits_for_it() {
        let (worker, store, _dir) = sqlite_worker(2).await;
        enqueue(&store, 2).await;
        let (done, stale) = (
            worker.next().await.unwrap().expect("a job"),
            worker.next().await.unwrap().expect("a job"),
        );
        let (done_id, stale_id) = (done.job().id, stale.job().id);
        let token = store.get_job(stale_id).await.unwrap().unwrap().lease_token;
        store.release(stale_id, token).await.unwrap();
        let taken = store
            .claim(ClaimRequest::new(["q"], 1, "w2", Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(taken.len(), 1);
        done.complete_later();
        stale.complete_later();
        // No grace at all (a stop past its deadline): a job that ran is still recorded as
        // completed, not released to run again.
        worker.stop(Duration::ZERO).await;
        assert_eq!(worker.running(), 0);
        let job = store.get_job(done_id).await.unwrap().unwrap();
        assert_eq!(job.state, crate::job::JobState::Completed);
        let job = store.get_job(stale_id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.lease_owner.as_deref()),
            (crate::job::JobState::Running, Some("w2"))
        );
    }

    /// `n` jobs on queue "q", in one statement; their ids in claim order.
    async fn enqueue(store: &Arc<dyn Store>, n: i64) -> Vec<JobId> {
        let jobs = (0..n).map(|i| NewJob::new("q", serde_json::json!(i)));
        let stored = store.enqueue_many(jobs.collect()).await.unwrap();
        stored.iter().map(|j| j.id).collect()
    }

    async fn running_in_store(store: &Arc<dyn Store>) -> usize {
        store
            .stats()
            .await
            .unwrap()
            .iter()
            .map(|q| q.running as usize)
            .sum()
    }
}
