//! HTTP routes: `/v1` (the Machines API) and `/emulator` (emulator-only endpoints).
//!
//! Status codes, bodies and error texts follow shared/reference/machines-api.md §2, §3, §5, §7.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::FutureExt;
use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::{Map, Value, json};

use crate::lifecycle::{
    Shared, finish_destroy, machine_argv, proc_spec, schedule_launch, schedule_start, stop_process,
};
use crate::process::{parse_signal, signal_group, signal_process};
use crate::validate::{STOP_SIGNALS, check_config, check_types, normalize};
use crate::world::{
    AppRec, Billing, LeaseRec, Ledger, MachineRec, Pending, World, hex_id, machine_name,
    private_ip, rfc3339,
};

/// Per-listener context: the TCP listener wants a token, the unix socket (the stand-in for
/// Fly's in-machine `/.fly/api`) does not.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub tokenless: bool,
}

/// An error response: status + JSON body.
pub(crate) struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, axum::Json(self.1)).into_response();
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            // Fly's 429 headers are undocumented (machines-api.md §12); Retry-After is what
            // clients (flyctl, FLAME, ours) know how to honour, and 1 s is the refill time of a
            // 1 req/s bucket.
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub(crate) fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, json!({"error": msg.into()}))
}

type ApiResult = Result<Response, ApiError>;

const LEASE_HEADER: &str = "fly-machine-lease-nonce";

/// Longest lease a request may ask for. Fly's maximum is not documented (machines-api.md §5,
/// §12); a day is far above what clients ask (flyctl: 120 s) and keeps `expires_at` sane.
pub(crate) const MAX_LEASE_TTL_S: u64 = 24 * 60 * 60;

/// Unwinding with this payload drops the connection without an answer (the lost create
/// response of fault injection); every other panic becomes a 500.
pub(crate) struct DropConnection;

/// A 400 with the text of a failed [`check_types`]/[`check_config`].
fn invalid(msg: String) -> ApiError {
    err(StatusCode::BAD_REQUEST, msg)
}

fn ok_json(v: Value) -> ApiResult {
    Ok((StatusCode::OK, axum::Json(v)).into_response())
}

/// Builds the router for one listener.
pub(crate) fn router(ctx: Ctx) -> Router {
    let m = "/v1/apps/{app}/machines/{id}";
    let router = Router::new()
        .route("/v1/apps", get(list_apps).post(create_app))
        .route("/v1/apps/{app}", get(get_app).delete(delete_app))
        .route(
            "/v1/apps/{app}/machines",
            get(list_machines).post(create_machine),
        )
        .route(
            m,
            get(get_machine)
                .post(update_machine)
                .delete(destroy_machine),
        )
        .route(&format!("{m}/start"), post(start_machine))
        .route(&format!("{m}/stop"), post(stop_machine))
        .route(&format!("{m}/suspend"), post(suspend_machine))
        .route(&format!("{m}/restart"), post(restart_machine))
        .route(&format!("{m}/wait"), get(wait_machine))
        .route(&format!("{m}/events"), get(machine_events))
        .route(
            &format!("{m}/lease"),
            get(get_lease).post(acquire_lease).delete(release_lease),
        )
        .route(
            &format!("{m}/metadata"),
            get(get_metadata).put(bulk_metadata).patch(bulk_metadata),
        )
        .route(
            &format!("{m}/metadata/{{key}}"),
            get(get_metadata_key)
                .post(set_metadata_key)
                .delete(delete_metadata_key),
        )
        .route(&format!("{m}/signal"), post(signal_machine))
        .route(&format!("{m}/cordon"), post(cordon_machine))
        .route(&format!("{m}/uncordon"), post(uncordon_machine))
        .route(&format!("{m}/versions"), get(machine_versions))
        .route(&format!("{m}/exec"), post(exec_machine))
        .route("/emulator/ledger", get(ledger))
        .route("/emulator/apps/{app}/machines/{id}/logs", get(logs));
    let router = if ctx.shared.settings.test_routes {
        router.route(
            "/emulator/apps/{app}/machines/{id}/panic",
            post(panic_route),
        )
    } else {
        router
    };
    router
        .fallback(not_found_or_not_implemented)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), guard))
        .with_state(ctx)
}

/// Every answer carries a `fly-request-id` (fly-go keeps it in its errors), and a handler that
/// panics answers 500 instead of dropping the connection. Locks poisoned by the panic are
/// recovered by their users, so the machine it touched stays usable.
async fn guard(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    // Fly's ids look like `01J…-sjc`: a ULID and the region of the API server.
    let id = format!(
        "{}-{}",
        ulid::Ulid::new(),
        ctx.shared.settings.default_region
    );
    let route = format!("{} {}", req.method(), req.uri().path());
    let mut resp = match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(p) if p.is::<DropConnection>() => std::panic::resume_unwind(p),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("flyjobs emulator: the handler of {route} panicked: {what}");
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal: the emulator failed on {route} (a bug in the emulator: {what})"),
            )
            .into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("fly-request-id", v);
    }
    resp
}

/// Routes of the spec the emulator does not serve answer 501 naming the route, so that a
/// client does not read "machine gone" into a 404; anything else is 404 `not found`.
async fn not_found_or_not_implemented(method: Method, uri: Uri) -> ApiError {
    if let Some(route) = uri
        .path()
        .strip_prefix("/v1")
        .and_then(|p| spec_route(&method, p))
    {
        return err(
            StatusCode::NOT_IMPLEMENTED,
            format!("not implemented in the flyjobs emulator: {method} /v1{route}"),
        );
    }
    err(StatusCode::NOT_FOUND, "not found")
}

/// The spec's path template matching `method path`, if any.
fn spec_route(method: &Method, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let paths = crate::validate::spec().get("paths")?.as_object()?;
    paths
        .iter()
        .filter(|(_, ops)| ops.get(method.as_str().to_ascii_lowercase()).is_some())
        .map(|(t, _)| t)
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts.iter().zip(&segs).all(|(t, s)| {
                    t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty())
                })
        })
        .cloned()
}

// ---------------------------------------------------------------- preflight: auth, faults, limits

