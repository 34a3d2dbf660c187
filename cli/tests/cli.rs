//! The `flyjobs` command as a user runs it: enqueue, status, jobs, retry, worker, bad settings.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_flyjobs");

fn flyjobs(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    cmd.env(
        "FLYJOBS_DATABASE_URL",
        format!("sqlite://{}/q.sqlite3?mode=rwc", dir.display()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn enqueue_status_worker_dead_set_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = stdout(&flyjobs(
        d,
        &[
            "enqueue",
            "--queue",
            "mail",
            "--",
            "sh",
            "-c",
            "echo ran >> out.txt",
        ],
        &[],
    ));
    assert!(
        ok.trim().parse::<i64>().is_ok(),
        "prints the job id: {ok:?}"
    );
    let bad = stdout(&flyjobs(
        d,
        &[
            "enqueue",
            "--queue",
            "mail",
            "--max-attempts",
            "1",
            "--",
            "sh",
            "-c",
            "test -e fixed",
        ],
        &[],
    ));
    let bad_id = bad.trim().to_string();
    stdout(&flyjobs(
        d,
        &["enqueue", "--queue", "mail", "--in", "1h", "--", "true"],
        &[],
    ));

    let status = stdout(&flyjobs(d, &["status"], &[]));
    let mail = status.lines().find(|l| l.starts_with("mail")).unwrap();
    let cols: Vec<&str> = mail.split_whitespace().collect();
    assert_eq!(
        &cols[1..5],
        ["2", "1", "0", "0"],
        "ready 2, scheduled 1, running 0, dead 0: {status}"
    );

    // A local worker drains the queue and leaves after 1 s idle.
    stdout(&flyjobs(
        d,
        &["worker", "--queues", "mail", "--wait", "1"],
        &[],
    ));
    assert_eq!(std::fs::read_to_string(d.join("out.txt")).unwrap(), "ran\n");
    let dead = stdout(&flyjobs(d, &["jobs", "--state", "dead"], &[]));
    assert!(
        dead.contains(&bad_id) && dead.contains("FlyJobs::CommandFailed"),
        "{dead}"
    );

    std::fs::write(d.join("fixed"), "").unwrap();
    stdout(&flyjobs(d, &["retry", &bad_id], &[]));
    stdout(&flyjobs(
        d,
        &["worker", "--queues", "mail", "--wait", "1"],
        &[],
    ));
    let dead = stdout(&flyjobs(d, &["jobs", "--state", "dead"], &[]));
    assert!(
        !dead.contains(&format!("\n{:>8}", bad_id)),
        "retried job left the dead set: {dead}"
    );
    let done = stdout(&flyjobs(d, &["jobs", "--state", "completed"], &[]));
    assert_eq!(done.lines().count(), 3, "header + 2 completed: {done}");
}

#[test]
fn bad_settings_fail_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (env, needle) in [
        (("FLYJOBS_QUEUES", "mail:max_machines=-1"), "max_machines"),
        (("FLYJOBS_QUEUES", "mail:size=giant-3x"), "giant-3x"),
        (
            ("FLYJOBS_DATABASE_URL", "mysql://u:hunter2@db/x"),
            "FLYJOBS_DATABASE_URL",
        ),
        (
            ("FLYJOBS_DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/x"),
            "127.0.0.1:1",
        ),
    ] {
        let o = flyjobs(dir.path(), &["status"], &[env]);
        assert!(!o.status.success(), "{env:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{env:?}: {err}");
        assert!(!err.contains("hunter2"), "password in the error: {err}");
    }
    let o = flyjobs(dir.path(), &["worker", "--wait", "soon"], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("option wait must be seconds"), "{err}");
    assert!(err.contains("\"soon\""), "{err}");
    let o = flyjobs(
        dir.path(),
        &["enqueue", "--queue", "bad queue!", "--", "true"],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad queue!"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn enqueue_takes_the_machine_size_and_regions_and_refuses_an_unknown_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = stdout(&flyjobs(
        d,
        &[
            "enqueue",
            "--queue",
            "big",
            "--machine",
            "performance-2x",
            "--region",
            "ams,fra",
            "--",
            "true",
        ],
        &[],
    ));
    let listed = stdout(&flyjobs(d, &["jobs", "--state", "ready"], &[]));
    let row = listed
        .lines()
        .find(|l| l.trim_start().starts_with(id.trim()))
        .unwrap_or_else(|| panic!("job {id} not listed: {listed}"));
    assert!(row.contains("performance-2x@ams,fra"), "{row}");
    let o = flyjobs(
        d,
        &[
            "enqueue",
            "--queue",
            "big",
            "--machine",
            "huge-9x",
            "--",
            "true",
        ],
        &[],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("huge-9x") && err.contains("performance-2x"),
        "{err}"
    );
    let listed = stdout(&flyjobs(d, &["jobs", "--state", "ready"], &[]));
    assert_eq!(listed.lines().count(), 2, "nothing else written: {listed}");
}

