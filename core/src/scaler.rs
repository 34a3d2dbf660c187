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
use crate::machines::types::{CreateMachineRequest, ListMachinesQuery, Machine};
use crate::store::Store;

/// Tuning of the control loop.
#[derive(Clone, Debug)]
pub struct ScalerOptions {
    /// Longest time between two ticks when nothing wakes the scaler.
    pub interval: Duration,
    /// Creates per second the token bucket allows (the API's limit is 1/s per action).
    pub create_rate: f64,
    /// Creates allowed in a burst.
    pub create_burst: u32,
}

impl Default for ScalerOptions {
    fn default() -> Self {
        ScalerOptions {
            interval: Duration::from_secs(2),
            create_rate: 1.0,
            create_burst: 3,
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
        }
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
    pub async fn tick(&self) -> Result<TickReport> {
        let mut report = TickReport::default();
        let ttl = self.options.interval * 5;
        if !self
            .store
            .try_acquire_leader("scaler", &self.owner, ttl)
            .await?
        {
            return Ok(report);
        }
        report.leader = true;
        let reaped = self.store.reap_expired(Utc::now()).await?;
        report.reaped = reaped.retried + reaped.dead;
        // Registrations that stopped heartbeating long ago (a worker killed outright).
        let stale = Utc::now()
            - chrono::Duration::from_std(self.config.lease_duration() * 10).unwrap_or_default();
        self.store.prune_workers(stale).await?;

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

        // Reaper: a registered worker whose machine stopped, failed or was destroyed is gone.
        // Its registration goes now; its leases expire and are reaped above, so its jobs run
        // again elsewhere. Workers that are not machines of this app (a local `flyjobs
        // worker`) are left alone.
        let by_id: HashMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
        for w in &workers {
            if let Some(m) = by_id.get(w.id.as_str())
                && matches!(m.state_str(), "stopped" | "destroyed" | "failed")
            {
                info!(worker = %w.id, state = m.state_str(), "worker machine is down; deregistering");
                let _ = self.store.deregister_worker(&w.id).await;
            }
        }

        // Boot timeout and release pinning.
        let now = Utc::now();
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
                && !registered.contains(m.id.as_str());
            let old_release = matches!(m.state_str(), "stopped" | "suspended")
                && m.metadata_value("flyjobs_release") != Some(self.template.release.as_str());
            if (booting && age > self.config.boot_timeout()) || old_release {
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
            }
        }

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
        Ok(report)
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
}
