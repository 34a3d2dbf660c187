//! The Machines client on a mock transport: request sequences of retries, create idempotency,
//! error mapping, auth schemes, redaction and the wire types.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flyjobs::ErrorKind;
use flyjobs::config::Secret;
use flyjobs::machines::transport::{HttpResponse, MockSender, TransportError, TransportFailure};
use flyjobs::machines::types::*;
use flyjobs::machines::{Machines, MachinesClient, RetryConfig, error_from_response};
use http::Method;
use serde_json::{Value, json};

const TOKEN: &str = "FlyV1 fm2_supersecrettoken";

fn client(mock: &MockSender) -> MachinesClient {
    MachinesClient::builder()
        .base_url("http://api.test")
        .token(Secret::new(TOKEN))
        .transport(Arc::new(mock.clone()))
        .build()
        .unwrap()
}

fn machine(id: &str, name: &str, state: &str) -> Value {
    json!({"id": id, "name": name, "state": state, "instance_id": "01HV", "config": {"image": "img"}})
}

fn ok(v: Value) -> Result<HttpResponse, TransportError> {
    Ok(HttpResponse::json(200, &v))
}

fn status(code: u16, error: &str) -> Result<HttpResponse, TransportError> {
    Ok(HttpResponse::json(code, &json!({ "error": error })))
}

fn dropped() -> Result<HttpResponse, TransportError> {
    Err(TransportError::new(
        TransportFailure::Other,
        "connection closed before message completed",
    ))
}

fn create_req() -> CreateMachineRequest {
    CreateMachineRequest {
        config: MachineConfig {
            image: Some("img".into()),
            ..MachineConfig::default()
        },
        ..CreateMachineRequest::default()
    }
}