/// Checks the token (machines-api.md §1: `Bearer X` or `FlyV1 X`, schemes stripped repeatedly,
/// comma-separated tokens) and its app scope. Returns the lease owner name of the caller.
fn authorize(ctx: &Ctx, headers: &HeaderMap, app: Option<&str>) -> Result<String, ApiError> {
    if ctx.tokenless {
        return Ok("machine@tokens.fly.io".to_string());
    }
    let unauthorized = || err(StatusCode::UNAUTHORIZED, "unauthorized");
    let raw = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let mut s = raw.trim();
    loop {
        let (word, rest) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        if word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("flyv1") {
            s = rest.trim_start();
        } else {
            break;
        }
    }
    let tokens: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Err(unauthorized());
    }
    // The owner shown on leases: a hash, never the token itself.
    let owner = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tokens[0].hash(&mut h);
        format!("{:016x}@tokens.fly.io", h.finish())
    };
    let Some(map) = &ctx.shared.settings.tokens else {
        return Ok(owner);
    };
    let scopes: Vec<&Vec<String>> = tokens.iter().filter_map(|t| map.get(*t)).collect();
    if scopes.is_empty() {
        return Err(unauthorized());
    }
    if let Some(app) = app
        && !scopes
            .iter()
            .any(|apps| apps.iter().any(|a| a == "*" || a == app))
    {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("unauthorized: token not allowed to access app '{app}'"),
        ));
    }
    Ok(owner)
}

fn capacity_error() -> ApiError {
    ApiError(
        StatusCode::PRECONDITION_FAILED,
        json!({
            "error": "could not reserve resource for machine: insufficient memory available to fulfill request",
            "status": "insufficient_capacity",
        }),
    )
}

/// Injected faults (settings `faults`): maybe delay, maybe answer 429/503/capacity.
async fn inject_faults(ctx: &Ctx, is_create: bool) -> Result<(), ApiError> {
    let f = ctx
        .shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (delay, r429, r503, rcap) = {
        let mut rng = rand::rng();
        (
            f.delayed > 0.0 && rng.random_bool(f.delayed.clamp(0.0, 1.0)),
            f.rate_limited > 0.0 && rng.random_bool(f.rate_limited.clamp(0.0, 1.0)),
            f.unavailable > 0.0 && rng.random_bool(f.unavailable.clamp(0.0, 1.0)),
            is_create && f.capacity > 0.0 && rng.random_bool(f.capacity.clamp(0.0, 1.0)),
        )
    };
    if delay {
        tokio::time::sleep(f.delay).await;
    }
    if r429 {
        return Err(rate_limited());
    }
    if r503 {
        return Err(err(StatusCode::SERVICE_UNAVAILABLE, "service unavailable"));
    }
    if rcap {
        return Err(capacity_error());
    }
    Ok(())
}

/// 429 body: the real one is undocumented (machines-api.md §6, §12); the text is invented, the
/// shape is Fly's `ErrorResponse` like every other error (plus `Retry-After: 1`).
fn rate_limited() -> ApiError {
    err(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded")
}

/// Rate limits of machines-api.md §6: 1 req/s burst 3 per action and machine/app; get machine
/// 5 req/s burst 10.
fn rate_limit(ctx: &Ctx, action: &str, key: &str) -> Result<(), ApiError> {
    if !ctx.shared.settings.rate_limits {
        return Ok(());
    }
    let (rate, burst) = if action == "get" {
        (5.0, 10.0)
    } else {
        (1.0, 3.0)
    };
    let mut l = ctx.shared.limiter.lock().unwrap_or_else(|e| e.into_inner());
    if l.take(action, key, rate, burst) {
        Ok(())
    } else {
        Err(rate_limited())
    }
}

/// Auth, faults, app existence, rate limit: the common start of every `/v1/apps/{app}` route.
async fn preflight(
    ctx: &Ctx,
    headers: &HeaderMap,
    app: &str,
    action: &str,
    key: &str,
) -> Result<String, ApiError> {
    let owner = authorize(ctx, headers, Some(app))?;
    inject_faults(ctx, action == "create").await?;
    if !ctx.shared.world().apps.contains_key(app) {
        return Err(err(StatusCode::NOT_FOUND, "app not found"));
    }
    rate_limit(ctx, action, key)?;
    Ok(owner)
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 14 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(err(
            StatusCode::BAD_REQUEST,
            format!("invalid machine ID, '{id}'"),
        ))
    }
}

fn visible(ctx: &Ctx, m: &MachineRec) -> bool {
    m.destroyed_at
        .is_none_or(|t| t.elapsed() < ctx.shared.settings.destroyed_visible_for)
}

/// The machine for reading: 404 `machine not found` if unknown or long destroyed.
fn machine<'w>(
    ctx: &Ctx,
    w: &'w mut World,
    app: &str,
    id: &str,
) -> Result<&'w mut MachineRec, ApiError> {
    valid_id(id)?;
    match w.machines.get_mut(id) {
        Some(m) if m.app == app && visible(ctx, m) => Ok(m),
        _ => Err(err(StatusCode::NOT_FOUND, "machine not found")),
    }
}

/// The machine for a mutation: additionally 404 `not_found: machine not found` once destroyed.
fn live_machine<'w>(
    ctx: &Ctx,
    w: &'w mut World,
    app: &str,
    id: &str,
) -> Result<&'w mut MachineRec, ApiError> {
    let m = machine(ctx, w, app, id)?;
    if m.state == "destroyed" {
        return Err(err(StatusCode::NOT_FOUND, "not_found: machine not found"));
    }
    Ok(m)
}

/// Lease guard of machines-api.md §5: a leased machine needs the holder's nonce.
fn check_lease(m: &MachineRec, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(l) = m.active_lease() {
        let given = headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok());
        if given != Some(l.nonce.as_str()) {
            return Err(lease_conflict(m, l));
        }
    }
    Ok(())
}

fn lease_conflict(m: &MachineRec, l: &LeaseRec) -> ApiError {
    err(
        StatusCode::CONFLICT,
        format!(
            "aborted: machine ID {} lease currently held by {}, expires at {}",
            m.id,
            l.owner,
            rfc3339(l.expires_at)
        ),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("json: cannot unmarshal request body: {e}"),
        )
    })
}

fn query_pairs(q: &Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn query_one<'q>(pairs: &'q [(String, String)], key: &str) -> Option<&'q str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1" | "t" | "True" | "TRUE"))
}

