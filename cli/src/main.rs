//! `flyjobs`: run workers, the scaler, the emulator and the demo; enqueue and inspect jobs.
//!
//! Command jobs are the built-in job kind: the payload is `{"argv": [...], "env": {...}}` and
//! exit status 0 is success. They make flyjobs usable with no language binding at all.

mod command;
mod demo;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flyjobs::job::{JobId, JobState, NewJob};
use flyjobs::store::WorkerState;
use flyjobs::worker::WorkerOptions;
use flyjobs::{Client, Config};

#[derive(Parser)]
#[command(
    name = "flyjobs",
    version,
    about = "Background jobs on on-demand Fly Machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a worker: claim command jobs of the queues and run them.
    Worker(WorkerArgs),
    /// Run the scaler standalone (boots machines for queued jobs).
    Scaler {
        /// Do one tick and exit.
        #[arg(long)]
        once: bool,
        /// Clear the recorded boot failures (all queues, or `--queue`), so that queues whose
        /// machines kept failing at boot get machines again; then exit.
        #[arg(long)]
        reset_failures: bool,
        /// With `--reset-failures`: only this queue.
        #[arg(long, requires = "reset_failures")]
        queue: Option<String>,
    },
    /// Enqueue a command job: `flyjobs enqueue --queue q -- CMD ARGS…`.
    Enqueue(EnqueueArgs),
    /// Per-queue counts and workers.
    Status,
    /// List jobs in a state.
    Jobs {
        /// scheduled, ready, running, completed, dead or discarded.
        #[arg(long, default_value = "dead")]
        state: String,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Most rows to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Move a dead job back to ready.
    Retry {
        /// The job id.
        id: i64,
    },
    /// Run the Machines API emulator standalone. Every flag has a FLYJOBS_EMULATOR_* variable
    /// (the flag wins); tokens only come from FLYJOBS_EMULATOR_TOKENS or a file, never argv.
    Emulator(Box<EmulatorArgs>),
    /// Serve the web dashboard: queues, jobs, dead set, scheduled jobs, machines, boot
    /// failures. Needs FLYJOBS_DASHBOARD_TOKEN (basic-auth password or bearer token) unless
    /// `--no-auth` on a loopback address.
    Dashboard {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9292")]
        bind: std::net::SocketAddr,
        /// Serve without a login (only allowed on a loopback address).
        #[arg(long)]
        no_auth: bool,
        /// Show no actions and refuse every change.
        #[arg(long)]
        read_only: bool,
    },
    /// The demo: 200 command jobs in two queues on the embedded emulator + SQLite.
    Demo(demo::DemoArgs),
    /// Serve an app's shared local Machines API (started by the app's processes off Fly).
    #[command(hide = true)]
    LocalApi {
        /// The state directory the starting process prepared.
        state: std::path::PathBuf,
    },
}

