//! One local Machines API per app, shared by every process of the app.
//!
//! A Puma, gunicorn or Node cluster app has several processes; each opens a client, and the one
//! holding the scaler's leader lock boots machines. If each process ran its own emulator, only
//! the leader's would know the machines, and they would die with it. So the local API runs in a
//! small daemon of its own ([`serve`]), started by the first process that needs it and found by
//! the others through a record in a state directory keyed by the app's queue (its database URL):
//!
//! - `hosts.lock`: every process using the API holds a *shared* `flock` on it for as long as its
//!   client is open. The kernel drops it when the process exits, however it exits (SIGKILL too).
//! - `api.lock`: held *exclusively* while one process looks for a running daemon or starts one,
//!   so two processes never start two.
//! - `api.json`: the daemon's URL and pid, written once it serves.
//! - `daemon.lock`: held by the daemon for its whole life (at most one per state directory).
//!
//! The daemon polls `hosts.lock` for an exclusive lock: when it gets one, no process of the app
//! is left, so it removes its record, stops its machines with their stop signal and grace (a
//! worker then finishes or releases its running jobs instead of being killed mid-job), and
//! exits. A process that starts meanwhile waits for the shared lock, finds no record, and starts
//! a new daemon.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flyjobs::client::{LocalApi, LocalMachines};
use flyjobs::config::Secret;
use flyjobs::fork::EMBEDDED_IMAGE;
use flyjobs::machines::types::{ListMachinesQuery, MachineState, StopRequest, WaitQuery};
use flyjobs::machines::{Machines, MachinesClient, RetryConfig};
use flyjobs::{Error, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::EMBEDDED_APP;

/// How long a stopping worker machine gets between its stop signal and SIGKILL: the worker's
/// own grace (`shutdown_timeout`, 4 s by default) plus a margin to release what is left.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the daemon needs to know, written by the process that starts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    /// Where machines run (the app's directory).
    dir: PathBuf,
    /// The app's worker command: the local image's CMD.
    worker_command: Vec<String>,
}

/// Where a running daemon answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    url: String,
    pid: u32,
}

/// The state directory of the app whose queue is `database_url`: one local API per queue.
pub fn state_dir(database_url: &str) -> PathBuf {
    // FNV-1a: stable across processes and releases (std's hasher is randomly seeded).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in database_url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    std::env::temp_dir().join(format!("flyjobs-local-{h:016x}"))
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::config(format!("local Machines API: {what}: {e}"))
}

fn open_lock(dir: &Path, name: &str) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
        .map_err(io(format!("cannot open {}", dir.join(name).display())))
}

/// Take a lock, blocking this (non-runtime) thread.
fn lock(file: File, arg: FlockArg, what: &str) -> Result<Flock<File>> {
    Flock::lock(file, arg)
        .map_err(|(_, e)| Error::config(format!("local Machines API: {what}: {e}")))
}

fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join("api.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn client_for(url: &str, quick: bool) -> Result<MachinesClient> {
    let mut b = MachinesClient::builder()
        .base_url(url.to_string())
        // The local API accepts any token; this one is throwaway and never given to a machine.
        .token(Secret::new("flyjobs-local"));
    if quick {
        b = b
            .retry(RetryConfig {
                deadline: Duration::ZERO,
                ..RetryConfig::default()
            })
            .request_timeout(Duration::from_secs(2));
    }
    b.build()
}

/// Whether a daemon answers at `record` (its process alive and its API up).
async fn answers(record: &Record) -> bool {
    let alive = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(record.pid).unwrap_or(i32::MAX)),
        None,
    )
    .is_ok();
    if !alive {
        return false;
    }
    match client_for(&record.url, true) {
        Ok(c) => c.get_app(EMBEDDED_APP).await.is_ok(),
        Err(_) => false,
    }
}

/// The embedded default shared through a daemon: see the module docs.
#[derive(Debug, Clone)]
pub struct SharedLocal {
    /// Where machines run.
    pub dir: PathBuf,
    /// The command that runs [`serve`] (the language's entry point, e.g. `flyjobs local-api`);
    /// the state directory is appended.
    pub daemon_command: Vec<String>,
}

struct Connected {
    machines: Arc<dyn Machines>,
    base_url: String,
    /// Our shared lock on `hosts.lock`: the daemon lives while any process holds one.
    host: std::sync::Mutex<Option<HostLock>>,
}

