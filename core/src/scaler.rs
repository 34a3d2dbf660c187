//! The scaler: queue depth → machines to resume, start or create, within limits; plus the reaper.
//!
//! One control loop. Each tick (on every enqueue wake-up, and at least every
//! [`ScalerOptions::interval`]) it:
//! 1. takes the store's leader lock, so several web processes never boot past the limits;
//! 2. reaps expired leases (their workers died) back to ready;
//! 3. lists the app's worker machines (metadata `flyjobs_role=worker`);
//! 4. requeues the running jobs of OOM-killed machines on a machine with twice the memory
//!    ([`crate::placement::grown`], up to the queue's `max_memory_mb`);
//! 5. per group of jobs (queue, machine shape, release: a job's own image while it is pinned,
//!    see `pin_for`, else the current one): `wanted = ceil((ready + running) / concurrency)`
//!    when fewer machines of the group are active (created, starting or started), gets more
//!    (and keeps `min_machines` of the queue's default machines in existence: a suspended or
//!    stopped pool machine counts toward that floor, not toward jobs), cheapest first: resume a
//!    suspended pool machine, else start a stopped one, else create one of that size, image
//!    and region — never above the queue's `max_machines` (all its groups together) or the
//!    global `FLYJOBS_MAX_MACHINES`, and creates go through a token bucket that respects the
//!    Machines API's 1 request/s per action (burst 3);
//! 6. destroys machines that never registered within `boot_timeout`, and idle pool machines of
//!    an older release (release pinning: they would run old code).
//!
//! Scaling down is the workers' own business: each leaves after `wait` idle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, PoolMode};
use crate::error::{ErrorKind, Result};
use crate::fork::Template;
use crate::job::{Failure, Job, JobState};
use crate::machines::Machines;
use crate::machines::types::{
    CreateMachineRequest, ExitEvent, Guest, ListMachinesQuery, Machine, MachineEvent, MachineState,
};
use crate::placement::Shape;
use crate::retry::RetryPolicy;
use crate::store::boot_failures::BootFailure;
use crate::store::{JobFilter, Store, WorkerState};

/// Tuning of the control loop.
#[derive(Clone, Debug)]
pub struct ScalerOptions {
    /// Longest time between two ticks when nothing wakes the scaler.
    pub interval: Duration,
    /// Creates per second the token bucket allows (the API's limit is 1/s per action).
    pub create_rate: f64,
    /// Creates allowed in a burst.
    pub create_burst: u32,
    /// Consecutive boot failures of one release of a queue after which the scaler boots no
    /// more machines for it, until a new release or [`Store::clear_boot_failures`]
    /// (`flyjobs scaler --reset-failures`).
    pub boot_failure_limit: u32,
    /// Pause after a boot failure before the queue's next boot; doubles with each
    /// consecutive failure, up to [`ScalerOptions::boot_backoff_max`].
    pub boot_backoff: Duration,
    /// Longest pause between boots of a queue whose machines keep failing at boot.
    pub boot_backoff_max: Duration,
    /// Shortest time between two listings of the app's machines: ticks in between (wake-ups
    /// on enqueue) work on the scaler's cached view. The API allows 1 listing/s per app
    /// (burst 3), shared with every other caller (usage counting, dashboards, `flyjobs`).
    pub list_every: Duration,
    /// Longest time between two ticks while idle (no runnable or running job, nothing
    /// booting): the pause doubles from `interval` up to this. Enqueues wake the scaler at
    /// once and a scheduled job's run_at shortens the pause, so idling costs no latency; it
    /// keeps an idle web process from touching the database every `interval`.
    pub idle_interval: Duration,
}

impl Default for ScalerOptions {
    fn default() -> Self {
        ScalerOptions {
            interval: Duration::from_secs(2),
            create_rate: 1.0,
            create_burst: 3,
            boot_failure_limit: 5,
            boot_backoff: Duration::from_secs(2),
            boot_backoff_max: Duration::from_secs(300),
            list_every: Duration::from_secs(1),
            idle_interval: Duration::from_secs(60),
        }
    }
}

/// A token bucket: `take()` succeeds at most `rate` times a second on average, `burst` at once.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }
    /// Take one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
    /// Empty the bucket (after a 429: the API says we went too fast).
    pub fn drain(&mut self) {
        self.tokens = 0.0;
        self.at = Instant::now();
    }
}

/// How often the leader counts machine usage (cost, budgets).
const USAGE_EVERY: Duration = Duration::from_secs(10);
/// How often the leader prunes finished jobs past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// When the leader's chores last ran.
#[derive(Debug, Default)]
struct Chores {
    usage: Option<Instant>,
    prune: Option<Instant>,
}

/// What one tick did (returned for tests and the CLI's status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Whether this process held the leader lock (else it did nothing).
    pub leader: bool,
    /// Machines created, per queue.
    pub created: BTreeMap<String, u32>,
    /// Stopped machines started, per queue.
    pub started: BTreeMap<String, u32>,
    /// Suspended machines resumed, per queue.
    pub resumed: BTreeMap<String, u32>,
    /// Machines destroyed (boot timeout, old release).
    pub destroyed: u32,
    /// Leases reaped back to ready.
    pub reaped: u64,
    /// Registrations removed because their worker is dead (machine gone, or silent longer
    /// than a lease).
    pub deregistered: u32,
    /// Machines found to have failed at boot (exited or timed out before registering).
    pub boot_failures: u32,
    /// Queues whose boots wait (backoff after boot failures) or stopped (too many).
    pub boots_held: BTreeMap<String, String>,
    /// Whether the tick was cut short because the leader lock could not be kept.
    pub lost_leadership: bool,
    /// Running jobs found on an OOM-killed machine (requeued with more memory, or failed).
    pub oom_killed: u32,
    /// Whether the tick worked on the cached view of the machines (the listing was rate
    /// limited, failed, or was skipped because the last one is younger than `list_every`).
    pub stale_view: bool,
    /// Whether there was nothing to watch closely: no runnable or running job, no machine
    /// booting, nothing done. The next tick may come later (see `idle_interval`).
    pub idle: bool,
    /// The earliest run_at of a scheduled job (only looked up on idle ticks).
    pub next_scheduled_at: Option<DateTime<Utc>>,
}