/// Flags of `flyjobs emulator`: each is mapped onto its FLYJOBS_EMULATOR_* name and parsed by
/// `EmulatorSettings::from_lookup`, the parser the embedded default uses too.
#[derive(clap::Args)]
struct EmulatorArgs {
    /// Port on 127.0.0.1 (0 = any free port) [env FLYJOBS_EMULATOR_PORT; default 4280].
    #[arg(long)]
    port: Option<u16>,
    /// `fly` (Fly-like latencies, rate limits on) or `none` [env FLYJOBS_EMULATOR_LATENCY].
    #[arg(long)]
    latency: Option<String>,
    /// From create to `started`, e.g. 1500ms [env FLYJOBS_EMULATOR_CREATE_LATENCY].
    #[arg(long, value_name = "DURATION")]
    create_latency: Option<String>,
    /// From start of a stopped machine to `started` [env FLYJOBS_EMULATOR_START_LATENCY].
    #[arg(long, value_name = "DURATION")]
    start_latency: Option<String>,
    /// From start of a suspended machine to `started` [env FLYJOBS_EMULATOR_RESUME_LATENCY].
    #[arg(long, value_name = "DURATION")]
    resume_latency: Option<String>,
    /// `on` or `off`: Fly's per-action rate limits [env FLYJOBS_EMULATOR_RATE_LIMITS].
    #[arg(long, value_name = "on|off")]
    rate_limits: Option<String>,
    /// `on` or `off`: OOM-kill a machine whose resident memory exceeds its guest.memory_mb
    /// [env FLYJOBS_EMULATOR_MEMORY_LIMITS; default on].
    #[arg(long, value_name = "on|off")]
    memory_limits: Option<String>,
    /// Capacity: `CPUS:MEMORY_MB` for every region and/or `REGION=CPUS:MEMORY_MB`, comma
    /// separated or repeated [env FLYJOBS_EMULATOR_CAPACITY].
    #[arg(long, value_name = "[REGION=]CPUS:MB")]
    capacity: Vec<String>,
    /// Accepted tokens, one `TOKEN[@APP1+APP2]` per line; any other token gets 401
    /// [env FLYJOBS_EMULATOR_TOKENS_FILE, or the tokens in FLYJOBS_EMULATOR_TOKENS].
    #[arg(long, value_name = "PATH")]
    tokens_file: Option<String>,
    /// Fraction (0-1) of requests answered 429 [env FLYJOBS_EMULATOR_FAULT_429].
    #[arg(long = "fault-429", value_name = "RATE")]
    fault_429: Option<String>,
    /// Fraction of requests answered 503 [env FLYJOBS_EMULATOR_FAULT_5XX].
    #[arg(long = "fault-5xx", value_name = "RATE")]
    fault_5xx: Option<String>,
    /// Fraction of creates refused for capacity [env FLYJOBS_EMULATOR_FAULT_CAPACITY].
    #[arg(long, value_name = "RATE")]
    fault_capacity: Option<String>,
    /// Fraction of requests delayed [env FLYJOBS_EMULATOR_FAULT_DELAY].
    #[arg(long, value_name = "RATE")]
    fault_delay: Option<String>,
    /// How long a delayed request waits (default 2s) [env FLYJOBS_EMULATOR_FAULT_DELAY_FOR].
    #[arg(long, value_name = "DURATION")]
    fault_delay_for: Option<String>,
    /// Fraction of creates performed whose response is lost [env FLYJOBS_EMULATOR_FAULT_DROP_CREATE].
    #[arg(long, value_name = "RATE")]
    fault_drop_create: Option<String>,
    /// Region of machines created without one [env FLYJOBS_EMULATOR_REGION; default lax].
    #[arg(long)]
    region: Option<String>,
    /// An app that exists from the start (repeatable) [env FLYJOBS_EMULATOR_APPS].
    #[arg(long = "app")]
    apps: Vec<String>,
    /// Map an image ref to a directory and default command (the image's CMD, run by a create
    /// that gives only `image`): `--image 'registry.fly.io/app:tag=/srv/app:bin/worker --wait 5'`
    /// (repeatable) [env FLYJOBS_EMULATOR_IMAGES, one per line].
    #[arg(long = "image", value_name = "REF=DIR[:CMD]")]
    images: Vec<String>,
}

