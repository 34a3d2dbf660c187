//! The Fly Machines API client.
//!
//! [`Machines`] is the object-safe trait the scaler and worker hold as `Arc<dyn Machines>`;
//! [`MachinesClient`] implements it over HTTP (reqwest + rustls, or a Unix socket), with
//! the errors of [`crate::Error`], jittered exponential backoff under an overall deadline, and
//! a create that is safe to retry (see [`Machines::create_machine`]).
//!
//! ```no_run
//! # async fn demo() -> flyjobs::Result<()> {
//! use flyjobs::config::Secret;
//! use flyjobs::machines::{Machines, MachinesClient, types::*};
//! let client = MachinesClient::builder()
//!     .base_url("https://api.machines.dev")
//!     .token(Secret::new("FlyV1 fm2_…"))
//!     .build()?;
//! let req = CreateMachineRequest {
//!     config: MachineConfig { image: Some("registry.fly.io/shop:v1".into()),
//!                             auto_destroy: Some(true), ..Default::default() },
//!     ..Default::default()
//! };
//! let m = client.create_machine("shop", &req).await?;
//! client.wait_machine("shop", &m.id, &WaitQuery::state(MachineState::Started)).await?;
//! # Ok(()) }
//! ```
//!
//! # Retries and idempotency
//! Only answers that say "nothing happened" (429, a connection that never opened, and for
//! create a capacity refusal) are retried for every call. Answers that leave it open whether
//! the server acted (408, 502/503/504, a timeout, a connection dropped mid-request) are
//! retried only for calls where doing it twice is harmless: reads, `wait`, `start`, `stop`,
//! `suspend`, `destroy`, lease refresh and release, metadata. `create_machine` recovers from an
//! ambiguous failure by looking its (per-request) name up before creating again.

pub mod transport;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{Config, Secret};
use crate::error::{Error, ErrorKind, Result};
use transport::{HttpRequest, HttpResponse, HttpSend, ReqwestSender, TransportError};
use types::*;

/// The lease header of guarded calls (machines-api.md §5).
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";

/// The Machines API operations flyjobs uses. Every method names the app explicitly: worker
/// machines may live in an app other than the caller's. `lease` is the nonce of a lease held
/// on the machine, sent as `fly-machine-lease-nonce`.
#[async_trait]
pub trait Machines: Send + Sync + fmt::Debug {
    /// `POST /apps`. After an ambiguous failure, a "name taken" answer is resolved by reading
    /// the app, so a retried create returns the app it made.
    async fn create_app(&self, req: &CreateAppRequest) -> Result<App>;
    /// `GET /apps/{app}`.
    async fn get_app(&self, app: &str) -> Result<App>;

    /// `POST /apps/{app}/machines`. Never makes two machines for one call: when `req.name` is
    /// `None` a name is chosen once for the call; after an ambiguous failure (timeout, 5xx,
    /// dropped connection) the name is looked up before creating again. 429 and capacity
    /// refusals are retried as they are, until the deadline.
    async fn create_machine(&self, app: &str, req: &CreateMachineRequest) -> Result<Machine>;
    /// `GET /apps/{app}/machines/{id}`.
    async fn get_machine(&self, app: &str, id: &str) -> Result<Machine>;
    /// `GET /apps/{app}/machines` with filters.
    async fn list_machines(&self, app: &str, query: &ListMachinesQuery) -> Result<Vec<Machine>>;
    /// `GET /apps/{app}/machines` in one attempt: a 429 (or any failure) comes back at once
    /// instead of being retried until the deadline, for callers that have something better to
    /// do than wait (the scaler goes on with its cached view of the machines).
    async fn list_machines_once(
        &self,
        app: &str,
        query: &ListMachinesQuery,
    ) -> Result<Vec<Machine>> {
        self.list_machines(app, query).await
    }
    /// `POST /apps/{app}/machines/{id}`: replace the config. Not retried after an ambiguous
    /// failure (each update makes a new version); use `current_version` to make it safe to
    /// repeat yourself.
    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
        lease: Option<&str>,
    ) -> Result<Machine>;
    /// `POST …/start` (also resumes a suspended machine).
    async fn start_machine(
        &self,
        app: &str,
        id: &str,
        lease: Option<&str>,
    ) -> Result<StartResponse>;
    /// `POST …/stop` with optional signal and grace period.
    async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: &StopRequest,
        lease: Option<&str>,
    ) -> Result<()>;
    /// `POST …/suspend`.
    async fn suspend_machine(&self, app: &str, id: &str, lease: Option<&str>) -> Result<()>;
    /// `DELETE …[?force=true]`. A 404 after an ambiguous attempt counts as done.
    async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        lease: Option<&str>,
    ) -> Result<()>;
    /// `GET …/wait`: block (≤ 60 s) until a target state. Not reaching it gives
    /// [`ErrorKind::Timeout`], without retrying.
    async fn wait_machine(&self, app: &str, id: &str, query: &WaitQuery) -> Result<WaitResponse>;
    /// `GET …/events[?limit=N]`, newest first.
    async fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<MachineEvent>>;

    /// `POST …/lease` without a nonce: take the lease (409 conflict if someone holds it).
    async fn acquire_lease(&self, app: &str, id: &str, req: &CreateLeaseRequest) -> Result<Lease>;
    /// `POST …/lease` with the current nonce: extend it.
    async fn refresh_lease(
        &self,
        app: &str,
        id: &str,
        nonce: &str,
        ttl: Option<u64>,
    ) -> Result<Lease>;
    /// `GET …/lease`.
    async fn get_lease(&self, app: &str, id: &str) -> Result<Lease>;
    /// `DELETE …/lease` with the nonce. A 404 after an ambiguous attempt counts as done.
    async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<()>;

    /// `GET …/metadata`.
    async fn get_metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>>;
    /// `POST …/metadata/{key}` `{value}`.
    async fn set_metadata(&self, app: &str, id: &str, key: &str, value: &str) -> Result<()>;
    /// `DELETE …/metadata/{key}`.
    async fn delete_metadata(&self, app: &str, id: &str, key: &str) -> Result<()>;

    /// The machine's recent console output, where the API serves it (the local emulator's
    /// `/emulator/apps/{app}/machines/{id}/logs`); `None` where it does not (Fly serves logs
    /// elsewhere). Used to show why a worker failed at boot.
    async fn machine_logs(&self, _app: &str, _id: &str) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Backoff and deadline of retried calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// First delay (default 100 ms); each retry doubles it.
    pub initial_backoff: Duration,
    /// Largest delay (default 2 s).
    pub max_backoff: Duration,
    /// Overall deadline of one call, all attempts included (default 30 s). A retry that would
    /// start after it is not made; the last error is returned.
    pub deadline: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// No retries at all.
    pub fn none() -> Self {
        RetryConfig {
            deadline: Duration::ZERO,
            ..RetryConfig::default()
        }
    }
}

