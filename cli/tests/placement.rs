//! Placement end to end (real emulator, real `flyjobs worker` machines, SQLite and
//! PostgreSQL): a job on the machine size it asks for beside a default one; a job OOM-killed
//! at 256 MB retried at 512 MB (and, past `max_memory_mb`, an ordinary failure); a deploy
//! mid-queue runs each release's jobs on its own image; `max_machines` over all shapes.
//!
//! PostgreSQL tests need `FLYJOBS_TEST_DATABASE_URL` (scripts/with-postgres.sh sets it); they
//! fail without it unless `FLYJOBS_SKIP_PG=1` says to skip them, loudly.

use std::time::{Duration, Instant};

use flyjobs::job::JobState;

mod common;
use common::{Db, Env, report, sh_job};

/// An emulator whose images are `images` (ref → subdirectory of the test's dir, created), and
/// a client of release `image_ref` (None: the embedded default image), with 5 s leases.
async fn setup(db: Db, queues: &str, image_ref: Option<&str>, images: &[&str]) -> Option<Env> {
    common::setup_with(db, queues, common::fast(), images, |b| {
        let b = b
            .lease_duration(Duration::from_secs(5))
            .boot_timeout(Duration::from_secs(60));
        match image_ref {
            Some(i) => b.image_ref(i),
            None => b,
        }
    })
    .await
}

const WHERE_AM_I: &str = "echo machine=$FLY_MACHINE_ID; echo memory=$FLY_VM_MEMORY_MB; echo image=$FLY_IMAGE_REF; echo dir=$(pwd)";

