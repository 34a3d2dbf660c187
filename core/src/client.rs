//! [`Client`]: what the app holds — enqueue, the admin calls, the embedded scaler, workers.
//!
//! ```no_run
//! # async fn demo() -> flyjobs::Result<()> {
//! use flyjobs::{Client, Config, job::NewJob};
//! let client = Client::builder(Config::from_env()?).open().await?;
//! let job = client.enqueue(NewJob::new("mail", serde_json::json!({"user": 42}))).await?;
//! println!("enqueued {}", job.id);
//! # Ok(()) }
//! ```
//!
//! Off Fly the client needs a local Machines API and a default database: the `flyjobs-embedded`
//! crate provides both through the [`LocalMachines`] seam ([`ClientBuilder::local_machines`]),
//! so this crate never depends on the emulator.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::info;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::job::{Job, JobId, JobState, NewJob};
use crate::machines::types::{ListMachinesQuery, Machine};
use crate::machines::{Machines, MachinesClient};
use crate::scaler::{Scaler, ScalerHandle, ScalerOptions};
use crate::store::{self, JobFilter, QueueStats, Store, WorkerInfo};
use crate::worker::{Worker, WorkerOptions};

/// A local Machines API for running off Fly (the embedded default). Implemented by the
/// `flyjobs-embedded` crate; the core only knows this seam.
#[async_trait]
pub trait LocalMachines: Send + Sync {
    /// The queue's URL when none is configured (a SQLite file the local machines share).
    fn default_database_url(&self) -> Result<String>;
    /// Start (or join) the local Machines API of the app whose queue is `database_url`; its
    /// machines run `worker_command` as the image's default command.
    async fn start(
        &self,
        worker_command: &[String],
        database_url: &str,
    ) -> Result<Box<dyn LocalApi>>;
    /// The app's local Machines API if one already runs (started by another process), without
    /// starting one: what `flyjobs status` lists machines from.
    async fn find(&self, _database_url: &str) -> Option<Box<dyn LocalApi>> {
        None
    }
}

/// A running local Machines API.
#[async_trait]
pub trait LocalApi: Send + Sync {
    /// A client for it.
    fn machines(&self) -> Arc<dyn Machines>;
    /// The app its worker machines live in.
    fn app(&self) -> String;
    /// Its base URL (`http://127.0.0.1:PORT`).
    fn base_url(&self) -> String;
    /// Stop it; its machines get their stop signal, then die.
    async fn shutdown(&self);
}

/// A worker machine as the Machines API reports it (the admin view of [`Client::machines`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// Machine id.
    pub id: String,
    /// Its state per the Machines API (`created`, `started`, `stopped`, `suspended`, …).
    pub state: String,
    /// Region code.
    pub region: Option<String>,
    /// The queue it was booted for (metadata `flyjobs_queue`).
    pub queue: Option<String>,
    /// The release it runs (metadata `flyjobs_release`).
    pub release: Option<String>,
    /// `shared` or `performance`.
    pub cpu_kind: Option<String>,
    /// CPUs.
    pub cpus: Option<u32>,
    /// Memory in MB.
    pub memory_mb: Option<u32>,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339.
    pub updated_at: Option<String>,
    /// When a started machine last started (its newest `started` event); None unless started.
    #[serde(default)]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl MachineInfo {
    fn from_machine(m: &Machine) -> MachineInfo {
        let meta = |k: &str| {
            m.config
                .as_ref()
                .and_then(|c| c.metadata.as_ref())
                .and_then(|md| md.get(k))
                .cloned()
        };
        let guest = m.config.as_ref().and_then(|c| c.guest.as_ref());
        MachineInfo {
            id: m.id.clone(),
            state: m
                .state
                .as_ref()
                .map_or_else(|| "unknown".to_string(), |s| s.as_str().to_string()),
            region: m.region.clone(),
            queue: meta("flyjobs_queue"),
            release: meta("flyjobs_release"),
            cpu_kind: guest.and_then(|g| g.cpu_kind.clone()),
            cpus: guest.and_then(|g| g.cpus),
            memory_mb: guest.and_then(|g| g.memory_mb),
            created_at: m.created_at.clone(),
            updated_at: m.updated_at.clone(),
            started_at: (m.state_str() == "started")
                .then(|| {
                    // Events are newest first (machines-api.md).
                    m.events
                        .iter()
                        .flatten()
                        .find(|e| e.status.as_deref() == Some("started"))
                        .and_then(|e| chrono::DateTime::from_timestamp_millis(e.timestamp?))
                })
                .flatten(),
        }
    }
}