/// Jittered exponential backoff ("equal jitter": a delay in [d/2, d], d doubling to a cap), so
/// that many scalers hitting the same 429 do not come back in lockstep.
struct Backoff {
    next: Duration,
    max: Duration,
    started: Instant,
    deadline: Instant,
}

impl Backoff {
    fn new(cfg: &RetryConfig, start: Instant) -> Self {
        Backoff {
            next: cfg.initial_backoff,
            max: cfg.max_backoff,
            started: start,
            deadline: start + cfg.deadline,
        }
    }

    /// `error` of the last of `attempts`, marked as final: the budget is spent.
    fn exhausted(&self, error: Error, attempts: u32) -> Error {
        error.after_retries(attempts, self.started.elapsed())
    }

    /// Sleep before the next attempt, or `false` if that attempt would start past the deadline.
    async fn wait(&mut self, at_least: Option<Duration>) -> bool {
        let d = self.next;
        let jittered = if d.is_zero() {
            d
        } else {
            let half = d / 2;
            half + rand::rng().random_range(Duration::ZERO..=half)
        };
        let delay = jittered.max(at_least.unwrap_or_default());
        self.next = (d * 2).min(self.max);
        if Instant::now() + delay > self.deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        true
    }
}

/// Which failures a call may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Doing it twice is harmless: retry 429, 408, 502/503/504 and transport failures.
    Idempotent,
    /// As `Idempotent`, but 408 is the answer ("state not reached"), not a failure.
    Wait,
    /// Retry only what certainly did not happen: 429 and connections that never opened.
    Unperformed,
    /// One attempt, whatever the answer.
    Never,
}

/// One failed attempt, with what it tells us about the server having acted.
struct Failure {
    error: Error,
    /// The server may have performed the request (timeout, 5xx, dropped connection, 408).
    ambiguous: bool,
    /// `Retry-After` of a 429, when sent.
    retry_after: Option<Duration>,
}

impl Failure {
    fn retryable_under(&self, policy: Retry) -> bool {
        let status = self.error.status();
        let transport = matches!(self.error.kind(), ErrorKind::Transport | ErrorKind::Timeout)
            && status.is_none();
        match policy {
            Retry::Idempotent => transport || matches!(status, Some(429 | 408 | 502 | 503 | 504)),
            Retry::Wait => transport || matches!(status, Some(429 | 502 | 503 | 504)),
            Retry::Unperformed => status == Some(429) || (transport && !self.ambiguous),
            Retry::Never => false,
        }
    }
}

/// Map a non-2xx answer to an [`Error`], keeping the API's text, the status and `fly-request-id`.
pub fn error_from_response(method: &Method, path: &str, resp: &HttpResponse) -> Error {
    let status = resp.status;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let raw = String::from_utf8_lossy(&resp.body)
        .trim()
        .chars()
        .take(1000)
        .collect::<String>();
    let text = field("error")
        .or_else(|| field("message"))
        .unwrap_or_else(|| {
            if raw.is_empty() {
                format!("HTTP {status}")
            } else {
                raw
            }
        });
    let code = field("status").unwrap_or_default();
    let lower = text.to_ascii_lowercase();
    let capacity = code == "insufficient_capacity"
        || code == "volume_placement_capacity"
        || lower.contains("insufficient capacity")
        || lower.contains("insufficient resources")
        || lower.contains("could not reserve resource");
    let kind = match status {
        409 | 412 | 422 if capacity => ErrorKind::Capacity,
        // App names are global: "name taken" is a conflict with existing state, not bad input.
        422 if code == "name_taken" || lower.contains("already been taken") => ErrorKind::Conflict,
        404 => ErrorKind::NotFound,
        409 | 412 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        408 => ErrorKind::Timeout,
        401 | 403 => ErrorKind::Auth,
        400 | 422 => ErrorKind::Invalid,
        _ => ErrorKind::Api,
    };
    let mut err = Error::new(kind, format!("{method} {path}: {text}")).with_status(status);
    if kind == ErrorKind::Api {
        err = err.with_retryable(matches!(status, 502..=504));
    }
    if let Some(id) = resp
        .headers
        .get("fly-request-id")
        .and_then(|v| v.to_str().ok())
    {
        err = err.with_request_id(id);
    }
    err
}

