//! The HTTP seam under [`MachinesClient`](super::MachinesClient).
//!
//! The client builds an [`HttpRequest`], hands it to an [`HttpSend`] and interprets the
//! [`HttpResponse`]: status mapping, retries and create idempotency all live above this seam, so
//! tests swap in a [`MockSender`] and assert the exact request sequence without a network
//! (the `MockSender` pattern of `lancedb/lancedb rust/lancedb/src/remote/client.rs`).
//! [`ReqwestSender`] is the real thing: reqwest over rustls (ring), or over a Unix socket for the
//! tokenless in-machine API (`/.fly/api`).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One HTTP request, fully formed (URL with query, headers including auth, body).
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// HTTP method.
    pub method: Method,
    /// Absolute URL, query included.
    pub url: url::Url,
    /// Headers. The `authorization` value is marked sensitive, so `Debug` prints `Sensitive`.
    pub headers: HeaderMap,
    /// JSON body, if any.
    pub body: Option<Bytes>,
    /// How long this one attempt may take.
    pub timeout: Duration,
}

impl HttpRequest {
    /// Path and query, e.g. `/v1/apps/a/machines?state=started` (what tests and logs look at).
    pub fn path_and_query(&self) -> String {
        match self.url.query() {
            Some(q) => format!("{}?{q}", self.url.path()),
            None => self.url.path().to_string(),
        }
    }

    /// The body parsed as JSON (`Value::Null` when there is none or it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        self.body
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// An HTTP answer, whatever its status.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers (`fly-request-id`, `retry-after`, …).
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
}

impl HttpResponse {
    /// An answer with a JSON body (test helper).
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        HttpResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    /// An answer with an empty body (test helper).
    pub fn empty(status: u16) -> Self {
        HttpResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// Add a header (test helper).
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

/// Why no answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportFailure {
    /// The connection could not be made: the request was certainly not performed.
    Connect,
    /// The attempt ran out of time: the server may or may not have acted on it.
    Timeout,
    /// Anything else (connection dropped mid-request, bad framing): the server may have acted.
    Other,
}

/// A request that got no HTTP answer.
#[derive(Debug)]
pub struct TransportError {
    /// What kind of failure it was; decides whether a retry of a non-idempotent call is safe.
    pub failure: TransportFailure,
    /// The underlying error.
    pub source: BoxError,
}

impl TransportError {
    /// A transport error of `failure` with a cause.
    pub fn new(failure: TransportFailure, source: impl Into<BoxError>) -> Self {
        TransportError {
            failure,
            source: source.into(),
        }
    }

    /// Whether the request may have reached the server and been acted upon.
    pub fn is_ambiguous(&self) -> bool {
        self.failure != TransportFailure::Connect
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.failure, self.source)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Sends one HTTP request and returns the answer, whatever its status. No retries here.
#[async_trait]
pub trait HttpSend: Send + Sync + fmt::Debug {
    /// Perform one attempt.
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// Install ring as rustls' process-wide crypto provider, once.
///
/// The workspace builds reqwest with `rustls-no-provider` so that one crypto stack (ring) is
/// shared with sqlx; rustls then refuses to build a TLS config until a provider is installed.
/// `install_default` fails harmlessly when one is already installed (by us or the host app).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The real transport: a pooled reqwest client.
#[derive(Clone, Debug)]
pub struct ReqwestSender {
    client: reqwest::Client,
}

impl ReqwestSender {
    /// A sender over TCP (plain HTTP or TLS).
    pub fn new(user_agent: &str) -> Result<Self, reqwest::Error> {
        Self::build(user_agent, None)
    }

    /// A sender whose every connection goes to the Unix socket at `path` (the in-machine API).
    pub fn unix_socket(user_agent: &str, path: impl Into<PathBuf>) -> Result<Self, reqwest::Error> {
        Self::build(user_agent, Some(path.into()))
    }

    fn build(user_agent: &str, socket: Option<PathBuf>) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .user_agent(user_agent)
            // Connecting is the unambiguous part of a request: fail it fast so that a retry of a
            // non-idempotent call is still safe and cheap.
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(path) = socket {
            b = b.unix_socket(path);
        }
        Ok(ReqwestSender { client: b.build()? })
    }
}

#[async_trait]
impl HttpSend for ReqwestSender {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut rb = self
            .client
            .request(request.method, request.url)
            .headers(request.headers)
            .timeout(request.timeout);
        if let Some(body) = request.body {
            rb = rb.body(body);
        }
        let classify = |e: reqwest::Error| {
            let failure = if e.is_connect() {
                TransportFailure::Connect
            } else if e.is_timeout() {
                TransportFailure::Timeout
            } else {
                TransportFailure::Other
            };
            // `without_url`: URLs carry no secrets here, but keep errors short and uniform.
            TransportError::new(failure, e.without_url())
        };
        let resp = rb.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(classify)?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

type Handler = dyn Fn(&HttpRequest) -> Result<HttpResponse, TransportError> + Send + Sync;

/// A scripted transport for tests: a handler answers each request, and every request is recorded.
#[derive(Clone)]
pub struct MockSender {
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
}

impl MockSender {
    /// A mock whose answers come from `handler`.
    pub fn new(
        handler: impl Fn(&HttpRequest) -> Result<HttpResponse, TransportError> + Send + Sync + 'static,
    ) -> Self {
        MockSender {
            handler: Arc::new(handler),
            requests: Arc::default(),
        }
    }

    /// A mock that plays `answers` in order, then answers 500 to anything further.
    pub fn sequence(answers: Vec<Result<HttpResponse, TransportError>>) -> Self {
        let queue = Mutex::new(std::collections::VecDeque::from(answers));
        MockSender::new(move |_| {
            queue
                .lock()
                .expect("mock queue lock is never poisoned: no code panics while holding it")
                .pop_front()
                .unwrap_or_else(|| {
                    Ok(HttpResponse::json(
                        500,
                        &serde_json::json!({"error": "mock: no more answers"}),
                    ))
                })
        })
    }

    /// Every request sent so far, in order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.requests
            .lock()
            .expect("request log lock is never poisoned")
            .clone()
    }

    /// `"METHOD /path?query"` of every request so far, in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path_and_query()))
            .collect()
    }
}

impl fmt::Debug for MockSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockSender").finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpSend for MockSender {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let answer = (self.handler)(&request);
        self.requests
            .lock()
            .expect("request log lock is never poisoned")
            .push(request);
        answer
    }
}
