//! The machine state machine (machines-api.md §4): launching processes, exits, restart
//! policies, stop/suspend/resume/destroy/replace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::process::{ProcSpec, Spawner, signal_group};
use crate::settings::{EmulatorSettings, Faults};
use crate::world::{Pending, ProcRec, RateLimiter, World, rfc3339};

/// State shared by the HTTP handlers and the machine tasks.
pub(crate) struct Shared {
    pub settings: EmulatorSettings,
    pub world: Mutex<World>,
    pub faults: Mutex<Faults>,
    pub limiter: Mutex<RateLimiter>,
    /// Bumped on every state change; `wait` listens to it.
    pub changed: watch::Sender<u64>,
    pub spawner: Spawner,
    pub base_url: String,
    pub socket_path: PathBuf,
    /// Set at shutdown: no more processes are started (no restart of what shutdown killed).
    pub closing: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn world(&self) -> MutexGuard<'_, World> {
        // A poisoned lock means a bug already panicked; keep serving what is there.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Kills every machine process (shutdown).
    pub fn kill_all(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Every group the spawner made, including one whose launch is still in flight.
        self.spawner.kill_all();
        let w = self.world();
        for m in w.machines.values() {
            if let Some(p) = m.proc {
                signal_group(p.pid, Signal::SIGKILL);
            }
        }
    }
}

/// The argv for a machine: `init.exec`, else `init.entrypoint` + `init.cmd`, else `init.cmd`,
/// else the image's default command.
pub(crate) fn machine_argv(
    shared: &Shared,
    config: &Value,
) -> Result<(Vec<String>, PathBuf), String> {
    let image_name = config.get("image").and_then(Value::as_str).unwrap_or("");
    let image = shared
        .settings
        .images
        .get(image_name)
        .unwrap_or(&shared.settings.default_image);
    let list = |k: &str| -> Vec<String> {
        config
            .pointer(&format!("/init/{k}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (exec, entry, cmd) = (list("exec"), list("entrypoint"), list("cmd"));
    let argv = if !exec.is_empty() {
        exec
    } else if !entry.is_empty() {
        entry.into_iter().chain(cmd).collect()
    } else if !cmd.is_empty() {
        cmd
    } else {
        image.cmd.clone()
    };
    if argv.is_empty() {
        return Err(format!(
            "invalid_argument: nothing to run: config.init has no exec, entrypoint or cmd, and image '{image_name}' has no default command in the emulator"
        ));
    }
    Ok((argv, image.dir.clone()))
}

/// Builds the process spec (argv, dir, env) of a machine. Called under the world lock.
pub(crate) fn proc_spec(shared: &Shared, w: &World, id: &str) -> Result<ProcSpec, String> {
    let m = &w.machines[id];
    let (argv, dir) = machine_argv(shared, &m.config)?;
    let mut env = BTreeMap::new();
    for k in &shared.settings.inherit_env {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.clone(), v);
        }
    }
    if let Some(e) = m.config.get("env").and_then(Value::as_object) {
        for (k, v) in e {
            let v = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            env.insert(k.clone(), v);
        }
    }
    let image = m
        .config
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for (k, v) in [
        ("FLY_APP_NAME", m.app.clone()),
        ("FLY_MACHINE_ID", m.id.clone()),
        ("FLY_ALLOC_ID", m.id.clone()),
        ("FLY_REGION", m.region.clone()),
        ("FLY_IMAGE_REF", image),
        ("FLY_MACHINE_VERSION", m.instance_id.clone()),
        ("FLY_PRIVATE_IP", m.private_ip.clone()),
        ("FLY_VM_MEMORY_MB", m.memory_mb.to_string()),
        ("FLY_API_HOSTNAME", shared.base_url.clone()),
        ("FLY_API_SOCKET", shared.socket_path.display().to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    Ok(ProcSpec {
        argv,
        dir,
        env,
        stdin: false,
    })
}

/// Schedules the machine (now in `starting`) to be started after `delay`: a fresh process, or
/// SIGCONT when `resume`.
/// `seq` is the machine's `op_seq` at scheduling time (a later operation cancels this one).
/// Never takes the world lock itself, so callers may hold it.
pub(crate) fn schedule_start(
    shared: &Arc<Shared>,
    id: &str,
    seq: u64,
    delay: Duration,
    resume: bool,
) {
    let shared = shared.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if resume {
            let mut w = shared.world();
            let Some(m) = w.machines.get_mut(&id) else {
                return;
            };
            if m.op_seq != seq || m.state != "starting" {
                return;
            }
            if let Some(p) = m.proc {
                signal_group(p.pid, Signal::SIGCONT);
            }
            m.event("start", "started", "flyd", json!({}));
            w.set_state(&id, "started");
            drop(w);
            shared.notify();
            return;
        }
        launch(&shared, &id, seq).await;
    });
}

/// After the create latency, moves a freshly created machine to `starting` and launches it.
pub(crate) fn schedule_launch(shared: &Arc<Shared>, id: &str, seq: u64) {
    let shared = shared.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let delay = shared.settings.latencies.create;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        {
            let mut w = shared.world();
            let Some(m) = w.machines.get_mut(&id) else {
                return;
            };
            if m.op_seq != seq || m.state != "created" || !m.launching {
                return;
            }
            m.launching = false;
            w.set_state(&id, "starting");
        }
        shared.notify();
        launch(&shared, &id, seq).await;
    });
}