/// Parses a Go-style duration: a string (`"10s"`, `"1m30s"`) or an integer in nanoseconds
/// (Go's `time.Duration` JSON, as old docs show).
fn parse_duration(v: &Value) -> Option<Duration> {
    match v {
        Value::String(s) => humantime::parse_duration(s)
            .ok()
            .or_else(|| s.parse::<u64>().ok().map(Duration::from_secs)),
        Value::Number(n) => n.as_u64().map(Duration::from_nanos),
        _ => None,
    }
}

/// Validates a create/update body as Fly does (types, enums, guest size) and returns the
/// config with its guest (cpus, memory_mb).
fn machine_request(schema: &str, body: &Value) -> Result<(Value, u32, u64), ApiError> {
    check_types(schema, body).map_err(invalid)?;
    let mut body = body.clone();
    normalize(schema, &mut body);
    let Some(config) = body.get("config").filter(|c| c.is_object()).cloned() else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: config is required",
        ));
    };
    let (cpus, memory_mb) = check_config(&config).map_err(invalid)?;
    Ok((config, cpus, memory_mb))
}

fn fits(ctx: &Ctx, w: &World, region: &str, cpus: u32, mem: u64) -> bool {
    match ctx.shared.settings.capacity_of(region) {
        None => true,
        Some(c) => {
            let (uc, um) = w.used_capacity(region);
            uc + cpus as u64 <= c.cpus as u64 && um + mem <= c.memory_mb
        }
    }
}

// ---------------------------------------------------------------- apps

fn app_json(w: &World, a: &AppRec) -> Value {
    let count = w
        .machines
        .values()
        .filter(|m| m.app == a.name && m.state != "destroyed")
        .count();
    json!({
        "id": a.id,
        "name": a.name,
        "status": "deployed",
        "network": a.network,
        "organization": {"name": a.org_slug, "slug": a.org_slug},
        "machine_count": count,
        "volume_count": 0,
    })
}

pub(crate) fn insert_app(w: &mut World, name: &str, org: &str, network: &str) -> bool {
    if w.apps.contains_key(name) {
        return false;
    }
    w.apps.insert(
        name.to_string(),
        AppRec {
            id: name.to_string(),
            name: name.to_string(),
            org_slug: org.to_string(),
            network: network.to_string(),
        },
    );
    true
}

/// A1: 201. The spec gives no body; fly-go decodes an `App` (with `?wait=true`), so we send one.
async fn create_app(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let body = parse_body(&body)?;
    check_types("CreateAppRequest", &body).map_err(invalid)?;
    // Docs use `app_name`, the spec and fly-go `name`.
    let name = body
        .get("name")
        .or_else(|| body.get("app_name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    authorize(&ctx, &headers, Some(&name))?;
    inject_faults(&ctx, false).await?;
    if name.is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: app name is required",
        ));
    }
    let org = body
        .get("org_slug")
        .and_then(Value::as_str)
        .unwrap_or("personal");
    let network = body
        .get("network")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let mut w = ctx.shared.world();
    if !insert_app(&mut w, &name, org, network) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "Name has already been taken", "status": "name_taken"}),
        ));
    }
    let v = app_json(&w, &w.apps[&name]);
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

async fn get_app(State(ctx): State<Ctx>, headers: HeaderMap, Path(app): Path<String>) -> ApiResult {
    preflight(&ctx, &headers, &app, "get_app", &app).await?;
    let w = ctx.shared.world();
    ok_json(app_json(&w, &w.apps[&app]))
}

/// A4: `GET /apps?org_slug=` (required): the apps of that org the token may see.
async fn list_apps(State(ctx): State<Ctx>, headers: HeaderMap, RawQuery(q): RawQuery) -> ApiResult {
    authorize(&ctx, &headers, None)?;
    inject_faults(&ctx, false).await?;
    let pairs = query_pairs(&q);
    let Some(org) = query_one(&pairs, "org_slug").filter(|o| !o.is_empty()) else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: org_slug is required",
        ));
    };
    let w = ctx.shared.world();
    let apps: Vec<Value> = w
        .apps
        .values()
        .filter(|a| a.org_slug == org && authorize(&ctx, &headers, Some(&a.name)).is_ok())
        .map(|a| app_json(&w, a))
        .collect();
    ok_json(json!({"total_apps": apps.len(), "apps": apps}))
}

/// A3: 202. Without `force`, machines that run (or are on their way) refuse it: "stop machines
/// first or pass force" (D-APPS); the 412 and its words are ours. Every machine is destroyed.
async fn delete_app(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "delete_app", &app).await?;
    let force = truthy(query_one(&query_pairs(&q), "force"));
    let mut w = ctx.shared.world();
    let live: Vec<String> = w
        .machines
        .values()
        .filter(|m| m.app == app && m.state != "destroyed")
        .map(|m| m.id.clone())
        .collect();
    if !force
        && let Some(m) = live
            .iter()
            .map(|id| &w.machines[id])
            .find(|m| m.proc.is_some() || m.launching || m.state == "starting")
    {
        return Err(err(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "failed_precondition: app '{app}' has machines running ({} is {}), stop them first or use force",
                m.id, m.state
            ),
        ));
    }
    for id in &live {
        if w.machines[id].proc.is_some() {
            w.set_state(id, "destroying");
            stop_process(
                &ctx.shared,
                &mut w,
                id,
                Signal::SIGKILL,
                Duration::ZERO,
                Pending::Destroy,
            );
        } else {
            finish_destroy(&mut w, id);
        }
    }
    w.apps.remove(&app);
    drop(w);
    ctx.shared.notify();
    Ok(StatusCode::ACCEPTED.into_response())
}

// ---------------------------------------------------------------- machines

