//! CSRF protection, response hardening headers and safe redirects.
//!
//! CSRF uses the double-submit cookie pattern: a random token lives in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to the mount path, every form carries it in a hidden field,
//! and a POST is accepted only when both are present and equal. Nothing is kept on the server,
//! so the dashboard works the same in every process of a pre-forking app server. A POST whose
//! `Sec-Fetch-Site` says `cross-site` is refused before the token is even looked at.

use std::collections::BTreeMap;

use crate::{Request, Response};

/// The cookie that carries the CSRF token.
pub const CSRF_COOKIE: &str = "flyjobs_csrf";
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";

/// The CSRF token of a request: the browser's cookie, or a new one to set.
#[derive(Debug, Clone)]
pub struct CsrfToken {
    value: String,
    is_new: bool,
}

impl CsrfToken {
    /// The request's token if its cookie holds a well-formed one, else a fresh random one.
    pub fn for_request(req: &Request) -> CsrfToken {
        match req.cookie(CSRF_COOKIE) {
            Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => CsrfToken {
                value: v.to_owned(),
                is_new: false,
            },
            _ => {
                let bytes: [u8; 32] = rand::random();
                CsrfToken {
                    value: bytes.iter().map(|b| format!("{b:02x}")).collect(),
                    is_new: true,
                }
            }
        }
    }

    /// The token, for forms.
    pub fn value(&self) -> &str {
        &self.value
    }
}

fn refuse(status: u16, why: &str) -> Response {
    Response::new(status, "text/plain; charset=utf-8", format!("{why}\n"))
}

/// Check a POST: not read-only, same site, a form body, and a CSRF field equal to the cookie.
/// Gives the parsed form, or the refusal to send.
pub fn check_post(
    req: &Request,
    csrf: &CsrfToken,
    read_only: bool,
) -> Result<BTreeMap<String, String>, Response> {
    if read_only {
        return Err(refuse(
            403,
            "the dashboard is read-only: no changes are accepted",
        ));
    }
    if req.header("sec-fetch-site") == Some("cross-site") {
        return Err(refuse(403, "cross-site form posts are refused"));
    }
    let form: BTreeMap<String, String> = serde_urlencoded::from_str(&req.body).map_err(|_| {
        refuse(
            400,
            "the body is not a form (application/x-www-form-urlencoded)",
        )
    })?;
    let sent = form.get(CSRF_FIELD).map(String::as_str).unwrap_or("");
    if csrf.is_new || !constant_time_eq(sent.as_bytes(), csrf.value.as_bytes()) {
        return Err(refuse(
            403,
            "the CSRF token is missing or wrong: reload the page and try again",
        ));
    }
    Ok(form)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Add the hardening headers, and the CSRF cookie when the browser has none yet.
pub fn finish(req: &Request, csrf: &CsrfToken, resp: &mut Response) {
    let h = &mut resp.headers;
    h.push((
        "content-security-policy".into(),
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
            .into(),
    ));
    h.push(("x-content-type-options".into(), "nosniff".into()));
    h.push(("x-frame-options".into(), "DENY".into()));
    h.push(("referrer-policy".into(), "same-origin".into()));
    if !h.iter().any(|(k, _)| k == "cache-control") {
        h.push(("cache-control".into(), "no-store".into()));
    }
    if csrf.is_new {
        let path = if req.mount.is_empty() {
            "/"
        } else {
            &req.mount
        };
        h.push((
            "set-cookie".into(),
            format!(
                "{CSRF_COOKIE}={}; Path={path}; HttpOnly; SameSite=Strict",
                csrf.value
            ),
        ));
    }
}

/// Where to go after an action: the form's `return_to` when it is a path inside the dashboard,
/// else `fallback` (never another site: no open redirect).
pub fn return_to(req: &Request, form: &BTreeMap<String, String>, fallback: String) -> String {
    match form.get("return_to") {
        Some(to)
            if to.starts_with(&format!("{}/", req.mount))
                && !to.starts_with("//")
                && !to.contains('\\')
                && !to.contains("://")
                && !to.bytes().any(|b| b.is_ascii_control()) =>
        {
            to.clone()
        }
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str, cookie: Option<&str>) -> Request {
        let mut r = Request {
            method: "POST".into(),
            path: "/jobs/1/retry".into(),
            body: body.into(),
            ..Default::default()
        };
        if let Some(c) = cookie {
            r.headers
                .insert("Cookie".into(), format!("a=b; {CSRF_COOKIE}={c}"));
        }
        r
    }

    #[test]
    fn a_post_needs_the_cookie_and_the_same_field() {
        let token = "ab".repeat(32);
        let ok = post(&format!("_csrf={token}"), Some(&token));
        let csrf = CsrfToken::for_request(&ok);
        assert!(!csrf.is_new);
        assert!(check_post(&ok, &csrf, false).is_ok());
        assert_eq!(check_post(&ok, &csrf, true).unwrap_err().status, 403);

        for bad in [
            post(&format!("_csrf={token}"), None),
            post("_csrf=", Some(&token)),
            post(&format!("_csrf={}", "cd".repeat(32)), Some(&token)),
            post("x=1", Some(&token)),
        ] {
            let csrf = CsrfToken::for_request(&bad);
            let e = check_post(&bad, &csrf, false).unwrap_err();
            assert_eq!(e.status, 403, "{bad:?}");
            assert!(e.body.contains("CSRF"));
        }
        let mut cross = post(&format!("_csrf={token}"), Some(&token));
        cross
            .headers
            .insert("Sec-Fetch-Site".into(), "cross-site".into());
        let csrf = CsrfToken::for_request(&cross);
        assert_eq!(check_post(&cross, &csrf, false).unwrap_err().status, 403);
    }

    #[test]
    fn a_new_token_is_set_once_as_a_strict_http_only_cookie() {
        let mut req = Request::get("/");
        req.mount = "/flyjobs".into();
        let csrf = CsrfToken::for_request(&req);
        let mut resp = Response::default();
        finish(&req, &csrf, &mut resp);
        let cookie = resp.header("set-cookie").unwrap();
        assert!(cookie.starts_with(&format!("{CSRF_COOKIE}={}", csrf.value())));
        assert!(cookie.contains("Path=/flyjobs; HttpOnly; SameSite=Strict"));
        assert!(
            resp.header("content-security-policy")
                .unwrap()
                .contains("script-src 'self'")
        );

        req.headers
            .insert("cookie".into(), format!("{CSRF_COOKIE}={}", csrf.value()));
        let again = CsrfToken::for_request(&req);
        assert_eq!(again.value(), csrf.value());
        let mut resp = Response::default();
        finish(&req, &again, &mut resp);
        assert_eq!(resp.header("set-cookie"), None);
    }

    #[test]
    fn return_to_stays_inside_the_dashboard() {
        let mut req = Request::get("/");
        req.mount = "/flyjobs".into();
        let form = |to: &str| BTreeMap::from([("return_to".to_owned(), to.to_owned())]);
        let fb = || "/flyjobs/jobs/1".to_owned();
        assert_eq!(
            return_to(&req, &form("/flyjobs/dead?page=2"), fb()),
            "/flyjobs/dead?page=2"
        );
        for evil in [
            "https://evil.example/",
            "//evil.example",
            "/other",
            "/flyjobs/\\evil",
            "/flyjobs/\nx",
        ] {
            assert_eq!(return_to(&req, &form(evil), fb()), fb(), "{evil:?}");
        }
        req.mount = String::new();
        assert_eq!(return_to(&req, &form("//evil.example"), "/".into()), "/");
        assert_eq!(return_to(&req, &form("/dead"), "/".into()), "/dead");
    }
}