/// Starts a fresh process for a machine in `starting`.
async fn launch(shared: &Arc<Shared>, id: &str, seq: u64) {
    let spec = {
        let w = shared.world();
        let Some(m) = w.machines.get(id) else { return };
        if m.op_seq != seq || m.state != "starting" {
            return;
        }
        proc_spec(shared, &w, id)
    };
    if shared.closing.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let spawned = match spec {
        Ok(spec) => shared
            .spawner
            .spawn(spec)
            .await
            .map_err(|e| format!("failed to spawn machine process: {e}")),
        Err(e) => Err(e),
    };
    let mut w = shared.world();
    let Some(m) = w.machines.get_mut(id) else {
        return;
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            append_log(
                &m.log,
                shared.settings.log_limit,
                format!("[emulator] {e}\n").as_bytes(),
            );
            if m.op_seq == seq && m.state == "starting" {
                m.event("launch", "failed", "flyd", json!({"error": e}));
                w.set_state(id, "failed");
                drop(w);
                shared.notify();
            }
            return;
        }
    };
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    if m.op_seq != seq
        || m.state != "starting"
        || shared.closing.load(std::sync::atomic::Ordering::SeqCst)
    {
        // Superseded (destroyed/stopped) while spawning; the kill_on_drop child is reaped by tokio.
        signal_group(pid, Signal::SIGKILL);
        drop(w);
        shared.spawner.forget(pid);
        return;
    }
    m.generation += 1;
    let generation = m.generation;
    m.proc = Some(ProcRec { pid, generation });
    m.last_pid = Some(pid);
    m.event("start", "started", "flyd", json!({}));
    let log = m.log.clone();
    w.set_state(id, "started");
    drop(w);
    shared.notify();

    let limit = shared.settings.log_limit;
    let pipes: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut readers = Vec::new();
    for mut pipe in pipes {
        let log = log.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                append_log(&log, limit, &buf[..n]);
            }
        }));
    }
    let shared = shared.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let status = child.wait().await;
        // Whatever the init left behind dies with the "VM" (also closes the pipes).
        signal_group(pid, Signal::SIGKILL);
        shared.spawner.forget(pid);
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        let (code, sig) = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(c), _) => (c, -1),
                    (None, Some(sg)) => (128 + sg, sg),
                    _ => (-1, -1),
                }
            }
            Err(_) => (-1, -1),
        };
        on_exit(&shared, &id, generation, code, sig);
    });
}

pub(crate) fn append_log(log: &Mutex<Vec<u8>>, limit: usize, bytes: &[u8]) {
    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
    l.extend_from_slice(bytes);
    if l.len() > limit {
        let cut = l.len() - limit;
        l.drain(..cut);
    }
}