/// The shared lock on `hosts.lock` of the process that took it.
///
/// A child forked from that process shares the lock's open file description, and `flock`
/// locks belong to the description: an unlock in the child (dropping a [`Flock`] unlocks) would
/// drop the parent's share too, and the daemon would stop the app's machines under a live
/// parent. Dropped in another process, it only leaks its descriptor (closed at exit), which
/// leaves the lock to the parent.
struct HostLock {
    lock: Option<Flock<File>>,
    pid: u32,
}

impl HostLock {
    fn new(lock: Flock<File>) -> Self {
        HostLock {
            lock: Some(lock),
            pid: std::process::id(),
        }
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take()
            && self.pid != std::process::id()
        {
            std::mem::forget(lock);
        }
    }
}

#[async_trait]
impl LocalApi for Connected {
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
        // Leave: when the last process of the app leaves, the daemon stops the machines
        // gracefully and exits. Closing the file releases our share of the lock.
        drop(self.host.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

#[async_trait]
impl LocalMachines for SharedLocal {
    fn default_database_url(&self) -> Result<String> {
        Ok(crate::Embedded::database_url_in(&self.dir))
    }

    async fn find(&self, database_url: &str) -> Option<Box<dyn LocalApi>> {
        let r = read_record(&state_dir(database_url))?;
        if !answers(&r).await {
            return None;
        }
        Some(Box::new(Connected {
            machines: Arc::new(client_for(&r.url, false).ok()?),
            base_url: r.url,
            // Looking, not using: this process does not keep the API alive.
            host: std::sync::Mutex::new(None),
        }))
    }

    async fn start(
        &self,
        worker_command: &[String],
        database_url: &str,
    ) -> Result<Box<dyn LocalApi>> {
        let state = state_dir(database_url);
        let spec = Spec {
            dir: self.dir.clone(),
            worker_command: worker_command.to_vec(),
        };
        let command = self.daemon_command.clone();
        // The locks block: take them off the runtime's threads.
        let (host, url) = tokio::task::spawn_blocking(move || -> Result<(Flock<File>, String)> {
            std::fs::create_dir_all(&state)
                .map_err(io(format!("cannot create {}", state.display())))?;
            let host = lock(
                open_lock(&state, "hosts.lock")?,
                FlockArg::LockShared,
                "hosts.lock",
            )?;
            let starting = lock(
                open_lock(&state, "api.lock")?,
                FlockArg::LockExclusive,
                "api.lock",
            )?;
            let rt = flyjobs::runtime::handle();
            if let Some(r) = read_record(&state)
                && rt.block_on(answers(&r))
            {
                drop(starting);
                return Ok((host, r.url));
            }
            let _ = std::fs::remove_file(state.join("api.json"));
            let spec_text = serde_json::to_vec(&spec).map_err(|e| Error::config(e.to_string()))?;
            std::fs::write(state.join("spec.json"), spec_text)
                .map_err(io("cannot write spec.json"))?;
            let url = spawn_and_wait(&command, &state, &rt)?;
            drop(starting);
            Ok((host, url))
        })
        .await
        .map_err(|e| Error::config(format!("local Machines API: {e}")))??;
        info!(url = %url, "using the app's local Machines API");
        Ok(Box::new(Connected {
            machines: Arc::new(client_for(&url, false)?),
            base_url: url,
            host: std::sync::Mutex::new(Some(HostLock::new(host))),
        }))
    }
}

/// Start the daemon in its own process group (a Ctrl-C in the terminal or a signal to the app's
/// group does not reach it: it stops its machines itself, gracefully), then wait for its record.
fn spawn_and_wait(command: &[String], state: &Path, rt: &tokio::runtime::Handle) -> Result<String> {
    use std::os::unix::process::CommandExt;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::config("local Machines API: no daemon command"))?;
    let log = File::create(state.join("daemon.log")).map_err(io("cannot create daemon.log"))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .arg(state)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io("daemon.log"))?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(io(format!("cannot start {program:?}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = read_record(state)
            && rt.block_on(answers(&r))
        {
            // Reap it when it exits, so it does not linger as a zombie of this process.
            std::thread::spawn(move || child.wait());
            return Ok(r.url);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(state.join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            return Err(Error::config(format!(
                "the local Machines API ({program}) exited with {status} before serving: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Error::config(format!(
                "the local Machines API ({program}) did not start within 30 s; see {}",
                state.join("daemon.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run the shared local Machines API for the state directory `state` until no process of the
/// app is left (or SIGTERM/SIGINT), then stop its machines gracefully. What `flyjobs local-api`
/// and each language's entry point run. Returns at once if another daemon serves `state`.
pub async fn serve(state: &Path) -> Result<()> {
    let spec: Spec = serde_json::from_slice(
        &std::fs::read(state.join("spec.json")).map_err(io("cannot read spec.json"))?,
    )
    .map_err(|e| Error::config(format!("local Machines API: bad spec.json: {e}")))?;
    let Ok(_daemon) = Flock::lock(
        open_lock(state, "daemon.lock")?,
        FlockArg::LockExclusiveNonblock,
    ) else {
        info!("another local Machines API serves {}", state.display());
        return Ok(());
    };
    // The daemon inherits the environment of the process that started it: the same
    // FLYJOBS_EMULATOR_* settings as an in-process emulator would read.
    let mut settings = crate::settings_from_env()?;
    settings.images.insert(
        EMBEDDED_IMAGE.to_string(),
        flyjobs_emulator::Image {
            dir: spec.dir.clone(),
            cmd: spec.worker_command.clone(),
        },
    );
    let (handle, machines) = crate::start(settings).await?;
    let record = Record {
        url: handle.base_url().to_string(),
        pid: std::process::id(),
    };
    let tmp = state.join(format!("api.json.{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&record).map_err(|e| Error::config(e.to_string()))?,
    )
    .map_err(io("cannot write api.json"))?;
    std::fs::rename(&tmp, state.join("api.json")).map_err(io("cannot write api.json"))?;
    info!(url = %record.url, "local Machines API serving");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("SIGTERM handler"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io("SIGINT handler"))?;
    // Held from the moment no host is left until we exit: a process that starts meanwhile
    // waits for its shared lock, then finds no record and starts a new daemon.
    let _alone = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let file = open_lock(state, "hosts.lock")?;
        if let Ok(l) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            break Some(l);
        }
    };
    let _ = std::fs::remove_file(state.join("api.json"));
    info!("no process of the app is left: stopping the local machines");
    stop_all(machines.as_ref()).await;
    handle.shutdown().await;
    Ok(())
}

/// Stop every started machine with SIGTERM and a grace, and wait until they are stopped.
async fn stop_all(api: &dyn Machines) {
    let list = match api
        .list_machines(
            EMBEDDED_APP,
            &ListMachinesQuery {
                states: vec![
                    MachineState::Started,
                    MachineState::Starting,
                    MachineState::Created,
                ],
                ..Default::default()
            },
        )
        .await
    {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot list the local machines; they die with the API");
            return;
        }
    };
    let stops = list.iter().map(|m| async move {
        let req = StopRequest::default()
            .with_signal("SIGTERM")
            .with_timeout(STOP_GRACE);
        if let Err(e) = api.stop_machine(EMBEDDED_APP, &m.id, &req, None).await {
            warn!(machine = %m.id, error = %e, "stop failed");
            return;
        }
        let mut q = WaitQuery::state(MachineState::Stopped);
        q.timeout = Some(STOP_GRACE + Duration::from_secs(5));
        q.version = m.instance_id.clone();
        let _ = api.wait_machine(EMBEDDED_APP, &m.id, &q).await;
    });
    futures::future::join_all(stops).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exclusive_now(dir: &Path) -> bool {
        Flock::lock(
            open_lock(dir, "hosts.lock").unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .is_ok()
    }

    #[test]
    fn a_host_lock_dropped_in_a_forked_child_leaves_the_parents_share() {
        let dir = tempfile::tempdir().unwrap();
        let shared = || {
            lock(
                open_lock(dir.path(), "hosts.lock").unwrap(),
                FlockArg::LockShared,
                "hosts.lock",
            )
            .unwrap()
        };
        // What a child sees after fork(): the parent's lock, taken under the parent's pid.
        let mut in_child = HostLock::new(shared());
        in_child.pid = std::process::id().wrapping_add(1);
        drop(in_child);
        assert!(
            !exclusive_now(dir.path()),
            "dropped in another process, the share must stay held"
        );
        // In the process that took it, dropping it gives the share back.
        let dir2 = tempfile::tempdir().unwrap();
        let mine = HostLock::new(
            lock(
                open_lock(dir2.path(), "hosts.lock").unwrap(),
                FlockArg::LockShared,
                "hosts.lock",
            )
            .unwrap(),
        );
        assert!(!exclusive_now(dir2.path()));
        drop(mine);
        assert!(exclusive_now(dir2.path()));
    }
}