async fn list_machines(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "list", &app).await?;
    let pairs = query_pairs(&q);
    let include_deleted = truthy(query_one(&pairs, "include_deleted"));
    let summary = truthy(query_one(&pairs, "summary"));
    let region = query_one(&pairs, "region");
    let states: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "state")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let meta: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|k| (k, v.as_str())))
        .collect();
    let w = ctx.shared.world();
    let mut ms: Vec<&MachineRec> = w
        .machines
        .values()
        .filter(|m| m.app == app)
        .filter(|m| {
            if m.state == "destroyed" {
                include_deleted
            } else {
                true
            }
        })
        .filter(|m| region.is_none_or(|r| m.region == r))
        .filter(|m| states.is_empty() || states.contains(&m.state.as_str()))
        .filter(|m| {
            meta.iter().all(|(k, v)| {
                m.config
                    .pointer(&format!("/metadata/{k}"))
                    .and_then(Value::as_str)
                    == Some(*v)
            })
        })
        .collect();
    ms.sort_by_key(|m| m.created_at);
    let out: Vec<Value> = ms
        .into_iter()
        .map(|m| {
            let mut v = m.to_json(None);
            if summary {
                // summary leaves out config, checks, events, host_status, nonce (§2 M1).
                if let Some(o) = v.as_object_mut() {
                    for k in ["config", "checks", "events", "host_status", "nonce"] {
                        o.remove(k);
                    }
                }
            }
            v
        })
        .collect();
    ok_json(Value::Array(out))
}

async fn create_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(app): Path<String>,
    body: Bytes,
) -> ApiResult {
    let owner = preflight(&ctx, &headers, &app, "create", &app).await?;
    let body = parse_body(&body)?;
    let (config, cpus, memory_mb) = machine_request("CreateMachineRequest", &body)?;
    if config
        .get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: config.image is required",
        ));
    }
    machine_argv(&ctx.shared, &config).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    let skip_launch = body
        .get("skip_launch")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let region = body
        .get("region")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .unwrap_or(&ctx.shared.settings.default_region)
        .to_string();
    let lease_ttl = lease_ttl_s(body.get("lease_ttl"), "lease_ttl")?;
    let (response, id) = {
        let mut w = ctx.shared.world();
        let name = match body
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(n) => {
                if w.machines
                    .values()
                    .any(|m| m.app == app && m.name == n && m.state != "destroyed")
                {
                    return Err(err(
                        StatusCode::CONFLICT,
                        format!(
                            "already_exists: unable to create machine: machine name '{n}' is already in use"
                        ),
                    ));
                }
                n.to_string()
            }
            None => machine_name(),
        };
        if !skip_launch && !fits(&ctx, &w, &region, cpus, memory_mb) {
            return Err(capacity_error());
        }
        let mut id = hex_id(14);
        while w.machines.contains_key(&id) {
            id = hex_id(14);
        }
        let instance_id = ulid::Ulid::new().to_string();
        let now = SystemTime::now();
        let lease = lease_ttl.map(|ttl| LeaseRec {
            nonce: hex_id(12),
            owner: owner.clone(),
            description: String::new(),
            expires_at: now + ttl,
            version: instance_id.clone(),
        });
        let mut m = MachineRec {
            id: id.clone(),
            app: app.clone(),
            name,
            region,
            instance_id,
            private_ip: private_ip(),
            config,
            state: "created".to_string(),
            created_at: now,
            updated_at: now,
            events: Vec::new(),
            lease,
            proc: None,
            last_pid: None,
            generation: 0,
            op_seq: 0,
            pending: Pending::None,
            launching: !skip_launch,
            restart_count: 0,
            destroyed_at: None,
            log: Default::default(),
            billing: Billing::default(),
            state_since: Instant::now(),
            cpus,
            memory_mb,
            cordoned: body
                .get("skip_service_registration")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            versions: Vec::new(),
            oom_killed_generation: None,
        };
        m.remember_version();
        m.event("launch", "created", "user", json!({}));
        let nonce = m.lease.as_ref().map(|l| l.nonce.clone());
        let v = m.to_json(nonce.as_deref());
        w.machines.insert(id.clone(), m);
        (v, id)
    };
    ctx.shared.notify();
    if !skip_launch {
        schedule_launch(&ctx.shared, &id, 0);
    }
    let drop_it = {
        let mut f = ctx.shared.faults.lock().unwrap_or_else(|e| e.into_inner());
        let d = f.drop_after_create > 0
            || (f.dropped_create > 0.0
                && rand::rng().random_bool(f.dropped_create.clamp(0.0, 1.0)));
        f.drop_after_create = f.drop_after_create.saturating_sub(1);
        d
    };
    if drop_it {
        // Lose the response: unwinding out of the handler (and, for this payload, out of the
        // panic guard) ends the connection task, so the client sees the connection closed
        // without an answer. resume_unwind skips the panic hook (no noise); no lock is held.
        std::panic::resume_unwind(Box::new(DropConnection));
    }
    ok_json(response)
}

async fn get_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "get", &id).await?;
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    ok_json(m.to_json(None))
}

async fn update_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "update", &id).await?;
    let body = parse_body(&body)?;
    let (config, cpus, memory_mb) = machine_request("UpdateMachineRequest", &body)?;
    machine_argv(&ctx.shared, &config).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    let skip_launch = body
        .get("skip_launch")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    if let Some(cv) = body
        .get("current_version")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        && cv != m.instance_id
    {
        return Err(err(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "failed_precondition: machine version mismatch: current version is {}, not {cv}",
                m.instance_id
            ),
        ));
    }
    // The old process is stopped as the old config says.
    let stop = stop_settings(m, &Value::Null)?;
    m.instance_id = ulid::Ulid::new().to_string();
    m.config = config;
    m.cpus = cpus;
    m.memory_mb = memory_mb;
    m.restart_count = 0;
    m.updated_at = SystemTime::now();
    m.remember_version();
    m.event("update", "replacing", "user", json!({}));
    let has_proc = m.proc.is_some();
    let state = m.state.clone();
    if has_proc {
        let pending = if skip_launch {
            Pending::Stop
        } else {
            Pending::Replace
        };
        stop_process(&ctx.shared, &mut w, &id, stop.0, stop.1, pending);
        w.set_state(&id, "replacing");
    } else if !skip_launch || state == "starting" {
        let m = w.machines.get_mut(&id).expect("looked up above");
        m.op_seq += 1;
        m.launching = false;
        let seq = m.op_seq;
        w.set_state(&id, "starting");
        schedule_start(
            &ctx.shared,
            &id,
            seq,
            ctx.shared.settings.latencies.start,
            false,
        );
    }
    let v = w.machines[&id].to_json(None);
    drop(w);
    ctx.shared.notify();
    ok_json(v)
}