/// The scaler. Cheap to share; run it with [`Scaler::spawn`] or tick it by hand.
pub struct Scaler {
    config: Config,
    store: Arc<dyn Store>,
    machines: Arc<dyn Machines>,
    app: String,
    template: Template,
    owner: String,
    options: ScalerOptions,
    bucket: tokio::sync::Mutex<TokenBucket>,
    /// Region index per queue: after a capacity error the next create tries the next region.
    region_cursor: std::sync::Mutex<HashMap<String, usize>>,
    /// Machines this scaler booted (created, started or resumed) that have not registered yet,
    /// by machine id: how each of them ends tells a boot failure from a healthy worker.
    booting: std::sync::Mutex<HashMap<String, Booting>>,
    /// Machines whose worker was seen registered since they last booted: one that stops
    /// heartbeating later (a store outage, a hang) is not a boot that timed out.
    registered_once: std::sync::Mutex<HashSet<String>>,
    /// (queue, release) pairs whose boots were stopped, so that it is logged once.
    halted: std::sync::Mutex<HashSet<(String, String)>>,
    /// Per machine that held a running job and is no longer active: whether its last exit
    /// was an OOM kill (asked once per machine).
    oom_checked: std::sync::Mutex<HashMap<String, bool>>,
    /// When machine usage was last counted and finished jobs last pruned (leader chores that
    /// need not run every tick).
    chores: std::sync::Mutex<Chores>,
    /// Whether a chores task is running (they run beside the ticks, never inside one: a
    /// rate-limited usage listing must not hold up boots).
    chores_running: Arc<std::sync::atomic::AtomicBool>,
    /// The scaler's view of the app's worker machines (see [`Fleet`]).
    fleet: std::sync::Mutex<Fleet>,
    /// Until when the leader lock is certainly ours (from the last acquisition or renewal).
    held_until: std::sync::Mutex<Option<Instant>>,
}

/// The scaler's view of the app's worker machines: the last listing, amended by the answers
/// to the scaler's own creates, starts and destroys. A tick whose listing is rate limited (or
/// skipped, see `list_every`) proceeds on it. What it can miss is what others did since the
/// listing: a worker suspending or stopping its machine, a machine exiting. Each of these
/// only makes the scaler boot less, never more, and the next listing corrects it. It is
/// trusted only while this scaler held the leader lock without a gap since that listing,
/// because another scaler could have booted machines in a gap.
#[derive(Debug, Default)]
struct Fleet {
    machines: HashMap<String, Noted>,
    /// When the last successful listing was asked for; `None`: no trusted view.
    listed: Option<Instant>,
    /// No listing before this (after a 429 or a failure).
    quiet_until: Option<Instant>,
    /// Consecutive listings that failed (the pause doubles with each).
    failures: u32,
}

#[derive(Debug)]
struct Noted {
    machine: Machine,
    at: Instant,
}

impl Fleet {
    /// A listing asked for at `asked` replaces the view, except for what the scaler's own
    /// answers taught it after `asked` (a listing may not show a create made meanwhile).
    fn replace(&mut self, asked: Instant, listed: Vec<Machine>) {
        let mut machines: HashMap<String, Noted> = listed
            .into_iter()
            .map(|m| {
                (
                    m.id.clone(),
                    Noted {
                        machine: m,
                        at: asked,
                    },
                )
            })
            .collect();
        for (id, n) in self.machines.drain() {
            if n.at > asked {
                machines.insert(id, n);
            }
        }
        self.machines = machines;
        self.listed = Some(asked);
        self.quiet_until = None;
        self.failures = 0;
    }

    fn note(&mut self, machine: Machine) {
        self.machines.insert(
            machine.id.clone(),
            Noted {
                machine,
                at: Instant::now(),
            },
        );
    }

    fn set_state(&mut self, id: &str, state: MachineState) {
        if let Some(n) = self.machines.get_mut(id) {
            n.machine.state = Some(state);
            n.machine.updated_at = Some(Utc::now().to_rfc3339());
            n.at = Instant::now();
        }
    }

    fn forget(&mut self, id: &str) {
        self.machines.remove(id);
    }

    fn snapshot(&self) -> Vec<Machine> {
        let mut v: Vec<Machine> = self.machines.values().map(|n| n.machine.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Pause listings after a failure: 1 s, doubling, up to 30 s.
    fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let pause = Duration::from_secs(1u64 << (self.failures - 1).min(5)).min(MAX_LIST_PAUSE);
        self.quiet_until = Some(now + pause);
    }
}

/// Longest pause between listings after failures.
const MAX_LIST_PAUSE: Duration = Duration::from_secs(30);

/// The machines a tick works on.
struct View {
    machines: Vec<Machine>,
    /// Listed by this tick (else the cached view).
    fresh: bool,
}

#[derive(Clone, Debug)]
struct Booting {
    queue: String,
    release: String,
}

/// Whether a queue may boot machines now, given its recent boot failures.
#[derive(Clone, Debug, PartialEq, Eq)]
enum BootGate {
    Open,
    /// After `failures` consecutive boot failures the backoff is over: one machine may boot,
    /// to see whether the release boots now.
    Probe {
        failures: u32,
    },
    /// Backing off after `failures` consecutive boot failures.
    Wait {
        failures: u32,
        until: chrono::DateTime<Utc>,
    },
    /// Stopped after `failures` consecutive boot failures of the current release.
    Halted {
        failures: u32,
    },
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaler")
            .field("app", &self.app)
            .field("owner", &self.owner)
            .finish()
    }
}

/// Handle of a running scaler task.
#[derive(Debug)]
pub struct ScalerHandle {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ScalerHandle {
    /// Stop the loop and wait for it.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl Scaler {
    /// A scaler that boots workers of `template` in `app`.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        machines: Arc<dyn Machines>,
        app: String,
        template: Template,
        options: ScalerOptions,
    ) -> Scaler {
        // Unique per scaler, not per process: two scalers in one process must not both lead.
        let owner = format!(
            "{}-{}-{:08x}",
            config.machine_id().unwrap_or("local"),
            std::process::id(),
            rand::random::<u32>()
        );
        Scaler {
            bucket: tokio::sync::Mutex::new(TokenBucket::new(
                options.create_rate,
                options.create_burst,
            )),
            config,
            store,
            machines,
            app,
            template,
            owner,
            options,
            region_cursor: std::sync::Mutex::new(HashMap::new()),
            booting: std::sync::Mutex::new(HashMap::new()),
            registered_once: std::sync::Mutex::new(HashSet::new()),
            halted: std::sync::Mutex::new(HashSet::new()),
            oom_checked: std::sync::Mutex::new(HashMap::new()),
            chores: std::sync::Mutex::new(Chores::default()),
            chores_running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            fleet: std::sync::Mutex::new(Fleet::default()),
            held_until: std::sync::Mutex::new(None),
        }
    }

    /// How long the leader lock is taken for: renewed every quarter of it while a tick works.
    fn leader_ttl(&self) -> Duration {
        (self.options.interval * 5).max(Duration::from_millis(500))
    }

