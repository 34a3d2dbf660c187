//! Errors, auth, apps, leases, metadata, rate limits, faults and the ledger over real HTTP.

mod common;

use std::time::Duration;

use common::*;
use flyjobs_emulator::{EmulatorSettings, Faults, Latencies};
use reqwest::Method;
use serde_json::{Value, json};

fn id_of(m: &Value) -> String {
    m["id"].as_str().unwrap().to_string()
}

fn parked() -> Value {
    let mut b = sh("sleep 300");
    b["skip_launch"] = json!(true);
    b
}

#[tokio::test]
async fn apps_and_not_found_errors() {
    let (_emu, api) = test_emulator().await;
    let r = api
        .post("/v1/apps", json!({"name": "other", "org_slug": "personal"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    conform("App", &r.body);
    let r = api
        .post("/v1/apps", json!({"name": "other", "org_slug": "personal"}))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.error(), "Name has already been taken");
    let r = api.get("/v1/apps/other").await;
    assert_eq!(r.status, 200);
    conform("App", &r.body);
    assert_eq!(r.body["name"], "other");
    let r = api.get("/v1/apps/nope").await;
    assert_eq!((r.status, r.error()), (404, "app not found"));
    let r = api.get("/v1/apps/nope/machines").await;
    assert_eq!((r.status, r.error()), (404, "app not found"));
    let r = api.get(&api.m("0123456789abcd")).await;
    assert_eq!((r.status, r.error()), (404, "machine not found"));
    let r = api.get(&api.m("not-an-id")).await;
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid machine ID, 'not-an-id'")
    );
    // Create without config/image: 400.
    let r = api
        .post(&format!("/v1/apps/{APP}/machines"), json!({}))
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .post(
            &format!("/v1/apps/{APP}/machines"),
            json!({"config": {"image": "x"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("nothing to run"), "{}", r.error());
    // Duplicate name: 409.
    let mut b = parked();
    b["name"] = json!("dup");
    api.create(b.clone()).await;
    let r = api.post(&format!("/v1/apps/{APP}/machines"), b).await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn auth_is_required_and_scoped_to_apps() {
    let settings = EmulatorSettings::for_tests()
        .app("b-app")
        .token(TOKEN, &[APP])
        .token("all", &["*"]);
    let (_emu, api) = emulator(settings).await;
    let path = format!("/v1/apps/{APP}/machines");
    let r = api.with_token(None).get(&path).await;
    assert_eq!(r.status, 401);
    let r = api.with_token(Some("wrong")).get(&path).await;
    assert_eq!(r.status, 401);
    assert_eq!(api.get(&path).await.status, 200);
    let r = api.get("/v1/apps/b-app/machines").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        api.with_token(Some("all"))
            .get("/v1/apps/b-app/machines")
            .await
            .status,
        200
    );
    // FlyV1 macaroon scheme.
    let r = api
        .with_token(None)
        .send(
            Method::GET,
            &path,
            None,
            &[("authorization", "FlyV1 fm2_abc,all")],
        )
        .await;
    assert_eq!(r.status, 200);
    // Default settings: any non-empty token.
    let (_emu2, api2) = test_emulator().await;
    assert_eq!(
        api2.with_token(Some("anything")).get(&path).await.status,
        200
    );
    let r = api2
        .with_token(None)
        .send(Method::GET, &path, None, &[("authorization", "Bearer ")])
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn leases_guard_mutations() {
    let (_emu, api) = test_emulator().await;
    let id = id_of(&api.create(parked()).await);
    let lease_path = format!("{}/lease", api.m(&id));
    let r = api.get(&lease_path).await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("lease not found"));
    let r = api
        .post(&lease_path, json!({"ttl": 60, "description": "deploy"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The real API wraps the lease in {status, data} (machines-api.md §2 L1); the spec says a
    // bare Lease, so only `data` is checked against the Lease schema.
    assert_eq!(r.body["status"], "success");
    conform("Lease", &r.body["data"]);
    let nonce = r.body["data"]["nonce"].as_str().unwrap().to_string();
    assert_eq!(nonce.len(), 12);
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    let expires = r.body["data"]["expires_at"].as_i64().unwrap();
    let r = api.get(&lease_path).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"]["nonce"], nonce.as_str());
    // Someone else: 409.
    let r = api.post(&lease_path, json!({"ttl": 60})).await;
    assert_eq!(r.status, 409);
    assert!(
        r.error().starts_with(&format!(
            "aborted: machine ID {id} lease currently held by "
        )),
        "{}",
        r.error()
    );
    assert!(r.error().contains(", expires at "));
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 409);
    let r = api.send(Method::DELETE, &api.m(&id), None, &[]).await;
    assert_eq!(r.status, 409);
    // Holder: refresh keeps the nonce.
    let h = [("fly-machine-lease-nonce", nonce.as_str())];
    let r = api
        .send(Method::POST, &format!("{lease_path}?ttl=120"), None, &h)
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["data"]["nonce"], nonce.as_str());
    assert!(r.body["data"]["expires_at"].as_i64().unwrap() > expires);
    let r = api
        .send(Method::POST, &format!("{}/start", api.m(&id)), None, &h)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.reach(&id, "started").await;
    // Metadata is not guarded.
    let r = api
        .post(&format!("{}/metadata/k", api.m(&id)), json!({"value": "v"}))
        .await;
    assert_eq!(r.status, 204);
    // Release: header required.
    let r = api.send(Method::DELETE, &lease_path, None, &[]).await;
    assert_eq!(r.status, 400);
    let r = api.send(Method::DELETE, &lease_path, None, &h).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "success", "data": {"ok": true}}));
    let r = api
        .post(
            &format!("{}/stop", api.m(&id)),
            json!({"signal": "SIGKILL"}),
        )
        .await;
    assert_eq!(r.status, 200);
    // lease_ttl on create: the response carries the nonce.
    let mut b = parked();
    b["lease_ttl"] = json!(30);
    let m = api.create(b).await;
    let n = m["nonce"].as_str().unwrap();
    let r = api
        .post(&format!("{}/start", api.m(&id_of(&m))), json!({}))
        .await;
    assert_eq!(r.status, 409);
    let r = api
        .send(
            Method::POST,
            &format!("{}/start", api.m(&id_of(&m))),
            None,
            &[("fly-machine-lease-nonce", n)],
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn metadata_endpoints() {
    let (_emu, api) = test_emulator().await;
    let m = api.create(parked()).await;
    let id = id_of(&m);
    let base = format!("{}/metadata", api.m(&id));
    let r = api.get(&base).await;
    assert_eq!((r.status, r.body.clone()), (200, json!({})));
    assert_eq!(
        api.post(&format!("{base}/role"), json!({"value": "worker"}))
            .await
            .status,
        204
    );
    assert_eq!(
        api.post(&format!("{base}/queue"), json!({"value": "mail"}))
            .await
            .status,
        204
    );
    let r = api.get(&format!("{base}/role")).await;
    conform("metadataValueResponse", &r.body);
    assert_eq!(r.body, json!({"value": "worker"}));
    assert_eq!(api.get(&format!("{base}/none")).await.status, 404);
    let r = api.get(&base).await;
    assert_eq!(r.body, json!({"role": "worker", "queue": "mail"}));
    assert_eq!(
        api.send(Method::DELETE, &format!("{base}/role"), None, &[])
            .await
            .status,
        204
    );
    let r = api
        .send(
            Method::PUT,
            &base,
            Some(json!({"metadata": {"a": "1", "queue": ""}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(api.get(&base).await.body, json!({"a": "1"}));
    let r = api
        .send(
            Method::PATCH,
            &base,
            Some(json!({"metadata": {"b": "2"}, "machine_version": "01AAAAAAAAAAAAAAAAAAAAAAAA"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 412);
    // No new version; the machine's config shows the metadata.
    let r = api.machine(&id).await;
    assert_eq!(r.body["instance_id"], m["instance_id"]);
    assert_eq!(r.body["config"]["metadata"], json!({"a": "1"}));
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let settings = EmulatorSettings {
        rate_limits: true,
        ..EmulatorSettings::for_tests()
    };
    let (_emu, api) = emulator(settings).await;
    // Create: 1/s burst 3 per app.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            api.post(&format!("/v1/apps/{APP}/machines"), parked())
                .await
                .status,
        );
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let r = api
        .post(&format!("/v1/apps/{APP}/machines"), parked())
        .await;
    if r.status == 429 {
        // The real 429 body is undocumented; ours is invented (machines-api.md §6).
        assert_eq!(r.error(), "rate limit exceeded");
    }
    // Get machine: 5/s burst 10 per machine.
    let id = id_of(&api.get(&format!("/v1/apps/{APP}/machines")).await.body[0]);
    let mut n429 = 0;
    for _ in 0..14 {
        if api.get(&api.m(&id)).await.status == 429 {
            n429 += 1;
        }
    }
    assert!(n429 >= 1, "get limited");
    // After a pause the bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        api.post(&format!("/v1/apps/{APP}/machines"), parked())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn injected_faults() {
    let (emu, api) = test_emulator().await;
    let path = format!("/v1/apps/{APP}/machines");
    emu.set_faults(Faults {
        rate_limited: 1.0,
        ..Faults::default()
    });
    assert_eq!(api.get(&path).await.status, 429);
    emu.set_faults(Faults {
        unavailable: 1.0,
        ..Faults::default()
    });
    assert_eq!(api.get(&path).await.status, 503);
    emu.set_faults(Faults {
        capacity: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        api.get(&path).await.status,
        200,
        "capacity faults hit creates only"
    );
    let r = api.post(&path, parked()).await;
    assert_eq!(r.status, 412);
    assert_eq!(r.body["status"], "insufficient_capacity");
    emu.set_faults(Faults {
        delayed: 1.0,
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let t0 = std::time::Instant::now();
    assert_eq!(api.get(&path).await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Lost create response: the machine exists, the client got no answer.
    emu.set_faults(Faults {
        drop_after_create: 1,
        ..Faults::default()
    });
    let mut b = parked();
    b["name"] = json!("lost-response");
    let r = api.try_send(Method::POST, &path, Some(b), &[]).await;
    assert!(r.is_err(), "connection dropped: {r:?}");
    let list = api.get(&path).await;
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lost-response"]);
    // Only the next N creates: the following one answers.
    assert_eq!(api.post(&path, parked()).await.status, 200);
}

#[tokio::test]
async fn start_during_create_latency_is_412_created() {
    let settings = EmulatorSettings {
        latencies: Latencies {
            create: Duration::from_millis(1500),
            ..Latencies::zero()
        },
        ..EmulatorSettings::for_tests()
    };
    let (_emu, api) = emulator(settings).await;
    let id = id_of(&api.create(sh("sleep 300")).await);
    let r = api.post(&format!("{}/start", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 412);
    assert_eq!(
        r.error(),
        "failed_precondition: unable to start machine from current state: 'created'"
    );
    api.reach(&id, "started").await;
}

#[tokio::test]
async fn ledger_counts_machine_seconds() {
    let (emu, api) = test_emulator().await;
    let id = id_of(&api.create(sh("sleep 0.4; exit 0")).await);
    api.reach(&id, "stopped").await;
    let id2 = id_of(&api.create(sh("sleep 300")).await);
    api.reach(&id2, "started").await;
    assert_eq!(
        api.post(&format!("{}/suspend", api.m(&id2)), json!({}))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api.get("/emulator/ledger").await;
    assert_eq!(r.status, 200);
    let l = emu.ledger();
    let m1 = l.machines.iter().find(|m| m.id == id).unwrap();
    assert!(m1.started_s >= 0.3 && m1.started_s < 5.0, "{m1:?}");
    let m2 = l.machines.iter().find(|m| m.id == id2).unwrap();
    assert!(m2.suspended_s >= 0.25, "{m2:?}");
    assert!(l.started_s >= m1.started_s);
    assert_eq!(r.body["machines"].as_array().unwrap().len(), 2);
    assert!(r.body["started_s"].as_f64().unwrap() >= 0.3);
    assert!(r.body["peak_started"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_command_that_cannot_start_leaves_the_machine_failed() {
    let (emu, api) = test_emulator().await;
    let body = json!({"config": {"image": "x", "init": {"exec": ["/nonexistent/flyjobs-binary"]}}});
    let id = id_of(&api.create(body).await);
    api.reach(&id, "failed").await;
    assert!(
        emu.logs(APP, &id)
            .unwrap()
            .contains("failed to spawn machine process")
    );
    // Images map to directories and default commands.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker.txt"), "from-image-dir").unwrap();
    let settings = EmulatorSettings::for_tests().image(
        "registry.fly.io/app:v1",
        flyjobs_emulator::Image {
            dir: dir.path().to_path_buf(),
            cmd: vec!["cat".into(), "marker.txt".into()],
        },
    );
    let (emu, api) = emulator(settings).await;
    let m = api
        .create(json!({"config": {"image": "registry.fly.io/app:v1"}}))
        .await;
    assert_eq!(m["image_ref"]["registry"], "registry.fly.io");
    assert_eq!(m["image_ref"]["tag"], "v1");
    let id = id_of(&m);
    api.reach(&id, "stopped").await;
    assert_eq!(emu.logs(APP, &id).unwrap(), "from-image-dir");
}
