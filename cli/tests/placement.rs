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
