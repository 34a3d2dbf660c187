//! Command jobs: payload `{"argv": [...], "env": {...}}`; exit status 0 is success.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use flyjobs::Client;
use flyjobs::job::Failure;
use flyjobs::worker::{WorkerLease, WorkerOptions};
use serde::Deserialize;
use tokio::process::Command;
use tracing::{info, warn};

/// The payload of a command job.
#[derive(Debug, Deserialize)]
struct CommandJob {
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Build the payload for `argv`.
pub fn payload(argv: &[String]) -> serde_json::Value {
    serde_json::json!({ "argv": argv })
}

/// The command that runs this binary's worker (what the scaler puts in a machine's init.cmd).
pub fn self_command() -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "flyjobs".into());
    vec![exe, "worker".into()]
}

/// Run a worker for command jobs until it is idle for `wait` or receives SIGTERM/SIGINT.
pub async fn run_worker(client: Client, options: WorkerOptions) -> anyhow::Result<()> {
    let concurrency = options.concurrency;
    let shutdown_timeout = client.config().shutdown_timeout();
    let worker = client
        .worker(options)
        .await
        .context("starting the worker")?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let worker = worker.clone();
        tasks.spawn(async move {
            loop {
                match worker.next().await {
                    Ok(Some(lease)) => run_one(lease).await,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let signalled = tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => true,
        () = async { while tasks.join_next().await.is_some() {} } => false,
    };
    if signalled {
        info!(
            worker = worker.id(),
            "signal received: quiet, finishing running jobs"
        );
        worker.quiet();
        let deadline = shutdown_timeout;
        // Running jobs get until the deadline; whatever is left is released by stop().
        let _ = tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        worker.stop(Duration::ZERO).await;
        tasks.abort_all();
    } else {
        worker.stop(Duration::ZERO).await;
    }
    Ok(())
}

async fn run_one(lease: WorkerLease) {
    let job = lease.job();
    let id = job.id;
    let parsed: Result<CommandJob, _> = serde_json::from_value(job.payload.clone());
    let result = match parsed {
        Err(e) => Err(Failure {
            class: "FlyJobs::InvalidPayload".into(),
            message: format!("a command job's payload must be {{\"argv\": [...]}}: {e}"),
            backtrace: Vec::new(),
        }),
        Ok(cmd) if cmd.argv.is_empty() => Err(Failure {
            class: "FlyJobs::InvalidPayload".into(),
            message: "a command job needs a non-empty argv".into(),
            backtrace: Vec::new(),
        }),
        Ok(cmd) => run_command(&cmd).await,
    };
    let outcome = match result {
        Ok(()) => lease.complete().await.map(|()| "completed".to_string()),
        Err(failure) => lease.fail(failure).await.map(|o| format!("{o:?}")),
    };
    match outcome {
        Ok(o) => info!(job = %id, outcome = %o, "job finished"),
        Err(e) => warn!(job = %id, error = %e, "could not record the job's outcome"),
    }
}

/// Kills a job's whole process group when dropped (the worker aborted the job at its stop
/// deadline; the job was released): nothing it started keeps running behind our back.
struct GroupGuard(Option<nix::unistd::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

async fn run_command(cmd: &CommandJob) -> Result<(), Failure> {
    let mut command = Command::new(&cmd.argv[0]);
    command
        .args(&cmd.argv[1..])
        .envs(&cmd.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::piped())
        // Its own process group: a Ctrl-C in the worker's terminal (SIGINT to the foreground
        // group) reaches the worker, which stops gracefully, and not the job, which would
        // otherwise die and count a failed attempt.
        .process_group(0)
        .kill_on_drop(true);
    // Out of the worker's group, the job would outlive a worker killed outright (SIGKILL, a
    // crash): have the kernel kill it when the worker dies.
    let worker_pid = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (prctl, getppid); it touches no memory of the parent's.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            // The worker may have died before the line above: then no signal would come.
            if nix::unistd::getppid().as_raw().cast_unsigned() != worker_pid {
                return Err(std::io::Error::other("the worker exited"));
            }
            Ok(())
        });
    }
    // A worker never hands an API token to a job, whatever its own environment holds.
    for (name, _) in std::env::vars_os() {
        if let Some(n) = name.to_str()
            && flyjobs::fork::is_token_var(n)
            && !cmd.env.contains_key(n)
        {
            command.env_remove(n);
        }
    }
    let child = command.spawn().map_err(|e| Failure {
        class: "FlyJobs::CommandNotStarted".into(),
        message: format!("could not start {:?}: {e}", cmd.argv[0]),
        backtrace: Vec::new(),
    })?;
    let mut guard = GroupGuard(
        child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw),
    );
    let output = child.wait_with_output().await.map_err(|e| Failure {
        class: "FlyJobs::CommandNotStarted".into(),
        message: format!("could not wait for {:?}: {e}", cmd.argv[0]),
        backtrace: Vec::new(),
    })?;
    // Finished: leftovers of its group are its own business (daemons it meant to start are
    // rare in jobs, but the group id may be reused once the leader is reaped).
    guard.0 = None;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<String> = stderr
        .lines()
        .rev()
        .take(20)
        .map(str::to_string)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(Failure {
        class: "FlyJobs::CommandFailed".into(),
        message: match output.status.code() {
            Some(code) => format!("{:?} exited with status {code}", cmd.argv[0]),
            None => format!("{:?} was killed by a signal", cmd.argv[0]),
        },
        backtrace: tail,
    })
}