/// The `Authorization` value for a token (machines-api.md §1): macaroons (`FlyV1 …`, or
/// `fm1r_`/`fm1a_`/`fm2_` tokens) as `FlyV1 <tok>`, anything else as `Bearer <tok>`. Schemes
/// already on the token are stripped first, as fly-go does, so `Bearer FlyV1 fm2_x` works too.
fn authorization(token: &Secret) -> Result<HeaderValue> {
    let mut rest = token.expose().trim();
    let mut macaroon = false;
    loop {
        let lower = rest.get(..6).map(str::to_ascii_lowercase);
        if lower.as_deref() == Some("flyv1 ") {
            macaroon = true;
            rest = rest[6..].trim_start();
        } else if rest.get(..7).map(str::to_ascii_lowercase).as_deref() == Some("bearer ") {
            rest = rest[7..].trim_start();
        } else {
            break;
        }
    }
    macaroon |= rest.split(',').any(|t| {
        ["fm1r_", "fm1a_", "fm2_"]
            .iter()
            .any(|p| t.trim().starts_with(p))
    });
    let scheme = if macaroon { "FlyV1" } else { "Bearer" };
    let mut v = HeaderValue::from_str(&format!("{scheme} {rest}"))
        // Deliberately no detail: the value is the token.
        .map_err(|_| Error::config("FLY_API_TOKEN contains characters not allowed in a header"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The Machines API over HTTP. Cheap to clone (shared connection pool).
#[derive(Clone)]
pub struct MachinesClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `…/v1`, ready to have path segments appended.
    base: url::Url,
    display_base: String,
    auth: Option<HeaderValue>,
    app: Option<String>,
    request_timeout: Duration,
    retry: RetryConfig,
    sender: Arc<dyn HttpSend>,
    /// Every form of the token that could be echoed back (raw, without its scheme, each
    /// macaroon part, JSON-escaped): removed from any text put into an error or a log.
    secrets: Vec<String>,
}

/// What replaces a secret in error and log text.
pub const REDACTED: &str = "[REDACTED]";

/// The forms of `token` worth redacting: the value as given, without an auth scheme, its
/// comma-separated macaroon parts, and each of those as JSON escapes `/`. Longest first, so
/// that a whole token is replaced before its parts; tiny fragments are left (they would
/// redact ordinary words).
fn secret_forms(token: &str) -> Vec<String> {
    let mut forms: Vec<String> = Vec::new();
    let trimmed = token.trim();
    let mut bare = trimmed;
    loop {
        let lower = bare.to_ascii_lowercase();
        if let Some(rest) = ["flyv1 ", "bearer "]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| &bare[p.len()..])
        {
            bare = rest.trim_start();
        } else {
            break;
        }
    }
    forms.push(trimmed.to_string());
    forms.push(bare.to_string());
    for part in bare.split(',') {
        let part = part.trim();
        forms.push(part.to_string());
        // The part without a `fm1r_`/`fm2_` style prefix: the payload itself.
        if let Some((_, payload)) = part.split_once('_') {
            forms.push(payload.to_string());
        }
    }
    let escaped: Vec<String> = forms.iter().map(|f| f.replace('/', "\\/")).collect();
    forms.extend(escaped);
    forms.retain(|f| f.len() >= 8);
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

/// `text` with every occurrence of every secret replaced by [`REDACTED`].
fn redact_with(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

impl fmt::Debug for MachinesClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachinesClient")
            .field("base_url", &self.inner.display_base)
            .field("token", &self.inner.auth.as_ref().map(|_| "[REDACTED]"))
            .field("app", &self.inner.app)
            .field("request_timeout", &self.inner.request_timeout)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// Builds a [`MachinesClient`]; [`MachinesClientBuilder::build`] validates.
#[derive(Default)]
pub struct MachinesClientBuilder {
    base_url: Option<String>,
    token: Option<Secret>,
    app: Option<String>,
    request_timeout: Option<Duration>,
    retry: Option<RetryConfig>,
    transport: Option<Arc<dyn HttpSend>>,
    user_agent: Option<String>,
}

impl fmt::Debug for MachinesClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachinesClientBuilder")
            .field("base_url", &self.base_url)
            .field("token", &self.token)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl MachinesClientBuilder {
    /// `https://api.machines.dev` (default), `http://_api.internal:4280`, an emulator's
    /// `http://127.0.0.1:PORT`, or `unix:/path/to/socket` for the tokenless in-machine API.
    /// `/v1` is appended unless already there.
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }
    /// The API token; without one, requests carry no `Authorization` (in-machine socket).
    #[must_use]
    pub fn token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }
    /// The caller's default app, for code that has no other source for it ([`MachinesClient::app`]).
    #[must_use]
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }
    /// Timeout of one attempt (default 30 s; `wait` adds its own timeout to it).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
    /// Backoff and overall deadline.
    #[must_use]
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }
    /// Replace the HTTP transport (tests pass a [`transport::MockSender`]).
    #[must_use]
    pub fn transport(mut self, transport: Arc<dyn HttpSend>) -> Self {
        self.transport = Some(transport);
        self
    }
    /// `User-Agent` (default `flyjobs/<version>`).
    #[must_use]
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<MachinesClient> {
        let raw = self
            .base_url
            .unwrap_or_else(|| crate::config::DEFAULT_API_HOSTNAME.to_string());
        let ua = self
            .user_agent
            .unwrap_or_else(|| format!("flyjobs/{}", env!("CARGO_PKG_VERSION")));
        let (base_str, socket) = match raw.strip_prefix("unix:") {
            // The in-machine API answers any host; Fly's docs use `http://flaps`.
            Some(path) if !path.is_empty() => ("http://flaps".to_string(), Some(path.to_string())),
            Some(_) => {
                return Err(Error::config(
                    "Machines API base URL unix: needs a socket path",
                ));
            }
            None => (raw.clone(), None),
        };
        let mut base = url::Url::parse(&base_str).map_err(|e| {
            Error::config(format!("Machines API base URL {raw:?} is not a URL: {e}"))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::config(format!(
                "Machines API base URL must be http://, https:// or unix:/path, got {raw:?}"
            )));
        }
        {
            let mut segs = base.path_segments_mut().map_err(|()| {
                Error::config(format!("Machines API base URL {raw:?} cannot take a path"))
            })?;
            segs.pop_if_empty();
        }
        if base.path_segments().and_then(|mut s| s.next_back()) != Some("v1") {
            base.path_segments_mut()
                .expect("checked above: URL can be a base")
                .push("v1");
        }
        base.set_query(None);
        let auth = self.token.as_ref().map(authorization).transpose()?;
        let secrets = self
            .token
            .as_ref()
            .map(|t| secret_forms(t.expose()))
            .unwrap_or_default();
        let sender: Arc<dyn HttpSend> = match (self.transport, socket) {
            (Some(t), _) => t,
            (None, Some(path)) => Arc::new(ReqwestSender::unix_socket(&ua, path).map_err(|e| {
                Error::config(format!("cannot build HTTP client: {e}")).with_source(e)
            })?),
            (None, None) => Arc::new(ReqwestSender::new(&ua).map_err(|e| {
                Error::config(format!("cannot build HTTP client: {e}")).with_source(e)
            })?),
        };
        Ok(MachinesClient {
            inner: Arc::new(Inner {
                base,
                display_base: raw,
                auth,
                app: self.app,
                request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(30)),
                retry: self.retry.unwrap_or_default(),
                sender,
                secrets,
            }),
        })
    }
}