#[test]
fn on_fly_without_a_database_url_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["status"])
        .current_dir(dir.path())
        .env_clear()
        .env("FLY_MACHINE_ID", "1857156b526dd8");
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("FLYJOBS_DATABASE_URL"));
}

/// On Fly (here: a standalone emulator standing in for the Machines API) `flyjobs status` lists
/// the worker machines with the state the API reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_machines_with_their_api_state() {
    use flyjobs::config::Secret;
    use flyjobs::machines::types::*;
    use flyjobs::machines::{Machines, MachinesClient};
    use std::collections::BTreeMap;

    let emu = flyjobs_emulator::Emulator::start(
        flyjobs_emulator::EmulatorSettings::for_tests().app("shop"),
    )
    .await
    .unwrap();
    let api = MachinesClient::builder()
        .base_url(emu.base_url())
        .token(Secret::new("t0k"))
        .build()
        .unwrap();
    let worker = |queue: &str| CreateMachineRequest {
        config: MachineConfig {
            image: Some("local".into()),
            init: Some(MachineInit {
                exec: Some(vec!["sh".into(), "-c".into(), "sleep 60".into()]),
                ..MachineInit::default()
            }),
            guest: Some(Guest::preset("shared-cpu-2x").unwrap()),
            metadata: Some(BTreeMap::from([
                ("flyjobs_role".to_string(), "worker".to_string()),
                ("flyjobs_queue".to_string(), queue.to_string()),
            ])),
            ..MachineConfig::default()
        },
        ..CreateMachineRequest::default()
    };
    let started = api.create_machine("shop", &worker("mail")).await.unwrap();
    let stopped = api.create_machine("shop", &worker("img")).await.unwrap();
    api.stop_machine("shop", &stopped.id, &StopRequest::default(), None)
        .await
        .unwrap();
    // A stop returns while the machine is still `stopping`: wait for both states under test.
    // Waiting for `stopped` needs the machine's version, as on Fly.
    for (m, state) in [
        (&started, MachineState::Started),
        (&stopped, MachineState::Stopped),
    ] {
        let mut q = WaitQuery::state(state);
        q.version = m.instance_id.clone();
        api.wait_machine("shop", &m.id, &q).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let url = emu.base_url().to_string();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            flyjobs(
                &dir,
                &["status"],
                &[
                    ("FLY_MACHINE_ID", "parent0000001"),
                    ("FLY_APP_NAME", "shop"),
                    ("FLY_API_HOSTNAME", url.as_str()),
                    ("FLY_API_TOKEN", "t0k"),
                    ("FLYJOBS_DATABASE_URL", db.as_str()),
                ],
            )
        }
    })
    .await
    .unwrap();
    let text = stdout(&out);
    let line = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing: {text}"))
            .to_string()
    };
    let a = line(&started.id);
    assert!(
        a.contains("started") && a.contains("mail") && a.contains("512MB"),
        "{a}"
    );
    let b = line(&stopped.id);
    assert!(b.contains("stopped") && b.contains("img"), "{b}");
    assert!(!text.contains("t0k"), "token printed: {text}");
    emu.shutdown().await;
}