/// Signal and grace period of a stop: request body, else `config.stop_config`, else SIGINT/5 s.
fn stop_settings(m: &MachineRec, body: &Value) -> Result<(Signal, Duration), ApiError> {
    let sig_v = body
        .get("signal")
        .or_else(|| m.config.pointer("/stop_config/signal"));
    let sig = match sig_v {
        None | Some(Value::Null) => Signal::SIGINT,
        Some(Value::String(s)) if s.is_empty() => Signal::SIGINT,
        Some(Value::String(s)) => parse_signal(s).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                format!("invalid_argument: invalid signal '{s}'"),
            )
        })?,
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| Signal::try_from(n as i32).ok())
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("invalid_argument: invalid signal '{n}'"),
                )
            })?,
        Some(other) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("invalid_argument: invalid signal {other}"),
            ));
        }
    };
    let t_v = body
        .get("timeout")
        .or_else(|| m.config.pointer("/stop_config/timeout"));
    let timeout = match t_v {
        None | Some(Value::Null) => Duration::from_secs(5),
        Some(v) => parse_duration(v).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                format!("invalid_argument: invalid timeout {v}"),
            )
        })?,
    };
    Ok((sig, timeout.min(Duration::from_secs(300))))
}

async fn start_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "start", &id).await?;
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    let prev = m.state.clone();
    let (cpus, mem) = (m.cpus, m.memory_mb);
    let region = m.region.clone();
    let launching = m.launching;
    let pre = |s: String| {
        err(
            StatusCode::PRECONDITION_FAILED,
            format!("failed_precondition: {s}"),
        )
    };
    match prev.as_str() {
        "created" if launching => {
            return Err(pre(
                "unable to start machine from current state: 'created'".into()
            ));
        }
        "created" | "stopped" | "failed" => {
            if !fits(&ctx, &w, &region, cpus, mem) {
                return Err(err(
                    StatusCode::CONFLICT,
                    "aborted: could not reserve resource for machine: insufficient memory available to fulfill request",
                ));
            }
            let m = w.machines.get_mut(&id).expect("looked up above");
            m.op_seq += 1;
            m.restart_count = 0;
            let seq = m.op_seq;
            w.set_state(&id, "starting");
            schedule_start(
                &ctx.shared,
                &id,
                seq,
                ctx.shared.settings.latencies.start,
                false,
            );
        }
        "suspended" => {
            let m = w.machines.get_mut(&id).expect("looked up above");
            m.op_seq += 1;
            let seq = m.op_seq;
            w.set_state(&id, "starting");
            schedule_start(
                &ctx.shared,
                &id,
                seq,
                ctx.shared.settings.latencies.resume,
                true,
            );
        }
        "replacing" => return Err(pre("machine getting replaced, refusing to start".into())),
        "started" | "starting" => {
            return Err(pre("machine still active, refusing to start".into()));
        }
        other => {
            return Err(pre(format!(
                "unable to start machine from current state: '{other}'"
            )));
        }
    }
    drop(w);
    ctx.shared.notify();
    ok_json(json!({"previous_state": prev, "migrated": false, "new_host": ""}))
}

async fn stop_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "stop", &id).await?;
    let body = parse_body(&body)?;
    check_types("StopRequest", &body).map_err(invalid)?;
    if let Some(sig) = body
        .get("signal")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && !STOP_SIGNALS.contains(&sig)
    {
        // Fly's text is unknown; the spec's enum is what it accepts.
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid_argument: invalid signal '{sig}', must be one of {}",
                STOP_SIGNALS.join(", ")
            ),
        ));
    }
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    let (sig, timeout) = stop_settings(m, &body)?;
    let auto_destroy = m
        .config
        .get("auto_destroy")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if m.proc.is_some() {
        let first = m.state != "stopping";
        if first {
            m.event("stop", "stopping", "user", json!({}));
        }
        // Before the state change: stop_process treats a suspended machine specially.
        stop_process(&ctx.shared, &mut w, &id, sig, timeout, Pending::Stop);
        if first {
            w.set_state(&id, "stopping");
        }
    } else if m.state != "stopped" {
        // No process (created, still launching, failed): nothing to signal.
        m.op_seq += 1;
        m.launching = false;
        if auto_destroy {
            finish_destroy(&mut w, &id);
        } else {
            w.set_state(&id, "stopped");
        }
    }
    drop(w);
    ctx.shared.notify();
    ok_json(json!({"ok": true}))
}

/// X1: `?signal=&timeout=` (fly-go also sends `force_stop`, ignored): stop, then a fresh process
/// of the same version.
async fn restart_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "restart", &id).await?;
    let pairs = query_pairs(&q);
    let mut body = json!({});
    if let Some(sig) = query_one(&pairs, "signal").filter(|s| !s.is_empty()) {
        body["signal"] = json!(sig);
    }
    if let Some(t) = query_one(&pairs, "timeout").filter(|s| !s.is_empty()) {
        body["timeout"] = json!(t);
    }
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    let (sig, timeout) = stop_settings(m, &body)?;
    if m.proc.is_none() || m.state != "started" {
        return Err(err(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "failed_precondition: unable to restart machine from current state: '{}'",
                m.state
            ),
        ));
    }
    m.event("restart", "restarting", "user", json!({}));
    stop_process(&ctx.shared, &mut w, &id, sig, timeout, Pending::Replace);
    w.set_state(&id, "restarting");
    drop(w);
    ctx.shared.notify();
    ok_json(json!({"ok": true}))
}

/// Most memory a machine may have to be suspended (machines-api.md M8, D-SUSP: 2 GB).
const SUSPEND_MAX_MEMORY_MB: u64 = 2048;

/// Fly refuses to suspend a machine with more than 2 GB of memory, with swap, or with a
/// schedule (D-SUSP). Status and words are ours: Fly's are not documented.
fn suspendable(m: &MachineRec) -> Result<(), ApiError> {
    let refuse = |why: String| {
        err(
            StatusCode::PRECONDITION_FAILED,
            format!("failed_precondition: machine cannot be suspended: {why}"),
        )
    };
    if m.memory_mb > SUSPEND_MAX_MEMORY_MB {
        return Err(refuse(format!(
            "{} MB of memory is above the {SUSPEND_MAX_MEMORY_MB} MB suspend limit",
            m.memory_mb
        )));
    }
    if m.config
        .pointer("/init/swap_size_mb")
        .and_then(Value::as_i64)
        .is_some_and(|s| s > 0)
    {
        return Err(refuse("it has swap (init.swap_size_mb)".into()));
    }
    if m.config
        .get("schedule")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(refuse("it has a schedule".into()));
    }
    Ok(())
}

