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

/// Largest request body the dashboard accepts (its forms are a few hundred bytes). A mounting
/// app reads at most one byte more and hands it over; anything longer is answered 413.
pub const MAX_BODY: usize = 64 * 1024;

/// A request as the mounting app hands it over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// `GET`, `HEAD` or `POST` (anything else is refused).
    pub method: String,
    /// The request's path, with or without the mount in front: `/flyjobs/jobs/42` or
    /// `/jobs/42` (servers differ on which they hand over; pass the full path when the server
    /// has it, so that a dashboard mounted at, say, `/jobs` is never ambiguous).
    pub path: String,
    /// Where the app mounted the dashboard: `""` (or `/`) standalone, `/flyjobs` in a Rails app
    /// (Rack's `SCRIPT_NAME`). Links and the CSRF cookie's path start with it.
    pub mount: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// The request's headers as the server has them, names in any case (the dashboard reads
    /// `cookie`, `content-type`, `origin`, `host`, `sec-fetch-site` and `authorization`).
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

    /// The same request with the mount in one spelling (no trailing slash, `""` for the root)
    /// and the path inside it (`/` at least). Every way of serving the dashboard goes through
    /// here, so no mounting app strips paths itself.
    pub fn normalised(mut self) -> Request {
        let mount = self.mount.trim_end_matches('/');
        if let Some(rest) = self.path.strip_prefix(mount)
            && !mount.is_empty()
            && (rest.is_empty() || rest.starts_with('/'))
        {
            self.path = rest.to_owned();
        }
        self.mount = mount.to_owned();
        if self.path.is_empty() {
            self.path = "/".into();
        }
        self
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
        let req = req.normalised();
        if req.body.len() > MAX_BODY {
            return Response::new(
                413,
                "text/plain; charset=utf-8",
                format!("request body over the dashboard's limit of {MAX_BODY} bytes\n"),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::Request;

    fn norm(mount: &str, path: &str) -> (String, String) {
        let r = Request {
            mount: mount.into(),
            path: path.into(),
            ..Default::default()
        }
        .normalised();
        (r.mount, r.path)
    }

    #[test]
    fn the_mount_is_taken_off_the_path_whichever_way_the_server_hands_it_over() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        // Full path (Rack SCRIPT_NAME + PATH_INFO, Express originalUrl, current ASGI servers).
        assert_eq!(
            norm("/flyjobs", "/flyjobs/jobs/4"),
            s("/flyjobs", "/jobs/4")
        );
        assert_eq!(norm("/flyjobs", "/flyjobs"), s("/flyjobs", "/"));
        assert_eq!(norm("/flyjobs/", "/flyjobs/"), s("/flyjobs", "/"));
        // Path already below the mount (older Starlette, Express req.url).
        assert_eq!(norm("/flyjobs", "/dead"), s("/flyjobs", "/dead"));
        assert_eq!(norm("/flyjobs", ""), s("/flyjobs", "/"));
        // A mount that is only a prefix of a path segment is not the mount.
        assert_eq!(norm("/fly", "/flyjobs/x"), s("/fly", "/flyjobs/x"));
        // The root, spelled either way.
        assert_eq!(norm("/", "/jobs"), s("", "/jobs"));
        assert_eq!(norm("", "/"), s("", "/"));
    }
}
