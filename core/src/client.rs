//! [`Client`]: what the app holds — enqueue, the embedded scaler, workers.
//!
//! ```no_run
//! # async fn demo() -> flyjobs::Result<()> {
//! use flyjobs::{Client, Config, job::NewJob};
//! let client = Client::open(Config::from_env()?).await?;
//! let job = client.enqueue(NewJob::new("mail", serde_json::json!({"user": 42}))).await?;
//! println!("enqueued {}", job.id);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use tracing::info;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::job::{Job, NewJob};
use crate::machines::{Machines, MachinesClient};
use crate::scaler::{Scaler, ScalerHandle, ScalerOptions};
use crate::store::{self, Store};
use crate::worker::{Worker, WorkerOptions};

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
    /// The Machines API and app to scale in, when given or once resolved.
    machines: Mutex<Option<(Arc<dyn Machines>, String)>>,
    scaler: Mutex<Option<ScalerHandle>>,
    #[cfg(feature = "embedded")]
    emulator: Mutex<Option<flyjobs_emulator::EmulatorHandle>>,
    default_worker_command: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The database URL used when `FLYJOBS_DATABASE_URL` is unset off Fly: a SQLite file in the
/// current directory (shared with the local worker processes, which run there too).
pub fn default_database_url() -> Result<String> {
    let dir =
        std::env::current_dir().map_err(|e| Error::config(format!("no current directory: {e}")))?;
    Ok(format!(
        "sqlite://{}/flyjobs.sqlite3?mode=rwc",
        dir.display()
    ))
}

impl Client {
    /// Open the store named by the config (the embedded SQLite off Fly when none is named).
    /// On Fly a database URL is required: machines do not share a disk.
    pub async fn open(config: Config) -> Result<Client> {
        let url = match config.database_url() {
            Some(u) => u.to_string(),
            None if config.on_fly() => {
                return Err(Error::config(
                    "FLYJOBS_DATABASE_URL is not set: on Fly the queue must be a database every \
                     machine reaches (postgres://…)",
                ));
            }
            None => default_database_url()?,
        };
        let store = store::open(&url, store::StoreOptions::from_config(&config)).await?;
        Ok(Client::build(config, store, Some(url)))
    }

    /// A client over an already opened store.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> Client {
        Client::build(config, store, None)
    }

    fn build(config: Config, store: Arc<dyn Store>, database_url: Option<String>) -> Client {
        Client {
            inner: Arc::new(Inner {
                config,
                store,
                database_url,
                machines: Mutex::new(None),
                scaler: Mutex::new(None),
                #[cfg(feature = "embedded")]
                emulator: Mutex::new(None),
                default_worker_command: Mutex::new(vec!["flyjobs".into(), "worker".into()]),
            }),
        }
    }

    /// Use this Machines API and app for scaling instead of resolving one from the config
    /// (tests pass an emulator they started themselves).
    pub async fn set_machines(&self, machines: Arc<dyn Machines>, app: impl Into<String>) {
        *self.inner.machines.lock().await = Some((machines, app.into()));
    }

    /// The command worker machines run when `FLYJOBS_WORKER_COMMAND` is unset; each language
    /// package sets its own (`bin/fly-machine-worker`, `python -m flyjobs worker`, …).
    pub async fn set_default_worker_command(&self, command: Vec<String>) {
        *self.inner.default_worker_command.lock().await = command;
    }

    /// The resolved settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The durable queue.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Enqueue one job. Fills what the job left unset from its queue's settings and this
    /// release; never waits for a machine (the scaler is woken by the store's notification).
    pub async fn enqueue(&self, job: NewJob) -> Result<Job> {
        self.inner.store.enqueue(self.prepare(job)).await
    }

    /// Enqueue many jobs in one transaction: all or none.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        self.inner
            .store
            .enqueue_many(jobs.into_iter().map(|j| self.prepare(j)).collect())
            .await
    }

    fn prepare(&self, mut job: NewJob) -> NewJob {
        if job.max_attempts.is_none() {
            job.max_attempts = Some(self.inner.config.queue(&job.queue).max_attempts);
        }
        if job.image_ref.is_none() {
            job.image_ref = self.inner.config.image_ref().map(str::to_string);
        }
        job
    }

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

    /// The Machines API to scale with: the one set, else the real API on Fly, else the
    /// embedded emulator (started on first use).
    pub async fn machines(&self) -> Result<(Arc<dyn Machines>, String)> {
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
            self.start_embedded().await?
        };
        *slot = Some(resolved.clone());
        Ok(resolved)
    }

    #[cfg(feature = "embedded")]
    async fn start_embedded(&self) -> Result<(Arc<dyn Machines>, String)> {
        let settings = crate::embedded::settings_from_env()?;
        let (handle, machines, app) = crate::embedded::start(settings).await?;
        *self.inner.emulator.lock().await = Some(handle);
        Ok((machines, app))
    }

    #[cfg(not(feature = "embedded"))]
    async fn start_embedded(&self) -> Result<(Arc<dyn Machines>, String)> {
        Err(Error::config(
            "not on Fly (FLY_MACHINE_ID unset) and this build has no embedded emulator",
        ))
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
        let (machines, app) = self.machines().await?;
        let command = self.inner.default_worker_command.lock().await.clone();
        let template = crate::fork::template(
            &self.inner.config,
            machines.as_ref(),
            &command,
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

    /// Stop the scaler (if running) and the embedded emulator (if started): its machines die.
    pub async fn shutdown(&self) {
        if let Some(s) = self.inner.scaler.lock().await.take() {
            s.stop().await;
        }
        #[cfg(feature = "embedded")]
        if let Some(e) = self.inner.emulator.lock().await.take() {
            e.shutdown().await;
        }
    }

    /// The embedded emulator's base URL, once started.
    #[cfg(feature = "embedded")]
    pub async fn emulator_url(&self) -> Option<String> {
        self.inner
            .emulator
            .lock()
            .await
            .as_ref()
            .map(|e| e.base_url().to_string())
    }
}