    /// Run the loop in the background until the handle is stopped.
    pub fn spawn(self: Arc<Self>) -> ScalerHandle {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = crate::runtime::handle().spawn(async move {
            info!(app = %self.app, "scaler started");
            let mut wakeups = self.store.subscribe();
            // Consecutive idle ticks: the pause doubles with each.
            let mut idle_streak: u32 = 0;
            loop {
                // Hold the lock over the pause an idle tick would be followed by, so that the
                // cached view stays trusted (no gap in which another scaler could act).
                let hold = self.idle_pause(idle_streak + 1);
                let pause = match self.tick_holding(hold).await {
                    Ok(r) => {
                        if r != (TickReport {
                            leader: r.leader,
                            idle: r.idle,
                            stale_view: r.stale_view,
                            next_scheduled_at: r.next_scheduled_at,
                            ..TickReport::default()
                        }) {
                            debug!(?r, "scaler tick");
                        }
                        if !r.leader {
                            // Another scaler leads: be ready to take over about when its lock
                            // would run out, not sooner.
                            idle_streak = 0;
                            self.leader_ttl().min(self.options.idle_interval)
                        } else if r.idle {
                            idle_streak = idle_streak.saturating_add(1);
                            let mut pause = self.idle_pause(idle_streak);
                            if let Some(due) = r.next_scheduled_at {
                                let until_due = (due - Utc::now()).to_std().unwrap_or_default();
                                pause = pause.min(until_due.max(Duration::from_millis(10)));
                            }
                            pause
                        } else {
                            idle_streak = 0;
                            self.options.interval
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "scaler tick failed");
                        idle_streak = 0;
                        self.options.interval
                    }
                };
                tokio::select! {
                    () = c.cancelled() => break,
                    _ = wakeups.wait(pause) => {}
                }
            }
            let _ = self.store.release_leader("scaler", &self.owner).await;
        });
        ScalerHandle { cancel, task }
    }

    /// The pause after the `streak`-th idle tick in a row: `interval` doubled per idle tick,
    /// up to `idle_interval`.
    fn idle_pause(&self, streak: u32) -> Duration {
        self.options
            .interval
            .saturating_mul(1u32 << streak.min(16))
            .min(self.options.idle_interval.max(self.options.interval))
    }

    /// One pass of the control loop.
    ///
    /// Everything a tick does is done under the store's leader lock, and only while it is
    /// held: a keeper renews the lock every quarter of its TTL, and when it cannot (another
    /// scaler took it, or the store does not answer) the tick is abandoned before the lock
    /// runs out, in-flight creates included. Two scalers therefore never act at once, however
    /// slowly the Machines API answers.
    pub async fn tick(&self) -> Result<TickReport> {
        self.tick_holding(Duration::ZERO).await
    }

    /// A tick that takes the leader lock for `extra` longer than it needs (the pause that
    /// follows it).
    async fn tick_holding(&self, extra: Duration) -> Result<TickReport> {
        let mut report = TickReport::default();
        let ttl = self.leader_ttl();
        // Measured before asking: the lock is certainly ours until then + ttl, not longer.
        let asked = Instant::now();
        let held_before = *self.held_until.lock().unwrap_or_else(|p| p.into_inner());
        if !self
            .store
            .try_acquire_leader("scaler", &self.owner, ttl + extra)
            .await?
        {
            self.lost_lock();
            return Ok(report);
        }
        if held_before.is_none_or(|h| asked >= h) {
            // The lock lapsed since we last held it: another scaler may have acted meanwhile.
            self.fleet_mut().listed = None;
        }
        self.set_held_until(asked + ttl + extra);
        report.leader = true;
        let outcome = tokio::select! {
            r = self.lead(&mut report) => Some(r),
            () = self.keep_leadership(asked, ttl + extra) => None,
        };
        match outcome {
            Some(r) => r.map(|()| report),
            None => {
                warn!(owner = %self.owner, "scaler lost the leader lock mid-tick; stopped acting");
                self.lost_lock();
                report.lost_leadership = true;
                Ok(report)
            }
        }
    }

