//! The embedded default of flyjobs: with no Fly environment (`FLY_MACHINE_ID` unset), a local
//! Machines API (the emulator, in-process on a loopback port, whose machines are local
//! processes) and a SQLite queue in the current directory, driven by the very same client,
//! scaler and worker code as production.
//!
//! It plugs into the core through [`flyjobs::client::LocalMachines`]; every language binding
//! and the CLI open their client with [`builder`], so "the URL as given, else the local
//! default" is decided here once.
//!
//! ```no_run
//! # async fn demo() -> flyjobs::Result<()> {
//! let client = flyjobs_embedded::builder(flyjobs::Config::from_env()?).open().await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use flyjobs::client::{ClientBuilder, LocalApi, LocalMachines};
use flyjobs::config::Secret;
use flyjobs::fork::EMBEDDED_IMAGE;
use flyjobs::machines::{Machines, MachinesClient};
use flyjobs::{Client, Config, Error, Result};
use flyjobs_emulator::{Emulator, EmulatorHandle, EmulatorSettings};
use tokio::sync::Mutex;

pub mod shared;

pub use shared::{SharedLocal, serve};

/// The app the local Machines API hosts worker machines in.
pub const EMBEDDED_APP: &str = "flyjobs-local";

/// A client builder over `config` with the embedded default plugged in (used off Fly only):
/// a local Machines API inside this process. For apps with several processes, see
/// [`shared_builder`].
pub fn builder(config: Config) -> ClientBuilder {
    Client::builder(config).local_machines(Arc::new(Embedded::from_env()))
}

/// A client builder whose local Machines API is shared by every process of the app (Puma,
/// gunicorn and Node cluster workers, the CLI's scaler): the first process starts it as a
/// daemon with `daemon_command` (the language's entry point of [`serve`]), the others join it,
/// and its machines outlive any one process (see [`shared`]).
pub fn shared_builder(config: Config, daemon_command: Vec<String>) -> ClientBuilder {
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    Client::builder(config).local_machines(Arc::new(SharedLocal {
        dir,
        daemon_command,
    }))
}

/// The database URL used when `FLYJOBS_DATABASE_URL` is unset off Fly: `flyjobs.sqlite3` in
/// the current directory (the local worker machines run there too).
pub fn default_database_url() -> Result<String> {
    Ok(Embedded::from_env().database_url())
}

/// The embedded default: where local machines run, and with which latencies.
#[derive(Debug, Clone)]
pub struct Embedded {
    dir: Option<PathBuf>,
    settings: Option<EmulatorSettings>,
}

impl Embedded {
    /// Machines run in the current directory; latencies from `FLYJOBS_EMULATOR_LATENCY`
    /// (`fly`, the default, feels like Fly; `none` is for tests).
    pub fn from_env() -> Embedded {
        Embedded {
            dir: std::env::current_dir().ok(),
            settings: None,
        }
    }

    /// Use these emulator settings (tests).
    #[must_use]
    pub fn with_settings(mut self, settings: EmulatorSettings) -> Embedded {
        self.settings = Some(settings);
        self
    }

    fn dir(&self) -> Result<PathBuf> {
        self.dir
            .clone()
            .ok_or_else(|| Error::config("no current directory for the embedded default"))
    }

    fn database_url(&self) -> String {
        Embedded::database_url_in(self.dir.as_deref().unwrap_or(Path::new(".")))
    }

    /// The default queue of an app in `dir`: `dir/flyjobs.sqlite3`.
    pub fn database_url_in(dir: &Path) -> String {
        format!("sqlite://{}/flyjobs.sqlite3?mode=rwc", dir.display())
    }
}

/// Emulator settings for the embedded default from the environment (`FLYJOBS_EMULATOR_*`:
/// `LATENCY=none` for tests, faults, capacity, …; see `flyjobs emulator --help`).
pub fn settings_from_env() -> Result<EmulatorSettings> {
    EmulatorSettings::from_env().map_err(|e| Error::config(e.to_string()))
}

#[async_trait]
impl LocalMachines for Embedded {
    fn default_database_url(&self) -> Result<String> {
        self.dir()?;
        Ok(self.database_url())
    }

    async fn start(
        &self,
        worker_command: &[String],
        _database_url: &str,
    ) -> Result<Box<dyn LocalApi>> {
        let mut settings = match &self.settings {
            Some(s) => s.clone(),
            None => settings_from_env()?,
        };
        // The app's worker command is the local image's default command (its CMD), as the
        // app's image would have on Fly.
        settings.images.insert(
            EMBEDDED_IMAGE.to_string(),
            flyjobs_emulator::Image {
                dir: self.dir()?,
                cmd: worker_command.to_vec(),
            },
        );
        let (handle, machines) = start(settings).await?;
        Ok(Box::new(Local {
            base_url: handle.base_url().to_string(),
            handle: Mutex::new(Some(handle)),
            machines,
        }))
    }
}

struct Local {
    handle: Mutex<Option<EmulatorHandle>>,
    machines: Arc<dyn Machines>,
    base_url: String,
}

#[async_trait]
impl LocalApi for Local {
    fn machines(&self) -> Arc<dyn Machines> {
        self.machines.clone()
    }
    fn app(&self) -> String {
        EMBEDDED_APP.to_string()
    }
    fn base_url(&self) -> String {
        self.base_url.clone()
    }
    async fn shutdown(&self) {
        if let Some(h) = self.handle.lock().await.take() {
            h.shutdown().await;
        }
    }
}

/// Start an emulator with `settings`, create the embedded app, and return a client for it.
pub async fn start(settings: EmulatorSettings) -> Result<(EmulatorHandle, Arc<dyn Machines>)> {
    let handle = Emulator::start(settings)
        .await
        .map_err(|e| Error::config(format!("could not start the embedded emulator: {e}")))?;
    handle.create_app(EMBEDDED_APP);
    // The emulator accepts any token unless configured otherwise; this one is local and
    // throwaway, and it is never handed to a machine.
    let token = format!("embedded-{:x}", rand::random::<u64>());
    let client = MachinesClient::builder()
        .base_url(handle.base_url().to_string())
        .token(Secret::new(token))
        .build()?;
    Ok((handle, Arc::new(client)))
}