impl EmulatorArgs {
    /// The flags as FLYJOBS_EMULATOR_* values; what is not given falls back to the env.
    fn settings(self) -> anyhow::Result<flyjobs_emulator::EmulatorSettings> {
        use flyjobs_emulator::env;
        let mut flags: std::collections::HashMap<&str, String> = Default::default();
        let joined = |v: Vec<String>, sep: &str| (!v.is_empty()).then(|| v.join(sep));
        for (name, value) in [
            (env::PORT, self.port.map(|p| p.to_string())),
            (env::LATENCY, self.latency),
            (env::CREATE_LATENCY, self.create_latency),
            (env::START_LATENCY, self.start_latency),
            (env::RESUME_LATENCY, self.resume_latency),
            (env::RATE_LIMITS, self.rate_limits),
            (env::MEMORY_LIMITS, self.memory_limits),
            (env::CAPACITY, joined(self.capacity, ",")),
            (env::TOKENS_FILE, self.tokens_file),
            (env::FAULT_429, self.fault_429),
            (env::FAULT_5XX, self.fault_5xx),
            (env::FAULT_CAPACITY, self.fault_capacity),
            (env::FAULT_DELAY, self.fault_delay),
            (env::FAULT_DELAY_FOR, self.fault_delay_for),
            (env::FAULT_DROP_CREATE, self.fault_drop_create),
            (env::REGION, self.region),
            (env::APPS, joined(self.apps, ",")),
            (env::IMAGES, joined(self.images, "\n")),
        ] {
            if let Some(v) = value {
                flags.insert(name, v);
            }
        }
        let mut settings = flyjobs_emulator::EmulatorSettings::from_lookup(|k| {
            flags.get(k).cloned().or_else(|| std::env::var(k).ok())
        })?;
        settings.port.get_or_insert(4280);
        Ok(settings)
    }
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Queues to serve, comma separated (default: FLYJOBS_WORKER_QUEUES, else `default`).
    #[arg(long)]
    queues: Option<String>,
    /// Seconds to linger idle, or `forever` (default: the queue's `wait`).
    #[arg(long)]
    wait: Option<String>,
    /// Jobs run at once (default: the queue's `concurrency`).
    #[arg(long)]
    concurrency: Option<u32>,
    /// What to do when idle time is up: none (exit), stop (exit; machine kept), suspend
    /// (default: the queue's `pool`).
    #[arg(long)]
    pool: Option<String>,
}