async fn a_job_gets_the_machine_size_it_asks_for(db: Db) {
    let Some(env) = setup(db, "q:max_machines=3,wait=1", None, &[]).await else {
        return;
    };
    let (big, small) = (env.path("big"), env.path("small"));
    let mut job = sh_job("q", &format!("({WHERE_AM_I}) > '{}'", big.display()));
    job.shape = "performance-2x".into();
    let big_id = env.client.enqueue(job).await.unwrap().id;
    let small_id = env
        .client
        .enqueue(sh_job(
            "q",
            &format!("({WHERE_AM_I}) > '{}'", small.display()),
        ))
        .await
        .unwrap()
        .id;
    let handle = env.scaler().await.spawn();
    env.wait_state(big_id, JobState::Completed, Duration::from_secs(60))
        .await;
    env.wait_state(small_id, JobState::Completed, Duration::from_secs(60))
        .await;
    let (big, small) = (report(&big), report(&small));
    assert_ne!(big["machine"], small["machine"], "each on its own machine");
    assert_eq!(big["memory"], "4096");
    assert_eq!(small["memory"], "256");
    assert_eq!(
        env.guest(&big["machine"]).await,
        ("performance".to_string(), 2, 4096)
    );
    assert_eq!(
        env.guest(&small["machine"]).await,
        ("shared".to_string(), 1, 256)
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_a_job_gets_the_machine_size_it_asks_for() {
    a_job_gets_the_machine_size_it_asks_for(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_a_job_gets_the_machine_size_it_asks_for() {
    a_job_gets_the_machine_size_it_asks_for(Db::Postgres).await;
}

/// Holds 300 MB for 2 s (the emulator measures every 200 ms): over a 256 MB machine, well
/// within a 512 MB one.
const HOG: &str = "perl -e 'my $x = \"\"; vec($x, 300 * 1024 * 1024 - 1, 8) = 1; sleep 2'";

async fn an_oom_killed_job_gets_twice_the_memory(db: Db) {
    let Some(env) = setup(db, "q:max_machines=2,wait=1", None, &[]).await else {
        return;
    };
    let out = env.path("hog");
    let id = env
        .client
        .enqueue(sh_job(
            "q",
            &format!("{HOG} && ({WHERE_AM_I}) > '{}'", out.display()),
        ))
        .await
        .unwrap()
        .id;
    let handle = env.scaler().await.spawn();
    let job = env
        .wait_state(id, JobState::Completed, Duration::from_secs(90))
        .await;
    let err = job.last_error.expect("the OOM kill is recorded");
    assert_eq!(err.class, "FlyJobs::OutOfMemory");
    assert_eq!(err.message, "oom_killed at 256 MB, retried at 512 MB");
    assert_eq!(job.attempts, 2, "the killed run counts as an attempt");
    assert_eq!(job.shape, "shared-cpu-1x:512");
    assert_eq!(report(&out)["memory"], "512");
    // The first machine (256 MB) was OOM-killed; the one that finished the job was not.
    let machines = env.emulator.machines(&env.app);
    assert!(
        machines.iter().any(|m| m.memory_mb == 256 && m.oom_killed),
        "{machines:?}"
    );
    assert!(
        machines.iter().any(|m| m.memory_mb == 512 && !m.oom_killed),
        "{machines:?}"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_an_oom_killed_job_gets_twice_the_memory() {
    an_oom_killed_job_gets_twice_the_memory(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_an_oom_killed_job_gets_twice_the_memory() {
    an_oom_killed_job_gets_twice_the_memory(Db::Postgres).await;
}

/// Release v2 is deployed while jobs of v1 are queued: v1 jobs run on v1's image (its
/// directory), v2 jobs on v2's, and no v1 machine is left afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_mid_queue_runs_each_release_on_its_image() {
    let Some(env) = setup(
        Db::Sqlite,
        "q:max_machines=4,wait=1",
        Some("v2"),
        &["v1", "v2"],
    )
    .await
    else {
        return;
    };
    let mut ids = Vec::new();
    for (release, n) in [("v1", 0), ("v1", 1), ("v2", 2), ("v2", 3)] {
        let out = env.path(&format!("out{n}"));
        // The v1 jobs were enqueued by the old release (its image recorded on them).
        let job = sh_job("q", &format!("({WHERE_AM_I}) > '{}'", out.display())).image_ref(release);
        ids.push((release, out, env.client.enqueue(job).await.unwrap().id));
    }
    let handle = env.scaler().await.spawn();
    for (release, out, id) in &ids {
        env.wait_state(*id, JobState::Completed, Duration::from_secs(60))
            .await;
        let r = report(out);
        assert_eq!(r["image"], *release, "{out:?}");
        let dir = std::fs::canonicalize(env.path(release)).unwrap();
        assert_eq!(
            std::fs::canonicalize(&r["dir"]).unwrap(),
            dir,
            "job of {release} ran in {}",
            r["dir"]
        );
    }
    // The v1 machines were booted for the pinned jobs only and leave once they are done.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let v1: Vec<_> = env
            .emulator
            .machines(&env.app)
            .into_iter()
            .filter(|m| m.state != "destroyed" && m.image == "v1")
            .collect();
        if v1.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "v1 machines left: {v1:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.stop().await;
    env.emulator.shutdown().await;
}

/// `max_machines` bounds the queue over all its shapes: jobs of three shapes on a queue of one
/// machine run one machine at a time, and all of them finish.
#[tokio::test(flavor = "multi_thread")]
async fn max_machines_bounds_a_queue_over_all_its_shapes() {
    let Some(env) = setup(Db::Sqlite, "q:max_machines=1,wait=0", None, &[]).await else {
        return;
    };
    let mut ids = Vec::new();
    for shape in ["", "performance-1x", "shared-cpu-2x", "", "performance-1x"] {
        let mut job = sh_job("q", "sleep 0.2");
        job.shape = shape.into();
        ids.push(env.client.enqueue(job).await.unwrap().id);
    }
    let handle = env.scaler().await.spawn();
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let active = env
            .emulator
            .machines(&env.app)
            .into_iter()
            .filter(|m| matches!(m.state.as_str(), "created" | "starting" | "started"))
            .count();
        assert!(active <= 1, "{active} machines on a max_machines=1 queue");
        let mut done = 0;
        for id in &ids {
            done += usize::from(env.job(*id).await.state == JobState::Completed);
        }
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < until, "{done} of {} done", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let booted: Vec<u64> = env
        .emulator
        .machines(&env.app)
        .iter()
        .map(|m| m.memory_mb)
        .collect();
    assert!(
        booted.contains(&2048) && booted.contains(&512) && booted.contains(&256),
        "{booted:?}"
    );
    handle.stop().await;
    env.emulator.shutdown().await;
}

/// Past the queue's `max_memory_mb` an OOM kill is an ordinary failure: the retry policy
/// decides (here: one attempt, so the dead set), and the record says why.
#[tokio::test(flavor = "multi_thread")]
async fn past_max_memory_an_oom_kill_is_an_ordinary_failure() {
    let Some(env) = setup(
        Db::Sqlite,
        "q:max_machines=1,wait=1,max_memory_mb=256,max_attempts=1",
        None,
        &[],
    )
    .await
    else {
        return;
    };
    let id = env.client.enqueue(sh_job("q", HOG)).await.unwrap().id;
    let handle = env.scaler().await.spawn();
    let job = env
        .wait_state(id, JobState::Dead, Duration::from_secs(90))
        .await;
    let err = job.last_error.expect("recorded");
    assert_eq!(err.class, "FlyJobs::OutOfMemory");
    assert_eq!(
        err.message,
        "oom_killed at 256 MB (max_memory_mb 256): retried on the same size"
    );
    assert_eq!(job.shape, "", "no bigger machine");
    handle.stop().await;
    env.emulator.shutdown().await;
}