/// A machine name unique to one create call, chosen before the first attempt.
fn request_name() -> String {
    let n: u64 = rand::rng().random();
    format!("flyjobs-{:012x}", n & 0xffff_ffff_ffff)
}

impl MachinesClient {
    /// A builder with defaults.
    pub fn builder() -> MachinesClientBuilder {
        MachinesClientBuilder::default()
    }

    /// A client from settings: `FLY_API_HOSTNAME`, `FLY_API_TOKEN`, `FLY_APP_NAME`,
    /// `FLYJOBS_REQUEST_TIMEOUT`.
    pub fn from_config(config: &Config) -> Result<MachinesClient> {
        let mut b = MachinesClient::builder()
            .base_url(config.api_hostname())
            .request_timeout(config.request_timeout());
        if let Some(t) = config.api_token() {
            b = b.token(t.clone());
        }
        if let Some(a) = config.app_name() {
            b = b.app(a);
        }
        b.build()
    }

    /// The default app given to the builder, if any.
    pub fn app(&self) -> Option<&str> {
        self.inner.app.as_deref()
    }

    /// The API root (`…/v1`); for a Unix socket, `http://flaps/v1`.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// `text` with every secret this client knows (its token, in every form an answer could
    /// echo it) replaced by `[REDACTED]`: applied to whatever it puts into errors and logs.
    pub fn redact(&self, text: &str) -> String {
        redact_with(&self.inner.secrets, text)
    }

