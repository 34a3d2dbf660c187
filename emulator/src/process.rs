//! Machine processes: spawned from one long-lived thread, each in its own process group, killed
//! with the emulator.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. Tokio's
//! blocking/worker threads come and go, so children are forked from a dedicated spawner thread
//! that lives exactly as long as the emulator (it ends when the last `Spawner` is dropped, at
//! which point the emulator kills its machines anyway). The thread enters the tokio runtime so the
//! children are tokio `Child`ren that tokio reaps (no zombies).
//!
//! PDEATHSIG only reaches the direct child. For what a machine forks in turn (a shell's
//! children, a worker's subprocesses), a watchdog `sh` holds the list of live process groups,
//! fed line by line over its stdin; when the emulator dies, even by SIGKILL, the pipe closes and
//! the watchdog SIGKILLs every group still listed.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, mpsc};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// What to run for one machine process.
#[derive(Debug, Clone)]
pub(crate) struct ProcSpec {
    pub argv: Vec<String>,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Give the process a stdin pipe (exec with `stdin`); otherwise /dev/null.
    pub stdin: bool,
}

struct SpawnReq {
    spec: ProcSpec,
    reply: oneshot::Sender<io::Result<tokio::process::Child>>,
}

/// The process groups alive, the watchdog's stdin, and whether the emulator is closing: shared
/// by the spawner thread and the emulator, behind one lock so that no spawn can slip past
/// [`Spawner::kill_all`].
#[derive(Default)]
struct Groups {
    live: HashSet<i32>,
    watchdog: Option<std::process::ChildStdin>,
    closing: bool,
}

impl Groups {
    /// Tells the watchdog about a process group (`+`) or that it is gone (`-`).
    fn tell(&mut self, pgid: i32, add: bool) {
        use std::io::Write;
        if let Some(stdin) = self.watchdog.as_mut() {
            let line = format!("{}{pgid}\n", if add { '+' } else { '-' });
            if stdin.write_all(line.as_bytes()).is_err() {
                self.watchdog = None;
            }
        }
    }
}

/// Handle to the spawner thread and the watchdog.
pub(crate) struct Spawner {
    tx: Mutex<mpsc::Sender<SpawnReq>>,
    groups: Arc<Mutex<Groups>>,
}

/// The watchdog: `+PGID` adds a group, `-PGID` removes it; at EOF every listed group is killed.
const WATCHDOG: &str = r#"gs=""
while read -r l; do
  case "$l" in
    +*) gs="$gs ${l#+}" ;;
    -*) n=""; for g in $gs; do [ "$g" = "${l#-}" ] || n="$n $g"; done; gs="$n" ;;
  esac
done
for g in $gs; do kill -9 -"$g" 2>/dev/null; done
"#;

fn start_watchdog() -> Option<std::process::ChildStdin> {
    let mut child = std::process::Command::new("sh")
        .args(["-c", WATCHDOG])
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a Ctrl-C at the terminal must not end it before the emulator.
        .process_group(0)
        .spawn()
        .map_err(|e| tracing::warn!("emulator watchdog not started: {e}"))
        .ok()?;
    let stdin = child.stdin.take();
    // Reap it whenever it ends.
    std::thread::spawn(move || child.wait());
    stdin
}

fn lock(g: &Mutex<Groups>) -> std::sync::MutexGuard<'_, Groups> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

impl Spawner {
    pub fn new(rt: tokio::runtime::Handle) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        let groups = Arc::new(Mutex::new(Groups {
            watchdog: start_watchdog(),
            ..Groups::default()
        }));
        let thread_groups = groups.clone();
        std::thread::Builder::new()
            .name("flyjobs-emulator-spawner".into())
            .spawn(move || {
                // Entering the runtime lets tokio::process register the child with its reaper.
                let _guard = rt.enter();
                for req in rx {
                    // Registered before anyone hears of the child: even if the requester is gone
                    // (runtime shutting down), kill_all and the watchdog know the group.
                    let mut g = lock(&thread_groups);
                    let result = if g.closing {
                        Err(io::Error::other("emulator is shutting down"))
                    } else {
                        spawn_now(&req.spec)
                    };
                    if let Ok(pid) = result.as_ref().map(|c| c.id().unwrap_or(0) as i32) {
                        g.live.insert(pid);
                        g.tell(pid, true);
                    }
                    drop(g);
                    let _ = req.reply.send(result);
                }
            })?;
        Ok(Self {
            tx: Mutex::new(tx),
            groups,
        })
    }

    /// The group's main process exited and the group was killed: forget it.
    pub fn forget(&self, pgid: i32) {
        let mut g = lock(&self.groups);
        g.live.remove(&pgid);
        g.tell(pgid, false);
    }

    /// Refuses further spawns and SIGKILLs every live group.
    pub fn kill_all(&self) {
        let mut g = lock(&self.groups);
        g.closing = true;
        for pgid in &g.live {
            signal_group(*pgid, Signal::SIGKILL);
        }
    }

    pub async fn spawn(&self, spec: ProcSpec) -> io::Result<tokio::process::Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
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

/// Sends `sig` to one process, ignoring one that is already gone.
pub(crate) fn signal_process(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
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