#[tokio::test(start_paused = true)]
async fn get_retries_429_and_503_then_succeeds() {
    let mock = MockSender::sequence(vec![
        status(429, "rate limit exceeded"),
        status(503, "unavailable"),
        ok(machine("m1", "a", "started")),
    ]);
    let m = client(&mock).get_machine("app", "m1").await.unwrap();
    assert_eq!(m.id, "m1");
    assert_eq!(m.state, Some(MachineState::Started));
    assert_eq!(
        mock.request_lines(),
        vec!["GET /v1/apps/app/machines/m1"; 3]
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_returns_the_last_error() {
    let mock = MockSender::new(|_| {
        Ok(HttpResponse::json(503, &json!({"error": "still down"}))
            .with_header("fly-request-id", "req-9"))
    });
    let c = MachinesClient::builder()
        .base_url("http://api.test")
        .retry(RetryConfig {
            deadline: Duration::from_secs(2),
            ..RetryConfig::default()
        })
        .transport(Arc::new(mock.clone()))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let e = c.get_app("app").await.unwrap_err();
    assert!(
        start.elapsed() <= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Api);
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.request_id(), Some("req-9"));
    // The client spent its own retry budget: the error says so and is final, so callers do
    // not retry it again at once.
    assert!(!e.is_retryable());
    assert!(e.message().contains("still down"), "{e}");
    assert!(e.message().contains("gave up after"), "{e}");
    let n = mock.requests().len();
    // 100, 200, 400, 800 ms backoff (jittered down to half) fit in 2 s; 2 s alone does not.
    assert!((3..=8).contains(&n), "{n} attempts");
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_are_returned_at_once() {
    let mock = MockSender::sequence(vec![status(404, "machine not found")]);
    let e = client(&mock).get_machine("app", "nope").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(mock.requests().len(), 1);
}

/// A fake API that records created machine names: the first `fail_first` creates are performed
/// and then answered with `failure` (a lost response), the rest succeed.
fn fake_api(
    fail_first: usize,
    failure: fn() -> Result<HttpResponse, TransportError>,
    performed: bool,
) -> (MockSender, Arc<Mutex<Vec<String>>>) {
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let attempts = Arc::new(Mutex::new(0usize));
    let c2 = created.clone();
    let mock = MockSender::new(move |req| {
        let mut created = c2.lock().unwrap();
        if req.method == Method::POST {
            let name = req.json()["name"].as_str().unwrap().to_string();
            let mut n = attempts.lock().unwrap();
            *n += 1;
            if *n <= fail_first {
                if performed {
                    created.push(name);
                }
                return failure();
            }
            if created.contains(&name) {
                return status(409, "machine name already taken");
            }
            created.push(name.clone());
            return ok(machine("new1", &name, "created"));
        }
        // GET list
        let list: Vec<Value> = created
            .iter()
            .enumerate()
            .map(|(i, n)| machine(&format!("m{i}"), n, "created"))
            .collect();
        ok(Value::Array(list))
    });
    (mock, created)
}

#[tokio::test(start_paused = true)]
async fn create_after_lost_response_returns_the_existing_machine() {
    let (mock, created) = fake_api(1, dropped, true);
    let m = client(&mock)
        .create_machine("app", &create_req())
        .await
        .unwrap();
    let created = created.lock().unwrap().clone();
    assert_eq!(created.len(), 1, "exactly one machine");
    assert_eq!(m.name.as_deref(), Some(created[0].as_str()));
    assert!(created[0].starts_with("flyjobs-"), "{}", created[0]);
    assert_eq!(
        mock.request_lines(),
        vec![
            "POST /v1/apps/app/machines",
            "GET /v1/apps/app/machines?include_deleted=true"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn create_after_unperformed_5xx_creates_again_with_the_same_name() {
    let (mock, created) = fake_api(1, || status(503, "unavailable"), false);
    let m = client(&mock)
        .create_machine("app", &create_req())
        .await
        .unwrap();
    assert_eq!(created.lock().unwrap().len(), 1);
    let posts: Vec<String> = mock
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST)
        .map(|r| r.json()["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0], posts[1], "one name per request");
    assert_eq!(m.name.as_deref(), Some(posts[0].as_str()));
    assert_eq!(
        mock.request_lines(),
        vec![
            "POST /v1/apps/app/machines",
            "GET /v1/apps/app/machines?include_deleted=true",
            "POST /v1/apps/app/machines"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn create_keeps_a_caller_given_name_and_timeouts_are_ambiguous() {
    let (mock, created) = fake_api(
        2,
        || {
            Err(TransportError::new(
                TransportFailure::Timeout,
                "operation timed out",
            ))
        },
        true,
    );
    let req = CreateMachineRequest {
        name: Some("worker-7".into()),
        ..create_req()
    };
    let m = client(&mock).create_machine("app", &req).await.unwrap();
    assert_eq!(m.name.as_deref(), Some("worker-7"));
    assert_eq!(
        created.lock().unwrap().clone(),
        vec!["worker-7".to_string()]
    );
}

#[tokio::test(start_paused = true)]
async fn create_retries_429_and_capacity_as_is() {
    let mock = MockSender::sequence(vec![
        status(429, "rate limit exceeded"),
        Ok(HttpResponse::json(
            412,
            &json!({"error": "could not reserve resource for machine", "status": "insufficient_capacity"}),
        )),
        ok(machine("m1", "x", "created")),
    ]);
    let m = client(&mock)
        .create_machine("app", &create_req())
        .await
        .unwrap();
    assert_eq!(m.id, "m1");
    assert_eq!(
        mock.request_lines(),
        vec!["POST /v1/apps/app/machines"; 3],
        "no lookups"
    );
    let names: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| r.json()["name"].clone())
        .collect();
    assert!(names.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(start_paused = true)]
async fn create_conflict_without_ambiguity_is_an_error() {
    let mock = MockSender::sequence(vec![status(409, "machine name already taken")]);
    let req = CreateMachineRequest {
        name: Some("taken".into()),
        ..create_req()
    };
    let e = client(&mock).create_machine("app", &req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn create_gives_up_when_the_lookup_keeps_failing() {
    // Never create blind: an ambiguous create whose lookup cannot be made returns an error.
    let mock = MockSender::new(|req| {
        if req.method == Method::POST {
            dropped()
        } else {
            status(503, "down")
        }
    });
    let c = MachinesClient::builder()
        .base_url("http://api.test")
        .retry(RetryConfig {
            deadline: Duration::from_secs(3),
            ..RetryConfig::default()
        })
        .transport(Arc::new(mock.clone()))
        .build()
        .unwrap();
    let e = c.create_machine("app", &create_req()).await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    let posts = mock
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST)
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test(start_paused = true)]
async fn update_is_not_repeated_after_an_ambiguous_failure() {
    let mock = MockSender::sequence(vec![status(503, "unavailable")]);
    let req = UpdateMachineRequest {
        config: MachineConfig {
            image: Some("img".into()),
            ..MachineConfig::default()
        },
        current_version: Some("01HV".into()),
        ..UpdateMachineRequest::default()
    };
    let e = client(&mock)
        .update_machine("app", "m1", &req, Some("nonce1"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert_eq!(mock.requests().len(), 1);
    let r = &mock.requests()[0];
    assert_eq!(r.headers["fly-machine-lease-nonce"], "nonce1");
    assert_eq!(r.json()["current_version"], "01HV");

    let mock = MockSender::sequence(vec![
        status(429, "slow down"),
        ok(machine("m1", "a", "started")),
    ]);
    client(&mock)
        .update_machine("app", "m1", &req, None)
        .await
        .unwrap();
    assert_eq!(
        mock.requests().len(),
        2,
        "429 means nothing happened: retried"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_408_is_a_timeout_without_retry() {
    let mock = MockSender::sequence(vec![status(
        408,
        "deadline_exceeded: machine failed to reach desired state, started, currently stopped",
    )]);
    let q = WaitQuery::state(MachineState::Started).with_timeout(Duration::from_secs(600));
    let e = client(&mock)
        .wait_machine("app", "m1", &q)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(e.message().contains("deadline_exceeded"), "{e}");
    assert_eq!(
        mock.request_lines(),
        vec!["GET /v1/apps/app/machines/m1/wait?state=started&timeout=60"]
    );
    // The attempt's own timeout covers the server-side wait.
    assert!(mock.requests()[0].timeout >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn wait_retries_503_and_sends_every_parameter() {
    let mock = MockSender::sequence(vec![
        status(503, "x"),
        ok(json!({"ok": true, "state": "stopped", "version": "01HV", "event_id": "e9"})),
    ]);
    let q = WaitQuery {
        states: vec![MachineState::Stopped, MachineState::Destroyed],
        timeout: Some(Duration::from_millis(200)),
        version: Some("01HV".into()),
        from_event_id: Some("e1".into()),
    };
    let w = client(&mock).wait_machine("app", "m1", &q).await.unwrap();
    assert_eq!(w.state, Some(MachineState::Stopped));
    assert_eq!(
        mock.request_lines()[1],
        "GET /v1/apps/app/machines/m1/wait?state=stopped%2Cdestroyed&timeout=1&version=01HV&from_event_id=e1"
    );
}

#[tokio::test(start_paused = true)]
async fn list_sends_filters() {
    let mock = MockSender::sequence(vec![ok(json!([]))]);
    let q = ListMachinesQuery {
        states: vec![MachineState::Started, MachineState::Suspended],
        metadata: [("flyjobs_queue".to_string(), "mail".to_string())].into(),
        include_deleted: true,
        summary: true,
        region: None,
    };
    assert!(
        client(&mock)
            .list_machines("app", &q)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        mock.request_lines(),
        vec![
            "GET /v1/apps/app/machines?state=started%2Csuspended&include_deleted=true&summary=true&metadata.flyjobs_queue=mail"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn destroy_404_after_a_lost_response_means_done() {
    let mock = MockSender::sequence(vec![dropped(), status(404, "machine not found")]);
    client(&mock)
        .destroy_machine("app", "m1", true, Some("n1"))
        .await
        .unwrap();
    assert_eq!(
        mock.request_lines(),
        vec!["DELETE /v1/apps/app/machines/m1?force=true"; 2]
    );
    assert_eq!(mock.requests()[0].headers["fly-machine-lease-nonce"], "n1");

    // A plain 404 is still an error.
    let mock = MockSender::sequence(vec![status(404, "machine not found")]);
    let e = client(&mock)
        .destroy_machine("app", "m1", false, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test(start_paused = true)]
async fn leases_use_the_envelope_and_the_nonce_header() {
    let env = json!({"status": "success", "data": {"nonce": "5c35f65c9f95", "expires_at": 1708569778,
                     "owner": "x@tokens.fly.io", "description": "", "version": "01HQ"}});
    let mock = MockSender::sequence(vec![
        Ok(HttpResponse::json(201, &env)),
        ok(env.clone()),
        // The spec's bare Lease is accepted too.
        ok(env["data"].clone()),
        ok(json!({"status": "success", "data": {"ok": true}})),
    ]);
    let c = client(&mock);
    let req = CreateLeaseRequest {
        ttl: Some(30),
        description: Some("scaler".into()),
        ..Default::default()
    };
    let l = c.acquire_lease("app", "m1", &req).await.unwrap();
    assert_eq!(l.nonce, "5c35f65c9f95");
    assert_eq!(l.expires_at, Some(1708569778));
    let l2 = c
        .refresh_lease("app", "m1", &l.nonce, Some(60))
        .await
        .unwrap();
    assert_eq!(l2.nonce, l.nonce);
    assert_eq!(
        c.get_lease("app", "m1").await.unwrap().owner.as_deref(),
        Some("x@tokens.fly.io")
    );
    c.release_lease("app", "m1", &l.nonce).await.unwrap();
    let reqs = mock.requests();
    assert!(reqs[0].headers.get("fly-machine-lease-nonce").is_none());
    assert_eq!(reqs[0].json(), json!({"ttl": 30, "description": "scaler"}));
    assert_eq!(reqs[1].headers["fly-machine-lease-nonce"], "5c35f65c9f95");
    assert_eq!(reqs[1].json(), json!({"ttl": 60}));
    assert_eq!(reqs[3].method, Method::DELETE);
    assert_eq!(reqs[3].headers["fly-machine-lease-nonce"], "5c35f65c9f95");
}

#[tokio::test(start_paused = true)]
async fn acquire_is_not_repeated_after_an_ambiguous_failure() {
    let mock = MockSender::sequence(vec![dropped()]);
    let e = client(&mock)
        .acquire_lease("app", "m1", &CreateLeaseRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn metadata_and_lifecycle_calls_hit_their_paths() {
    let mock = MockSender::new(|req| {
        let p = req.url.path().to_string();
        if p.ends_with("/metadata") {
            ok(json!({"a": "1"}))
        } else if p.ends_with("/start") {
            ok(json!({"previous_state": "stopped", "migrated": false, "new_host": ""}))
        } else if p.contains("/metadata/") {
            Ok(HttpResponse::empty(204))
        } else if p.ends_with("/events") {
            ok(
                json!([{"id": "e2", "type": "exit", "status": "stopped", "source": "flyd",
                "timestamp": 1, "request": {"exit_event": {"exit_code": 0, "oom_killed": false}}}]),
            )
        } else {
            ok(json!({"ok": true}))
        }
    });
    let c = client(&mock);
    assert_eq!(c.get_metadata("app", "m1").await.unwrap()["a"], "1");
    c.set_metadata("app", "m1", "queue name", "mail")
        .await
        .unwrap();
    c.delete_metadata("app", "m1", "queue name").await.unwrap();
    let s = c.start_machine("app", "m1", None).await.unwrap();
    assert_eq!(s.previous_state, Some(MachineState::Stopped));
    let stop = StopRequest::default()
        .with_signal("SIGTERM")
        .with_timeout(Duration::from_secs(10));
    c.stop_machine("app", "m1", &stop, None).await.unwrap();
    c.suspend_machine("app", "m1", None).await.unwrap();
    let ev = c.machine_events("app", "m1", Some(5)).await.unwrap();
    assert_eq!(ev[0].kind.as_deref(), Some("exit"));
    assert_eq!(ev[0].exit_event().unwrap().exit_code, Some(0));
    assert_eq!(
        mock.request_lines(),
        vec![
            "GET /v1/apps/app/machines/m1/metadata",
            "POST /v1/apps/app/machines/m1/metadata/queue%20name",
            "DELETE /v1/apps/app/machines/m1/metadata/queue%20name",
            "POST /v1/apps/app/machines/m1/start",
            "POST /v1/apps/app/machines/m1/stop",
            "POST /v1/apps/app/machines/m1/suspend",
            "GET /v1/apps/app/machines/m1/events?limit=5",
        ]
    );
    let reqs = mock.requests();
    assert_eq!(reqs[1].json(), json!({"value": "mail"}));
    assert_eq!(
        reqs[4].json(),
        json!({"signal": "SIGTERM", "timeout": "10s"})
    );
}

#[tokio::test(start_paused = true)]
async fn create_app_after_a_lost_response_reads_the_app() {
    let mock = MockSender::sequence(vec![
        dropped(),
        Ok(HttpResponse::json(
            422,
            &json!({"error": "Name has already been taken", "status": "name_taken"}),
        )),
        ok(json!({"id": "a1", "name": "shop", "organization": {"slug": "personal"}})),
    ]);
    let req = CreateAppRequest {
        name: "shop".into(),
        org_slug: "personal".into(),
        ..Default::default()
    };
    let app = client(&mock).create_app(&req).await.unwrap();
    assert_eq!(app.name.as_deref(), Some("shop"));
    assert_eq!(
        mock.request_lines(),
        vec!["POST /v1/apps", "POST /v1/apps", "GET /v1/apps/shop"]
    );
}

#[test]
fn error_mapping_table() {
    let cases: &[(u16, Value, ErrorKind, bool)] = &[
        (
            404,
            json!({"error": "machine not found"}),
            ErrorKind::NotFound,
            false,
        ),
        (
            409,
            json!({"error": "aborted: machine ID x lease currently held by y"}),
            ErrorKind::Conflict,
            false,
        ),
        (
            412,
            json!({"error": "failed_precondition: unable to start machine from current state: 'created'"}),
            ErrorKind::Conflict,
            false,
        ),
        (
            412,
            json!({"error": "insufficient resources to create new machine"}),
            ErrorKind::Capacity,
            true,
        ),
        (
            409,
            json!({"error": "aborted: could not reserve resource for machine: insufficient memory"}),
            ErrorKind::Capacity,
            true,
        ),
        (
            422,
            json!({"error": "no room", "status": "insufficient_capacity"}),
            ErrorKind::Capacity,
            true,
        ),
        (
            422,
            json!({"error": "Name has already been taken", "status": "name_taken"}),
            ErrorKind::Conflict,
            false,
        ),
        (
            422,
            json!({"error": "bad guest"}),
            ErrorKind::Invalid,
            false,
        ),
        (
            400,
            json!({"error": "json: cannot unmarshal"}),
            ErrorKind::Invalid,
            false,
        ),
        (
            429,
            json!({"error": "rate limit exceeded"}),
            ErrorKind::RateLimited,
            true,
        ),
        (
            408,
            json!({"error": "deadline_exceeded: …"}),
            ErrorKind::Timeout,
            true,
        ),
        (401, json!({}), ErrorKind::Auth, false),
        (
            403,
            json!({"error": "over the allowed quota"}),
            ErrorKind::Auth,
            false,
        ),
        (500, json!({"error": "boom"}), ErrorKind::Api, false),
        (502, json!({"message": "bad gateway"}), ErrorKind::Api, true),
        (503, json!({}), ErrorKind::Api, true),
        (504, json!({}), ErrorKind::Api, true),
    ];
    for (code, body, kind, retryable) in cases {
        let e = error_from_response(&Method::GET, "/v1/x", &HttpResponse::json(*code, body));
        assert_eq!(
            (e.kind(), e.is_retryable(), e.status()),
            (*kind, *retryable, Some(*code)),
            "{code} {body}"
        );
    }
    // Text: `error`, else `message`, else the raw body; plus the request id.
    let e = error_from_response(
        &Method::GET,
        "/v1/x",
        &HttpResponse::json(502, &json!({"message": "bad gateway"})),
    );
    assert!(e.message().ends_with("bad gateway"), "{e}");
    let raw = HttpResponse {
        status: 503,
        headers: Default::default(),
        body: "upstream down".into(),
    }
    .with_header("fly-request-id", "01REQ");
    let e = error_from_response(&Method::POST, "/v1/x", &raw);
    assert_eq!(e.message(), "POST /v1/x: upstream down");
    assert_eq!(e.request_id(), Some("01REQ"));
}

#[tokio::test]
async fn auth_header_schemes() {
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (Some("plain_oauth"), Some("Bearer plain_oauth")),
        (Some("FlyV1 fm2_abc"), Some("FlyV1 fm2_abc")),
        (Some("fm2_abc"), Some("FlyV1 fm2_abc")),
        (Some("fm1r_abc,fm1a_def"), Some("FlyV1 fm1r_abc,fm1a_def")),
        (Some("Bearer FlyV1 fm2_abc"), Some("FlyV1 fm2_abc")),
        (Some("bearer xyz"), Some("Bearer xyz")),
        (None, None),
    ];
    for (token, expect) in cases {
        let mock = MockSender::sequence(vec![ok(json!({"name": "a"}))]);
        let mut b = MachinesClient::builder()
            .base_url("http://api.test")
            .transport(Arc::new(mock.clone()));
        if let Some(t) = token {
            b = b.token(Secret::new(*t));
        }
        b.build().unwrap().get_app("a").await.unwrap();
        let got = mock.requests()[0]
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), *expect, "{token:?}");
    }
}

/// Writer that collects tracing output.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn token_never_shows_in_debug_errors_or_logs() {
    let buf = Buf::default();
    let b2 = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || b2.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let mock = MockSender::sequence(vec![
        status(401, "unauthorized"),
        status(503, "x"),
        ok(machine("m1", "a", "started")),
    ]);
    let c = client(&mock);
    let e = c.get_app("app").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    c.get_machine("app", "m1").await.unwrap();

    let builder = MachinesClient::builder().token(Secret::new(TOKEN));
    let texts = [
        format!("{c:?}"),
        format!("{builder:?}"),
        format!("{e}"),
        format!("{e:?}"),
        format!("{:?}", mock.requests()),
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap(),
    ];
    for t in &texts {
        assert!(!t.contains("supersecret"), "token leaked: {t}");
    }
    assert!(texts[0].contains("[REDACTED]"));
    let logs = &texts[5];
    assert!(
        logs.contains("status=503") && logs.contains("attempt=2"),
        "{logs}"
    );
}

#[test]
fn unknown_fields_round_trip() {
    let wire = json!({
        "id": "1857156b526dd8", "name": "aged-thunder-7371", "state": "hibernating",
        "region": "ord", "instance_id": "01HEPA330HZ37A78TK080NAK1M", "future_top": {"x": [1, 2]},
        "config": {
            "image": "registry.fly.io/shop:v1",
            "env": {"A": "1"},
            "init": {"cmd": ["bin/worker"], "future_init": true},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256, "future_guest": "g"},
            "restart": {"policy": "no"},
            "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
            "services": [{"protocol": "tcp", "internal_port": 8080}],
            "checks": {"alive": {"type": "tcp", "port": 8080}},
            "mounts": [{"volume": "vol_1", "path": "/data", "future_mount": 1}],
            "metadata": {"flyjobs_queue": "mail"},
            "auto_destroy": true,
            "dns": {},
            "containers": [{"name": "c"}]
        },
        "events": [{"id": "e1", "type": "launch", "status": "created", "source": "user",
                    "timestamp": 1699408350000_i64, "future_event": 3}]
    });
    let m: Machine = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(m.state, Some(MachineState::Other("hibernating".into())));
    assert_eq!(serde_json::to_value(&m).unwrap(), wire);

    // Optional fields are left out of requests.
    let req = create_req();
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        json!({"config": {"image": "img"}})
    );
}

#[test]
fn machine_state_strings() {
    for s in [
        "created",
        "started",
        "stopped",
        "suspended",
        "destroyed",
        "launch_failed",
        "settled",
    ] {
        let st: MachineState = s.parse().unwrap();
        assert!(!matches!(st, MachineState::Other(_)), "{s}");
        assert_eq!(st.as_str(), s);
    }
}

#[test]
fn guest_presets() {
    for (name, kind, cpus, mem) in [
        ("shared-cpu-1x", "shared", 1, 256),
        ("shared-cpu-8x", "shared", 8, 2048),
        ("performance-1x", "performance", 1, 2048),
        ("performance-16x", "performance", 16, 32768),
    ] {
        let g = Guest::preset(name).unwrap();
        assert_eq!(
            (g.cpu_kind.as_deref(), g.cpus, g.memory_mb),
            (Some(kind), Some(cpus), Some(mem))
        );
    }
    for bad in ["shared-cpu-3x", "performance-3x", "huge", "shared-cpu-x"] {
        let e = Guest::preset(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains(bad), "{e}");
    }
}

#[test]
fn base_urls() {
    let b = |u: &str| {
        MachinesClient::builder()
            .base_url(u)
            .build()
            .map(|c| c.base_url().to_string())
    };
    assert_eq!(
        b("https://api.machines.dev").unwrap(),
        "https://api.machines.dev/v1"
    );
    assert_eq!(
        b("http://127.0.0.1:4280/").unwrap(),
        "http://127.0.0.1:4280/v1"
    );
    assert_eq!(
        b("http://127.0.0.1:4280/v1").unwrap(),
        "http://127.0.0.1:4280/v1"
    );
    assert_eq!(b("unix:/.fly/api").unwrap(), "http://flaps/v1");
    assert_eq!(b("ftp://x").unwrap_err().kind(), ErrorKind::Config);
    assert_eq!(b("unix:").unwrap_err().kind(), ErrorKind::Config);

    let cfg = flyjobs::Config::builder()
        .lookup(|k| match k {
            "FLY_API_TOKEN" => Some("fm2_tok".into()),
            "FLY_APP_NAME" => Some("shop".into()),
            _ => None,
        })
        .build()
        .unwrap();
    let c = MachinesClient::from_config(&cfg).unwrap();
    assert_eq!(c.app(), Some("shop"));
    assert_eq!(c.base_url(), "https://api.machines.dev/v1");
}