    /// An answer with the secrets taken out of its body, for error messages.
    fn redacted(&self, resp: &HttpResponse) -> HttpResponse {
        let text = String::from_utf8_lossy(&resp.body);
        let clean = self.redact(&text);
        HttpResponse {
            status: resp.status,
            headers: resp.headers.clone(),
            body: if clean == text {
                resp.body.clone()
            } else {
                Bytes::from(clean)
            },
        }
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> url::Url {
        let mut u = self.inner.base.clone();
        u.path_segments_mut()
            .expect("base URL validated in build()")
            .extend(segments);
        if !query.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        u
    }

    fn request(
        &self,
        method: Method,
        url: url::Url,
        body: Option<Bytes>,
        lease: Option<&str>,
        extra_timeout: Duration,
    ) -> Result<HttpRequest> {
        let mut headers = HeaderMap::new();
        if let Some(a) = &self.inner.auth {
            headers.insert(http::header::AUTHORIZATION, a.clone());
        }
        if body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(nonce) = lease {
            let v = HeaderValue::from_str(nonce).map_err(|_| {
                Error::invalid(format!("lease nonce {nonce:?} is not a valid header value"))
            })?;
            headers.insert(LEASE_NONCE_HEADER, v);
        }
        Ok(HttpRequest {
            method,
            url,
            headers,
            body,
            timeout: self.inner.request_timeout + extra_timeout,
        })
    }

    /// One attempt: a 2xx answer, or a [`Failure`].
    async fn attempt(
        &self,
        req: HttpRequest,
        attempt: u32,
    ) -> std::result::Result<HttpResponse, Failure> {
        let method = req.method.clone();
        let path = req.url.path().to_string();
        let started = Instant::now();
        let result = self.inner.sender.send(req).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(resp) if (200..300).contains(&resp.status) => {
                tracing::debug!(%method, %path, status = resp.status, attempt, elapsed_ms, "machines api call");
                Ok(resp)
            }
            Ok(resp) => {
                // The answer may echo the request, token included (a 401 or 500 quoting it).
                let error = error_from_response(&method, &path, &self.redacted(&resp));
                tracing::debug!(%method, %path, status = resp.status, attempt, elapsed_ms, error = %error, "machines api error");
                let retry_after = if resp.status == 429 {
                    resp.headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                } else {
                    None
                };
                let ambiguous = resp.status == 408 || resp.status >= 500;
                Err(Failure {
                    error,
                    ambiguous,
                    retry_after,
                })
            }
            Err(te) => {
                let shown = self.redact(&te.to_string());
                tracing::debug!(%method, %path, attempt, elapsed_ms, error = %shown, "machines api transport error");
                let mut f = transport_failure(&method, &path, te);
                let clean = self.redact(f.error.message());
                if clean != f.error.message() {
                    f.error = Error::new(f.error.kind(), clean);
                }
                Err(f)
            }
        }
    }

    /// Send with retries under `policy` until success, a final error or the deadline.
    /// For a DELETE, a 404 after an attempt that may have succeeded means it did (`Ok(None)`).
    async fn call(
        &self,
        policy: Retry,
        method: Method,
        url: url::Url,
        body: Option<Bytes>,
        lease: Option<&str>,
        extra_timeout: Duration,
    ) -> Result<Option<HttpResponse>> {
        let span = tracing::debug_span!("machines", method = %method, path = %url.path());
        async {
            let mut backoff = Backoff::new(&self.inner.retry, Instant::now());
            let mut ambiguous_seen = false;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let req = self.request(
                    method.clone(),
                    url.clone(),
                    body.clone(),
                    lease,
                    extra_timeout,
                )?;
                match self.attempt(req, attempt).await {
                    Ok(resp) => return Ok(Some(resp)),
                    Err(f)
                        if method == Method::DELETE
                            && ambiguous_seen
                            && f.error.status() == Some(404) =>
                    {
                        return Ok(None);
                    }
                    Err(f) => {
                        if !f.retryable_under(policy) {
                            return Err(f.error);
                        }
                        if !backoff.wait(f.retry_after).await {
                            return Err(backoff.exhausted(f.error, attempt));
                        }
                        ambiguous_seen |= f.ambiguous;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        policy: Retry,
        method: Method,
        url: url::Url,
        body: Option<Bytes>,
        lease: Option<&str>,
        extra_timeout: Duration,
    ) -> Result<T> {
        let path = url.path().to_string();
        let resp = self
            .call(policy, method.clone(), url, body, lease, extra_timeout)
            .await?
            .expect("only DELETE maps 404 to None, and no DELETE decodes a body");
        decode(&method, &path, &resp)
    }

    async fn create_once(
        &self,
        app: &str,
        body: &Bytes,
        attempt: u32,
    ) -> std::result::Result<Machine, Failure> {
        let url = self.url(&["apps", app, "machines"], &[]);
        let path = url.path().to_string();
        let req = self
            .request(Method::POST, url, Some(body.clone()), None, Duration::ZERO)
            .map_err(|error| Failure {
                error,
                ambiguous: false,
                retry_after: None,
            })?;
        let resp = self.attempt(req, attempt).await?;
        decode(&Method::POST, &path, &resp)
            // A 2xx we cannot read: the machine exists, so look it up rather than create again.
            .map_err(|error| Failure {
                error,
                ambiguous: true,
                retry_after: None,
            })
    }

    /// `GET /apps/{app}/machines` with filters, retried under `policy`.
    async fn list(
        &self,
        app: &str,
        query: &ListMachinesQuery,
        policy: Retry,
    ) -> Result<Vec<Machine>> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if !query.states.is_empty() {
            let s: Vec<&str> = query.states.iter().map(MachineState::as_str).collect();
            q.push(("state", s.join(",")));
        }
        if query.include_deleted {
            q.push(("include_deleted", "true".into()));
        }
        if query.summary {
            q.push(("summary", "true".into()));
        }
        if let Some(r) = &query.region {
            q.push(("region", r.clone()));
        }
        let meta: Vec<(String, String)> = query
            .metadata
            .iter()
            .map(|(k, v)| (format!("metadata.{k}"), v.clone()))
            .collect();
        let mut url = self.url(&["apps", app, "machines"], &q);
        if !meta.is_empty() {
            let mut qp = url.query_pairs_mut();
            for (k, v) in &meta {
                qp.append_pair(k, v);
            }
        }
        self.call_json(policy, Method::GET, url, None, None, Duration::ZERO)
            .await
    }

    /// The machine called `name` in `app`, destroyed ones included (an auto-destroy machine may
    /// already be gone by the time we look).
    async fn find_by_name(&self, app: &str, name: &str) -> Result<Option<Machine>> {
        let q = ListMachinesQuery {
            include_deleted: true,
            ..ListMachinesQuery::default()
        };
        let machines = self.list_machines(app, &q).await?;
        Ok(machines
            .into_iter()
            .find(|m| m.name.as_deref() == Some(name)))
    }
}

fn transport_failure(method: &Method, path: &str, te: TransportError) -> Failure {
    let ambiguous = te.is_ambiguous();
    let kind = if te.failure == transport::TransportFailure::Timeout {
        ErrorKind::Timeout
    } else {
        ErrorKind::Transport
    };
    let error = Error::new(kind, format!("{method} {path}: {te}")).with_source(te);
    Failure {
        error,
        ambiguous,
        retry_after: None,
    }
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, resp: &HttpResponse) -> Result<T> {
    // Some endpoints answer 200/204 with an empty body; decode that as JSON null so that
    // `()`-like and all-optional types still work.
    let body: &[u8] = if resp.body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &resp.body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde's message may quote values of the answer (an echoed token among them): say
        // where it went wrong, not what was there.
        let mut err = Error::new(
            ErrorKind::Serialization,
            format!(
                "{method} {path}: unexpected response body ({} at line {} column {})",
                serde_category(&e),
                e.line(),
                e.column()
            ),
        )
        .with_status(resp.status);
        if let Some(id) = resp
            .headers
            .get("fly-request-id")
            .and_then(|v| v.to_str().ok())
        {
            err = err.with_request_id(id);
        }
        err
    })
}

