//! The scaler: queue depth → machines to resume, start or create, within limits; plus the reaper.
//!
//! One control loop. Each tick (on every enqueue wake-up, and at least every
//! [`ScalerOptions::interval`]) it:
//! 1. takes the store's leader lock, so several web processes never boot past the limits;
//! 2. reaps expired leases (their workers died) back to ready;
//! 3. lists the app's worker machines (metadata `flyjobs_role=worker`);
//! 4. per queue: `wanted = clamp(ceil((ready + running) / concurrency), min, max)`; when fewer
//!    machines are active (created, starting or started), gets more, cheapest first: resume a
//!    suspended pool machine, else start a stopped one, else create one — never above the
//!    queue's `max_machines` or the global `FLYJOBS_MAX_MACHINES`, and creates go through a
//!    token bucket that respects the Machines API's 1 request/s per action (burst 3);
//! 5. destroys machines that never registered within `boot_timeout`, and idle pool machines of
//!    an older release (release pinning: they would run old code).
//!
//! Scaling down is the workers' own business: each leaves after `wait` idle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, PoolMode};
use crate::error::{ErrorKind, Result};
use crate::fork::Template;
use crate::machines::Machines;
use crate::machines::types::{
    CreateMachineRequest, ExitEvent, ListMachinesQuery, Machine, MachineEvent,
};
use crate::store::boot_failures::BootFailure;
use crate::store::{Store, WorkerState};

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
            loop {
                match self.tick().await {
                    Ok(r)
                        if r != TickReport {
                            leader: r.leader,
                            ..TickReport::default()
                        } =>
                    {
                        debug!(?r, "scaler tick");
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "scaler tick failed"),
                }
                tokio::select! {
                    () = c.cancelled() => break,
                    _ = wakeups.wait(self.options.interval) => {}
                }
            }
            let _ = self.store.release_leader("scaler", &self.owner).await;
        });
        ScalerHandle { cancel, task }
    }

    /// One pass of the control loop.
    ///
    /// Everything a tick does is done under the store's leader lock, and only while it is
    /// held: a keeper renews the lock every quarter of its TTL, and when it cannot (another
    /// scaler took it, or the store does not answer) the tick is abandoned before the lock
    /// runs out, in-flight creates included. Two scalers therefore never act at once, however
    /// slowly the Machines API answers.
    pub async fn tick(&self) -> Result<TickReport> {
        let mut report = TickReport::default();
        let ttl = self.leader_ttl();
        // Measured before asking: the lock is certainly ours until then + ttl, not longer.
        let asked = Instant::now();
        if !self
            .store
            .try_acquire_leader("scaler", &self.owner, ttl)
            .await?
        {
            return Ok(report);
        }
        report.leader = true;
        let outcome = tokio::select! {
            r = self.lead(&mut report) => Some(r),
            () = self.keep_leadership(asked, ttl) => None,
        };
        match outcome {
            Some(r) => r.map(|()| report),
            None => {
                warn!(owner = %self.owner, "scaler lost the leader lock mid-tick; stopped acting");
                report.lost_leadership = true;
                Ok(report)
            }
        }
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
                Ok(Ok(true)) => held_until = asked + ttl,
                Ok(Ok(false)) => return,
                Ok(Err(e)) => warn!(error = %e, "could not renew the scaler's leader lock"),
                Err(_) => return,
            }
        }
    }

    /// The body of a tick, run while the leader lock is held.
    async fn lead(&self, report: &mut TickReport) -> Result<()> {
        let reaped = self.store.reap_expired(Utc::now()).await?;
        report.reaped = reaped.retried + reaped.dead;

        let machines = self
            .machines
            .list_machines(
                &self.app,
                &ListMachinesQuery {
                    metadata: BTreeMap::from([("flyjobs_role".to_string(), "worker".to_string())]),
                    ..ListMachinesQuery::default()
                },
            )
            .await?;
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
            let down = machine
                .is_some_and(|m| matches!(m.state_str(), "stopped" | "destroyed" | "failed"));
            let silent = w.state != WorkerState::Suspended && w.last_heartbeat_at < silent_since;
            let vanished = w.state == WorkerState::Suspended && machine.is_none();
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
            if timed_out || old_release {
                info!(machine = %m.id, state = m.state_str(), old_release, "destroying worker machine");
                match self
                    .machines
                    .destroy_machine(&self.app, &m.id, true, None)
                    .await
                {
                    Ok(()) => report.destroyed += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
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

        let gates = self.boot_gates().await;

        // Demand per queue.
        let stats = self.store.stats().await?;
        let mut demand: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for s in &stats {
            let due_scheduled = u64::from(s.next_scheduled_at.is_some_and(|t| t <= now));
            let e = demand.entry(s.queue.clone()).or_default();
            e.0 += s.ready + due_scheduled;
            e.1 += s.running;
        }
        for (name, settings) in self.config.queues() {
            if settings.min_machines > 0 {
                demand.entry(name.clone()).or_default();
            }
        }

        let mut total_active = machines.iter().filter(|m| is_active(m)).count() as u32;
        for (queue, (ready, running)) in demand {
            let settings = self.config.queue(&queue);
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
                .filter(|m| m.metadata_value("flyjobs_queue") == Some(queue.as_str()))
                .collect();
            let active = mine.iter().filter(|m| is_active(m)).count() as u32;
            let need = u32::try_from((ready + running).div_ceil(u64::from(settings.concurrency)))
                .unwrap_or(u32::MAX);
            let wanted = need.clamp(settings.min_machines, settings.max_machines);
            let mut missing = wanted.saturating_sub(active);
            if missing == 0 {
                continue;
            }
            missing = missing.min(self.config.max_machines().saturating_sub(total_active));
            if probe {
                // Its machines failed at boot lately: one at a time until one registers.
                missing = missing.min(1);
            }
            if missing == 0 {
                debug!(queue, "global max_machines reached");
                continue;
            }
            // Cheapest first: resume, start, create. Only machines of this release.
            let current = |m: &&&Machine| {
                m.metadata_value("flyjobs_release") == Some(self.template.release.as_str())
            };
            let mut pool: Vec<&Machine> = mine
                .iter()
                .filter(current)
                .filter(|m| m.state_str() == "suspended")
                .copied()
                .collect();
            pool.extend(
                mine.iter()
                    .filter(current)
                    .filter(|m| m.state_str() == "stopped")
                    .copied(),
            );
            for m in pool {
                if missing == 0 {
                    break;
                }
                let resumed = m.state_str() == "suspended";
                match self.machines.start_machine(&self.app, &m.id, None).await {
                    Ok(_) => {
                        self.track(&m.id, &queue);
                        missing -= 1;
                        total_active += 1;
                        let counter = if resumed {
                            &mut report.resumed
                        } else {
                            &mut report.started
                        };
                        *counter.entry(queue.clone()).or_default() += 1;
                        info!(queue, machine = %m.id, resumed, "woke pool machine");
                    }
                    Err(e) => {
                        warn!(queue, machine = %m.id, error = %e, "could not wake pool machine")
                    }
                }
            }
            while missing > 0 {
                if !self.bucket.lock().await.take() {
                    debug!(queue, "create rate limit: waiting for the next tick");
                    break;
                }
                match self.create(&queue).await {
                    Ok(m) => {
                        self.track(&m.id, &queue);
                        missing -= 1;
                        total_active += 1;
                        *report.created.entry(queue.clone()).or_default() += 1;
                        info!(queue, machine = %m.id, "created worker machine");
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
        Ok(())
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

    async fn create(&self, queue: &str) -> Result<Machine> {
        let settings = self.config.queue(queue);
        let region = if settings.regions.is_empty() {
            self.template.region.clone()
        } else {
            let i = *self
                .region_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(queue)
                .unwrap_or(&0);
            Some(settings.regions[i % settings.regions.len()].clone())
        };
        let request = CreateMachineRequest {
            config: self.template.worker_config(queue, settings),
            region,
            ..CreateMachineRequest::default()
        };
        let r = self.machines.create_machine(&self.app, &request).await;
        if let Err(e) = &r
            && e.kind() == ErrorKind::Capacity
        {
            // No room in this region: the next create tries the next configured one.
            *self
                .region_cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(queue.to_string())
                .or_default() += 1;
        }
        r
    }
}

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

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail_lines("abcdef", 5, 3), "def");
    }
}
