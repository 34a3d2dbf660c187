//! Machine processes: spawned from one long-lived thread, each in its own process group, killed
//! with the emulator.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Tokio's
//! blocking/worker threads come and go, so children are forked from a dedicated spawner thread
//! that lives exactly as long as the emulator (it ends when the last `Spawner` is dropped, at
//! which point the emulator kills its machines anyway). The thread enters the tokio runtime so the
//! children are tokio `Child`ren that tokio reaps (no zombies).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// What to run for one machine process.
#[derive(Debug, Clone)]
pub(crate) struct ProcSpec {
    pub argv: Vec<String>,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
}

struct SpawnReq {
    spec: ProcSpec,
    reply: oneshot::Sender<io::Result<tokio::process::Child>>,
}

/// Handle to the spawner thread.
pub(crate) struct Spawner {
    tx: std::sync::Mutex<mpsc::Sender<SpawnReq>>,
}

impl Spawner {
    pub fn new(rt: tokio::runtime::Handle) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        std::thread::Builder::new()
            .name("flyjobs-emulator-spawner".into())
            .spawn(move || {
                // Entering the runtime lets tokio::process register the child with its reaper.
                let _guard = rt.enter();
                for req in rx {
                    let _ = req.reply.send(spawn_now(&req.spec));
                }
            })?;
        Ok(Self {
            tx: std::sync::Mutex::new(tx),
        })
    }

    pub async fn spawn(&self, spec: ProcSpec) -> io::Result<tokio::process::Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .lock()
            .expect("spawner lock is never held across a panic")
            .send(SpawnReq { spec, reply })
            .map_err(|_| io::Error::other("emulator spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("emulator spawner thread is gone"))?
    }
}

fn spawn_now(spec: &ProcSpec) -> io::Result<tokio::process::Child> {
    let (prog, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .current_dir(&spec.dir)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: stop/suspend/kill signal the whole machine, not just its init.
        .process_group(0)
        // If the monitor task is dropped (runtime shutting down), the child goes too.
        .kill_on_drop(true);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls async-signal-safe
    // functions (prctl, getppid, _exit); it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the spawner thread, i.e. with the emulator, even if it is SIGKILLed.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The emulator may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `sig` to a process group, ignoring a group that is already gone.
pub(crate) fn signal_group(pgid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Parses a signal name as the API gives it (`SIGINT`, `INT`, or a number).
pub(crate) fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.trim().to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().ok()
}
