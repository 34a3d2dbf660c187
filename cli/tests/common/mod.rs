//! What the end-to-end test files share: a queue (SQLite, or a fresh PostgreSQL database), the
//! real emulator whose machines run the real `flyjobs worker`, a client over both, and the
//! waits the tests make. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flyjobs::job::{Job, JobId, JobState, NewJob};
use flyjobs::machines::Machines;
use flyjobs::machines::types::{ListMachinesQuery, Machine};
use flyjobs::scaler::{Scaler, ScalerOptions};
use flyjobs::{Client, Config};
use flyjobs_emulator::{EmulatorHandle, EmulatorSettings, Image};

pub const BIN: &str = env!("CARGO_BIN_EXE_flyjobs");

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct Env {
    pub client: Client,
    pub emulator: EmulatorHandle,
    pub machines: Arc<dyn Machines>,
    pub app: String,
    pub dir: tempfile::TempDir,
}

/// The queue's URL: a SQLite file in `dir`, or a fresh database on the test server (None, after
/// saying so, when `FLYJOBS_SKIP_PG=1` asks to skip PostgreSQL tests).
pub async fn database_url(db: Db, dir: &Path) -> Option<String> {
    match db {
        Db::Sqlite => Some(format!("sqlite://{}/q.sqlite3?mode=rwc", dir.display())),
        Db::Postgres => {
            let Ok(base) = std::env::var("FLYJOBS_TEST_DATABASE_URL") else {
                assert!(
                    std::env::var("FLYJOBS_SKIP_PG").is_ok(),
                    "FLYJOBS_TEST_DATABASE_URL is unset: run through scripts/with-postgres.sh (or set FLYJOBS_SKIP_PG=1 to skip)"
                );
                eprintln!("SKIPPED: PostgreSQL test (FLYJOBS_SKIP_PG=1)");
                return None;
            };
            Some(
                flyjobs::testing::fresh_postgres_database(&base)
                    .await
                    .expect("fresh database"),
            )
        }
    }
}

/// Emulator settings for tests (no boot latency).
pub fn fast() -> EmulatorSettings {
    EmulatorSettings::for_tests()
}

pub async fn setup(db: Db, queues: &str, settings: EmulatorSettings) -> Option<Env> {
    setup_with(db, queues, settings, &[], |b| b).await
}

/// An emulator with `settings` whose images are the embedded default plus `images` (each a
/// subdirectory of the test's dir, created), and a client of `queues` with 2 s leases and a
/// 30 s boot timeout, then whatever `tweak` changes.
pub async fn setup_with(
    db: Db,
    queues: &str,
    mut settings: EmulatorSettings,
    images: &[&str],
    tweak: impl FnOnce(flyjobs::ConfigBuilder) -> flyjobs::ConfigBuilder,
) -> Option<Env> {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(db, dir.path()).await?;
    let defaults = Config::builder()
        .database_url(url)
        .queues(queues)
        .lease_duration(Duration::from_secs(2))
        .boot_timeout(Duration::from_secs(30))
        .lookup(|_| None);
    let config = tweak(defaults).build().unwrap();
    settings.images.insert(
        flyjobs::fork::EMBEDDED_IMAGE.to_string(),
        Image {
            dir: dir.path().to_path_buf(),
            cmd: Vec::new(),
        },
    );
    for name in images {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        settings.images.insert(
            name.to_string(),
            Image {
                dir: d,
                cmd: Vec::new(),
            },
        );
    }
    let (emulator, machines) = flyjobs_embedded::start(settings).await.unwrap();
    let app = flyjobs_embedded::EMBEDDED_APP.to_string();
    let client = Client::builder(config)
        .machines(machines.clone(), app.clone())
        .default_worker_command(vec![BIN.to_string(), "worker".into()])
        .open()
        .await
        .unwrap();
    Some(Env {
        client,
        emulator,
        machines,
        app,
        dir,
    })
}

/// A job running `sh -c script` (the CLI worker's `command` job).
pub fn sh_job(queue: &str, script: &str) -> NewJob {
    let mut job = NewJob::new(queue, serde_json::json!({"argv": ["sh", "-c", script]}));
    job.name = "command".into();
    job
}

/// Reads the `key=value` lines a job wrote.
pub fn report(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Env {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn enqueue_sh(&self, queue: &str, script: &str) -> JobId {
        self.client.enqueue(sh_job(queue, script)).await.unwrap().id
    }

    /// A scaler ticking every 200 ms (not started).
    pub async fn scaler(&self) -> Arc<Scaler> {
        Arc::new(
            self.client
                .build_scaler(ScalerOptions {
                    interval: Duration::from_millis(200),
                    ..ScalerOptions::default()
                })
                .await
                .unwrap(),
        )
    }

    pub async fn job(&self, id: JobId) -> Job {
        self.client.job(id).await.unwrap().unwrap()
    }

    pub async fn state(&self, id: JobId) -> JobState {
        self.job(id).await.state
    }

    /// Waits for job `id` to be in state `want`; fails the test, saying where the job and the
    /// machines are, if it is not within `within`.
    pub async fn wait_state(&self, id: JobId, want: JobState, within: Duration) -> Job {
        let until = Instant::now() + within;
        loop {
            let j = self.job(id).await;
            if j.state == want {
                return j;
            }
            assert!(
                Instant::now() < until,
                "job {id} is {:?} ({:?}), wanted {want:?} within {within:?}; machines: {:?}",
                j.state,
                j.last_error,
                self.emulator.machines(&self.app)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Worker machines that are active (created, starting, started), per the emulator.
    pub fn active_machines(&self) -> Vec<flyjobs_emulator::MachineSnapshot> {
        self.emulator
            .machines(&self.app)
            .into_iter()
            .filter(|m| matches!(m.state.as_str(), "created" | "starting" | "started"))
            .collect()
    }

    /// Active worker machines of `queue`, through the Machines API (config and metadata).
    pub async fn active_of_queue(&self, queue: &str) -> Vec<Machine> {
        self.machines
            .list_machines(&self.app, &ListMachinesQuery::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|m| matches!(m.state_str(), "created" | "starting" | "started"))
            .filter(|m| m.metadata_value("flyjobs_queue") == Some(queue))
            .collect()
    }

    /// The guest (cpu_kind, cpus, memory_mb) of a machine, as the Machines API reports it.
    pub async fn guest(&self, id: &str) -> (String, u32, u32) {
        let m = self.machines.get_machine(&self.app, id).await.unwrap();
        let g = m.config.and_then(|c| c.guest).expect("a guest");
        (
            g.cpu_kind.unwrap_or_default(),
            g.cpus.unwrap_or(0),
            g.memory_mb.unwrap_or(0),
        )
    }
}