fn serde_category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "unexpected fields or types",
        serde_json::error::Category::Eof => "truncated",
    }
}

fn json_body<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        Error::new(
            ErrorKind::Serialization,
            format!("cannot encode request: {e}"),
        )
        .with_source(e)
    })
}

/// The real API wraps lease answers as `{"status":"success","data":{…}}` (machines-api.md §5,
/// fly-go `MachineLease`), although machines-openapi.json types them as a bare `Lease`. Accept
/// both.
fn unwrap_lease(v: serde_json::Value, method: &Method, path: &str) -> Result<Lease> {
    let inner = match v {
        serde_json::Value::Object(mut m) if m.contains_key("data") => {
            m.remove("data").unwrap_or_default()
        }
        other => other,
    };
    serde_json::from_value(inner).map_err(|e| {
        Error::new(
            ErrorKind::Serialization,
            format!(
                "{method} {path}: unexpected lease body ({})",
                serde_category(&e)
            ),
        )
    })
}

#[async_trait]
impl Machines for MachinesClient {
    async fn create_app(&self, req: &CreateAppRequest) -> Result<App> {
        let url = self.url(&["apps"], &[]);
        let path = url.path().to_string();
        let body = json_body(req)?;
        let span = tracing::debug_span!("machines", method = "POST", path = %path);
        async {
            let mut backoff = Backoff::new(&self.inner.retry, Instant::now());
            let mut ambiguous_seen = false;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let r = self.request(
                    Method::POST,
                    url.clone(),
                    Some(body.clone()),
                    None,
                    Duration::ZERO,
                )?;
                let f = match self.attempt(r, attempt).await {
                    Ok(resp) => {
                        // The spec says 201 with no body; the docs show `{id, created_at}`.
                        // Read the app back when the answer does not describe it.
                        let app: App = decode(&Method::POST, &path, &resp).unwrap_or_default();
                        if app.name.is_some() {
                            return Ok(app);
                        }
                        return self.get_app(&req.name).await;
                    }
                    Err(f) => f,
                };
                // Name taken after an attempt that may have created it: it is probably ours.
                if ambiguous_seen && f.error.kind() == ErrorKind::Conflict {
                    return self.get_app(&req.name).await;
                }
                // An app create is not idempotent, but a second one can only fail with
                // "name taken", which the line above resolves: so retry ambiguous failures too.
                if !f.retryable_under(Retry::Idempotent) {
                    return Err(f.error);
                }
                if !backoff.wait(f.retry_after).await {
                    return Err(backoff.exhausted(f.error, attempt));
                }
                ambiguous_seen |= f.ambiguous;
            }
        }
        .instrument(span)
        .await
    }

    async fn get_app(&self, app: &str) -> Result<App> {
        let url = self.url(&["apps", app], &[]);
        self.call_json(
            Retry::Idempotent,
            Method::GET,
            url,
            None,
            None,
            Duration::ZERO,
        )
        .await
    }

    async fn create_machine(&self, app: &str, req: &CreateMachineRequest) -> Result<Machine> {
        // The name is fixed before the first attempt: it is how a retry recognises the machine
        // an earlier, ambiguous attempt may have created.
        let mut req = req.clone();
        let name = req.name.get_or_insert_with(request_name).clone();
        let body = json_body(&req)?;
        let span = tracing::debug_span!("machines", method = "POST", app, name = %name, op = "create_machine");
        async {
            let mut backoff = Backoff::new(&self.inner.retry, Instant::now());
            let mut ambiguous_seen = false;
            let mut attempt = 0;
            loop {
                if ambiguous_seen {
                    match self.find_by_name(app, &name).await {
                        Ok(Some(m)) => {
                            tracing::debug!(id = %m.id, "create: found the machine of an earlier attempt");
                            return Ok(m);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // Cannot tell whether it exists: never create blind. Retry the
                            // lookup if the error is transient, else give up with it.
                            if e.is_retryable() && backoff.wait(None).await {
                                continue;
                            }
                            return Err(e);
                        }
                    }
                }
                attempt += 1;
                let f = match self.create_once(app, &body, attempt).await {
                    Ok(m) => return Ok(m),
                    Err(f) => f,
                };
                let not_performed = f.error.status() == Some(429)
                    || f.error.kind() == ErrorKind::Capacity
                    || (f.error.status().is_none() && !f.ambiguous);
                let retry = if not_performed {
                    true
                } else if f.ambiguous {
                    ambiguous_seen = true;
                    true
                } else {
                    // 409 name taken after an ambiguous attempt: the lookup decides.
                    ambiguous_seen && f.error.kind() == ErrorKind::Conflict
                };
                if !retry {
                    return Err(f.error);
                }
                if !backoff.wait(f.retry_after).await {
                    return Err(backoff.exhausted(f.error, attempt));
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn get_machine(&self, app: &str, id: &str) -> Result<Machine> {
        let url = self.url(&["apps", app, "machines", id], &[]);
        self.call_json(
            Retry::Idempotent,
            Method::GET,
            url,
            None,
            None,
            Duration::ZERO,
        )
        .await
    }

    async fn list_machines(&self, app: &str, query: &ListMachinesQuery) -> Result<Vec<Machine>> {
        self.list(app, query, Retry::Idempotent).await
    }

    async fn list_machines_once(
        &self,
        app: &str,
        query: &ListMachinesQuery,
    ) -> Result<Vec<Machine>> {
        self.list(app, query, Retry::Never).await
    }

    async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &UpdateMachineRequest,
        lease: Option<&str>,
    ) -> Result<Machine> {
        let url = self.url(&["apps", app, "machines", id], &[]);
        let body = json_body(req)?;
        // Each update makes a new version: repeat it only when the first certainly did nothing.
        self.call_json(
            Retry::Unperformed,
            Method::POST,
            url,
            Some(body),
            lease,
            Duration::ZERO,
        )
        .await
    }

    async fn start_machine(
        &self,
        app: &str,
        id: &str,
        lease: Option<&str>,
    ) -> Result<StartResponse> {
        let url = self.url(&["apps", app, "machines", id, "start"], &[]);
        // Starting twice converges on `started`; a repeat may answer 412 "current state" if the
        // first already took effect, which the caller sees as conflict and can check with wait.
        self.call_json(
            Retry::Idempotent,
            Method::POST,
            url,
            None,
            lease,
            Duration::ZERO,
        )
        .await
    }

    async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: &StopRequest,
        lease: Option<&str>,
    ) -> Result<()> {
        let url = self.url(&["apps", app, "machines", id, "stop"], &[]);
        let body = json_body(req)?;
        // Stopping a stopping/stopped machine converges on `stopped`.
        self.call(
            Retry::Idempotent,
            Method::POST,
            url,
            Some(body),
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    async fn suspend_machine(&self, app: &str, id: &str, lease: Option<&str>) -> Result<()> {
        let url = self.url(&["apps", app, "machines", id, "suspend"], &[]);
        // Converges on `suspended`, like stop.
        self.call(
            Retry::Idempotent,
            Method::POST,
            url,
            None,
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        lease: Option<&str>,
    ) -> Result<()> {
        let q: Vec<(&str, String)> = if force {
            vec![("force", "true".into())]
        } else {
            vec![]
        };
        let url = self.url(&["apps", app, "machines", id], &q);
        // Destroying twice is harmless; the second may say 404, which then means "done".
        self.call(
            Retry::Idempotent,
            Method::DELETE,
            url,
            None,
            lease,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    async fn wait_machine(&self, app: &str, id: &str, query: &WaitQuery) -> Result<WaitResponse> {
        let secs = query.timeout_secs();
        let mut q: Vec<(&str, String)> = Vec::new();
        if !query.states.is_empty() {
            let s: Vec<&str> = query.states.iter().map(MachineState::as_str).collect();
            q.push(("state", s.join(",")));
        }
        q.push(("timeout", secs.to_string()));
        if let Some(v) = &query.version {
            q.push(("version", v.clone()));
        }
        if let Some(e) = &query.from_event_id {
            q.push(("from_event_id", e.clone()));
        }
        let url = self.url(&["apps", app, "machines", id, "wait"], &q);
        // Read-only, so transient failures are retried; a 408 is the server saying the state
        // was not reached in time, returned as `timeout` without looping.
        self.call_json(
            Retry::Wait,
            Method::GET,
            url,
            None,
            None,
            Duration::from_secs(secs),
        )
        .await
    }

    async fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: Option<u32>,
    ) -> Result<Vec<MachineEvent>> {
        let q: Vec<(&str, String)> = limit
            .map(|l| vec![("limit", l.to_string())])
            .unwrap_or_default();
        let url = self.url(&["apps", app, "machines", id, "events"], &q);
        self.call_json(
            Retry::Idempotent,
            Method::GET,
            url,
            None,
            None,
            Duration::ZERO,
        )
        .await
    }

    async fn acquire_lease(&self, app: &str, id: &str, req: &CreateLeaseRequest) -> Result<Lease> {
        let url = self.url(&["apps", app, "machines", id, "lease"], &[]);
        let path = url.path().to_string();
        let body = json_body(req)?;
        // A repeat after an ambiguous failure would meet our own lease as a 409 and its nonce
        // would be lost; so only unperformed attempts are repeated, the caller sees the rest.
        let v: serde_json::Value = self
            .call_json(
                Retry::Unperformed,
                Method::POST,
                url,
                Some(body),
                None,
                Duration::ZERO,
            )
            .await?;
        unwrap_lease(v, &Method::POST, &path)
    }

    async fn refresh_lease(
        &self,
        app: &str,
        id: &str,
        nonce: &str,
        ttl: Option<u64>,
    ) -> Result<Lease> {
        let url = self.url(&["apps", app, "machines", id, "lease"], &[]);
        let path = url.path().to_string();
        let body = json_body(&CreateLeaseRequest {
            ttl,
            ..CreateLeaseRequest::default()
        })?;
        // Extending with our own nonce twice just extends it twice.
        let v: serde_json::Value = self
            .call_json(
                Retry::Idempotent,
                Method::POST,
                url,
                Some(body),
                Some(nonce),
                Duration::ZERO,
            )
            .await?;
        unwrap_lease(v, &Method::POST, &path)
    }

    async fn get_lease(&self, app: &str, id: &str) -> Result<Lease> {
        let url = self.url(&["apps", app, "machines", id, "lease"], &[]);
        let path = url.path().to_string();
        let v: serde_json::Value = self
            .call_json(
                Retry::Idempotent,
                Method::GET,
                url,
                None,
                None,
                Duration::ZERO,
            )
            .await?;
        unwrap_lease(v, &Method::GET, &path)
    }

    async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<()> {
        let url = self.url(&["apps", app, "machines", id, "lease"], &[]);
        // Releasing twice: the second finds no lease (404 "lease not found"), meaning done.
        self.call(
            Retry::Idempotent,
            Method::DELETE,
            url,
            None,
            Some(nonce),
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    async fn get_metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>> {
        let url = self.url(&["apps", app, "machines", id, "metadata"], &[]);
        let m: Option<BTreeMap<String, String>> = self
            .call_json(
                Retry::Idempotent,
                Method::GET,
                url,
                None,
                None,
                Duration::ZERO,
            )
            .await?;
        Ok(m.unwrap_or_default())
    }

    async fn set_metadata(&self, app: &str, id: &str, key: &str, value: &str) -> Result<()> {
        let url = self.url(&["apps", app, "machines", id, "metadata", key], &[]);
        let body = json_body(&serde_json::json!({ "value": value }))?;
        // An upsert of the same value: repeating it is harmless.
        self.call(
            Retry::Idempotent,
            Method::POST,
            url,
            Some(body),
            None,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    async fn delete_metadata(&self, app: &str, id: &str, key: &str) -> Result<()> {
        let url = self.url(&["apps", app, "machines", id, "metadata", key], &[]);
        self.call(
            Retry::Idempotent,
            Method::DELETE,
            url,
            None,
            None,
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    async fn machine_logs(&self, app: &str, id: &str) -> Result<Option<String>> {
        // An emulator-only endpoint beside `/v1`; a real API answers 404 (no logs here).
        let mut url = self.inner.base.clone();
        {
            let mut segs = url
                .path_segments_mut()
                .expect("base URL validated in build()");
            segs.pop();
            segs.extend(["emulator", "apps", app, "machines", id, "logs"]);
        }
        let req = self.request(Method::GET, url, None, None, Duration::ZERO)?;
        match self.inner.sender.send(req).await {
            Ok(resp) if (200..300).contains(&resp.status) => {
                Ok(Some(self.redact(&String::from_utf8_lossy(&resp.body))))
            }
            Ok(_) => Ok(None),
            Err(te) => Err(Error::new(
                ErrorKind::Transport,
                self.redact(&format!("GET machine logs: {te}")),
            )),
        }
    }
}
