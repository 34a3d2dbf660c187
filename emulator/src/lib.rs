//! A local Fly Machines API whose machines are local processes (issue 2 §3).
//!
//! The emulator serves the Machines API of `shared/reference/machines-api.md` on a loopback
//! port. A machine is a process started from `config.init` in an "image" directory, with
//! `config.env` and the variables Fly injects; it follows Fly's state machine (create → started
//! → exit → stopped/destroyed, restart policies, stop signal and timeout, suspend = SIGSTOP,
//! resume = SIGCONT), with leases, metadata, events and `wait`. Latencies, rate limits, faults
//! and capacity are settings; a billing ledger counts machine-seconds by state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flyjobs_emulator::EmulatorError> {
//! use flyjobs_emulator::{Emulator, EmulatorSettings};
//! let emu = Emulator::start(EmulatorSettings::for_tests().app("my-app")).await?;
//! let url = format!("{}/v1/apps/my-app/machines", emu.base_url());
//! // POST {"config": {"image": "x", "init": {"exec": ["sh", "-c", "echo hi"]}}} to `url`
//! // with `Authorization: Bearer <anything>`.
//! # let _ = url;
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Environment of a machine process: only the variables named in
//! [`EmulatorSettings::inherit_env`] (default PATH, HOME, LANG, LC_ALL, LC_CTYPE, TZ, TMPDIR,
//! USER, LOGNAME) are copied from the emulator's own environment, then `config.env`, then
//! `FLY_APP_NAME`, `FLY_MACHINE_ID`, `FLY_ALLOC_ID`, `FLY_REGION`, `FLY_IMAGE_REF`,
//! `FLY_MACHINE_VERSION`, `FLY_PRIVATE_IP`, `FLY_VM_MEMORY_MB`, `FLY_API_HOSTNAME` (the
//! emulator's base URL) and `FLY_API_SOCKET` (a unix socket serving the same API without a
//! token: the stand-in for Fly's in-machine `/.fly/api`).
//!
//! Emulator-only endpoints (no `/v1`): `GET /emulator/ledger` (JSON [`Ledger`], no token) and
//! `GET /emulator/apps/{app}/machines/{id}/logs` (the machine's stdout+stderr as text; same
//! token rules as `/v1`, since logs may show what a machine prints about its env).
//!
//! No orphans: each machine is its own process group; children get `PR_SET_PDEATHSIG`
//! (SIGKILL) from a dedicated spawner thread, and a watchdog `sh` kills every remaining group
//! when the emulator dies, even by SIGKILL (grandchildren included). Shutdown and drop SIGKILL
//! every group; a machine's leftover processes are killed when its main process exits.
//!
//! Where the emulator chooses (facts unconfirmed in machines-api.md §12): the 429 body
//! `{"error":"rate limit exceeded"}` with `Retry-After: 1`; destroy of a started machine without
//! `force`/`kill` is 412 `failed_precondition: …`; `wait` on a replaced `version` waits out its
//! timeout and answers 408 `… currently replaced`, `from_event_id` counts only newer events, and
//! `stopped` without a version is 400 (as the docs say, §4.4); an exit by signal reports
//! `exit_code` 128+signal; the default lease TTL is 30 s and a TTL above a day is 400; an API
//! `stop` of an `auto_destroy` machine destroys it; a duplicate machine name is 409
//! `already_exists: …`; 403 for a token not scoped to the app; stop/start of a machine already
//! stopped/started are 200 / 412 `machine still active, refusing to start`; suspend of a machine
//! with more than 2 GB, swap or a schedule is 412; delete of an app with running machines and no
//! `force` is 412; exec runs at most 300 s (default 30 s), then 408.
//!
//! Requests are validated as Fly does (module `validate`): JSON types against the spec (a wrong
//! type is Go's `json: cannot unmarshal …` 400), restart policy, stop signal, schedule, and guest
//! sizes (shared: 1, 2, 4, 6, 8 CPUs with 256–2048 MB each; performance: 1–16 CPUs with
//! 2048–8192 MB each; memory in 256 MB steps). Every answer has a `fly-request-id` header; a
//! handler that panics answers 500 and leaves its machine usable. Routes of the spec the emulator
//! does not serve answer 501 naming the route.
//!
//! Rate limits: 1 req/s burst 3 per (action, machine or app) for every action including `wait`,
//! events, leases and metadata; get machine 5 req/s burst 10. The tokenless unix socket serves
//! every app (Fly's `/.fly/api` is scoped to the machine's own app).

