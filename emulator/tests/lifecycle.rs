//! Machine lifecycle over real HTTP: real processes, exits, restart policies, stop, suspend,
//! update, destroy, wait, events, env, logs, capacity, and 20 machines at once.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use flyjobs_emulator::EmulatorSettings;
use reqwest::Method;
use serde_json::{Value, json};

fn id_of(m: &Value) -> String {
    m["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn create_runs_process_exit_stops_with_exit_event() {
    let (_emu, api) = test_emulator().await;
    let m = api.create(sh("exit 0")).await;
    let id = id_of(&m);
    assert_eq!(id.len(), 14);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(m["state"], "created");
    assert_eq!(m["instance_id"].as_str().unwrap().len(), 26);
    api.reach(&id, "stopped").await;
    let r = api.machine(&id).await;
    assert_eq!(r.body["state"], "stopped");
    let events = api.events(&id).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["exit", "start", "launch"], "newest first");
    let ee = &events[0]["request"]["exit_event"];
    assert_eq!(ee["exit_code"], 0);
    assert_eq!(ee["requested_stop"], false);
    assert_eq!(ee["restarting"], false);
    assert_eq!(ee["oom_killed"], false);
    assert_eq!(events[0]["request"]["restart_count"], 0);
    assert!(ee["exited_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn auto_destroy_then_404_after_visibility_window() {
    let settings = EmulatorSettings {
        destroyed_visible_for: Duration::from_millis(300),
        ..EmulatorSettings::for_tests()
    };
    let (_emu, api) = emulator(settings).await;
    let mut body = sh("exit 3");
    body["config"]["auto_destroy"] = json!(true);
    let id = id_of(&api.create(body).await);
    api.reach(&id, "destroyed").await;
    let r = api.machine(&id).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "destroyed");
    let exits = api.exit_events(&id).await;
    assert_eq!(exits[0]["request"]["exit_event"]["exit_code"], 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = api.machine(&id).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "machine not found");
    // Waiting for destroyed on a gone machine counts as reached.
    assert_eq!(api.wait(&id, "destroyed", 1).await.status, 200);
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn restart_policies() {
    let (emu, api) = test_emulator().await;
    // on-failure with max_retries 2: three runs, then stopped.
    let mut body = sh("exit 1");
    body["config"]["restart"] = json!({"policy": "on-failure", "max_retries": 2});
    let id = id_of(&api.create(body).await);
    assert!(
        eventually(Duration::from_secs(10), || {
            emu.machines(APP)
                .iter()
                .any(|m| m.id == id && m.state == "stopped")
        })
        .await
    );
    let exits = api.exit_events(&id).await;
    assert_eq!(exits.len(), 3);
    assert_eq!(exits[0]["request"]["exit_event"]["restarting"], false);
    assert_eq!(exits[0]["request"]["restart_count"], 2);
    assert_eq!(exits[1]["request"]["exit_event"]["restarting"], true);

    // Default policy (on-failure) does not restart a clean exit.
    let body = json!({"config": {"image": "x", "init": {"cmd": ["true"]}}});
    let id = id_of(&api.create(body).await);
    api.reach(&id, "stopped").await;
    assert_eq!(api.exit_events(&id).await.len(), 1);

    // always: restarted after a clean exit.
    let mut body = sh("sleep 0.05; exit 0");
    body["config"]["restart"] = json!({"policy": "always"});
    let id = id_of(&api.create(body).await);
    let mut n = 0;
    for _ in 0..200 {
        n = api.exit_events(&id).await.len();
        if n >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(n >= 3, "always restarts ({n} exits)");
    let r = api.post(&format!("{}/stop", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 200);
    api.reach(&id, "stopped").await;
    // A stop ends the "always" loop: no more restarts.
    let n = api.exit_events(&id).await.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.exit_events(&id).await.len(), n);
    assert_eq!(api.machine(&id).await.body["state"], "stopped");
}

#[tokio::test]
async fn stop_sends_signal_then_sigkill_after_timeout() {
    let (emu, api) = test_emulator().await;
    // Default handler: SIGTERM ends it at once.
    let body = json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}});
    let id = id_of(&api.create(body).await);
    api.reach(&id, "started").await;
    let pid = pid_of(&emu, &id).unwrap();
    let r = api
        .post(
            &format!("{}/stop", api.m(&id)),
            json!({"signal": "SIGTERM"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"ok": true}));
    api.reach(&id, "stopped").await;
    assert!(!alive(pid));
    let ee = &api.exit_events(&id).await[0]["request"]["exit_event"];
    assert_eq!(ee["signal"], 15);
    assert_eq!(ee["requested_stop"], true);

    // Ignores SIGINT (the default stop signal): SIGKILLed after the 1 s timeout.
    let id = id_of(
        &api.create(sh(
            "trap '' INT; echo ready; while true; do sleep 0.05; done",
        ))
        .await,
    );
    api.reach(&id, "started").await;
    // "started" means spawned; the trap is only in place once the shell says so.
    assert!(
        eventually(Duration::from_secs(5), || emu
            .logs(APP, &id)
            .unwrap()
            .contains("ready"))
        .await
    );
    let t0 = Instant::now();
    let r = api
        .post(&format!("{}/stop", api.m(&id)), json!({"timeout": "1s"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(api.machine(&id).await.body["state"], "stopping");
    api.reach(&id, "stopped").await;
    let took = t0.elapsed();
    let ev = api.exit_events(&id).await;
    assert!(
        took >= Duration::from_millis(900),
        "killed after the timeout, took {took:?} {ev:?}"
    );
    assert!(took < Duration::from_secs(10));
    assert_eq!(
        api.exit_events(&id).await[0]["request"]["exit_event"]["signal"],
        9
    );

    // Malformed stop body: 400.
    let r = api.post(&format!("{}/stop", api.m(&id)), json!([1])).await;
    assert_eq!(r.status, 400);
    assert!(r.error().starts_with("json: cannot unmarshal"));
}

#[tokio::test]
async fn suspend_is_sigstop_and_start_resumes_with_sigcont() {
    let (emu, api) = test_emulator().await;
    let body = json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}});
    let id = id_of(&api.create(body).await);
    api.reach(&id, "started").await;
    let pid = pid_of(&emu, &id).unwrap();
    let r = api
        .post(&format!("{}/suspend", api.m(&id)), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.reach(&id, "suspended").await;
    assert!(eventually(Duration::from_secs(5), || pid_state(pid) == Some('T')).await);
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["previous_state"], "suspended");
    assert_eq!(r.body["migrated"], false);
    api.reach(&id, "started").await;
    assert!(eventually(Duration::from_secs(5), || pid_state(pid) == Some('S')).await);
    assert_eq!(pid_of(&emu, &id), Some(pid), "resumed, not restarted");
    // Suspend of a stopped machine is refused.
    let r = api
        .post(
            &format!("{}/stop", api.m(&id)),
            json!({"signal": "SIGKILL"}),
        )
        .await;
    assert_eq!(r.status, 200);
    api.reach(&id, "stopped").await;
    let r = api
        .post(&format!("{}/suspend", api.m(&id)), json!({}))
        .await;
    assert_eq!(r.status, 412);
    // Start from stopped: a fresh process.
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.body["previous_state"], "stopped");
    api.reach(&id, "started").await;
    let new_pid = pid_of(&emu, &id).unwrap();
    assert_ne!(new_pid, pid);
    assert!(!alive(pid));
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 412);
    assert_eq!(
        r.error(),
        "failed_precondition: machine still active, refusing to start"
    );
}

