//! The dashboard over real HTTP (`server::serve` on a loopback port) on a real SQLite store:
//! every page loads, actions need the CSRF token and change what they say, payloads and errors
//! are escaped, read-only refuses changes, the token is required and never shown.

use std::collections::HashMap;

use flyjobs::Client;
use flyjobs::config::Config;
use flyjobs::job::{Failure, JobState, NewJob};
use flyjobs::retry::{Backoff, RetryPolicy};
use flyjobs::store::ClaimRequest;
use flyjobs_dashboard::server::{Auth, serve};
use flyjobs_dashboard::{Dashboard, DashboardOptions};
use serde_json::json;

const TOKEN: &str = "s3cret-dashboard-token-0123";

struct Fixture {
    client: Client,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(auth: Auth, read_only: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/q.db?mode=rwc", dir.path().display());
    let config = Config::from_options(
        &json!({ "database_url": url, "api_token": "fly-token-never-shown" })
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    let client = Client::builder(config).open().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // reqwest is built without a default TLS provider in this workspace (one is shared with
    // sqlx); plain HTTP still needs one installed.
    flyjobs::machines::transport::install_crypto_provider();
    let dash = Dashboard::new(client.clone(), DashboardOptions { read_only });
    tokio::spawn(serve(listener, dash, auth));
    Fixture {
        client,
        base,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        _dir: dir,
    }
}

impl Fixture {
    async fn get(&self, path: &str) -> (u16, String, HashMap<String, String>) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        (status, r.text().await.unwrap(), headers)
    }

    /// The CSRF cookie a first GET sets.
    async fn csrf(&self) -> String {
        let (_, _, headers) = self.get("/").await;
        let cookie = &headers["set-cookie"];
        cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    }

    async fn post(
        &self,
        path: &str,
        csrf_cookie: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, String, Option<String>) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap());
        if let Some(c) = csrf_cookie {
            req = req.header("cookie", format!("flyjobs_csrf={c}"));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, r.text().await.unwrap(), location)
    }
}

