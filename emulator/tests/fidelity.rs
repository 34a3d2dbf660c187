//! Where the emulator used to be kinder than Fly (issue 10): lease TTL bounds and the panic
//! guard, config validation, settings from FLYJOBS_EMULATOR_*, image CMDs, the routes it
//! lacked, request ids, events, wait, suspend and 429s.

mod common;

use std::time::Duration;

use common::*;
use flyjobs_emulator::{EmulatorSettings, Faults, Image};
use reqwest::Method;
use serde_json::{Value, json};

fn id_of(m: &Value) -> String {
    m["id"].as_str().unwrap().to_string()
}

fn with_config(extra: Value) -> Value {
    let mut b = sh("sleep 300");
    for (k, v) in extra.as_object().unwrap() {
        b["config"][k] = v.clone();
    }
    b
}

async fn create_status(api: &Api, body: Value) -> Resp {
    api.post(&format!("/v1/apps/{APP}/machines"), body).await
}

// ---------------------------------------------------------------- 1. leases, panics

#[tokio::test]
async fn lease_ttls_are_bounded_and_guarded_calls_keep_working() {
    let (_emu, api) = test_emulator().await;
    let id = id_of(&api.create(sh("sleep 300")).await);
    api.reach(&id, "started").await;
    let lease = format!("{}/lease", api.m(&id));
    for ttl in [json!(1u64 << 40), json!(u64::MAX), json!(-5), json!(86401)] {
        let r = api.post(&lease, json!({"ttl": ttl})).await;
        assert_eq!(r.status, 400, "ttl {ttl}: {}", r.text);
        assert!(
            r.error()
                .contains("ttl must be a whole number of seconds from 1 to 86400"),
            "{}",
            r.error()
        );
    }
    let r = api
        .post(&format!("{lease}?ttl=99999999999"), json!({}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api.post(&lease, json!({"ttl": "60"})).await;
    assert_eq!(r.status, 400, "a string ttl is a type error: {}", r.text);
    let mut b = sh("sleep 300");
    b["lease_ttl"] = json!(1u64 << 62);
    let r = create_status(&api, b).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.error().contains("lease_ttl must be"), "{}", r.error());

    // The longest allowed lease works, shows a sane expiry, and guards the machine; a forced
    // destroy without the nonce is a clean 409, not a dropped connection.
    let r = api.post(&lease, json!({"ttl": 86400})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let exp = r.body["data"]["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 86000..=now + 86500).contains(&exp), "{exp} vs {now}");
    let r = api
        .send(
            Method::DELETE,
            &format!("{}?force=true", api.m(&id)),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(
        r.error().contains("lease currently held by"),
        "{}",
        r.error()
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_leaves_the_machine_usable() {
    let mut settings = EmulatorSettings::for_tests();
    settings.test_routes = true;
    let (_emu, api) = emulator(settings).await;
    let id = id_of(&api.create(sh("sleep 300")).await);
    api.reach(&id, "started").await;
    let r = api
        .post(
            &format!("/emulator/apps/{APP}/machines/{id}/panic"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert!(
        r.error()
            .starts_with("internal: the emulator failed on POST"),
        "{}",
        r.error()
    );
    // The lock the handler held is recovered: the machine still answers and obeys.
    assert_eq!(api.machine(&id).await.body["state"], "started");
    let r = api.post(&format!("{}/stop", api.m(&id)), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    api.reach(&id, "stopped").await;
    let r = api.send(Method::DELETE, &api.m(&id), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

// ---------------------------------------------------------------- 2. config validation

#[tokio::test]
async fn configs_fly_refuses_are_refused_with_flys_words() {
    let (_emu, api) = test_emulator().await;
    let cases = [
        (
            json!({"guest": {"cpus": 64, "memory_mb": 1048576}}),
            "invalid config.guest.cpus, 64 is not a valid number of shared CPUs",
        ),
        (
            json!({"guest": {"cpus": 1, "memory_mb": 100}}),
            "invalid config.guest.memory_mb, minimum required 256 MiB",
        ),
        (
            json!({"guest": {"cpus": 2, "memory_mb": 1000}}),
            "invalid config.guest.memory_mb, 1000 MiB is not a multiple of 256 MiB",
        ),
        (
            json!({"guest": {"cpus": 1, "memory_mb": 8192}}),
            "invalid config.guest.memory_mb, maximum allowed 2048 MiB",
        ),
        (
            json!({"guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 2048}}),
            "invalid config.guest.memory_mb, minimum required 4096 MiB",
        ),
        (
            json!({"auto_destroy": "yes"}),
            "json: cannot unmarshal string into Go struct field MachineConfig.config.auto_destroy of type bool",
        ),
        (
            json!({"restart": {"policy": "no", "max_retries": -1.8e37}}),
            "json: cannot unmarshal number -1.8e+37 into Go struct field MachineRestart.config.restart.max_retries of type int",
        ),
        (
            json!({"restart": {"policy": "on-fail"}}),
            "invalid_argument: invalid restart policy 'on-fail'",
        ),
        (
            json!({"size": "shared-cpu-3x"}),
            "invalid_argument: invalid machine size 'shared-cpu-3x'",
        ),
    ];
    for (extra, want) in cases {
        let r = create_status(&api, with_config(extra.clone())).await;
        assert_eq!(r.status, 400, "{extra}: {}", r.text);
        assert!(r.error().starts_with(want), "{extra}: {}", r.error());
    }
    // Update validates the same way; a valid size passes.
    let m = api
        .create(with_config(
            json!({"guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096}}),
        ))
        .await;
    let id = id_of(&m);
    let r = api
        .post(
            &api.m(&id),
            with_config(json!({"guest": {"cpus": 1, "memory_mb": 100}})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = api
        .post(&api.m(&id), with_config(json!({"size": "shared-cpu-2x"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

// ---------------------------------------------------------------- 3. settings from the env

#[tokio::test]
async fn tokens_and_capacity_per_region_come_from_flyjobs_emulator_variables() {
    let vars = [
        ("FLYJOBS_EMULATOR_LATENCY", "none"),
        ("FLYJOBS_EMULATOR_TOKENS", "good-token@test-app"),
        ("FLYJOBS_EMULATOR_CAPACITY", "lax=1:256,ord=8:16384"),
    ];
    let settings = EmulatorSettings::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let (_emu, api) = emulator(settings).await;
    let path = format!("/v1/apps/{APP}/machines");
    let r = api.with_token(Some("other-token")).get(&path).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let good = api.with_token(Some("good-token"));
    assert_eq!(good.get(&path).await.status, 200);
    // lax holds one shared-cpu-1x; ord holds more.
    let mut b = sh("sleep 300");
    b["region"] = json!("lax");
    good.create(b.clone()).await;
    let r = good.post(&path, b).await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert_eq!(r.body["status"], "insufficient_capacity");
    let mut b = sh("sleep 300");
    b["region"] = json!("ord");
    good.create(b.clone()).await;
    good.create(b).await;
}

#[tokio::test]
async fn dropped_create_responses_at_a_rate() {
    let (emu, api) = test_emulator().await;
    emu.set_faults(Faults {
        dropped_create: 1.0,
        ..Faults::default()
    });
    let r = api
        .try_send(
            Method::POST,
            &format!("/v1/apps/{APP}/machines"),
            Some(sh("sleep 300")),
            &[],
        )
        .await;
    assert!(r.is_err(), "the response is lost: {r:?}");
    assert_eq!(emu.machines(APP).len(), 1, "but the machine was created");
}

// ---------------------------------------------------------------- 4. image CMD

#[tokio::test]
async fn an_image_only_create_runs_the_images_command() {
    let dir = tempfile::tempdir().unwrap();
    let (image_ref, image) = Image::parse_spec(&format!(
        "registry.fly.io/app:v1={}:sh -c 'echo \"cmd in $PWD\"; sleep 300'",
        dir.path().display()
    ))
    .unwrap();
    let (emu, api) = emulator(EmulatorSettings::for_tests().image(&image_ref, image)).await;
    let id = id_of(&api.create(json!({"config": {"image": image_ref}})).await);
    api.reach(&id, "started").await;
    let want = format!("cmd in {}", dir.path().display());
    assert!(
        eventually(Duration::from_secs(10), || emu
            .logs(APP, &id)
            .unwrap()
            .contains(&want))
        .await,
        "{:?}",
        emu.logs(APP, &id)
    );
}

// ---------------------------------------------------------------- 5. routes

#[tokio::test]
async fn signal_cordon_versions_and_exec() {
    let (emu, api) = test_emulator().await;
    let script = "trap 'echo got-usr1' USR1; while :; do sleep 0.1; done";
    let mut b = sh(script);
    b["config"]["env"] = json!({"GREETING": "hello"});
    let id = id_of(&api.create(b).await);
    api.reach(&id, "started").await;
    let m = api.m(&id);

    // signal
    let r = api
        .post(&format!("{m}/signal"), json!({"signal": "SIGUSR1"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        eventually(Duration::from_secs(10), || emu
            .logs(APP, &id)
            .unwrap()
            .contains("got-usr1"))
        .await
    );
    let r = api
        .post(&format!("{m}/signal"), json!({"signal": "SIGBOGUS"}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // cordon / uncordon (lease-guarded)
    let r = api.post(&format!("{m}/cordon"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.machine(&id).await.body["cordoned"], true);
    let r = api.post(&format!("{m}/uncordon"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(api.machine(&id).await.body["cordoned"], false);

    // exec: the machine's env and directory, stdin, exit code
    let r = api
        .post(
            &format!("{m}/exec"),
            json!({"command": ["sh", "-c", "echo $GREETING $FLY_MACHINE_ID; cat; echo oops >&2; exit 3"], "stdin": "from-stdin"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    conform("flydv1.ExecResponse", &r.body);
    assert_eq!(r.body["exit_code"], 3);
    assert_eq!(r.body["stdout"], format!("hello {id}\nfrom-stdin"));
    assert_eq!(r.body["stderr"], "oops\n");
    let r = api
        .post(
            &format!("{m}/exec"),
            json!({"command": ["sleep", "30"], "timeout": 1}),
        )
        .await;
    assert_eq!(r.status, 408, "{}", r.text);
    let r = api.post(&format!("{m}/exec"), json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text);

    // versions: one per config, newest first
    let v1 = api.machine(&id).await.body["instance_id"].clone();
    let mut b = sh("sleep 300");
    b["config"]["metadata"] = json!({"v": "2"});
    let r = api.post(&m, b).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v2 = r.body["instance_id"].clone();
    let r = api.get(&format!("{m}/versions")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    conform_array("MachineVersion", &r.body);
    let versions = r.body.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        (&versions[0]["version"], &versions[1]["version"]),
        (&v2, &v1)
    );
    assert_eq!(versions[0]["user_config"]["metadata"]["v"], "2");

    // exec on a machine that is not running: 412
    api.reach(&id, "started").await;
    api.post(&format!("{m}/stop"), json!({})).await;
    api.reach(&id, "stopped").await;
    let r = api
        .post(&format!("{m}/exec"), json!({"command": ["true"]}))
        .await;
    assert_eq!(r.status, 412, "{}", r.text);
}

#[tokio::test]
async fn apps_list_and_delete_and_501_for_the_rest() {
    let (emu, api) = test_emulator().await;
    let r = api.get("/v1/apps?org_slug=personal").await;
    assert_eq!(r.status, 200, "{}", r.text);
    conform("ListAppsResponse", &r.body);
    assert_eq!(r.body["total_apps"], 1);
    assert_eq!(r.body["apps"][0]["name"], APP);
    assert_eq!(
        api.get("/v1/apps").await.status,
        400,
        "org_slug is required"
    );

    let id = id_of(&api.create(sh("sleep 300")).await);
    api.reach(&id, "started").await;
    let r = api
        .send(Method::DELETE, &format!("/v1/apps/{APP}"), None, &[])
        .await;
    assert_eq!(
        r.status, 412,
        "running machines refuse a delete: {}",
        r.text
    );
    let r = api
        .send(
            Method::DELETE,
            &format!("/v1/apps/{APP}?force=true"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(api.get(&format!("/v1/apps/{APP}")).await.status, 404);
    assert!(
        eventually(Duration::from_secs(10), || emu.machines(APP)[0].state
            == "destroyed")
        .await
    );

    let r = api.get("/v1/apps/x/volumes").await;
    assert_eq!(r.status, 501, "{}", r.text);
    assert_eq!(
        r.error(),
        "not implemented in the flyjobs emulator: GET /v1/apps/{app_name}/volumes"
    );
    let r = api.get("/v1/nothing/here").await;
    assert_eq!((r.status, r.error()), (404, "not found"));
}

// ---------------------------------------------------------------- 6. smaller things

#[tokio::test]
async fn every_answer_has_a_request_id() {
    let (_emu, api) = test_emulator().await;
    for (path, token, status) in [
        (format!("/v1/apps/{APP}"), Some(TOKEN), 200),
        (
            format!("/v1/apps/{APP}/machines/0123456789abcd"),
            Some(TOKEN),
            404,
        ),
        (format!("/v1/apps/{APP}"), None, 401),
        ("/v1/apps/x/secrets".to_string(), Some(TOKEN), 501),
    ] {
        let mut rb = api.http.get(format!("{}{path}", api.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let id = r.headers()["fly-request-id"].to_str().unwrap().to_string();
        assert!(id.len() > 26 && id.ends_with("-lax"), "{path}: {id}");
    }
}

#[tokio::test]
async fn events_wait_suspend_and_429_as_fly() {
    let (emu, api) = test_emulator().await;
    let id = id_of(&api.create(sh("sleep 300")).await);
    api.reach(&id, "started").await;
    let events = api.events(&id).await;
    let launch = events.iter().find(|e| e["type"] == "launch").unwrap();
    assert!(launch.get("request").is_none(), "{launch}");

    // wait for stopped needs a version
    let r = api
        .get(&format!("{}/wait?state=stopped&timeout=1", api.m(&id)))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.error().contains("requires the machine version"),
        "{}",
        r.error()
    );

    // suspend refuses what Fly refuses
    for (extra, want) in [
        (
            json!({"guest": {"cpus": 2, "memory_mb": 4096}}),
            "above the 2048 MB suspend limit",
        ),
        (
            json!({"init": {"exec": ["sh", "-c", "sleep 300"], "swap_size_mb": 512}}),
            "it has swap",
        ),
        (json!({"schedule": "daily"}), "it has a schedule"),
    ] {
        let mid = id_of(&api.create(with_config(extra.clone())).await);
        api.reach(&mid, "started").await;
        let r = api
            .post(&format!("{}/suspend", api.m(&mid)), json!({}))
            .await;
        assert_eq!(r.status, 412, "{extra}: {}", r.text);
        assert!(r.error().contains(want), "{extra}: {}", r.error());
    }
    let r = api
        .post(&format!("{}/suspend", api.m(&id)), json!({}))
        .await;
    assert_eq!(r.status, 200, "a small machine suspends: {}", r.text);

    // 429: ErrorResponse body and Retry-After
    emu.set_faults(Faults {
        rate_limited: 1.0,
        ..Faults::default()
    });
    let r = api
        .http
        .get(format!("{}{}", api.base, api.m(&id)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    conform("ErrorResponse", &body);
    assert_eq!(body["error"], "rate limit exceeded");
}