    fn fleet_mut(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_held_until(&self, until: Instant) {
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// Not (or no longer certainly) the leader: the cached view is no longer trusted.
    fn lost_lock(&self) {
        *self.held_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.fleet_mut().listed = None;
    }

    /// Renew the leader lock until it cannot be confirmed; returns (cutting the tick short)
    /// a safe margin before the last confirmed hold runs out.
    async fn keep_leadership(&self, asked: Instant, ttl: Duration) {
        let margin = ttl / 4;
        let mut held_until = asked + ttl;
        loop {
            let fence = tokio::time::Instant::from_std(held_until - margin);
            tokio::select! {
                () = tokio::time::sleep_until(fence) => return,
                () = tokio::time::sleep(ttl / 4) => {}
            }
            let asked = Instant::now();
            match tokio::time::timeout_at(
                fence,
                self.store.try_acquire_leader("scaler", &self.owner, ttl),
            )
            .await
            {
                Ok(Ok(true)) => {
                    held_until = asked + ttl;
                    self.set_held_until(held_until);
                }
                Ok(Ok(false)) => return,
                Ok(Err(e)) => warn!(error = %e, "could not renew the scaler's leader lock"),
                Err(_) => return,
            }
        }
    }

    /// The app's worker machines: listed when the last listing is older than `list_every`
    /// and the API is not pushing back, else the cached view. Without a trusted view (first
    /// tick, or the leader lock lapsed) the listing is retried as any call is: acting on a
    /// view that may miss another scaler's machines could boot past the limits.
    async fn view(&self) -> Result<View> {
        let now = Instant::now();
        let (trusted, due) = {
            let f = self.fleet_mut();
            let due = f.quiet_until.is_none_or(|t| now >= t)
                && f.listed
                    .is_none_or(|t| now.duration_since(t) >= self.options.list_every);
            (f.listed.is_some(), due)
        };
        if trusted && !due {
            return Ok(View {
                machines: self.fleet_mut().snapshot(),
                fresh: false,
            });
        }
        let query = ListMachinesQuery {
            metadata: BTreeMap::from([("flyjobs_role".to_string(), "worker".to_string())]),
            ..ListMachinesQuery::default()
        };
        let listed = if trusted {
            self.machines.list_machines_once(&self.app, &query).await
        } else {
            self.machines.list_machines(&self.app, &query).await
        };
        let mut fleet = self.fleet_mut();
        match listed {
            Ok(list) => {
                fleet.replace(now, list);
                Ok(View {
                    machines: fleet.snapshot(),
                    fresh: true,
                })
            }
            Err(e) if fleet.listed.is_some() => {
                fleet.failed(now);
                if e.kind() == ErrorKind::RateLimited {
                    debug!(error = %e, "machine listing rate limited; working on the cached view");
                } else {
                    warn!(error = %e, "could not list machines; working on the cached view");
                }
                Ok(View {
                    machines: fleet.snapshot(),
                    fresh: false,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The body of a tick, run while the leader lock is held.
    async fn lead(&self, report: &mut TickReport) -> Result<()> {
        let reaped = self.store.reap_expired(Utc::now()).await?;
        report.reaped = reaped.retried + reaped.dead;
        self.start_chores();
        let spent = self.spent_today().await?;

        let view = self.view().await?;
        report.stale_view = !view.fresh;
        let machines = view.machines;
        let workers = self.store.workers().await?;
        let registered: HashSet<&str> = workers.iter().map(|w| w.id.as_str()).collect();

        // Dead registrations: a worker whose machine stopped, failed or is gone, or that has
        // not heartbeaten for a whole lease (it heartbeats every third of one), is dead. Its
        // leases expire and are reaped, so its jobs run again elsewhere. A suspended pool
        // member does not heartbeat; it is dead only when its machine is gone.
        let by_id: HashMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
        let now = Utc::now();
        let silent_since =
            now - chrono::Duration::from_std(self.config.lease_duration()).unwrap_or_default();
        for w in &workers {
            let machine = by_id.get(w.id.as_str());
            // Machine states only from a fresh listing: the cached view may lag behind.
            let down = view.fresh
                && machine
                    .is_some_and(|m| matches!(m.state_str(), "stopped" | "destroyed" | "failed"));
            let silent = w.state != WorkerState::Suspended && w.last_heartbeat_at < silent_since;
            let vanished = view.fresh && w.state == WorkerState::Suspended && machine.is_none();
            if down || silent || vanished {
                info!(worker = %w.id, down, silent, vanished, last_heartbeat = %w.last_heartbeat_at, "worker is dead; deregistering");
                match self.store.deregister_worker(&w.id).await {
                    Ok(()) => report.deregistered += 1,
                    Err(e) => warn!(worker = %w.id, error = %e, "deregister failed"),
                }
            }
        }

        // How the machines booted since the last tick ended: registered, or failed at boot.
        self.check_boots(&machines, &registered, report).await;
        let registered_once: HashSet<String> = {
            let mut once = self
                .registered_once
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            once.extend(registered.iter().map(|id| id.to_string()));
            once.retain(|id| by_id.contains_key(id.as_str()));
            once.clone()
        };

        // Boot timeout and release pinning.
        for m in &machines {
            // Since the last state change: a pool machine started again boots anew.
            let age = m
                .updated_at
                .as_deref()
                .or(m.created_at.as_deref())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| (now - t.with_timezone(&Utc)).to_std().unwrap_or_default())
                .unwrap_or_default();
            let booting = matches!(m.state_str(), "created" | "starting" | "started")
                && !registered.contains(m.id.as_str())
                && !registered_once.contains(&m.id);
            let old_release = matches!(m.state_str(), "stopped" | "suspended")
                && m.metadata_value("flyjobs_release") != Some(self.template.release.as_str());
            let timed_out = booting && age > self.config.boot_timeout();
            // Destroys only on a fresh listing: a cached state may be one the machine left.
            if view.fresh && (timed_out || old_release) {
                info!(machine = %m.id, state = m.state_str(), old_release, "destroying worker machine");
                match self
                    .machines
                    .destroy_machine(&self.app, &m.id, true, None)
                    .await
                {
                    Ok(()) => {
                        self.fleet_mut().forget(&m.id);
                        report.destroyed += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => self.fleet_mut().forget(&m.id),
                    Err(e) => warn!(machine = %m.id, error = %e, "destroy failed"),
                }
                if timed_out {
                    let tracked = self.lock_booting().remove(&m.id);
                    let queue = tracked
                        .as_ref()
                        .map(|b| b.queue.clone())
                        .or_else(|| m.metadata_value("flyjobs_queue").map(str::to_string));
                    let release = tracked
                        .map(|b| b.release)
                        .or_else(|| m.metadata_value("flyjobs_release").map(str::to_string));
                    if let (Some(queue), Some(release)) = (queue, release) {
                        let reason = format!(
                            "did not register within boot_timeout ({:?})",
                            self.config.boot_timeout()
                        );
                        self.record_boot_failure(&queue, &release, &m.id, None, reason)
                            .await;
                        report.boot_failures += 1;
                    }
                }
            }
        }

        let running = self
            .store
            .list_jobs(JobFilter {
                state: Some(JobState::Running),
                limit: RUNNING_SCANNED,
                ..JobFilter::default()
            })
            .await?;
        self.escalate_ooms(&running, &by_id, report).await;
        crate::cost::enforce_max_cost(
            &self.config,
            self.store.as_ref(),
            self.machines.as_ref(),
            &self.app,
            &running,
            &by_id,
            now,
        )
        .await;

        let gates = self.boot_gates().await;
        let demand = self.demand(&running, now).await?;

        let mut total_active = machines.iter().filter(|m| is_active(m)).count() as u32;
        let mut queue_active: HashMap<String, u32> = HashMap::new();
        for m in machines.iter().filter(|m| is_active(m)) {
            if let Some(q) = m.metadata_value("flyjobs_queue") {
                *queue_active.entry(q.to_string()).or_default() += 1;
            }
        }
        // Machines booted this tick per group, pool machines woken, queues probed.
        let mut booted: HashMap<Group, u32> = HashMap::new();
        let mut woken: HashSet<String> = HashSet::new();
        let mut probed: HashSet<String> = HashSet::new();
        // Two passes: first every group of another shape or a pinned release gets one machine
        // (none waits behind the default machines' backlog of its queue), then all by demand.
        for first_pass in [true, false] {
            for (group, &jobs) in &demand {
                let queue = group.queue.clone();
                let settings = self.config.queue(&queue);
                if let Some(why) = settings
                    .budget
                    .and_then(|b| b.exhausted(&spent.get(&queue).copied().unwrap_or_default()))
                {
                    report.boots_held.insert(queue.clone(), why);
                    continue;
                }
                let mut probe = false;
                match gates.get(&queue) {
                    None | Some(BootGate::Open) => {}
                    Some(BootGate::Probe { .. }) => probe = true,
                    Some(BootGate::Wait { failures, until }) => {
                        report.boots_held.insert(
                            queue.clone(),
                            format!("backing off after {failures} boot failures until {until}"),
                        );
                        continue;
                    }
                    Some(BootGate::Halted { failures }) => {
                        report.boots_held.insert(
                            queue.clone(),
                            format!("stopped after {failures} consecutive boot failures"),
                        );
                        continue;
                    }
                }
                let mine: Vec<&Machine> = machines
                    .iter()
                    .filter(|m| group.matches(m, &self.template.release))
                    .collect();
                let active = mine.iter().filter(|m| is_active(m)).count() as u32
                    + booted.get(group).copied().unwrap_or(0);
                let need = u32::try_from(jobs.div_ceil(u64::from(settings.concurrency)))
                    .unwrap_or(u32::MAX);
                // min_machines keeps the queue's default machines warm; other shapes and pinned
                // releases come and go with their jobs.
                let floor = if group.is_default(&self.template.release) {
                    settings.min_machines
                } else {
                    0
                };
                let mut for_jobs = need.min(settings.max_machines);
                if first_pass {
                    // Only the other shapes and pinned releases: the default group grows in
                    // the second pass, after each of them has its first machine.
                    if group.is_default(&self.template.release) {
                        continue;
                    }
                    for_jobs = for_jobs.min(1);
                }
                // Jobs need running machines; the warm pool only needs machines that exist.
                // A suspended or stopped pool machine is the warm pool (its worker suspended
                // or stopped it after `wait` idle): booting it again for min_machines alone
                // would flap it up and down for as long as the queue stays empty.
                let warm = mine
                    .iter()
                    .filter(|m| is_warm(m) && !woken.contains(&m.id))
                    .count() as u32;
                let for_floor = floor
                    .min(settings.max_machines)
                    .saturating_sub(active + warm);
                let mut missing = for_jobs.saturating_sub(active).max(for_floor);
                if missing == 0 {
                    continue;
                }
                // max_machines bounds the queue as a whole, whatever the shapes.
                let of_queue = queue_active.get(&queue).copied().unwrap_or(0);
                missing = missing
                    .min(settings.max_machines.saturating_sub(of_queue))
                    .min(self.config.max_machines().saturating_sub(total_active));
                if probe {
                    // Its machines failed at boot lately: one at a time until one registers.
                    if probed.contains(&queue) {
                        continue;
                    }
                    missing = missing.min(1);
                }
                if missing == 0 {
                    debug!(queue, shape = group.shape, "max_machines reached");
                    continue;
                }
                // Cheapest first: resume, start, create. Only machines of this group.
                let mut pool: Vec<&Machine> = mine
                    .iter()
                    .filter(|m| m.state_str() == "suspended" && !woken.contains(&m.id))
                    .copied()
                    .collect();
                pool.extend(
                    mine.iter()
                        .filter(|m| m.state_str() == "stopped" && !woken.contains(&m.id))
                        .copied(),
                );
                for m in pool {
                    if missing == 0 {
                        break;
                    }
                    let resumed = m.state_str() == "suspended";
                    match self.machines.start_machine(&self.app, &m.id, None).await {
                        Ok(_) => {
                            self.fleet_mut().set_state(&m.id, MachineState::Starting);
                            self.track(&m.id, &queue);
                            woken.insert(m.id.clone());
                            *booted.entry(group.clone()).or_default() += 1;
                            if probe {
                                probed.insert(queue.clone());
                            }
                            missing -= 1;
                            total_active += 1;
                            *queue_active.entry(queue.clone()).or_default() += 1;
                            let counter = if resumed {
                                &mut report.resumed
                            } else {
                                &mut report.started
                            };
                            *counter.entry(queue.clone()).or_default() += 1;
                            info!(queue, machine = %m.id, resumed, "woke pool machine");
                        }
                        Err(e) => {
                            if e.kind() == ErrorKind::NotFound {
                                // Gone since the view was taken (destroyed by someone else).
                                self.fleet_mut().forget(&m.id);
                            }
                            warn!(queue, machine = %m.id, error = %e, "could not wake pool machine")
                        }
                    }
                }
                while missing > 0 {
                    if !self.bucket.lock().await.take() {
                        debug!(queue, "create rate limit: waiting for the next tick");
                        break;
                    }
                    match self.create(group).await {
                        Ok(m) => {
                            self.track(&m.id, &queue);
                            self.fleet_mut().note(m.clone());
                            *booted.entry(group.clone()).or_default() += 1;
                            if probe {
                                probed.insert(queue.clone());
                            }
                            missing -= 1;
                            total_active += 1;
                            *queue_active.entry(queue.clone()).or_default() += 1;
                            *report.created.entry(queue.clone()).or_default() += 1;
                            info!(queue, shape = group.shape, release = group.release, machine = %m.id, "created worker machine");
                        }
                        Err(e) => {
                            if e.kind() == ErrorKind::RateLimited {
                                self.bucket.lock().await.drain();
                            }
                            warn!(queue, error = %e, "create failed; will retry");
                            break;
                        }
                    }
                }
            }
        }
        report.idle = demand.values().all(|&jobs| jobs == 0)
            && self.lock_booting().is_empty()
            && report.created.is_empty()
            && report.started.is_empty()
            && report.resumed.is_empty()
            && report.destroyed == 0
            && report.reaped == 0
            && report.deregistered == 0
            && report.boot_failures == 0
            && report.oom_killed == 0;
        if report.idle {
            // The next tick may be far off: not later than the next scheduled job is due.
            report.next_scheduled_at = self
                .store
                .stats()
                .await?
                .iter()
                .filter_map(|q| q.next_scheduled_at)
                .min();
        }
        Ok(())
    }

    /// The release (image) a job runs on: its own while it is pinned (enqueued by another
    /// release less than `pin_for` ago), else the current one.
    fn release_for(
        &self,
        image_ref: Option<&str>,
        enqueued: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> String {
        let current = self.template.release.as_str();
        let pinned_since =
            now - chrono::Duration::from_std(self.config.pin_for()).unwrap_or_default();
        match image_ref {
            Some(image) if image != current && enqueued >= pinned_since => image.to_string(),
            _ => current.to_string(),
        }
    }

    /// Jobs (runnable + running) per machine group. A group of runnable jobs counts as
    /// pinned only when even its oldest job is pinned: the current release's workers take the
    /// older ones first, then the group's machines boot for the rest.
    async fn demand(&self, running: &[Job], now: DateTime<Utc>) -> Result<BTreeMap<Group, u64>> {
        let mut demand: BTreeMap<Group, u64> = BTreeMap::new();
        for d in self.store.ready_shapes().await? {
            let release = self.release_for(d.image_ref.as_deref(), d.oldest_created_at, now);
            *demand
                .entry(Group {
                    queue: d.queue,
                    shape: d.shape,
                    release,
                })
                .or_default() += d.ready;
        }
        for j in running {
            let release = self.release_for(j.image_ref.as_deref(), j.created_at, now);
            *demand
                .entry(Group {
                    queue: j.queue.clone(),
                    shape: j.shape.clone(),
                    release,
                })
                .or_default() += 1;
        }
        for (name, settings) in self.config.queues() {
            if settings.min_machines > 0 {
                demand
                    .entry(Group {
                        queue: name.clone(),
                        shape: String::new(),
                        release: self.template.release.clone(),
                    })
                    .or_default();
            }
        }
        Ok(demand)
    }

    /// Jobs whose machine was OOM-killed go back to the queue at once, on a machine with
    /// twice the memory (up to the queue's `max_memory_mb`); past that, the normal retry
    /// policy decides. Looked for among running jobs whose worker's machine is no longer
    /// active, before their lease runs out (they would come back as lost leases otherwise).
    async fn escalate_ooms(
        &self,
        running: &[Job],
        by_id: &HashMap<&str, &Machine>,
        report: &mut TickReport,
    ) {
        let mut seen = self
            .oom_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let owners: HashSet<&str> = running
            .iter()
            .filter_map(|j| j.lease_owner.as_deref())
            .collect();
        seen.retain(|id, _| owners.contains(id.as_str()));
        for job in running {
            let Some(owner) = job.lease_owner.as_deref() else {
                continue;
            };
            if by_id
                .get(owner)
                .is_some_and(|m| is_active(m) || m.state_str() == "suspended")
            {
                continue;
            }
            let oom = match seen.get(owner) {
                Some(known) => *known,
                None => {
                    let known = match self
                        .machines
                        .machine_events(&self.app, owner, Some(20))
                        .await
                    {
                        Ok(events) => events
                            .iter()
                            .find(|e| e.kind.as_deref() == Some("exit"))
                            .and_then(MachineEvent::exit_event)
                            .is_some_and(|e| e.oom_killed == Some(true)),
                        // Not a machine (a worker run by hand) or long gone: never an OOM we
                        // can see; its lease decides.
                        Err(e) if e.kind() == ErrorKind::NotFound => false,
                        Err(e) => {
                            debug!(machine = owner, error = %e, "exit events unavailable");
                            continue;
                        }
                    };
                    seen.insert(owner.to_string(), known);
                    known
                }
            };
            if oom {
                self.escalate_oom(job).await;
                report.oom_killed += 1;
            }
        }
        *self.oom_checked.lock().unwrap_or_else(|p| p.into_inner()) = seen;
    }

    async fn escalate_oom(&self, job: &Job) {
        let settings = self.config.queue(&job.queue);
        let shape = Shape::parse(&job.shape).unwrap_or_default();
        let (size, _) = shape.resolve(&settings.size, &settings.regions);
        let max_attempts = job.max_attempts.unwrap_or(settings.max_attempts);
        let grown = crate::placement::grown(&size, settings.max_memory_mb)
            .filter(|_| job.attempts < max_attempts);
        let r = match grown {
            Some(next) => {
                let failure = Failure::new(
                    OUT_OF_MEMORY,
                    format!(
                        "oom_killed at {} MB, retried at {} MB",
                        size.memory_mb, next.memory_mb
                    ),
                );
                let key = Shape {
                    size: Some(next),
                    regions: shape.regions,
                }
                .key();
                info!(job = %job.id, queue = job.queue, shape = key, "{}", failure.message);
                self.store
                    .requeue_on_shape(job.id, job.lease_token, &key, &failure)
                    .await
                    .map(|_| ())
            }
            None => {
                let failure = Failure::new(
                    OUT_OF_MEMORY,
                    format!(
                        "oom_killed at {} MB (max_memory_mb {}): retried on the same size",
                        size.memory_mb, settings.max_memory_mb
                    ),
                );
                info!(job = %job.id, queue = job.queue, "{}", failure.message);
                self.store
                    .fail(job.id, job.lease_token, failure, &RetryPolicy::default())
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = r {
            // A lease that moved on (reaped, completed) is not ours to change any more.
            debug!(job = %job.id, error = %e, "OOM-killed job not requeued");
        }
    }

    fn lock_booting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Booting>> {
        self.booting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a machine booted for `queue`, until it registers or ends.
    fn track(&self, id: &str, queue: &str) {
        // Started or resumed again: it boots anew.
        self.registered_once
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.lock_booting().insert(
            id.to_string(),
            Booting {
                queue: queue.to_string(),
                release: self.template.release.clone(),
            },
        );
    }

    /// Settle the machines booted earlier: registered (a healthy boot: the queue's boot
    /// failures are cleared), still booting (left alone; the boot timeout covers a hang), or
    /// ended without registering. An exit 0 is a worker that found nothing to do; any other
    /// end is a boot failure, recorded with its exit code and the machine's last log lines.
    async fn check_boots(
        &self,
        machines: &[Machine],
        registered: &HashSet<&str>,
        report: &mut TickReport,
    ) {
        let by_id: HashMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
        let tracked: Vec<(String, Booting)> = self
            .lock_booting()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut healthy: HashSet<String> = HashSet::new();
        for (id, boot) in tracked {
            if registered.contains(id.as_str()) {
                self.lock_booting().remove(&id);
                healthy.insert(boot.queue);
                continue;
            }
            let mut state = by_id.get(id.as_str()).map(|m| m.state_str().to_string());
            if state.is_none() {
                // Not listed (yet: a list may lag behind a create on Fly): ask for it.
                match self.machines.get_machine(&self.app, &id).await {
                    Ok(m) => state = Some(m.state_str().to_string()),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(_) => continue,
                }
            }
            if matches!(
                state.as_deref(),
                Some("created" | "starting" | "started" | "replacing" | "updating" | "suspended")
            ) {
                continue;
            }
            self.lock_booting().remove(&id);
            let exit = self.last_exit(&id).await;
            match exit {
                Some(e) if e.exit_code == Some(0) && e.signal.is_none_or(|s| s <= 0) => {
                    healthy.insert(boot.queue);
                }
                Some(e) => {
                    let reason = match (e.exit_code, e.signal.filter(|s| *s > 0)) {
                        (_, Some(sig)) => format!("exited by signal {sig} before registering"),
                        (Some(code), None) => format!("exited with code {code} before registering"),
                        (None, None) => "exited before registering".to_string(),
                    };
                    self.record_boot_failure(&boot.queue, &boot.release, &id, e.exit_code, reason)
                        .await;
                    report.boot_failures += 1;
                }
                None => {
                    debug!(machine = %id, "booted machine ended without a recorded exit; not counted");
                }
            }
        }
        for queue in healthy {
            if let Err(e) = self.store.clear_boot_failures(Some(&queue)).await {
                warn!(queue, error = %e, "could not clear the queue's boot failures");
            }
            self.halted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(q, _)| *q != queue);
        }
    }

    /// The newest exit event of a machine, if the API still knows it.
    async fn last_exit(&self, id: &str) -> Option<ExitEvent> {
        let events = self
            .machines
            .machine_events(&self.app, id, Some(20))
            .await
            .ok()?;
        events
            .iter()
            .find(|e| e.kind.as_deref() == Some("exit"))
            .and_then(MachineEvent::exit_event)
    }

    async fn record_boot_failure(
        &self,
        queue: &str,
        release: &str,
        id: &str,
        exit_code: Option<i32>,
        reason: String,
    ) {
        let log_tail = match self.machines.machine_logs(&self.app, id).await {
            Ok(Some(log)) => tail_lines(&log, BOOT_LOG_LINES, BOOT_LOG_CHARS),
            Ok(None) => String::new(),
            Err(e) => format!("(logs unavailable: {e})"),
        };
        warn!(queue, release, machine = %id, exit_code, reason = %reason, log = %log_tail, "worker machine failed at boot");
        let failure = BootFailure {
            queue: queue.to_string(),
            release: release.to_string(),
            machine_id: id.to_string(),
            exit_code,
            reason,
            log_tail,
            at: Utc::now(),
            cleared: false,
        };
        if let Err(e) = self.store.record_boot_failure(failure).await {
            warn!(queue, error = %e, "could not record the boot failure");
        }
    }

    /// Leader chores that need not run every tick: count machine usage (what budgets and the
    /// dashboard's cost read) every [`USAGE_EVERY`], prune finished jobs past their retention
    /// every [`PRUNE_EVERY`]. They run in a task of their own, one at a time: a usage listing
    /// that the API rate-limits (and the client retries) never holds up a tick's boots.
    /// Failures are logged, never fatal to the tick.
    fn start_chores(&self) {
        use std::sync::atomic::Ordering;
        let now = Instant::now();
        let (usage, prune) = {
            let c = self.chores.lock().unwrap_or_else(|e| e.into_inner());
            (
                c.usage.is_none_or(|t| now.duration_since(t) >= USAGE_EVERY),
                c.prune.is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY),
            )
        };
        if !(usage || prune) || self.chores_running.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut c = self.chores.lock().unwrap_or_else(|e| e.into_inner());
            if usage {
                c.usage = Some(now);
            }
            if prune {
                c.prune = Some(now);
            }
        }
        let machines = self.machines.clone();
        let store = self.store.clone();
        let app = self.app.clone();
        let prices = self.config.prices().clone();
        let running = self.chores_running.clone();
        crate::runtime::handle().spawn(async move {
            if usage {
                let recorded = crate::cost::record_usage(
                    machines.as_ref(),
                    &app,
                    store.as_ref(),
                    &prices,
                    Utc::now(),
                )
                .await;
                if let Err(e) = recorded {
                    warn!(error = %e, "could not count machine usage");
                }
            }
            if prune {
                // A few batches per pass: a huge backlog of old jobs drains over several minutes.
                for _ in 0..5 {
                    match store.prune_finished(Utc::now()).await {
                        Ok(n) if n >= crate::store::PRUNE_BATCH as u64 => continue,
                        Ok(n) => {
                            if n > 0 {
                                debug!(pruned = n, "finished jobs past their retention deleted");
                            }
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "could not prune finished jobs");
                            break;
                        }
                    }
                }
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Today's (UTC) billed machine time and cost per queue, when a queue has a budget.
    async fn spent_today(&self) -> Result<BTreeMap<String, (crate::cost::Seconds, f64)>> {
        let budgeted = self.config.queue("").budget.is_some()
            || self.config.queues().values().any(|q| q.budget.is_some());
        if !budgeted {
            return Ok(BTreeMap::new());
        }
        let usage = crate::cost::Usage {
            hours: self
                .store
                .usage_hours(crate::cost::today_utc(Utc::now()))
                .await?,
            machines: Vec::new(),
        };
        Ok(usage.per_queue())
    }

    /// Per queue: may it boot now? From the recorded, uncleared boot failures of the current
    /// release: after n of them the next boot waits `boot_backoff * 2^(n-1)` (capped) after
    /// the last; after `boot_failure_limit` boots stop until a new release or a reset.
    async fn boot_gates(&self) -> HashMap<String, BootGate> {
        let failures = match self.store.boot_failures(BOOT_FAILURES_SCANNED).await {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "could not read boot failures; booting as usual");
                return HashMap::new();
            }
        };
        let mut per_queue: HashMap<String, (u32, chrono::DateTime<Utc>)> = HashMap::new();
        for f in failures
            .iter()
            .filter(|f| !f.cleared && f.release == self.template.release)
        {
            let e = per_queue.entry(f.queue.clone()).or_insert((0, f.at));
            e.0 += 1;
            e.1 = e.1.max(f.at);
        }
        let now = Utc::now();
        per_queue
            .into_iter()
            .map(|(queue, (n, last))| {
                let gate = boot_gate(&self.options, n, last, now);
                if let BootGate::Halted { failures } = gate {
                    let key = (queue.clone(), self.template.release.clone());
                    if self
                        .halted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key)
                    {
                        warn!(
                            queue,
                            release = %self.template.release,
                            failures,
                            "worker machines keep failing at boot: no more boots for this queue \
                             until a new release or `flyjobs scaler --reset-failures`"
                        );
                    }
                }
                (queue, gate)
            })
            .collect()
    }

    async fn create(&self, group: &Group) -> Result<Machine> {
        let queue = group.queue.as_str();
        let settings = self.config.queue(queue);
        let shape = Shape::parse(&group.shape)?;
        let (size, regions) = shape.resolve(&settings.size, &settings.regions);
        let region = if regions.is_empty() {
            self.template.region.clone()
        } else {
            let i = *self
                .region_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&group.cursor_key())
                .unwrap_or(&0);
            Some(regions[i % regions.len()].clone())
        };
        let pinned = group.release != self.template.release;
        let mut config = self.template.worker_config(queue, settings);
        config.guest = Some(Guest {
            cpu_kind: Some(size.cpu_kind.clone()),
            cpus: Some(size.cpus),
            memory_mb: Some(size.memory_mb),
            ..Guest::default()
        });
        config.image = Some(group.release.clone());
        // What the worker claims: its shape, and its release's jobs (never a secret).
        let env = config.env.get_or_insert_with(Default::default);
        env.insert(
            "FLYJOBS_WORKER_SHAPE".into(),
            if group.shape.is_empty() {
                "default".into()
            } else {
                group.shape.clone()
            },
        );
        env.insert(
            "FLYJOBS_WORKER_RELEASE".into(),
            if pinned { "pinned" } else { "current" }.into(),
        );
        env.insert(
            "FLYJOBS_PIN_FOR".into(),
            format!("{}s", self.config.pin_for().as_secs()),
        );
        let meta = config.metadata.get_or_insert_with(Default::default);
        meta.insert("flyjobs_shape".into(), group.shape.clone());
        meta.insert("flyjobs_release".into(), group.release.clone());
        if pinned {
            // An old release's machine exists for its pinned jobs only: it leaves soon after
            // they are done and is never kept in a pool.
            if let Some(cmd) = config.init.as_mut().and_then(|i| i.cmd.as_mut()) {
                for (flag, value) in [
                    ("--wait", PINNED_WAIT_SECS.to_string()),
                    ("--pool", "none".into()),
                ] {
                    if let Some(i) = cmd.iter().position(|a| a == flag)
                        && let Some(v) = cmd.get_mut(i + 1)
                    {
                        *v = value;
                    }
                }
            }
            config.auto_destroy = Some(true);
            meta.insert("flyjobs_pool".into(), "none".into());
        }
        let request = CreateMachineRequest {
            config,
            region,
            ..CreateMachineRequest::default()
        };
        let mut r = self.machines.create_machine(&self.app, &request).await;
        if let Ok(m) = &mut r
            && m.config.is_none()
        {
            // The cached view tells groups apart by the config's metadata.
            m.config = Some(request.config.clone());
        }
        if let Err(e) = &r
            && e.kind() == ErrorKind::Capacity
        {
            // No room in this region: the next create tries the next configured one.
            *self
                .region_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(group.cursor_key())
                .or_default() += 1;
        }
        r
    }
}

/// Machines of one kind: a queue's, of one shape, running one release.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Group {
    queue: String,
    /// Shape key (`""`: the queue's default machine).
    shape: String,
    /// The image its machines run.
    release: String,
}

impl Group {
    fn matches(&self, m: &Machine, current: &str) -> bool {
        m.metadata_value("flyjobs_queue") == Some(self.queue.as_str())
            && m.metadata_value("flyjobs_shape").unwrap_or("") == self.shape
            && m.metadata_value("flyjobs_release").unwrap_or(current) == self.release
    }

    fn is_default(&self, current: &str) -> bool {
        self.shape.is_empty() && self.release == current
    }

    /// Region rotation is per queue and shape (different shapes may list different regions).
    fn cursor_key(&self) -> String {
        format!("{}\u{1f}{}", self.queue, self.shape)
    }
}

/// How long a pinned (old release) worker lingers once its jobs are done.
const PINNED_WAIT_SECS: u64 = 2;
/// Running jobs read per tick (machines × concurrency stays far below).
const RUNNING_SCANNED: usize = 1000;
/// The failure class of a job whose machine ran out of memory.
pub const OUT_OF_MEMORY: &str = "FlyJobs::OutOfMemory";

/// Lines of a failed machine's log kept with its boot failure.
const BOOT_LOG_LINES: usize = 20;
/// Characters of them at most.
const BOOT_LOG_CHARS: usize = 4000;
/// Recent boot failures read per tick to decide the backoff (more than any sane limit).
const BOOT_FAILURES_SCANNED: usize = 500;

fn boot_gate(
    options: &ScalerOptions,
    failures: u32,
    last: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> BootGate {
    if failures == 0 {
        return BootGate::Open;
    }
    if failures >= options.boot_failure_limit.max(1) {
        return BootGate::Halted { failures };
    }
    let pause = options
        .boot_backoff
        .saturating_mul(1u32 << (failures - 1).min(20))
        .min(options.boot_backoff_max);
    let until = last + chrono::Duration::from_std(pause).unwrap_or_default();
    if now < until {
        BootGate::Wait { failures, until }
    } else {
        BootGate::Probe { failures }
    }
}

/// The last `lines` lines of `text`, at most `chars` characters.
fn tail_lines(text: &str, lines: usize, chars: usize) -> String {
    let mut tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.reverse();
    let joined = tail.join("\n");
    let skip = joined.chars().count().saturating_sub(chars);
    joined.chars().skip(skip).collect()
}

fn is_active(m: &Machine) -> bool {
    matches!(
        m.state_str(),
        "created" | "starting" | "started" | "replacing" | "updating"
    )
}

/// A pool machine waiting to be woken: it counts toward `min_machines`, not toward jobs.
fn is_warm(m: &Machine) -> bool {
    matches!(m.state_str(), "suspended" | "stopped")
}

/// Whether workers of this pool mode leave their machine around for reuse.
pub fn keeps_machines(pool: PoolMode) -> bool {
    pool != PoolMode::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(1.0, 3);
        assert!(b.take() && b.take() && b.take(), "burst of 3");
        assert!(!b.take(), "the 4th create in the same instant waits");
        b.at -= Duration::from_millis(1100);
        assert!(b.take(), "one more after a second");
        assert!(!b.take());
        b.at -= Duration::from_secs(60);
        b.drain();
        assert!(!b.take(), "drained after a 429: nothing until time passes");
    }

    #[test]
    fn boot_gate_backs_off_exponentially_then_stops() {
        let o = ScalerOptions::default();
        let t = Utc::now();
        let s = |n: i64| chrono::Duration::seconds(n);
        assert_eq!(boot_gate(&o, 0, t, t), BootGate::Open);
        assert!(matches!(
            boot_gate(&o, 1, t, t + s(1)),
            BootGate::Wait { .. }
        ));
        assert_eq!(
            boot_gate(&o, 1, t, t + s(2)),
            BootGate::Probe { failures: 1 }
        );
        assert!(matches!(
            boot_gate(&o, 3, t, t + s(7)),
            BootGate::Wait { .. }
        ));
        assert_eq!(
            boot_gate(&o, 3, t, t + s(8)),
            BootGate::Probe { failures: 3 }
        );
        assert_eq!(
            boot_gate(&o, 5, t, t + s(9999)),
            BootGate::Halted { failures: 5 }
        );
        let capped = ScalerOptions {
            boot_failure_limit: 100,
            ..ScalerOptions::default()
        };
        assert_eq!(
            boot_gate(&capped, 40, t, t + s(301)),
            BootGate::Probe { failures: 40 },
            "capped at 5 min"
        );
    }

    fn machine(id: &str, state: MachineState) -> Machine {
        Machine {
            id: id.into(),
            state: Some(state),
            ..Machine::default()
        }
    }

    #[test]
    fn a_listing_replaces_the_view_but_not_what_was_learnt_after_it_was_asked() {
        let mut fleet = Fleet::default();
        let before = Instant::now();
        fleet.replace(
            before,
            vec![
                machine("a", MachineState::Suspended),
                machine("b", MachineState::Started),
            ],
        );
        std::thread::sleep(Duration::from_millis(2));
        // Our own answers after a listing was asked for: a create, a resume.
        let asked = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        fleet.note(machine("c", MachineState::Created));
        fleet.set_state("a", MachineState::Starting);
        // The listing (asked before those answers) does not show c yet, and a as suspended.
        fleet.replace(asked, vec![machine("a", MachineState::Suspended)]);
        let view: Vec<(String, String)> = fleet
            .snapshot()
            .iter()
            .map(|m| (m.id.clone(), m.state_str().to_string()))
            .collect();
        assert_eq!(
            view,
            [
                ("a".into(), "starting".into()),
                ("c".into(), "created".into())
            ],
            "b is gone (not listed), c and a's resume are newer than the listing"
        );
        fleet.forget("c");
        assert_eq!(fleet.snapshot().len(), 1);
        assert!(fleet.listed.is_some());
    }

    #[test]
    fn failed_listings_pause_longer_each_time_up_to_a_cap() {
        let mut fleet = Fleet::default();
        let now = Instant::now();
        let pauses: Vec<u64> = (0..8)
            .map(|_| {
                fleet.failed(now);
                fleet.quiet_until.unwrap().duration_since(now).as_secs()
            })
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        fleet.replace(now, Vec::new());
        assert!(fleet.quiet_until.is_none() && fleet.failures == 0);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail_lines("abcdef", 5, 3), "def");
    }
}