async fn suspend_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "suspend", &id).await?;
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    if m.state != "suspended" {
        suspendable(m)?;
    }
    match (m.state.as_str(), m.proc) {
        ("started", Some(p)) => {
            crate::process::signal_group(p.pid, Signal::SIGSTOP);
            m.op_seq += 1;
            m.event("suspend", "suspended", "user", json!({}));
            w.set_state(&id, "suspended");
        }
        ("suspended", _) => {}
        (s, _) => {
            return Err(err(
                StatusCode::PRECONDITION_FAILED,
                format!("failed_precondition: unable to suspend machine from current state: '{s}'"),
            ));
        }
    }
    drop(w);
    ctx.shared.notify();
    ok_json(json!({"ok": true}))
}

async fn destroy_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "destroy", &id).await?;
    let pairs = query_pairs(&q);
    // The docs and spec say `force`; fly-go sends `kill` (machines-api.md §2 M5).
    let force = truthy(query_one(&pairs, "force")) || truthy(query_one(&pairs, "kill"));
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    if !force && matches!(m.state.as_str(), "started" | "starting" | "replacing") {
        return Err(err(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "failed_precondition: unable to destroy machine from current state: '{}', stop it first or use force",
                m.state
            ),
        ));
    }
    if m.proc.is_some() {
        w.set_state(&id, "destroying");
        stop_process(
            &ctx.shared,
            &mut w,
            &id,
            Signal::SIGKILL,
            Duration::ZERO,
            Pending::Destroy,
        );
    } else {
        finish_destroy(&mut w, &id);
    }
    drop(w);
    ctx.shared.notify();
    ok_json(json!({"ok": true}))
}

/// States `wait` accepts (machines-api.md §4.4).
const WAIT_STATES: &[&str] = &[
    "started",
    "stopped",
    "suspended",
    "destroyed",
    "failed",
    "settled",
];

fn reached(wanted: &[String], state: &str) -> bool {
    wanted.iter().any(|w| {
        w == state
            || (w == "settled"
                && matches!(
                    state,
                    "created" | "started" | "stopped" | "suspended" | "failed" | "destroyed"
                ))
    })
}

async fn wait_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "wait", &id).await?;
    valid_id(&id)?;
    let pairs = query_pairs(&q);
    let mut wanted: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "state")
        .flat_map(|(_, v)| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if wanted.is_empty() {
        wanted.push("started".into());
    }
    if let Some(bad) = wanted.iter().find(|s| !WAIT_STATES.contains(&s.as_str())) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("invalid_argument: invalid state '{bad}'"),
        ));
    }
    // Integer seconds (default 60); the server blocks for at most 60 s.
    let timeout = match query_one(&pairs, "timeout") {
        None | Some("") => 60,
        Some(t) => t
            .parse::<u64>()
            .ok()
            .or_else(|| humantime::parse_duration(t).ok().map(|d| d.as_secs()))
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("invalid_argument: invalid timeout '{t}'"),
                )
            })?,
    }
    .clamp(1, 60);
    // `version` (`instance_id` is its deprecated alias): the caller waits on that config
    // version. Once an update replaced it, that version is `replaced` and never reaches the
    // wanted state (machines-api.md §4.4: such waits fail "currently replaced").
    let version = query_one(&pairs, "version")
        .or_else(|| query_one(&pairs, "instance_id"))
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    // `from_event_id`: only what happened after that event counts.
    // The docs require a version to wait for `stopped` (machines-api.md §4.4; observed as 400
    // in 2026-02). Fly's words are not known.
    if version.is_none() && wanted.iter().any(|s| s == "stopped") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: waiting for state 'stopped' requires the machine version (version or instance_id)",
        ));
    }
    let from_event = query_one(&pairs, "from_event_id")
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut rx = ctx.shared.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let current = {
            let mut w = ctx.shared.world();
            let found = machine(&ctx, &mut w, &app, &id).map(|m| {
                let event_id = m
                    .events
                    .last()
                    .and_then(|e| e.get("id"))
                    .cloned()
                    .unwrap_or(json!(""));
                let after_from = from_event.as_ref().is_none_or(|f| {
                    m.events
                        .last()
                        .and_then(|e| e.get("id"))
                        .and_then(|v| v.as_str())
                        != Some(f.as_str())
                });
                let state = match &version {
                    Some(v) if *v != m.instance_id => "replaced".to_string(),
                    _ => m.state.clone(),
                };
                (state, m.instance_id.clone(), event_id, after_from)
            });
            match found {
                Ok((state, version, event_id, after_from)) => {
                    if after_from && reached(&wanted, &state) {
                        return ok_json(
                            json!({"ok": true, "state": state, "version": version, "event_id": event_id}),
                        );
                    }
                    state
                }
                // A machine that is gone counts as destroyed (flyctl treats 404 so).
                Err(_)
                    if wanted.iter().any(|s| s == "destroyed")
                        && w.machines.get(&id).is_some_and(|m| m.app == app) =>
                {
                    let version = w.machines[&id].instance_id.clone();
                    return ok_json(
                        json!({"ok": true, "state": "destroyed", "version": version, "event_id": ""}),
                    );
                }
                Err(e) => return Err(e),
            }
        };
        let now = tokio::time::Instant::now();
        if now >= deadline
            || tokio::time::timeout(deadline - now, rx.changed())
                .await
                .is_err()
        {
            // Re-check once at the deadline? No: the last check above was after the last change.
            return Err(err(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "deadline_exceeded: machine failed to reach desired state, {}, currently {current}",
                    wanted.join(",")
                ),
            ));
        }
    }
}

async fn machine_events(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "events", &id).await?;
    let pairs = query_pairs(&q);
    let limit = query_one(&pairs, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 50);
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    ok_json(Value::Array(
        m.events.iter().rev().take(limit).cloned().collect(),
    ))
}

// ---------------------------------------------------------------- leases