/// The process of a machine exited: exit event, then restart policy / stop / destroy / replace.
fn on_exit(shared: &Arc<Shared>, id: &str, generation: u64, code: i32, sig: i32) {
    let mut w = shared.world();
    let Some(m) = w.machines.get_mut(id) else {
        return;
    };
    if m.proc.map(|p| p.generation) != Some(generation) {
        return;
    }
    m.proc = None;
    let oom_killed = m.oom_killed_generation == Some(generation);
    let pending = std::mem::replace(&mut m.pending, Pending::None);
    let requested_stop = pending != Pending::None;
    let auto_destroy = m
        .config
        .get("auto_destroy")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let policy = m
        .config
        .pointer("/restart/policy")
        .and_then(Value::as_str)
        .unwrap_or("on-failure");
    let policy = if policy.is_empty() {
        "on-failure"
    } else {
        policy
    };
    let max_retries = m
        .config
        .pointer("/restart/max_retries")
        .and_then(Value::as_u64)
        .unwrap_or(10) as u32;
    let closing = shared.closing.load(std::sync::atomic::Ordering::SeqCst);
    let restarting = !requested_stop
        && !closing
        && match policy {
            "always" => true,
            "on-failure" => code != 0 && m.restart_count < max_retries,
            _ => false,
        };
    let exit_event = json!({
        "exit_code": code,
        "guest_exit_code": code,
        "guest_signal": sig,
        "signal": sig,
        "oom_killed": oom_killed,
        "requested_stop": requested_stop,
        "restarting": restarting,
        "exited_at": rfc3339(SystemTime::now()),
    });
    m.event(
        "exit",
        "stopped",
        "flyd",
        json!({"exit_event": exit_event, "restart_count": m.restart_count}),
    );
    if restarting {
        m.restart_count += 1;
        m.op_seq += 1;
        let seq = m.op_seq;
        w.set_state(id, "starting");
        drop(w);
        schedule_start(shared, id, seq, shared.settings.latencies.start, false);
    } else if pending == Pending::Replace && !closing {
        m.op_seq += 1;
        let seq = m.op_seq;
        w.set_state(id, "starting");
        drop(w);
        schedule_start(shared, id, seq, shared.settings.latencies.start, false);
    } else if pending == Pending::Destroy || auto_destroy {
        finish_destroy(&mut w, id);
        drop(w);
    } else {
        w.set_state(id, "stopped");
        drop(w);
    }
    shared.notify();
}

/// Marks a machine destroyed (its process must be gone or being killed).
pub(crate) fn finish_destroy(w: &mut World, id: &str) {
    let Some(m) = w.machines.get_mut(id) else {
        return;
    };
    m.op_seq += 1;
    m.lease = None;
    m.pending = Pending::None;
    m.destroyed_at = Some(Instant::now());
    // Destroyed machines stay in the ledger forever; keep only the tail of their logs.
    let tail = 64 * 1024;
    let mut log = m.log.lock().unwrap_or_else(|e| e.into_inner());
    if log.len() > tail {
        let cut = log.len() - tail;
        log.drain(..cut);
    }
    drop(log);
    m.event("destroy", "destroyed", "user", json!({}));
    w.set_state(id, "destroyed");
}

/// Stops the machine's process: `signal` to the group, SIGKILL after `timeout`. The exit is then
/// handled by the process monitor according to `pending`.
pub(crate) fn stop_process(
    shared: &Arc<Shared>,
    w: &mut World,
    id: &str,
    sig: Signal,
    timeout: Duration,
    pending: Pending,
) {
    let Some(m) = w.machines.get_mut(id) else {
        return;
    };
    m.pending = pending;
    m.op_seq += 1;
    let Some(p) = m.proc else { return };
    let was_suspended = m.state == "suspended";
    if was_suspended {
        // A stopped (SIGSTOP) group would not act on the signal until continued.
        signal_group(p.pid, Signal::SIGKILL);
        signal_group(p.pid, Signal::SIGCONT);
        return;
    }
    // Like a container's init, the stop signal goes to the main process only: it decides what
    // to tell its children (a worker lets running jobs finish). Only the SIGKILL after the
    // timeout takes the whole group.
    crate::process::signal_process(p.pid, sig);
    if m.state == "starting" {
        // Resuming from suspend: the group may still be SIGSTOPped.
        signal_group(p.pid, Signal::SIGCONT);
    }
    if sig == Signal::SIGKILL {
        return;
    }
    let shared = shared.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let w = shared.world();
        if let Some(m) = w.machines.get(&id)
            && let Some(cur) = m.proc
            && cur.generation == p.generation
        {
            signal_group(cur.pid, Signal::SIGKILL);
        }
    });
}