/// Builds a [`Client`]: everything is given up front, nothing is set after open.
pub struct ClientBuilder {
    config: Config,
    worker_command: Vec<String>,
    machines: Option<(Arc<dyn Machines>, String)>,
    local: Option<Arc<dyn LocalMachines>>,
    store: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("worker_command", &self.worker_command)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The command worker machines run when `worker_command` (`FLYJOBS_WORKER_COMMAND`) is not
    /// configured: each language package gives its own (`bin/fly-machine-worker`,
    /// `python -m flyjobs worker`, `flyjobs-worker`). Default: `flyjobs worker`.
    #[must_use]
    pub fn default_worker_command(mut self, argv: Vec<String>) -> Self {
        self.worker_command = argv;
        self
    }

    /// Scale with this Machines API and app instead of resolving one from the config.
    #[must_use]
    pub fn machines(mut self, api: Arc<dyn Machines>, app: impl Into<String>) -> Self {
        self.machines = Some((api, app.into()));
        self
    }

    /// The local Machines API and default database to use off Fly (the embedded default).
    #[must_use]
    pub fn local_machines(mut self, local: Arc<dyn LocalMachines>) -> Self {
        self.local = Some(local);
        self
    }

    /// Use this already opened store instead of opening `database_url`.
    #[must_use]
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Open the store: `database_url` as configured; else, off Fly, the local default; on Fly a
    /// URL is required (machines do not share a disk).
    pub async fn open(self) -> Result<Client> {
        let config = self.config;
        let (store, database_url) = match self.store {
            Some(s) => (s, config.database_url().map(str::to_string)),
            None => {
                let url = match (config.database_url(), &self.local) {
                    (Some(u), _) => u.to_string(),
                    (None, _) if config.on_fly() => {
                        return Err(Error::config(
                            "FLYJOBS_DATABASE_URL is not set: on Fly the queue must be a \
                             database every machine reaches (postgres://…)",
                        ));
                    }
                    (None, Some(local)) => local.default_database_url()?,
                    (None, None) => {
                        return Err(Error::config(
                            "FLYJOBS_DATABASE_URL is not set, and this build has no embedded \
                             default (the flyjobs-embedded crate)",
                        ));
                    }
                };
                let store = store::open(&url, store::StoreOptions::from_config(&config)).await?;
                (store, Some(url))
            }
        };
        let worker_command = config
            .worker_command()
            .map(<[String]>::to_vec)
            .unwrap_or(self.worker_command);
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                store,
                database_url,
                worker_command,
                local: self.local,
                machines: Mutex::new(self.machines),
                local_api: Mutex::new(None),
                scaler: Mutex::new(None),
            }),
        })
    }
}