/// The lease wire format: the real API wraps it in `{status, data}` (machines-api.md §2 L1,
/// §3.5); the spec's bare `Lease` is wrong about this.
fn lease_envelope(l: &LeaseRec) -> Value {
    let expires = l
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({"status": "success", "data": {
        "nonce": l.nonce, "expires_at": expires, "owner": l.owner, "description": l.description, "version": l.version,
    }})
}

async fn acquire_lease(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let owner = preflight(&ctx, &headers, &app, "lease", &id).await?;
    let body = parse_body(&body)?;
    check_types("CreateLeaseRequest", &body).map_err(invalid)?;
    let pairs = query_pairs(&q);
    // TTL from the body (spec) or the query string (fly-go).
    let query_ttl = query_one(&pairs, "ttl").map(|t| {
        t.parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(t))
    });
    let ttl = match lease_ttl_s(body.get("ttl"), "ttl")? {
        Some(t) => Some(t),
        None => lease_ttl_s(query_ttl.as_ref(), "ttl")?,
    }
    .unwrap_or(ctx.shared.settings.default_lease_ttl);
    let description = body
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let given = headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    let expires_at = SystemTime::now() + ttl;
    let version = m.instance_id.clone();
    match m.active_lease().cloned() {
        Some(l) if given.as_deref() == Some(l.nonce.as_str()) => {
            // Refresh: same nonce, later expiry.
            let lease = m.lease.as_mut().expect("active lease exists");
            lease.expires_at = expires_at;
            lease.version = version;
            if !description.is_empty() {
                lease.description = description;
            }
        }
        Some(l) => return Err(lease_conflict(m, &l)),
        None => {
            m.lease = Some(LeaseRec {
                nonce: hex_id(12),
                owner,
                description,
                expires_at,
                version,
            });
        }
    }
    let v = lease_envelope(m.lease.as_ref().expect("just set"));
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// A lease TTL in seconds: absent, null or 0 = none given; otherwise 1..=[`MAX_LEASE_TTL_S`].
fn lease_ttl_s(v: Option<&Value>, name: &str) -> Result<Option<Duration>, ApiError> {
    let bad = |got: &Value| {
        err(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid_argument: {name} must be a whole number of seconds from 1 to {MAX_LEASE_TTL_S}, got {got}"
            ),
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(0) => Ok(None),
            Some(t) if (1..=MAX_LEASE_TTL_S as i64).contains(&t) => {
                Ok(Some(Duration::from_secs(t as u64)))
            }
            _ => Err(bad(v)),
        },
    }
}

async fn get_lease(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "get_lease", &id).await?;
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    match m.active_lease() {
        Some(l) => ok_json(lease_envelope(l)),
        None => Err(err(StatusCode::NOT_FOUND, "lease not found")),
    }
}

async fn release_lease(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "release_lease", &id).await?;
    let Some(given) = headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
    else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("invalid_argument: missing {LEASE_HEADER} header"),
        ));
    };
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    match m.active_lease().cloned() {
        Some(l) if l.nonce == given => {
            m.lease = None;
            ok_json(json!({"status": "success", "data": {"ok": true}}))
        }
        Some(l) => Err(lease_conflict(m, &l)),
        None => Err(err(StatusCode::NOT_FOUND, "lease not found")),
    }
}

// ---------------------------------------------------------------- metadata

/// Metadata lives in `config.metadata`; changing it makes no new version (machines-api.md §4.2).
fn metadata_mut(m: &mut MachineRec) -> &mut Map<String, Value> {
    if !m.config.get("metadata").is_some_and(Value::is_object) {
        m.config["metadata"] = json!({});
    }
    m.config["metadata"]
        .as_object_mut()
        .expect("set to an object above")
}

async fn get_metadata(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "get_metadata", &id).await?;
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    ok_json(
        m.config
            .get("metadata")
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or(json!({})),
    )
}

async fn get_metadata_key(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "get_metadata", &id).await?;
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    match m.config.get("metadata").and_then(|md| md.get(&key)) {
        Some(v) => ok_json(json!({"value": v})),
        None => Err(err(
            StatusCode::NOT_FOUND,
            format!("not_found: metadata key '{key}' not found"),
        )),
    }
}

async fn set_metadata_key(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id, key)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "metadata", &id).await?;
    let body = parse_body(&body)?;
    check_types("upsertMetadataKeyRequest", &body).map_err(invalid)?;
    let Some(value) = body.get("value").and_then(Value::as_str) else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: value is required",
        ));
    };
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    metadata_mut(m).insert(key, json!(value));
    m.updated_at = SystemTime::now();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_metadata_key(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "metadata", &id).await?;
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    metadata_mut(m).remove(&key);
    m.updated_at = SystemTime::now();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// MD5: `{metadata:{k:v}, machine_version?}`; a null or empty value removes the key.
async fn bulk_metadata(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "metadata", &id).await?;
    let body = parse_body(&body)?;
    check_types("updateMetadataRequest", &body).map_err(invalid)?;
    let Some(md) = body.get("metadata").and_then(Value::as_object).cloned() else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: metadata is required",
        ));
    };
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    if let Some(v) = body
        .get("machine_version")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        && v != m.instance_id
    {
        return Err(err(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition: machine version mismatch",
        ));
    }
    let target = metadata_mut(m);
    for (k, v) in md {
        match v.as_str() {
            Some(s) if !s.is_empty() => {
                target.insert(k, json!(s));
            }
            _ => {
                target.remove(&k);
            }
        }
    }
    m.updated_at = SystemTime::now();
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- emulator-only

async fn ledger(State(ctx): State<Ctx>) -> ApiResult {
    let w = ctx.shared.world();
    ok_json(serde_json::to_value(Ledger::from_world(&w)).unwrap_or(json!({})))
}

async fn logs(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    // Logs may contain what machines print about their env: same auth as the API.
    authorize(&ctx, &headers, Some(&app))?;
    let w = ctx.shared.world();
    let Some(m) = w.machines.get(&id).filter(|m| m.app == app) else {
        return Err(err(StatusCode::NOT_FOUND, "machine not found"));
    };
    let bytes = m.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        bytes,
    )
        .into_response())
}

// ---------------------------------------------------------------- signal, cordon, versions, exec

