//! `flyjobs dashboard`: the dashboard served standalone over HTTP (axum), behind a token.
//!
//! The token comes from the environment (`FLYJOBS_DASHBOARD_TOKEN`), never from argv, and is
//! accepted as HTTP basic auth (any user name, the token as password: what a browser prompts
//! for) or as `Authorization: Bearer …`. Without a token the server only starts on a loopback
//! address and only when asked (`--no-auth`): anyone who can reach the port can act on jobs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode};
use base64::Engine;
use tokio::net::TcpListener;

use crate::{Dashboard, MAX_BODY, Request, Response};

/// Who may use a standalone dashboard.
#[derive(Clone)]
pub enum Auth {
    /// Anyone who can reach the port (loopback only; see [`Auth::check_bind`]).
    None,
    /// Whoever presents this token.
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("Auth::None"),
            Auth::Token(_) => f.write_str("Auth::Token([redacted])"),
        }
    }
}

impl Auth {
    /// The auth of `flyjobs dashboard`: a token from the environment, or none when `no_auth`;
    /// refuses a bind it would leave open.
    pub fn for_bind(
        bind: SocketAddr,
        token: Option<String>,
        no_auth: bool,
    ) -> Result<Auth, String> {
        let token = token.filter(|t| !t.is_empty());
        match (token, no_auth) {
            (Some(_), true) => {
                Err("--no-auth and FLYJOBS_DASHBOARD_TOKEN contradict each other: unset one".into())
            }
            (Some(t), false) if t.len() < 16 => Err(format!(
                "FLYJOBS_DASHBOARD_TOKEN is {} characters; use at least 16 (e.g. `openssl rand -hex 16`)",
                t.len()
            )),
            (Some(t), false) => Ok(Auth::Token(t)),
            (None, true) if bind.ip().is_loopback() => Ok(Auth::None),
            (None, true) => Err(format!(
                "--no-auth is only allowed on a loopback address, not {bind}: set \
                 FLYJOBS_DASHBOARD_TOKEN instead"
            )),
            (None, false) => Err(format!(
                "the dashboard needs a login: set FLYJOBS_DASHBOARD_TOKEN (basic-auth password or \
                 bearer token), or pass --no-auth to serve {bind} without one (loopback only)"
            )),
        }
    }

    fn allows(&self, req: &Request) -> bool {
        let Auth::Token(token) = self else {
            return true;
        };
        let Some(given) = req.header("authorization") else {
            return false;
        };
        let presented = if let Some(b) = given.strip_prefix("Bearer ") {
            b.trim().to_owned()
        } else if let Some(b) = given.strip_prefix("Basic ") {
            match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                Ok(raw) => String::from_utf8_lossy(&raw)
                    .split_once(':')
                    .map(|(_, pass)| pass.to_owned())
                    .unwrap_or_default(),
                Err(_) => return false,
            }
        } else {
            return false;
        };
        presented.len() == token.len()
            && presented
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Serve `dashboard` on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, dashboard: Dashboard, auth: Auth) -> std::io::Result<()> {
    let state = Arc::new((dashboard, auth));
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let state = state.clone();
        async move { answer(&state.0, &state.1, req).await }
    });
    axum::serve(listener, app).await
}

async fn answer(
    dash: &Dashboard,
    auth: &Auth,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let request = Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        mount: String::new(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body,
    };
    if !auth.allows(&request) {
        let mut r = plain(StatusCode::UNAUTHORIZED, "login required");
        r.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"flyjobs\", charset=\"UTF-8\""),
        );
        return r;
    }
    to_axum(dash.handle(request).await)
}

fn plain(status: StatusCode, text: &str) -> axum::response::Response {
    let mut r = axum::response::Response::new(Body::from(format!("{text}\n")));
    *r.status_mut() = status;
    r
}

fn to_axum(resp: Response) -> axum::response::Response {
    let mut r = axum::response::Response::new(Body::from(resp.body));
    *r.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in resp.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bind_is_never_left_open_by_accident() {
        let token = Some("0123456789abcdef".to_owned());
        assert!(matches!(
            Auth::for_bind(addr("0.0.0.0:1"), token.clone(), false),
            Ok(Auth::Token(_))
        ));
        assert!(matches!(
            Auth::for_bind(addr("127.0.0.1:1"), None, true),
            Ok(Auth::None)
        ));
        assert!(matches!(
            Auth::for_bind(addr("[::1]:1"), None, true),
            Ok(Auth::None)
        ));
        let e = Auth::for_bind(addr("0.0.0.0:1"), None, true).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = Auth::for_bind(addr("127.0.0.1:1"), None, false).unwrap_err();
        assert!(
            e.contains("FLYJOBS_DASHBOARD_TOKEN") && e.contains("--no-auth"),
            "{e}"
        );
        let e = Auth::for_bind(addr("127.0.0.1:1"), Some("short".into()), false).unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
        assert!(!format!("{:?}", Auth::Token("0123456789abcdef".into())).contains("0123"));
    }

    #[test]
    fn the_token_is_taken_as_basic_password_or_bearer() {
        let auth = Auth::Token("0123456789abcdef".into());
        let with = |h: &str| {
            let mut r = Request::get("/");
            r.headers.insert("Authorization".into(), h.into());
            r
        };
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(auth.allows(&with(&basic("admin:0123456789abcdef"))));
        assert!(auth.allows(&with("Bearer 0123456789abcdef")));
        assert!(!auth.allows(&with(&basic("admin:0123456789abcdeX"))));
        assert!(!auth.allows(&with("Bearer nope")));
        assert!(!auth.allows(&Request::get("/")));
        assert!(Auth::None.allows(&Request::get("/")));
    }
}