mod api;
mod lifecycle;
mod memory;
mod process;
mod settings;
mod validate;
mod world;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

pub use settings::{Capacity, EmulatorSettings, Faults, Image, Latencies, SettingsError, env};
pub use world::{Ledger, LedgerMachine, MachineSnapshot};

use lifecycle::Shared;

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// Binding the port or socket, or starting the spawner thread, failed.
    #[error("emulator: {0}")]
    Io(#[from] std::io::Error),
}

/// The emulator; see [`Emulator::start`].
#[derive(Debug, Clone, Copy)]
pub struct Emulator;

impl Emulator {
    /// Binds 127.0.0.1 (on `settings.port` or a free port) and a unix socket, and serves the
    /// API until the handle is shut down or dropped. Must be called within a tokio runtime.
    pub async fn start(settings: EmulatorSettings) -> Result<EmulatorHandle, EmulatorError> {
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", settings.port.unwrap_or(0))).await?;
        let port = listener.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}");
        let socket_path = std::env::temp_dir().join(format!(
            "flyjobs-emulator-{}-{port}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&socket_path);
        let unix = tokio::net::UnixListener::bind(&socket_path)?;
        let spawner = process::Spawner::new(tokio::runtime::Handle::current())?;
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            faults: Mutex::new(settings.faults.clone()),
            world: Mutex::new(world::World::default()),
            limiter: Mutex::new(world::RateLimiter::default()),
            changed,
            spawner,
            base_url: base_url.clone(),
            socket_path: socket_path.clone(),
            closing: Default::default(),
            settings,
        });
        {
            let mut w = shared.world();
            for app in &shared.settings.apps {
                api::insert_app(&mut w, app, "personal", "default");
            }
        }
        let tcp_router = api::router(api::Ctx {
            shared: shared.clone(),
            tokenless: false,
        });
        let unix_router = api::router(api::Ctx {
            shared: shared.clone(),
            tokenless: true,
        });
        let mut tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(listener, tcp_router).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(unix, unix_router).await;
            }),
        ];
        if shared.settings.memory_limits {
            tasks.push(tokio::spawn(memory::watch(shared.clone())));
        }
        Ok(EmulatorHandle {
            shared,
            tasks,
            base_url,
            socket_path,
        })
    }
}

/// A running emulator. Dropping it (or [`EmulatorHandle::shutdown`]) stops serving and kills
/// every machine process.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    base_url: String,
    socket_path: PathBuf,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// `http://127.0.0.1:PORT`; clients append `/v1/...`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The unix socket serving the API without a token (given to machines as `FLY_API_SOCKET`).
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The billing ledger now.
    pub fn ledger(&self) -> Ledger {
        Ledger::from_world(&self.shared.world())
    }

    /// Snapshot of the machines of `app` (destroyed ones included), oldest first.
    pub fn machines(&self, app: &str) -> Vec<MachineSnapshot> {
        let w = self.shared.world();
        let mut ms: Vec<_> = w.machines.values().filter(|m| m.app == app).collect();
        ms.sort_by_key(|m| m.created_at);
        ms.into_iter().map(MachineSnapshot::from).collect()
    }

    /// The captured stdout+stderr of a machine.
    pub fn logs(&self, app: &str, id: &str) -> Option<String> {
        let w = self.shared.world();
        let m = w.machines.get(id).filter(|m| m.app == app)?;
        let bytes = m.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Replaces the fault injection settings.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Creates an app (no-op if it exists).
    pub fn create_app(&self, name: &str) {
        api::insert_app(&mut self.shared.world(), name, "personal", "default");
    }

    /// Stops serving and kills every machine process.
    pub async fn shutdown(mut self) {
        self.stop();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }

    fn stop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.kill_all();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs an emulator until Ctrl-C (what `flyjobs emulator --port N` does); prints the base URL.
pub async fn run_standalone(
    mut settings: EmulatorSettings,
    port: Option<u16>,
) -> Result<(), EmulatorError> {
    if port.is_some() {
        settings.port = port;
    }
    let emu = Emulator::start(settings).await?;
    println!("flyjobs emulator listening on {}", emu.base_url());
    let _ = tokio::signal::ctrl_c().await;
    emu.shutdown().await;
    Ok(())
}