/// Signals `signal` accepts (the spec's `SignalRequest` enum).
const SIGNALS: &[&str] = &[
    "SIGABRT", "SIGALRM", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGKILL", "SIGPIPE", "SIGQUIT",
    "SIGSEGV", "SIGTERM", "SIGTRAP", "SIGUSR1", "SIGUSR2",
];

/// X3: the signal goes to the machine's main process, like `stop`'s (the init forwards it).
/// Not lease-guarded (fly-go sends no nonce). A machine not running is 412 (our words).
async fn signal_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "signal", &id).await?;
    let body = parse_body(&body)?;
    check_types("SignalRequest", &body).map_err(invalid)?;
    let name = body.get("signal").and_then(Value::as_str).unwrap_or("");
    if !SIGNALS.contains(&name) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid_argument: invalid signal '{name}', must be one of {}",
                SIGNALS.join(", ")
            ),
        ));
    }
    let sig = parse_signal(name).ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            format!("invalid_argument: invalid signal '{name}'"),
        )
    })?;
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    match (m.state.as_str(), m.proc) {
        ("started", Some(p)) => signal_process(p.pid, sig),
        (state, _) => {
            return Err(err(
                StatusCode::PRECONDITION_FAILED,
                format!("failed_precondition: unable to signal machine in state '{state}'"),
            ));
        }
    }
    ok_json(json!({"ok": true}))
}

/// X2: cordon/uncordon flip whether Fly Proxy would route to the machine (`cordoned`); the
/// emulator has no proxy, so that is all they do. Lease-guarded (fly-go sends the nonce).
async fn set_cordon(
    ctx: Ctx,
    headers: HeaderMap,
    app: String,
    id: String,
    cordoned: bool,
) -> ApiResult {
    let action = if cordoned { "cordon" } else { "uncordon" };
    preflight(&ctx, &headers, &app, action, &id).await?;
    let mut w = ctx.shared.world();
    let m = live_machine(&ctx, &mut w, &app, &id)?;
    check_lease(m, &headers)?;
    m.cordoned = cordoned;
    m.updated_at = SystemTime::now();
    ok_json(json!({"ok": true}))
}

async fn cordon_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    set_cordon(ctx, headers, app, id, true).await
}

async fn uncordon_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    set_cordon(ctx, headers, app, id, false).await
}

/// X5: every config version of the machine, newest first: `[{version, user_config}]`.
async fn machine_versions(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "versions", &id).await?;
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    ok_json(Value::Array(
        m.versions
            .iter()
            .rev()
            .map(|(v, c)| json!({"version": v, "user_config": c}))
            .collect(),
    ))
}

/// Default and longest run time of an exec, in seconds (Fly's are not documented).
const EXEC_DEFAULT_TIMEOUT_S: u64 = 30;
const EXEC_MAX_TIMEOUT_S: u64 = 300;

/// X4: runs `command` (or the deprecated `cmd` string, split like a shell) in the machine's
/// directory with its environment, feeding `stdin`, and answers Fly's `ExecResponse`
/// `{exit_code, exit_signal, stdout, stderr}`. Needs a started machine (412) and, like Fly, is
/// refused while someone else holds the lease (409). Past `timeout` the command is killed and
/// the answer is 408 `deadline_exceeded`.
async fn exec_machine(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    preflight(&ctx, &headers, &app, "exec", &id).await?;
    let body = parse_body(&body)?;
    check_types("MachineExecRequest", &body).map_err(invalid)?;
    let mut argv: Vec<String> = body
        .get("command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if argv.is_empty()
        && let Some(cmd) = body.get("cmd").and_then(Value::as_str)
    {
        argv = crate::settings::split_words(cmd).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                format!("invalid_argument: cmd: {e}"),
            )
        })?;
    }
    if argv.is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_argument: command is required",
        ));
    }
    let timeout = match body.get("timeout").and_then(Value::as_i64) {
        None | Some(0) => EXEC_DEFAULT_TIMEOUT_S,
        Some(t) if (1..=EXEC_MAX_TIMEOUT_S as i64).contains(&t) => t as u64,
        Some(t) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid_argument: timeout must be from 1 to {EXEC_MAX_TIMEOUT_S} seconds, got {t}"
                ),
            ));
        }
    };
    let stdin = body
        .get("stdin")
        .and_then(Value::as_str)
        .map(|s| s.as_bytes().to_vec());
    let spec = {
        let mut w = ctx.shared.world();
        let m = live_machine(&ctx, &mut w, &app, &id)?;
        check_lease(m, &headers)?;
        if m.state != "started" || m.proc.is_none() {
            return Err(err(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "failed_precondition: unable to exec on machine in state '{}'",
                    m.state
                ),
            ));
        }
        let mut spec = proc_spec(&ctx.shared, &w, &id).map_err(|e| {
            err(
                StatusCode::PRECONDITION_FAILED,
                format!("failed_precondition: {e}"),
            )
        })?;
        spec.argv = argv;
        spec.stdin = stdin.is_some();
        spec
    };
    let mut child = ctx.shared.spawner.spawn(spec).await.map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("invalid_argument: cannot run the command: {e}"),
        )
    })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
        use tokio::io::AsyncWriteExt;
        // A command that does not read its stdin must not block us: ignore write errors.
        let _ = pipe.write_all(&input).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(timeout), child.wait_with_output()).await;
    // The command's own children go with it, as in a machine's exec session.
    signal_group(pid, Signal::SIGKILL);
    ctx.shared.spawner.forget(pid);
    let out = match out {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal: exec failed: {e}"),
            ));
        }
        Err(_) => {
            return Err(err(
                StatusCode::REQUEST_TIMEOUT,
                format!("deadline_exceeded: command did not finish within {timeout}s"),
            ));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => (c, 0),
        (None, Some(sg)) => (128 + sg, sg),
        _ => (-1, 0),
    };
    ok_json(json!({
        "exit_code": code,
        "exit_signal": signal,
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
    }))
}

/// Test route (settings `test_routes`): panics while holding the world lock and the machine,
/// to prove the panic guard answers 500 and leaves the machine usable.
async fn panic_route(State(ctx): State<Ctx>, Path((app, id)): Path<(String, String)>) -> ApiResult {
    let mut w = ctx.shared.world();
    let m = machine(&ctx, &mut w, &app, &id)?;
    m.updated_at = SystemTime::now();
    panic!("test route: panicking while holding machine {}", m.id);
}
