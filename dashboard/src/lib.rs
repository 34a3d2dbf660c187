//! The flyjobs dashboard: queues, jobs, the dead set, scheduled jobs, machines and boot failures
//! in a browser, over the admin API of [`flyjobs::Client`].
//!
//! One implementation, served three ways:
//! - standalone: `flyjobs dashboard --bind 127.0.0.1:9292` ([`server::serve`]);
//! - mounted in an app through its binding (a Rack app in Ruby, an ASGI app in Python, a
//!   `(req, res)` handler in Node): the request and the response cross the binding as plain data
//!   ([`Request`], [`Response`], both serde), and no language renders HTML;
//! - from Rust: [`Dashboard::handle`].
//!
//! Pages are rendered on the server (maud escapes every interpolated value); the stylesheet, the
//! one small script and the charts (SVG drawn here) are part of the binary: no CDN, no build
//! step. Every change is a POST carrying a CSRF token (double-submit cookie, `SameSite=Strict`),
//! and a read-only mode shows no actions and refuses every POST. Authentication is the mounting
//! app's (as with `Sidekiq::Web`) or, standalone, a token ([`server::Auth`]).

use std::collections::BTreeMap;

use flyjobs::Client;
use serde::{Deserialize, Serialize};

mod actions;
mod chart;
mod pages;
pub mod security;
pub mod server;

/// A request as the mounting app hands it over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// `GET`, `HEAD` or `POST` (anything else is refused).
    pub method: String,
    /// The path inside the dashboard: `/`, `/jobs/42`, … (Rack's `PATH_INFO`).
    pub path: String,
    /// Where the app mounted the dashboard: `""` standalone, `/flyjobs` in a Rails app (Rack's
    /// `SCRIPT_NAME`). Links and the CSRF cookie's path start with it.
    pub mount: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Headers, names in any case (only `cookie`, `content-type`, `origin`, `host` and
    /// `sec-fetch-site` are read).
    pub headers: BTreeMap<String, String>,
    /// The body (a form post is `application/x-www-form-urlencoded`).
    pub body: String,
}

impl Request {
    /// A GET of `path` (tests, and a handy shape for bindings).
    pub fn get(path: &str) -> Request {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            ..Default::default()
        }
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }

    fn query_map(&self) -> BTreeMap<String, String> {
        serde_urlencoded::from_str(&self.query).unwrap_or_default()
    }
}

/// The answer, for the mounting app to send as is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, in order (`Set-Cookie` may appear once).
    pub headers: Vec<(String, String)>,
    /// The body (HTML, CSS, JS or plain text).
    pub body: String,
}

impl Response {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn new(status: u16, content_type: &str, body: String) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
        }
    }

    fn html(status: u16, body: maud::Markup) -> Response {
        Response::new(status, "text/html; charset=utf-8", body.into_string())
    }

    fn redirect(to: String) -> Response {
        let mut r = Response::new(303, "text/plain; charset=utf-8", format!("see {to}\n"));
        r.headers.push(("location".into(), to));
        r
    }
}

/// How a mounted dashboard behaves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardOptions {
    /// Show no actions and refuse every POST.
    pub read_only: bool,
}

/// The dashboard over one client.
#[derive(Clone)]
pub struct Dashboard {
    client: Client,
    options: DashboardOptions,
}

impl Dashboard {
    /// A dashboard over `client`'s store and machines.
    pub fn new(client: Client, options: DashboardOptions) -> Dashboard {
        Dashboard { client, options }
    }

    /// Answer one request. Never fails: errors become error pages with their status.
    pub async fn handle(&self, req: Request) -> Response {
        let csrf = security::CsrfToken::for_request(&req);
        let mut resp = match req.method.as_str() {
            "GET" | "HEAD" => self.get(&req, &csrf).await,
            "POST" => match security::check_post(&req, &csrf, self.options.read_only) {
                Ok(form) => actions::post(self, &req, &form).await,
                Err(refusal) => refusal,
            },
            other => {
                let mut r = Response::new(
                    405,
                    "text/plain; charset=utf-8",
                    format!("method {other} is not allowed here\n"),
                );
                r.headers.push(("allow".into(), "GET, HEAD, POST".into()));
                r
            }
        };
        if req.method == "HEAD" {
            resp.body.clear();
        }
        security::finish(&req, &csrf, &mut resp);
        resp
    }

    async fn get(&self, req: &Request, csrf: &security::CsrfToken) -> Response {
        let path = req.path.trim_end_matches('/');
        let ctx = pages::Ctx {
            mount: &req.mount,
            csrf: csrf.value(),
            read_only: self.options.read_only,
        };
        let q = req.query_map();
        let page = match path {
            "" => pages::overview(&self.client, &ctx).await,
            "/jobs" => pages::jobs(&self.client, &ctx, &q, None).await,
            "/dead" => {
                pages::jobs(&self.client, &ctx, &q, Some(flyjobs::job::JobState::Dead)).await
            }
            "/scheduled" => {
                pages::jobs(
                    &self.client,
                    &ctx,
                    &q,
                    Some(flyjobs::job::JobState::Scheduled),
                )
                .await
            }
            "/machines" => pages::machines(&self.client, &ctx).await,
            "/cost" => pages::cost(&self.client, &ctx).await,
            "/boot_failures" => pages::boot_failures(&self.client, &ctx).await,
            "/assets/style.css" => {
                return asset(
                    "text/css; charset=utf-8",
                    include_str!("../assets/style.css"),
                );
            }
            "/assets/app.js" => {
                return asset(
                    "text/javascript; charset=utf-8",
                    include_str!("../assets/app.js"),
                );
            }
            p => match p
                .strip_prefix("/jobs/")
                .and_then(|id| id.parse::<i64>().ok())
            {
                Some(id) => pages::job(&self.client, &ctx, id).await,
                None => Err(pages::PageError::not_found(format!("no page {p:?}"))),
            },
        };
        match page {
            Ok(markup) => Response::html(200, markup),
            Err(e) => Response::html(e.status, pages::error_page(&ctx, &e)),
        }
    }
}

fn asset(content_type: &str, body: &str) -> Response {
    let mut r = Response::new(200, content_type, body.to_owned());
    r.headers
        .push(("cache-control".into(), "public, max-age=3600".into()));
    r
}