#[tokio::test]
async fn update_makes_a_new_version_and_replaces_the_process() {
    let (emu, api) = test_emulator().await;
    let body =
        json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}, "env": {"A": "1"}}});
    let m = api.create(body).await;
    let id = id_of(&m);
    api.reach(&id, "started").await;
    let pid = pid_of(&emu, &id).unwrap();
    let v1 = m["instance_id"].as_str().unwrap().to_string();
    // Stale current_version: 412.
    let stale = json!({"config": {"image": "x", "init": {"exec": ["sleep", "301"]}}, "current_version": "01AAAAAAAAAAAAAAAAAAAAAAAA"});
    assert_eq!(api.post(&api.m(&id), stale).await.status, 412);
    let upd = json!({"config": {"image": "x", "init": {"exec": ["sh", "-c", "echo version=$FLY_MACHINE_VERSION; sleep 300"]}, "custom_field": {"kept": [1, 2]}}, "current_version": v1});
    let r = api.post(&api.m(&id), upd).await;
    assert_eq!(r.status, 200, "{}", r.text);
    conform("Machine", &r.body);
    let v2 = r.body["instance_id"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_eq!(
        r.body["config"]["custom_field"],
        json!({"kept": [1, 2]}),
        "unknown config fields echoed"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            emu.machines(APP)
                .iter()
                .any(|m| m.id == id && m.state == "started" && m.pid.is_some_and(|p| p != pid))
        })
        .await
    );
    assert!(eventually(Duration::from_secs(5), || !alive(pid)).await);
    assert!(
        eventually(Duration::from_secs(5), || emu
            .logs(APP, &id)
            .unwrap()
            .contains(&format!("version={v2}")))
        .await
    );
    let events = api.events(&id).await;
    assert!(events.iter().any(|e| e["type"] == "update"));
    let r = api
        .send(
            Method::DELETE,
            &format!("{}?force=true", api.m(&id)),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn destroy_needs_force_while_started() {
    let (emu, api) = test_emulator().await;
    let body = json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}});
    let id = id_of(&api.create(body.clone()).await);
    api.reach(&id, "started").await;
    let pid = pid_of(&emu, &id).unwrap();
    let r = api.send(Method::DELETE, &api.m(&id), None, &[]).await;
    assert_eq!(r.status, 412);
    assert!(
        r.error().starts_with("failed_precondition:"),
        "{}",
        r.error()
    );
    let r = api
        .send(
            Method::DELETE,
            &format!("{}?kill=true", api.m(&id)),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"ok": true}));
    api.reach(&id, "destroyed").await;
    assert!(eventually(Duration::from_secs(5), || !alive(pid)).await);
    let r = api.post(&format!("{}/stop", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "not_found: machine not found");

    // A stopped machine is destroyed without force.
    let mut b = body.clone();
    b["skip_launch"] = json!(true);
    let id = id_of(&api.create(b).await);
    assert_eq!(api.machine(&id).await.body["state"], "created");
    let r = api.send(Method::DELETE, &api.m(&id), None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(api.machine(&id).await.body["state"], "destroyed");
}

#[tokio::test]
async fn wait_semantics() {
    let (_emu, api) = test_emulator().await;
    let mut body = json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}});
    body["skip_launch"] = json!(true);
    let id = id_of(&api.create(body).await);
    let t0 = Instant::now();
    let r = api.wait(&id, "started", 1).await;
    assert_eq!(r.status, 408);
    assert_eq!(
        r.error(),
        "deadline_exceeded: machine failed to reach desired state, started, currently created"
    );
    assert!(t0.elapsed() >= Duration::from_millis(900));
    // Default state is started; timeout over 60 is clamped (we do not wait for it here).
    let r = api.get(&format!("{}/wait?state=bogus", api.m(&id))).await;
    assert_eq!(r.status, 400);
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.body["previous_state"], "created");
    // Comma-separated and repeated states.
    let r = api
        .get(&format!(
            "{}/wait?state=failed,started&timeout=10",
            api.m(&id)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    conform("WaitMachineResponse", &r.body);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["state"], "started");
    assert!(r.body["version"].as_str().unwrap().len() == 26);
    let r = api
        .get(&format!(
            "{}/wait?state=suspended&state=started&timeout=5",
            api.m(&id)
        ))
        .await;
    assert_eq!(r.status, 200);
    let r = api.get(&format!("{}/wait?timeout=5", api.m(&id))).await;
    assert_eq!(r.body["state"], "started");
    let r = api.wait(&id, "settled", 5).await;
    assert_eq!(r.status, 200);
    // A wait that is answered by a later state change.
    let api2 = api.with_token(Some(TOKEN));
    let path = format!("{}/stop", api.m(&id));
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api2.post(&path, json!({"signal": "SIGKILL"})).await
    });
    let r = api.wait(&id, "stopped", 20).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "stopped");
    assert_eq!(stopper.await.unwrap().status, 200);
    let r = api
        .get(&format!("{}/wait?state=started", api.m("00000000000000")))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn wait_on_a_version_and_from_an_event() {
    let (_emu, api) = test_emulator().await;
    let body = json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}});
    let created = api.create(body).await;
    let id = id_of(&created);
    let v1 = created["instance_id"].as_str().unwrap().to_string();
    api.reach(&id, "started").await;
    let r = api
        .get(&format!(
            "{}/wait?state=started&version={v1}&timeout=5",
            api.m(&id)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["version"], v1.as_str());
    // The event that says "started" is the newest: waiting from it needs something newer.
    let event_id = r.body["event_id"].as_str().unwrap().to_string();
    let r = api
        .get(&format!(
            "{}/wait?state=started&from_event_id={event_id}&timeout=1",
            api.m(&id)
        ))
        .await;
    assert_eq!(r.status, 408, "{}", r.text);
    // An update replaces v1: waiting on v1 now fails as replaced, on the new version succeeds.
    let update = json!({"config": {"image": "x", "init": {"exec": ["sleep", "301"]}}});
    let r = api.post(&api.m(&id), update).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v2 = r.body["instance_id"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    let r = api
        .get(&format!(
            "{}/wait?state=started&instance_id={v1}&timeout=1",
            api.m(&id)
        ))
        .await;
    assert_eq!(r.status, 408);
    assert_eq!(
        r.error(),
        "deadline_exceeded: machine failed to reach desired state, started, currently replaced"
    );
    let r = api
        .get(&format!(
            "{}/wait?state=started&version={v2}&timeout=10",
            api.m(&id)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    conform("WaitMachineResponse", &r.body);
}

#[tokio::test]
async fn env_is_injected_and_nothing_else_leaks_and_logs_are_kept() {
    let (emu, api) = test_emulator().await;
    let body = json!({"config": {"image": "x", "init": {"exec": ["sh", "-c", "env; echo to-stderr >&2"]}, "env": {"MY_VAR": "hello"}, "guest": {"cpus": 1, "memory_mb": 512}}});
    let id = id_of(&api.create(body).await);
    api.reach(&id, "stopped").await;
    let r = api
        .get(&format!("/emulator/apps/{APP}/machines/{id}/logs"))
        .await;
    assert_eq!(r.status, 200);
    let logs = r.text;
    for want in [
        format!("FLY_APP_NAME={APP}"),
        format!("FLY_MACHINE_ID={id}"),
        format!("FLY_ALLOC_ID={id}"),
        "FLY_REGION=lax".to_string(),
        "FLY_IMAGE_REF=x".to_string(),
        "FLY_VM_MEMORY_MB=512".to_string(),
        format!("FLY_API_HOSTNAME={}", emu.base_url()),
        format!("FLY_API_SOCKET={}", emu.socket_path().display()),
        "FLY_PRIVATE_IP=fdaa:".to_string(),
        "FLY_MACHINE_VERSION=".to_string(),
        "MY_VAR=hello".to_string(),
        "to-stderr".to_string(),
    ] {
        assert!(logs.contains(&want), "missing {want} in logs:\n{logs}");
    }
    // The emulator's own env does not leak (cargo sets CARGO_* for test processes).
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO") || k.starts_with("RUST") || k.contains("TOKEN") {
            assert!(
                !logs.contains(&format!("\n{k}=")),
                "{k} leaked into the machine"
            );
        }
    }
    assert_eq!(emu.logs(APP, &id).unwrap(), logs);
}

#[tokio::test]
async fn unix_socket_serves_the_api_without_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (emu, api) = test_emulator().await;
    let mut b = sh("sleep 300");
    b["skip_launch"] = json!(true);
    let id = id_of(&api.create(b).await);
    let mut s = tokio::net::UnixStream::connect(emu.socket_path())
        .await
        .unwrap();
    let req = format!(
        "GET /v1/apps/{APP}/machines/{id} HTTP/1.1\r\nHost: flaps\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&id));
}

#[tokio::test]
async fn list_filters() {
    let (_emu, api) = test_emulator().await;
    let mut a = sh("sleep 300");
    a["skip_launch"] = json!(true);
    a["config"]["metadata"] = json!({"role": "worker"});
    a["region"] = json!("ord");
    let a = id_of(&api.create(a).await);
    let b = id_of(&api.create(sh("exit 0")).await);
    api.reach(&b, "stopped").await;
    let c = id_of(&api.create(sh("exit 0")).await);
    api.reach(&c, "stopped").await;
    assert_eq!(
        api.send(Method::DELETE, &api.m(&c), None, &[]).await.status,
        200
    );
    let list = |q: &'static str| {
        let api = &api;
        async move {
            let r = api.get(&format!("/v1/apps/{APP}/machines{q}")).await;
            assert_eq!(r.status, 200);
            conform_array("Machine", &r.body);
            r.body
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("").await, [a.clone(), b.clone()]);
    assert_eq!(list("?include_deleted=true").await.len(), 3);
    assert_eq!(list("?state=stopped").await, vec![b.clone()]);
    assert_eq!(list("?state=created,stopped").await.len(), 2);
    assert_eq!(list("?metadata.role=worker").await, vec![a.clone()]);
    assert_eq!(list("?region=ord").await, vec![a.clone()]);
    let r = api
        .get(&format!("/v1/apps/{APP}/machines?summary=true"))
        .await;
    assert!(r.body[0].get("config").is_none());
}

#[tokio::test]
async fn capacity_error_on_create() {
    let (_emu, api) = emulator(EmulatorSettings::for_tests().capacity(2, 512)).await;
    for _ in 0..2 {
        api.create(sh("sleep 300")).await;
    }
    let r = api
        .post(&format!("/v1/apps/{APP}/machines"), sh("sleep 300"))
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.body["status"], "insufficient_capacity");
    assert!(r.error().contains("could not reserve resource for machine"));
    // A machine that does not launch takes no capacity.
    let mut b = sh("sleep 300");
    b["skip_launch"] = json!(true);
    let id = id_of(&api.create(b).await);
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 409);
    assert!(r.error().starts_with("aborted: could not reserve resource"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_auto_destroy_machines_all_exit_zero_and_leave_nothing() {
    let (emu, api) = test_emulator().await;
    let mut body = sh("sleep 0.2; exit 0");
    body["config"]["auto_destroy"] = json!(true);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(id_of(&api.create(body.clone()).await));
    }
    let waits = ids.iter().map(|id| api.wait(id, "destroyed", 30));
    for r in futures::future::join_all(waits).await {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let groups: HashSet<i32> = emu
        .machines(APP)
        .iter()
        .filter_map(|m| m.last_pid)
        .collect();
    assert_eq!(groups.len(), 20, "every machine ran a process");
    for id in &ids {
        let exits = api.exit_events(id).await;
        assert_eq!(exits.len(), 1);
        assert_eq!(exits[0]["request"]["exit_event"]["exit_code"], 0);
        assert_eq!(api.machine(id).await.body["state"], "destroyed");
    }
    assert!(
        eventually(Duration::from_secs(5), || processes_in_groups(&groups)
            .is_empty())
        .await
    );
    for p in &groups {
        assert!(!alive(*p));
    }
    let ledger = emu.ledger();
    assert!(ledger.peak_started >= 1 && ledger.peak_started <= 20);
    assert_eq!(ledger.started_now, 0);
}

#[tokio::test]
async fn create_to_started_to_exit_time_with_zero_latency() {
    let (_emu, api) = test_emulator().await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        let mut body = json!({"config": {"image": "x", "init": {"exec": ["true"]}, "auto_destroy": true, "restart": {"policy": "no"}}});
        body["name"] = json!(format!("t-{}", samples.len()));
        let t0 = Instant::now();
        let id = id_of(&api.create(body).await);
        api.reach(&id, "destroyed").await;
        samples.push(t0.elapsed());
    }
    samples.sort();
    eprintln!(
        "create->started->exit->destroyed (zero latency, `true`): median {:?}, max {:?}",
        samples[2], samples[4]
    );
    assert!(samples[2] < Duration::from_secs(2));
}

#[tokio::test]
async fn shutdown_and_drop_kill_every_machine_without_restarts() {
    for by_drop in [false, true] {
        let (emu, api) = test_emulator().await;
        let mut body = sh("sleep 300; true");
        body["config"]["restart"] = json!({"policy": "always"});
        let id = id_of(&api.create(body).await);
        api.reach(&id, "started").await;
        let group = HashSet::from([pid_of(&emu, &id).unwrap()]);
        assert!(
            eventually(Duration::from_secs(5), || processes_in_groups(&group).len()
                == 2)
            .await
        );
        if by_drop {
            drop(emu);
        } else {
            emu.shutdown().await;
        }
        assert!(
            eventually(Duration::from_secs(5), || processes_in_groups(&group)
                .is_empty())
            .await
        );
        // Nothing was restarted after the kill: no process of this test's machines is left
        // with FLY_MACHINE_ID set to it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(env) = std::fs::read(e.path().join("environ")) {
                let needle = format!("FLY_MACHINE_ID={id}");
                assert!(
                    !String::from_utf8_lossy(&env).contains(&needle),
                    "restarted after shutdown"
                );
            }
        }
    }
}