/// Claim the next job of `queue`, as a worker would.
async fn claim_one(client: &Client, queue: &str) -> flyjobs::store::Lease {
    client
        .store()
        .claim(ClaimRequest::new(
            [queue],
            1,
            "w",
            std::time::Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .pop()
        .unwrap()
}

/// A job whose payload and error carry markup, made dead.
async fn dead_job_with_markup(client: &Client, queue: &str) -> i64 {
    let mut job = NewJob::new(queue, json!({"html": "<script>alert(1)</script>"}));
    job.name = "<img src=x onerror=alert(2)>".into();
    job.max_attempts = Some(1);
    let job = client.enqueue(job).await.unwrap();
    let store = client.store();
    let lease = claim_one(client, queue).await;
    let policy = RetryPolicy::new(1, Backoff::Fixed(std::time::Duration::ZERO)).unwrap();
    store
        .fail(
            lease.job.id,
            lease.token,
            Failure::new("Boom<script>", "bad </pre><script>alert(3)</script>"),
            &policy,
        )
        .await
        .unwrap();
    job.id.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_and_markup_in_jobs_is_escaped() {
    let fx = start(Auth::None, false).await;
    let id = dead_job_with_markup(&fx.client, "xss").await;
    fx.client
        .enqueue(
            NewJob::new("mail", json!(1)).run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
        )
        .await
        .unwrap();
    for path in [
        "/".to_owned(),
        "/jobs".into(),
        "/jobs?state=dead&queue=xss".into(),
        format!("/jobs/{id}"),
        "/dead".into(),
        "/scheduled".into(),
        "/machines".into(),
        "/cost".into(),
        "/boot_failures".into(),
    ] {
        let (status, body, headers) = fx.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.starts_with("<!DOCTYPE html>"), "{path}");
        assert!(
            !body.contains("<script>alert"),
            "{path} lets markup through"
        );
        assert!(!body.contains("<img src=x"), "{path} lets markup through");
        assert!(
            !body.contains("fly-token-never-shown"),
            "{path} shows the token"
        );
        assert!(headers["content-security-policy"].contains("script-src 'self'"));
    }
    let (_, body, _) = fx.get(&format!("/jobs/{id}")).await;
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "payload shown escaped"
    );
    assert!(
        body.contains("Boom&lt;script&gt;"),
        "error class shown escaped"
    );
    // Its one failed attempt, in the history table: number, machine, outcome, error.
    let history = &body[body.find("Failed attempts").expect("the attempt history")..];
    let row = &history[history.find("<tbody>").unwrap()..history.find("</tbody>").unwrap()];
    assert!(row.contains("<td class=\"num\">1</td>"), "{row}");
    assert!(
        row.contains("<code>w</code>"),
        "the machine that ran it: {row}"
    );
    assert!(row.contains("state-dead"), "{row}");
    assert!(
        row.contains("bad &lt;/pre&gt;&lt;script&gt;alert(3)"),
        "{row}"
    );
    let (status, _, _) = fx.get("/jobs/999999").await;
    assert_eq!(status, 404);
    let (status, body, _) = fx.get("/jobs?state=bogus").await;
    assert_eq!((status, body.contains("unknown state")), (400, true));
    let (status, css, headers) = fx.get("/assets/style.css").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/css") && css.contains("--accent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_csrf_token_and_do_what_they_say() {
    let fx = start(Auth::None, false).await;
    let dead = dead_job_with_markup(&fx.client, "xss").await;
    let later = fx
        .client
        .enqueue(
            NewJob::new("mail", json!(2)).run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
        )
        .await
        .unwrap()
        .id
        .0;
    let csrf = fx.csrf().await;

    // without the token, or with a different one: refused, nothing changes
    let (status, body, _) = fx
        .post(&format!("/jobs/{dead}/retry"), None, &[("_csrf", &csrf)])
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = fx
        .post(
            &format!("/jobs/{dead}/retry"),
            Some(&csrf),
            &[("_csrf", &"0".repeat(64))],
        )
        .await;
    assert_eq!(status, 403);
    let state = |id: i64| {
        let c = fx.client.clone();
        async move { c.job(flyjobs::job::JobId(id)).await.unwrap().unwrap().state }
    };
    assert_eq!(state(dead).await, JobState::Dead);

    // with it: retried, and sent back where the form said (inside the dashboard only)
    let (status, _, location) = fx
        .post(
            &format!("/jobs/{dead}/retry"),
            Some(&csrf),
            &[("_csrf", &csrf), ("return_to", "/dead")],
        )
        .await;
    assert_eq!((status, location.as_deref()), (303, Some("/dead")));
    assert_eq!(state(dead).await, JobState::Ready);

    let (status, _, location) = fx
        .post(
            &format!("/jobs/{later}/run_now"),
            Some(&csrf),
            &[("_csrf", &csrf), ("return_to", "https://evil.example/")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(
        location.unwrap(),
        format!("/jobs/{later}"),
        "no open redirect"
    );
    assert_eq!(state(later).await, JobState::Ready);
    let (status, _, _) = fx
        .post(
            &format!("/jobs/{later}/cancel"),
            Some(&csrf),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(state(later).await, JobState::Discarded);

    // a conflict is a page naming it, not a crash
    let (status, body, _) = fx
        .post(
            &format!("/jobs/{later}/cancel"),
            Some(&csrf),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 409);
    assert!(body.contains("discarded"), "{body}");

    // bulk: every dead job of a queue
    let again = dead_job_with_markup(&fx.client, "xss2").await;
    assert_eq!(state(again).await, JobState::Dead);
    let (status, _, _) = fx
        .post(
            "/dead/discard_all",
            Some(&csrf),
            &[("_csrf", &csrf), ("queue", "xss2")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(state(again).await, JobState::Discarded);
    let (status, _, _) = fx
        .post(
            "/dead/retry_all",
            Some(&csrf),
            &[("_csrf", &csrf), ("queue", "")],
        )
        .await;
    assert_eq!(status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_shows_no_actions_and_refuses_posts() {
    let fx = start(Auth::None, true).await;
    let dead = dead_job_with_markup(&fx.client, "xss").await;
    let (_, body, _) = fx.get("/dead").await;
    assert!(body.contains("read-only"));
    assert!(
        !body.contains("method=\"post\""),
        "no forms that change anything"
    );
    let csrf = fx.csrf().await;
    let (status, body, _) = fx
        .post(
            &format!("/jobs/{dead}/retry"),
            Some(&csrf),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 403);
    assert!(body.contains("read-only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_and_never_shown() {
    let fx = start(Auth::Token(TOKEN.into()), false).await;
    let r = fx.http.get(format!("{}/", fx.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let r = fx
        .http
        .get(format!("{}/jobs", fx.base))
        .basic_auth("admin", Some("wrong-token-wrong-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for path in ["/", "/jobs", "/machines", "/boot_failures"] {
        let r = fx
            .http
            .get(format!("{}{path}", fx.base))
            .basic_auth("admin", Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(
            !r.text().await.unwrap().contains(TOKEN),
            "{path} shows the token"
        );
    }
    let r = fx
        .http
        .get(format!("{}/", fx.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_charts_finished_jobs_per_queue() {
    let fx = start(Auth::None, false).await;
    let store = fx.client.store();
    for queue in ["alpha", "beta"] {
        fx.client
            .enqueue(NewJob::new(queue, json!(1)))
            .await
            .unwrap();
        let lease = claim_one(&fx.client, queue).await;
        store.complete(lease.job.id, lease.token).await.unwrap();
    }
    let (status, body, _) = fx.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("Jobs finished per minute"));
    // one line per queue in the throughput chart, one for the latency
    assert_eq!(body.matches("<polyline").count(), 3, "{body}");
    assert!(body.contains("alpha") && body.contains("beta"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_page_shows_recorded_machine_time_per_queue() {
    use flyjobs::cost::{self, Prices, UsageCursor};
    let fx = start(Auth::None, false).await;
    let (_, body, _) = fx.get("/cost").await;
    assert!(body.contains("No machine time recorded yet."));
    // a machine of queue "mail" that ran for an hour, as the recorder would have counted it
    let now = chrono::Utc::now().timestamp_millis();
    let ev = |status: &str, ts: i64| -> flyjobs::machines::types::MachineEvent {
        serde_json::from_value(json!({"id": status, "status": status, "timestamp": ts})).unwrap()
    };
    let events = vec![
        ev("started", now - 3_600_000),
        ev("created", now - 3_600_000),
    ];
    let mut c = UsageCursor::new("m-cost", "mail", ("performance", 2, 4096), &events[1]).unwrap();
    let hours = cost::advance(&mut c, &events, now, &Prices::default());
    assert!(
        fx.client
            .store()
            .record_usage(&c, None, &hours)
            .await
            .unwrap()
    );
    let (status, body, _) = fx.get("/cost").await;
    assert_eq!(status, 200);
    assert!(body.contains("<td>mail</td>"), "{body}");
    assert!(body.contains("m-cost"));
    // 1 machine-hour of performance-2x: about $0.086
    assert!(body.contains("1.000"), "machine-hours shown");
    assert!(body.contains(&format!("${:.5}", c.cost_usd)), "{body}");
}

/// A mounted dashboard gets whatever its app's server hands over: the full path or the path
/// below the mount, every header, and a body the app read up to one byte past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_dashboard_takes_the_request_as_the_server_has_it() {
    let f = start(Auth::None, false).await;
    let dash = Dashboard::new(f.client.clone(), DashboardOptions::default());
    let mounted = |path: &str| flyjobs_dashboard::Request {
        mount: "/admin/flyjobs/".into(),
        headers: [("X-Forwarded-For".to_owned(), "10.0.0.1".to_owned())].into(),
        ..flyjobs_dashboard::Request::get(path)
    };
    for path in ["/admin/flyjobs/dead", "/dead"] {
        let r = dash.handle(mounted(path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.body.contains("href=\"/admin/flyjobs/jobs"),
            "{path}: links keep the mount"
        );
        let cookie = r.header("set-cookie").unwrap();
        assert!(cookie.contains("Path=/admin/flyjobs"), "{cookie}");
    }
    let big = flyjobs_dashboard::Request {
        method: "POST".into(),
        body: "x".repeat(flyjobs_dashboard::MAX_BODY + 1),
        ..mounted("/admin/flyjobs/dead/retry_all")
    };
    let r = dash.handle(big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("limit"), "{}", r.body);
}