/// The app's handle on flyjobs. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    /// The store's URL, handed to local worker machines off Fly.
    database_url: Option<String>,
    /// What worker machines run (resolved: configured, else the language's default).
    worker_command: Vec<String>,
    local: Option<Arc<dyn LocalMachines>>,
    /// The Machines API and app to scale in, when given or once resolved.
    machines: Mutex<Option<(Arc<dyn Machines>, String)>>,
    local_api: Mutex<Option<Box<dyn LocalApi>>>,
    scaler: Mutex<Option<ScalerHandle>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder over `config`.
    pub fn builder(config: Config) -> ClientBuilder {
        ClientBuilder {
            config,
            worker_command: vec!["flyjobs".into(), "worker".into()],
            machines: None,
            local: None,
            store: None,
        }
    }

    /// Open with `config` and no embedded default (on Fly, or with a database URL).
    pub async fn open(config: Config) -> Result<Client> {
        Client::builder(config).open().await
    }

    /// The resolved settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The durable queue.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The queue's URL (as configured, or the local default), if the client opened one.
    pub fn database_url(&self) -> Option<&str> {
        self.inner.database_url.as_deref()
    }

    /// What worker machines run.
    pub fn worker_command(&self) -> &[String] {
        &self.inner.worker_command
    }

    /// Enqueue one job. Fills what the job left unset from its queue's settings and this
    /// release; never waits for a machine (the scaler is woken by the store's notification).
    pub async fn enqueue(&self, job: NewJob) -> Result<Job> {
        self.inner.store.enqueue(self.prepare(job)?).await
    }

    /// Enqueue many jobs in one transaction: all or none.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        self.inner
            .store
            .enqueue_many(
                jobs.into_iter()
                    .map(|j| self.prepare(j))
                    .collect::<Result<_>>()?,
            )
            .await
    }

    fn prepare(&self, mut job: NewJob) -> Result<NewJob> {
        // A shape key from a binding or the Rust API: checked (sizes Fly sells) and made
        // canonical, so equal shapes group together in the scaler.
        if !job.shape.is_empty() {
            job.shape = crate::placement::Shape::parse(&job.shape)?.key();
        }
        if job.max_attempts.is_none() {
            job.max_attempts = Some(self.inner.config.queue(&job.queue).max_attempts);
        }
        if job.image_ref.is_none() {
            job.image_ref = self.inner.config.image_ref().map(str::to_string);
        }
        Ok(job)
    }

    // ---- admin ---------------------------------------------------------------------------

    /// One job, if it exists.
    pub async fn job(&self, id: JobId) -> Result<Option<Job>> {
        self.inner.store.get_job(id).await
    }

    /// The failed runs of a job, oldest first (error, machine, when), as the dashboard's job
    /// page shows them.
    pub async fn attempts(&self, id: JobId) -> Result<Vec<crate::store::Attempt>> {
        self.inner.store.attempts(id).await
    }

    /// A page of jobs (by queue, state and class), in id order; pass the last id as
    /// `after_id` for the next page.
    pub async fn jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.inner.store.list_jobs(filter).await
    }

    /// Cancel a job that has not run yet (ready or scheduled): it is discarded. A running,
    /// finished or dead job → `Conflict` naming its state.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        self.waiting(id, "cancelled").await?;
        // The store refuses (Conflict) if a worker claimed it in between.
        self.inner.store.discard(id, None, None).await
    }

    /// Run a scheduled job now (it keeps its attempts). Other states → `Conflict`.
    pub async fn run_now(&self, id: JobId) -> Result<Job> {
        self.waiting(id, "run now").await?;
        self.inner.store.run_now(id).await
    }

    /// Jobs finished (completed, dead or discarded) since `since`, newest first, at most
    /// `limit` (0 means 100).
    pub async fn finished_since(&self, since: DateTime<Utc>, limit: usize) -> Result<Vec<Job>> {
        self.inner.store.finished_since(since, limit).await
    }

    /// Discard a waiting or dead job (it will not run again). Running → `Conflict`.
    pub async fn discard(&self, id: JobId) -> Result<Job> {
        self.inner.store.discard(id, None, None).await
    }

    /// Run a dead or discarded job again: ready, attempts reset.
    pub async fn retry(&self, id: JobId) -> Result<Job> {
        self.inner.store.retry_dead(id).await
    }

    /// Delete every waiting job (ready or scheduled) of `queue`; returns how many.
    pub async fn clear(&self, queue: &str) -> Result<u64> {
        crate::job::validate_queue(queue)?;
        self.inner.store.clear_queue(queue).await
    }

    /// Counts per queue.
    pub async fn stats(&self) -> Result<Vec<QueueStats>> {
        self.inner.store.stats().await
    }

    /// Registered workers.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.inner.store.workers().await
    }

    /// Recent boot failures of worker machines, newest first (`limit` 0 means 100): what the
    /// scaler backs off on and stops for.
    pub async fn boot_failures(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::store::boot_failures::BootFailure>> {
        self.inner.store.boot_failures(limit).await
    }

    /// Forget the boot failures of `queue` (all queues: None) so that the scaler boots its
    /// machines again; returns how many were cleared. The same as `flyjobs scaler
    /// --reset-failures`.
    pub async fn reset_boot_failures(&self, queue: Option<&str>) -> Result<u64> {
        if let Some(q) = queue {
            crate::job::validate_queue(q)?;
        }
        self.inner.store.clear_boot_failures(queue).await
    }

    /// Worker machines as the Machines API reports them. Off Fly: those of the local API this
    /// process started, or of the app's shared one if it runs; else an empty list.
    pub async fn machines(&self) -> Result<Vec<MachineInfo>> {
        let Some((api, app)) = self.worker_machines_api().await? else {
            return Ok(Vec::new());
        };
        let list = api
            .list_machines(
                &app,
                &ListMachinesQuery {
                    metadata: BTreeMap::from([("flyjobs_role".into(), "worker".into())]),
                    ..Default::default()
                },
            )
            .await?;
        Ok(list.iter().map(MachineInfo::from_machine).collect())
    }

    /// The Machines API whose machines are this app's workers: on Fly the real one; off Fly the
    /// local API this process started, or the app's shared one if it runs; else none.
    async fn worker_machines_api(&self) -> Result<Option<(Arc<dyn Machines>, String)>> {
        let api = self.inner.machines.lock().await.clone();
        Ok(match api {
            Some(a) => Some(a),
            None if self.inner.config.on_fly() => Some(self.machines_api().await?),
            None => {
                let url = self.inner.database_url.clone().unwrap_or_default();
                match &self.inner.local {
                    Some(local) => local
                        .find(&url)
                        .await
                        .map(|api| (api.machines(), api.app())),
                    None => None,
                }
            }
        })
    }

    /// Count the machine time of the app's worker machines since the last count into the store
    /// (what [`Client::usage`] reports); any process may call it, concurrent calls never count
    /// twice. The scaler calls it every tick.
    pub async fn record_usage(&self) -> Result<crate::cost::Recorded> {
        let Some((api, app)) = self.worker_machines_api().await? else {
            return Ok(crate::cost::Recorded::default());
        };
        crate::cost::record_usage(
            api.as_ref(),
            &app,
            self.inner.store.as_ref(),
            self.inner.config.prices(),
            Utc::now(),
        )
        .await
    }

    /// Machine usage and cost: per queue per clock hour from the hour holding `since`, and per
    /// machine so far.
    pub async fn usage(&self, since: DateTime<Utc>) -> Result<crate::cost::Usage> {
        Ok(crate::cost::Usage {
            hours: self.inner.store.usage_hours(since).await?,
            machines: self.inner.store.usage_cursors().await?,
        })
    }

    /// The job if it is waiting (ready or scheduled), else a `Conflict` naming its state.
    async fn waiting(&self, id: JobId, what: &str) -> Result<Job> {
        let job = self.existing(id).await?;
        if !matches!(job.state, JobState::Ready | JobState::Scheduled) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "job {id} is {}; only ready or scheduled jobs can be {what}",
                    job.state
                ),
            )
            .with_job_id(id));
        }
        Ok(job)
    }

    async fn existing(&self, id: JobId) -> Result<Job> {
        self.job(id).await?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("job {id} not found")).with_job_id(id)
        })
    }

    // ---- workers and the scaler ------------------------------------------------------------

    /// Start a worker in this process (inside a worker machine, or locally).
    pub async fn worker(&self, opts: WorkerOptions) -> Result<Worker> {
        let self_api = self.self_api();
        Worker::start(&self.inner.config, self.inner.store.clone(), self_api, opts).await
    }

    /// This machine's own API, for a pool worker to suspend itself: the tokenless in-machine
    /// socket (`FLY_API_SOCKET`, set by the emulator; `/.fly/api` on Fly).
    fn self_api(&self) -> Option<(Arc<dyn Machines>, String, String)> {
        let c = &self.inner.config;
        let (app, id) = (c.app_name()?, c.machine_id()?);
        let socket = std::env::var("FLY_API_SOCKET").unwrap_or_else(|_| "/.fly/api".into());
        if !std::path::Path::new(&socket).exists() {
            return None;
        }
        let api = MachinesClient::builder()
            .base_url(format!("unix:{socket}"))
            .build()
            .ok()?;
        Some((Arc::new(api), app.to_string(), id.to_string()))
    }

    /// The Machines API to scale with: the one given, else the real API on Fly, else the
    /// local one (started on first use).
    pub async fn machines_api(&self) -> Result<(Arc<dyn Machines>, String)> {
        let mut slot = self.inner.machines.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let c = &self.inner.config;
        let resolved: (Arc<dyn Machines>, String) = if c.on_fly() {
            let app = c
                .worker_app()
                .or(c.app_name())
                .ok_or_else(|| Error::config("FLY_APP_NAME is not set"))?
                .to_string();
            (Arc::new(MachinesClient::from_config(c)?), app)
        } else {
            let local = self.inner.local.as_ref().ok_or_else(|| {
                Error::config(
                    "not on Fly (FLY_MACHINE_ID unset) and no local Machines API: use the \
                     flyjobs-embedded crate, or set FLY_MACHINE_ID and FLY_API_HOSTNAME",
                )
            })?;
            let url = self.inner.database_url.clone().unwrap_or_default();
            let api = local.start(&self.inner.worker_command, &url).await?;
            let resolved = (api.machines(), api.app());
            *self.inner.local_api.lock().await = Some(api);
            resolved
        };
        *slot = Some(resolved.clone());
        Ok(resolved)
    }

    /// The environment a worker machine needs beyond its parent's config. On Fly: nothing (the
    /// database URL is an app secret, which Fly injects). Off Fly: the local queue's URL.
    fn embedded_worker_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if !self.inner.config.on_fly() {
            if let Some(url) = &self.inner.database_url {
                env.insert("FLYJOBS_DATABASE_URL".into(), url.clone());
            }
            env.insert(
                "FLYJOBS_LEASE_DURATION".into(),
                format!("{}s", self.inner.config.lease_duration().as_secs()),
            );
            for var in ["RUST_LOG", "FLYJOBS_LOG"] {
                if let Ok(v) = std::env::var(var) {
                    env.insert(var.into(), v);
                }
            }
        }
        env
    }

    /// Start the scaler in this process (idempotent). Refused inside a worker machine: workers
    /// never scale (that would let a burst grow itself).
    pub async fn start_scaler(&self) -> Result<()> {
        self.start_scaler_with(ScalerOptions::default()).await
    }

    /// [`Client::start_scaler`] with explicit loop options.
    pub async fn start_scaler_with(&self, options: ScalerOptions) -> Result<()> {
        if std::env::var_os("FLYJOBS_WORKER").is_some() {
            return Err(Error::config(
                "the scaler does not run inside a worker machine (FLYJOBS_WORKER is set)",
            ));
        }
        let mut slot = self.inner.scaler.lock().await;
        if slot.is_some() {
            return Ok(());
        }
        let scaler = Arc::new(self.build_scaler(options).await?);
        *slot = Some(scaler.spawn());
        Ok(())
    }

    /// A scaler for this client, to tick by hand (tests, `flyjobs scaler --once`).
    pub async fn build_scaler(&self, options: ScalerOptions) -> Result<Scaler> {
        let (machines, app) = self.machines_api().await?;
        let template = crate::fork::template(
            &self.inner.config,
            machines.as_ref(),
            &self.inner.worker_command,
            self.embedded_worker_env(),
        )
        .await?;
        info!(app = %app, release = %template.release, command = ?template.command, "scaler ready");
        Ok(Scaler::new(
            self.inner.config.clone(),
            self.inner.store.clone(),
            machines,
            app,
            template,
            options,
        ))
    }

    /// Stop the scaler (if running) and the local Machines API (if started).
    pub async fn shutdown(&self) {
        if let Some(s) = self.inner.scaler.lock().await.take() {
            s.stop().await;
        }
        if let Some(api) = self.inner.local_api.lock().await.take() {
            api.shutdown().await;
        }
    }

    /// The local Machines API's base URL, once started.
    pub async fn local_api_url(&self) -> Option<String> {
        self.inner
            .local_api
            .lock()
            .await
            .as_ref()
            .map(|a| a.base_url())
    }
}

#[cfg(test)]
mod tests {
    use super::MachineInfo;
    use crate::machines::types::Machine;

    fn machine(state: &str) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": "m1", "state": state,
            "events": [
                {"type": "start", "status": "started", "timestamp": 1_764_633_600_000i64},
                {"type": "exit", "status": "stopped", "timestamp": 1_764_633_500_000i64},
                {"type": "start", "status": "started", "timestamp": 1_764_633_000_000i64}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_started_machine_is_up_since_its_newest_start() {
        let m = MachineInfo::from_machine(&machine("started"));
        assert_eq!(m.started_at.unwrap().timestamp_millis(), 1_764_633_600_000);
        assert_eq!(
            MachineInfo::from_machine(&machine("stopped")).started_at,
            None
        );
    }
}