#[tokio::test]
async fn restart_runs_a_fresh_process_of_the_same_version() {
    let (emu, api) = test_emulator().await;
    let body = json!({"config": {"image": "x", "init": {"exec": ["sleep", "300"]}}});
    let m = api.create(body).await;
    let id = id_of(&m);
    api.reach(&id, "started").await;
    let pid = pid_of(&emu, &id).unwrap();
    let r = api
        .post(
            &format!("{}/restart?signal=SIGTERM&timeout=2s", api.m(&id)),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        eventually(Duration::from_secs(10), || {
            emu.machines(APP)
                .iter()
                .any(|m| m.id == id && m.state == "started" && m.pid.is_some_and(|p| p != pid))
        })
        .await
    );
    assert!(!alive(pid));
    let r = api.machine(&id).await;
    assert_eq!(r.body["instance_id"], m["instance_id"]);
    let ee = &api.exit_events(&id).await[0]["request"]["exit_event"];
    assert_eq!(ee["signal"], 15);
    assert_eq!(ee["requested_stop"], true);
    api.send(
        Method::DELETE,
        &format!("{}?force=true", api.m(&id)),
        None,
        &[],
    )
    .await;
}

#[tokio::test]
async fn a_machine_over_its_guest_memory_is_oom_killed() {
    let (emu, api) = test_emulator().await;
    // No guest: shared-cpu-1x with 256 MB. Perl touches every byte of a 400 MB string.
    let mut body = json!({"config": {"image": "test-image", "init": {"exec":
        ["perl", "-e", "my $x = 'x' x (400 * 1024 * 1024); sleep 60"]}, "restart": {"policy": "no"}}});
    let id = id_of(&api.create(body.clone()).await);
    api.reach(&id, "stopped").await;
    let exits = api.exit_events(&id).await;
    let ee = &exits[0]["request"]["exit_event"];
    assert_eq!(ee["oom_killed"], true, "{ee}");
    assert_eq!(ee["signal"], 9, "{ee}");
    let logs = emu.logs(APP, &id).unwrap();
    assert!(logs.contains("Out of memory"), "{logs}");
    assert!(logs.contains("guest has 256 MB"), "{logs}");

    // The same process fits in 1 GB: it runs until stopped and is not OOM-killed.
    body["config"]["guest"] = json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024});
    let id = id_of(&api.create(body).await);
    api.reach(&id, "started").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api.machine(&id).await.body["state"], "started");
    let r = api.post(&format!("{}/stop", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.reach(&id, "stopped").await;
    let ee = &api.exit_events(&id).await[0]["request"]["exit_event"];
    assert_eq!(ee["oom_killed"], false, "{ee}");
}
