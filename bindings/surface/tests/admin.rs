//! The admin calls of the binding surface on both stores: SQLite (a temp file) and PostgreSQL
//! (FLYJOBS_TEST_DATABASE_URL; scripts/test.sh starts one; without it the Postgres case fails
//! unless FLYJOBS_SKIP_PG=1).

use flyjobs_binding as surface;
use serde_json::{Value, json};

async fn sqlite() -> (surface::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.sqlite3?mode=rwc", dir.path().display());
    let client = surface::open(&json!({ "database_url": url }), vec![])
        .await
        .unwrap();
    (client, dir)
}

/// A Postgres client in a fresh schema (the URL's `options=-csearch_path=`), or None when the
/// test database is not configured (outside scripts/test.sh).
async fn postgres() -> Option<surface::Client> {
    let Ok(base) = std::env::var("FLYJOBS_TEST_DATABASE_URL") else {
        // Same policy as the store contract: skipping Postgres must be asked for.
        assert!(
            std::env::var("FLYJOBS_SKIP_PG").as_deref() == Ok("1"),
            "FLYJOBS_TEST_DATABASE_URL is not set: run through scripts/with-postgres.sh, or set \
             FLYJOBS_SKIP_PG=1 to skip the Postgres tests on purpose"
        );
        return None;
    };
    let schema = format!("admin_{:x}", rand_suffix());
    // A pool over the server, to make the schema; then a client whose search_path is it.
    let setup = flyjobs::store::open(
        &base,
        flyjobs::store::StoreOptions {
            pg_schema: Some(schema.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    setup.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    Some(
        surface::open(&json!({ "database_url": url }), vec![])
            .await
            .unwrap(),
    )
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id())
}

async fn admin_calls(c: &surface::Client) {
    let later = "2099-01-01T00:00:00Z";
    let jobs = surface::enqueue_many(
        c,
        &json!([
            {"queue": "mail", "payload": {"n": 1}, "name": "Welcome"},
            {"queue": "mail", "payload": {"n": 2}, "name": "Welcome"},
            {"queue": "mail", "payload": {"n": 3}, "name": "Digest", "run_at": later},
            {"queue": "other", "payload": "x", "name": "Welcome"}
        ]),
    )
    .await
    .unwrap();
    let id = |i: usize| jobs[i]["id"].as_i64().unwrap();
    assert_eq!(jobs[2]["state"], "scheduled");

    // get, list by queue/state/class, paging
    assert_eq!(
        surface::job(c, id(0)).await.unwrap()["payload"],
        json!({"n": 1})
    );
    assert_eq!(surface::job(c, 999_999).await.unwrap(), Value::Null);
    let welcome = surface::jobs(c, &json!({"name": "Welcome"})).await.unwrap();
    assert_eq!(welcome.as_array().unwrap().len(), 3);
    let page = surface::jobs(c, &json!({"queue": "mail", "limit": 2}))
        .await
        .unwrap();
    assert_eq!(page.as_array().unwrap().len(), 2);
    let rest = surface::jobs(c, &json!({"queue": "mail", "after_id": page[1]["id"]}))
        .await
        .unwrap();
    assert_eq!(rest.as_array().unwrap().len(), 1);
    let scheduled = surface::jobs(c, &json!({"state": "scheduled"}))
        .await
        .unwrap();
    assert_eq!(scheduled[0]["id"], id(2));
    let e = surface::jobs(c, &json!({"state": "sleeping"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), surface::ErrorKind::Invalid);

    // cancel a scheduled job; cancelling it again is a conflict naming its state
    assert_eq!(
        surface::cancel(c, id(2)).await.unwrap()["state"],
        "discarded"
    );
    let e = surface::cancel(c, id(2)).await.unwrap_err();
    assert_eq!(e.kind(), surface::ErrorKind::Conflict);
    assert!(e.message().contains("discarded"), "{e}");
    assert_eq!(e.job_id(), Some(id(2)));
    let e = surface::cancel(c, 424_242).await.unwrap_err();
    assert_eq!(e.kind(), surface::ErrorKind::NotFound);

    // a dead job: retry brings it back, discard ends it
    let worker = surface::worker(c, &json!({"queues": ["other"], "wait": 0}))
        .await
        .unwrap();
    let slot = worker.slot();
    let lease = match slot
        .poll_next(std::time::Duration::from_secs(5))
        .await
        .unwrap()
    {
        surface::Poll::Job(l) => *l,
        other => panic!("{other:?}"),
    };
    assert_eq!(surface::lease_job(&lease).unwrap()["id"], id(3));
    // max_attempts 1 on the job? It has the queue's 25: fail until dead through the policy
    // would take long; discard it instead and retry it from discarded.
    let outcome = surface::fail(
        lease,
        &json!({"class": "Boom", "message": "no", "backtrace": ["a.rb:1"]}),
    )
    .await
    .unwrap();
    assert_eq!(outcome["outcome"], "retry");
    assert!(outcome["at"].is_string());
    worker.stop(std::time::Duration::ZERO).await;
    assert_eq!(
        surface::discard(c, id(3)).await.unwrap()["state"],
        "discarded"
    );
    let back = surface::retry(c, id(3)).await.unwrap();
    assert_eq!(
        (back["state"].as_str(), back["attempts"].as_i64()),
        (Some("ready"), Some(0))
    );

    // stats, then clear a queue: waiting jobs go, the count says how many
    let stats = surface::stats(c).await.unwrap();
    let mail = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["queue"] == "mail")
        .unwrap();
    assert_eq!(mail["ready"], 2);
    assert_eq!(surface::clear(c, "mail").await.unwrap(), 2);
    assert_eq!(surface::clear(c, "mail").await.unwrap(), 0);
    let e = surface::clear(c, "bad queue!").await.unwrap_err();
    assert_eq!(e.kind(), surface::ErrorKind::Invalid);
    assert!(
        surface::workers(c)
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Off Fly with no scaler started here, no machines are known to this process.
    assert_eq!(surface::machines(c).await.unwrap(), json!([]));

    // boot failures: what the scaler recorded is listed by name, and a reset clears a queue's
    assert_eq!(
        surface::call(c, "boot_failures", &json!(null))
            .await
            .unwrap(),
        json!([])
    );
    for (queue, machine) in [("mail", "m1"), ("default", "m2")] {
        c.store()
            .record_boot_failure(flyjobs::store::boot_failures::BootFailure {
                queue: queue.into(),
                release: "registry.fly.io/app:v1".into(),
                machine_id: machine.into(),
                exit_code: Some(3),
                reason: "exited with code 3 before its worker registered".into(),
                log_tail: "boom".into(),
                at: chrono::Utc::now(),
                cleared: false,
            })
            .await
            .unwrap();
    }
    let listed = surface::call(c, "boot_failures", &json!(null))
        .await
        .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|f| f["machine_id"] == "m1" && f["exit_code"] == 3)
    );
    assert!(listed.iter().all(|f| f["cleared"] == false));
    assert_eq!(
        surface::call(c, "reset_boot_failures", &json!("mail"))
            .await
            .unwrap(),
        json!(1)
    );
    let after = surface::call(c, "boot_failures", &json!(null))
        .await
        .unwrap();
    let cleared: Vec<_> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["machine_id"].as_str().unwrap().to_owned(),
                f["cleared"] == true,
            )
        })
        .collect();
    assert!(cleared.contains(&("m1".into(), true)) && cleared.contains(&("m2".into(), false)));
    assert_eq!(
        surface::call(c, "reset_boot_failures", &json!(null))
            .await
            .unwrap(),
        json!(1)
    );
    // the dashboard, as a mounting app calls it: plain data in, plain data out
    let page = surface::call(
        c,
        "dashboard",
        &json!({"method": "GET", "path": "/", "mount": "/flyjobs", "headers": {"Host": "x"}}),
    )
    .await
    .unwrap();
    assert_eq!(page["status"], 200);
    assert!(
        page["body"]
            .as_str()
            .unwrap()
            .contains("href=\"/flyjobs/jobs\"")
    );
    let headers = page["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "set-cookie" && h[1].as_str().unwrap().contains("Path=/flyjobs"))
    );
    let refused = surface::call(
        c,
        "dashboard",
        &json!({"method": "POST", "path": "/dead/retry_all", "body": "", "read_only": true}),
    )
    .await
    .unwrap();
    assert_eq!(refused["status"], 403);
    let e = surface::call(c, "dashboard", &json!({"path": "/", "read_only": "yes"}))
        .await
        .unwrap_err();
    assert!(e.message().contains("read_only"), "{e}");
    let e = surface::call(c, "reset_boot_failures", &json!(5))
        .await
        .unwrap_err();
    assert!(e.message().contains("queue name or null"), "{e}");
    surface::shutdown(c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_on_sqlite() {
    let (c, _dir) = sqlite().await;
    admin_calls(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_on_postgres() {
    if let Some(c) = postgres().await {
        admin_calls(&c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_refused_before_anything_is_written() {
    let (c, _dir) = sqlite().await;
    for (job, needle) in [
        (json!({"queue": "mail"}), "needs a payload"),
        (
            json!({"payload": 1, "priorty": 2}),
            "unknown job key \"priorty\"",
        ),
        (
            json!({"payload": 1, "run_at": "tomorrow"}),
            "job run_at must be",
        ),
        (
            json!({"payload": 1, "max_attempts": 0}),
            "job max_attempts must be an integer >= 1",
        ),
        (json!({"payload": 1, "queue": "bad queue!"}), "bad queue!"),
    ] {
        let e = surface::enqueue(&c, &job).await.unwrap_err();
        assert_eq!(e.kind(), surface::ErrorKind::Invalid, "{job}");
        assert!(e.message().contains(needle), "{job}: {e}");
    }
    // One bad job in a batch: none is written, and the error names it.
    let e = surface::enqueue_many(
        &c,
        &json!([{"payload": 1}, {"payload": 2, "priority": "high"}]),
    )
    .await
    .unwrap_err();
    assert!(e.message().starts_with("job 1:"), "{e}");
    assert_eq!(surface::stats(&c).await.unwrap(), json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_keeps_its_claim_across_early_returns() {
    let (c, _dir) = sqlite().await;
    let worker = surface::worker(&c, &json!({"queues": "q", "wait": "forever"}))
        .await
        .unwrap();
    let slot = worker.slot();
    // Nothing to claim: pending, many times over, never a lost lease.
    for _ in 0..5 {
        assert!(matches!(
            slot.poll_next(std::time::Duration::from_millis(20))
                .await
                .unwrap(),
            surface::Poll::Pending
        ));
    }
    let job = surface::enqueue(&c, &json!({"queue": "q", "payload": 1}))
        .await
        .unwrap();
    let lease = loop {
        match slot
            .poll_next(std::time::Duration::from_millis(50))
            .await
            .unwrap()
        {
            surface::Poll::Job(l) => break *l,
            surface::Poll::Pending => continue,
            surface::Poll::Done => panic!("done"),
        }
    };
    assert_eq!(lease.job().id.0, job["id"].as_i64().unwrap());
    surface::complete(lease).await.unwrap();
    assert_eq!(
        surface::job(&c, job["id"].as_i64().unwrap()).await.unwrap()["state"],
        "completed"
    );
    worker.quiet();
    assert!(matches!(
        slot.poll_next(std::time::Duration::from_secs(5))
            .await
            .unwrap(),
        surface::Poll::Done
    ));
    worker.stop(std::time::Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_options_are_checked_and_named() {
    let (c, _dir) = sqlite().await;
    for (opts, needle) in [
        (json!({"queue": "a"}), "unknown worker option \"queue\""),
        (
            json!({"concurrency": 0}),
            "option concurrency must be an integer >= 1, got 0",
        ),
        (json!({"wait": "soon"}), "option wait must be seconds"),
        (
            json!({"pool": "nap"}),
            "option pool must be one of none, stop, suspend",
        ),
        (
            json!({"queues": []}),
            "option queues must be at least one queue name",
        ),
    ] {
        let e = surface::worker(&c, &opts).await.unwrap_err();
        assert_eq!(e.kind(), surface::ErrorKind::Config, "{opts}");
        assert!(e.message().contains(needle), "{opts}: {e}");
    }
}

/// `machine` and `region` reach the core through the surface, so every language has them; a
/// size Fly does not sell fails at enqueue with the valid list, and nothing is written.
#[tokio::test]
async fn enqueue_takes_machine_and_region() {
    let (c, _dir) = sqlite().await;
    let job = surface::enqueue(
        &c,
        &json!({"queue": "q", "payload": 1, "machine": "performance-2x", "region": ["ams", "fra"]}),
    )
    .await
    .unwrap();
    assert_eq!(job["shape"], "performance-2x@ams,fra");
    let job = surface::enqueue(
        &c,
        &json!({"queue": "q", "payload": 2, "machine": {"cpus": 1, "memory_mb": 1024}}),
    )
    .await
    .unwrap();
    assert_eq!(job["shape"], "shared-cpu-1x:1024");
    let plain = surface::enqueue(&c, &json!({"queue": "q", "payload": 3}))
        .await
        .unwrap();
    assert_eq!(plain["shape"], "");

    for bad in [
        json!({"queue": "q", "payload": 4, "machine": "performance-3x"}),
        json!({"queue": "q", "payload": 4, "shape": "gigantic-1x"}),
    ] {
        let e = surface::enqueue(&c, &bad).await.unwrap_err();
        let view = surface::error_view(&e);
        assert_eq!(view["kind"], "config", "{view}");
        let msg = view["message"].as_str().unwrap();
        assert!(msg.contains("valid sizes: shared-cpu-1x,"), "{msg}");
        assert!(msg.contains("performance-16x"), "{msg}");
    }
    let e = surface::enqueue_many(
        &c,
        &json!([{"queue": "q", "payload": 5}, {"queue": "q", "payload": 6, "machine": "tiny"}]),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("\"tiny\""), "{e}");
    let all = surface::jobs(&c, &json!({"queue": "q"})).await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3, "nothing written: {all}");
}