#[derive(clap::Args)]
struct EnqueueArgs {
    /// Queue name.
    #[arg(long, default_value = "default")]
    queue: String,
    /// Run at this time (RFC 3339).
    #[arg(long, conflicts_with = "delay")]
    at: Option<String>,
    /// Run after this long (`30s`, `5m`).
    #[arg(long = "in")]
    delay: Option<String>,
    /// Lower runs first.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Attempts before the job goes dead.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// The machine size this job runs on (`performance-2x`, `shared-cpu-1x:1024`); default:
    /// the queue's.
    #[arg(long)]
    machine: Option<String>,
    /// Region code(s) for its machine (`ams` or `ams,fra`); default: the queue's.
    #[arg(long)]
    region: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

fn main() {
    init_tracing();
    let cli = Cli::parse();
    let rt = flyjobs::runtime::runtime();
    let result = rt.block_on(run(cli));
    if let Err(e) = result {
        eprintln!("flyjobs: {e:#}");
        std::process::exit(1);
    }
}

fn init_tracing() {
    let filter = std::env::var("FLYJOBS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The client of every subcommand: settings from the environment, this binary's `worker` as
/// the worker machines' command, and off Fly the app's shared local Machines API (this
/// binary's `local-api`), so that `flyjobs scaler` and `flyjobs status` see the same machines
/// as the app's other processes.
async fn open() -> anyhow::Result<Client> {
    let config = Config::from_env()?;
    let exe = command::self_command()[0].clone();
    Ok(
        flyjobs_embedded::shared_builder(config, vec![exe, "local-api".into()])
            .default_worker_command(command::self_command())
            .open()
            .await?,
    )
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(args) => {
            let client = open().await?;
            let mut options = serde_json::Map::new();
            options.insert("queues".into(), serde_json::json!(args.queues));
            options.insert("wait".into(), serde_json::json!(args.wait));
            options.insert("pool".into(), serde_json::json!(args.pool));
            options.insert("concurrency".into(), serde_json::json!(args.concurrency));
            let options = WorkerOptions::from_options(client.config(), &options)?;
            command::run_worker(client, options).await
        }
        Command::Scaler {
            once,
            reset_failures,
            queue,
        } => {
            let client = open().await?;
            if reset_failures {
                let n = client
                    .store()
                    .clear_boot_failures(queue.as_deref())
                    .await
                    .context("reset boot failures")?;
                println!(
                    "cleared {n} boot failure(s){}; the scaler boots machines again",
                    queue.map(|q| format!(" of queue {q}")).unwrap_or_default()
                );
                return Ok(());
            }
            if once {
                let scaler = client
                    .build_scaler(flyjobs::scaler::ScalerOptions::default())
                    .await
                    .context("scaler")?;
                let report = scaler.tick().await.context("scaler tick")?;
                println!("{report:?}");
                return Ok(());
            }
            // Listen before starting: a SIGTERM during start-up must not kill us with the lock.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut int =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
            client.start_scaler().await.context("scaler")?;
            eprintln!("flyjobs: scaler running; Ctrl-C or SIGTERM to stop");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            // Stops the loop and releases the leader lock, so another scaler takes over at
            // once instead of after the lock's TTL.
            client.shutdown().await;
            eprintln!("flyjobs: scaler stopped");
            Ok(())
        }
        Command::Enqueue(args) => {
            // Checked before anything is opened or written.
            let run_at = match (args.at, args.delay) {
                (Some(at), _) => Some(
                    chrono::DateTime::parse_from_rfc3339(&at)
                        .with_context(|| format!("--at must be RFC 3339: {at:?}"))?
                        .with_timezone(&chrono::Utc),
                ),
                (None, Some(d)) => Some(run_after(&d)?),
                (None, None) => None,
            };
            let string = |s: Option<String>| s.map(serde_json::Value::String);
            let shape = flyjobs::placement::Shape::from_job(
                string(args.machine).as_ref(),
                string(args.region).as_ref(),
            )?;
            let client = open().await?;
            let mut job = NewJob::new(args.queue, command::payload(&args.argv));
            job.name = "command".into();
            job.priority = args.priority;
            job.max_attempts = args.max_attempts;
            job.run_at = run_at;
            job.shape = shape.key();
            let job = client.enqueue(job).await.context("enqueue")?;
            println!("{}", job.id);
            Ok(())
        }
        Command::Dashboard {
            bind,
            no_auth,
            read_only,
        } => {
            // Checked before anything is opened: a bad bind or a missing token fails at once.
            let auth = flyjobs_dashboard::server::Auth::for_bind(
                bind,
                std::env::var("FLYJOBS_DASHBOARD_TOKEN").ok(),
                no_auth,
            )
            .map_err(anyhow::Error::msg)?;
            let client = open().await?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("bind {bind}"))?;
            let dashboard = flyjobs_dashboard::Dashboard::new(
                client.clone(),
                flyjobs_dashboard::DashboardOptions { read_only },
            );
            // The address actually bound (port 0 picks one), for scripts to read.
            println!("flyjobs dashboard on http://{}/", listener.local_addr()?);
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = flyjobs_dashboard::server::serve(listener, dashboard, auth) => r?,
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            client.shutdown().await;
            Ok(())
        }
        Command::Status => status(open().await?).await,
        Command::Jobs {
            state,
            queue,
            limit,
        } => {
            let state: JobState = state.parse()?;
            let client = open().await?;
            let jobs = client
                .jobs(flyjobs::store::JobFilter {
                    state: Some(state),
                    queue,
                    limit: limit as usize,
                    ..Default::default()
                })
                .await
                .context("list jobs")?;
            println!(
                "{:>8}  {:<12} {:<10} {:>8}  {:<20} {:<20} error",
                "id", "queue", "name", "attempts", "run_at", "machine"
            );
            for j in jobs {
                let err = j
                    .last_error
                    .as_ref()
                    .map(|f| format!("{}: {}", f.class, f.message))
                    .unwrap_or_default();
                println!(
                    "{:>8}  {:<12} {:<10} {:>8}  {:<20} {:<20} {}",
                    j.id,
                    j.queue,
                    j.name,
                    j.attempts,
                    j.run_at.format("%Y-%m-%d %H:%M:%S"),
                    if j.shape.is_empty() {
                        "default"
                    } else {
                        &j.shape
                    },
                    err
                );
            }
            Ok(())
        }
        Command::Retry { id } => {
            let client = open().await?;
            client.retry(JobId(id)).await.context("retry")?;
            println!("job {id} is ready again");
            Ok(())
        }
        Command::Emulator(args) => {
            let settings = (*args).settings()?;
            let handle = flyjobs_emulator::Emulator::start(settings)
                .await
                .context("emulator")?;
            println!(
                "flyjobs emulator: Machines API on {}/v1 (Ctrl-C to stop)",
                handle.base_url()
            );
            let _ = tokio::signal::ctrl_c().await;
            handle.shutdown().await;
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::LocalApi { state } => Ok(flyjobs_embedded::serve(&state).await?),
    }
}

/// `now + --in`, refusing a delay too large to be a date (instead of panicking on overflow).
fn run_after(value: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let d = flyjobs::config::parse_duration("--in", value)?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
        .filter(|t| t.timestamp() < 253_402_300_800) // before year 10000: every store keeps it
        .with_context(|| format!("--in {value:?} is too far in the future"))
}

async fn status(client: Client) -> anyhow::Result<()> {
    let stats = client.stats().await.context("stats")?;
    let workers = client.workers().await.context("workers")?;
    // Best effort: off Fly with no local API running there are no machines to count.
    if let Err(e) = client.record_usage().await {
        eprintln!("flyjobs: could not count machine usage: {e}");
    }
    let today = client
        .usage(flyjobs::cost::today_utc(chrono::Utc::now()))
        .await
        .context("machine usage")?
        .per_queue();
    println!(
        "{:<16} {:>7} {:>9} {:>7} {:>6} {:>10}   {:>7} {:>6} {:>9}   {:>12}",
        "queue",
        "ready",
        "scheduled",
        "running",
        "dead",
        "oldest",
        "workers",
        "idle",
        "suspended",
        "cost today"
    );
    for s in stats {
        let mine: Vec<_> = workers
            .iter()
            .filter(|w| w.queues.contains(&s.queue))
            .collect();
        let idle = mine.iter().filter(|w| w.state == WorkerState::Idle).count();
        let suspended = mine
            .iter()
            .filter(|w| w.state == WorkerState::Suspended)
            .count();
        let spent = today.get(&s.queue).copied().unwrap_or_default();
        let budget = client.config().queue(&s.queue).budget;
        let over = budget.and_then(|b| b.exhausted(&spent));
        println!(
            "{:<16} {:>7} {:>9} {:>7} {:>6} {:>10}   {:>7} {:>6} {:>9}   {:>12}{}",
            s.queue,
            s.ready,
            s.scheduled,
            s.running,
            s.dead,
            s.oldest_ready_age
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            mine.len(),
            idle,
            suspended,
            format!("${:.4}", spent.1),
            match (budget, over) {
                (_, Some(why)) => format!("  {why}: no machines until midnight UTC"),
                (Some(b), None) => format!("  (budget {b})"),
                _ => String::new(),
            }
        );
    }
    let failures = client
        .store()
        .boot_failures(10)
        .await
        .context("boot failures")?;
    if !failures.is_empty() {
        println!(
            "\nrecent boot failures (newest first; `flyjobs scaler --reset-failures` clears):"
        );
        for f in &failures {
            println!(
                "  {} queue={} machine={} exit={} {}{}: {}",
                f.at.format("%Y-%m-%d %H:%M:%S"),
                f.queue,
                f.machine_id,
                f.exit_code
                    .map_or_else(|| "-".to_string(), |c| c.to_string()),
                f.release,
                if f.cleared { " (cleared)" } else { "" },
                f.reason
            );
            for line in f
                .log_tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("      | {line}");
            }
        }
    }
    let machines = client.machines().await.context("machines")?;
    println!(
        "\n{:<16} {:<10} {:<8} {:<16} {:<12} {:>5} {:>7}",
        "machine", "state", "region", "queue", "size", "cpus", "memory"
    );
    for m in &machines {
        println!(
            "{:<16} {:<10} {:<8} {:<16} {:<12} {:>5} {:>7}",
            m.id,
            m.state,
            m.region.as_deref().unwrap_or("-"),
            m.queue.as_deref().unwrap_or("-"),
            m.cpu_kind.as_deref().unwrap_or("-"),
            m.cpus.map_or_else(|| "-".into(), |c| c.to_string()),
            m.memory_mb.map_or_else(|| "-".into(), |c| format!("{c}MB")),
        );
    }
    if machines.is_empty() {
        println!("(no worker machines)");
    }
    Ok(())
}
