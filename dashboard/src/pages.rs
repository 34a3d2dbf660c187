//! The pages. Every value from the store or the Machines API goes through maud's escaping.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use flyjobs::job::{Job, JobId, JobState};
use flyjobs::store::JobFilter;
use flyjobs::{Client, ErrorKind};
use maud::{DOCTYPE, Markup, html};

use crate::chart::{self, Series};
use crate::security::CSRF_FIELD;

/// Jobs per page.
const PAGE: usize = 50;
/// Minutes the overview's charts cover.
const WINDOW_MIN: usize = 60;
/// Most finished jobs the charts read (a busier hour is sampled by its newest jobs).
const CHART_JOBS: usize = 20_000;

/// The overview charts' x axis.
const LAST_HOUR: chart::Axis<'static> = chart::Axis {
    from: "60 min ago",
    empty: "no finished jobs in this window",
};

/// What every page needs to draw links and forms.
pub(crate) struct Ctx<'a> {
    pub mount: &'a str,
    pub csrf: &'a str,
    pub read_only: bool,
}

impl Ctx<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.mount, path)
    }
}

/// A page that could not be drawn: its status and why.
#[derive(Debug)]
pub(crate) struct PageError {
    pub status: u16,
    pub message: String,
}

impl PageError {
    pub fn not_found(message: String) -> PageError {
        PageError {
            status: 404,
            message,
        }
    }
}

impl From<flyjobs::Error> for PageError {
    fn from(e: flyjobs::Error) -> PageError {
        let status = match e.kind() {
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Invalid => 400,
            _ => 500,
        };
        PageError {
            status,
            message: e.to_string(),
        }
    }
}

type Page = Result<Markup, PageError>;

const NAV: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/jobs", "Jobs"),
    ("/scheduled", "Scheduled"),
    ("/dead", "Dead"),
    ("/machines", "Machines"),
    ("/cost", "Cost"),
    ("/boot_failures", "Boot failures"),
];

fn layout(ctx: &Ctx, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · flyjobs" }
                link rel="stylesheet" href=(ctx.url("/assets/style.css"));
                // No favicon request to the app (which may not serve one under the mount).
                link rel="icon" href="data:,";
                script src=(ctx.url("/assets/app.js")) defer {}
            }
            body {
                header {
                    a.brand href=(ctx.url("/")) { "flyjobs" }
                    nav {
                        @for (path, label) in NAV {
                            a.on[path == active] href=(ctx.url(path)) { (label) }
                        }
                    }
                    span.mode { @if ctx.read_only { "read-only" } }
                }
                main { (body) }
            }
        }
    }
}

/// A one-button form posting to `path` (nothing in read-only mode).
fn action(
    ctx: &Ctx,
    path: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
    return_to: &str,
) -> Markup {
    if ctx.read_only {
        return html! {};
    }
    html! {
        form.inline method="post" action=(ctx.url(path)) data-confirm=[confirm] {
            input type="hidden" name=(CSRF_FIELD) value=(ctx.csrf);
            input type="hidden" name="return_to" value=(return_to);
            button class=(class) type="submit" { (label) }
        }
    }
}

fn time(t: DateTime<Utc>) -> Markup {
    let now = Utc::now();
    let secs = (now - t).num_seconds();
    let rel = match secs {
        s if s.abs() < 60 => format!("{}s", s.abs()),
        s if s.abs() < 3600 => format!("{}m", s.abs() / 60),
        s if s.abs() < 86_400 => format!("{}h", s.abs() / 3600),
        s => format!("{}d", s.abs() / 86_400),
    };
    let rel = if secs >= 0 {
        format!("{rel} ago")
    } else {
        format!("in {rel}")
    };
    html! { time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) { (rel) } }
}

/// How long since `since`, as "3m 12s" / "2h 5m" / "4d 1h".
fn uptime(since: DateTime<Utc>) -> Markup {
    let s = (Utc::now() - since).num_seconds().max(0);
    let text = match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    };
    html! { time datetime=(since.to_rfc3339()) title=(since.format("since %Y-%m-%d %H:%M:%S UTC")) { (text) } }
}

fn state_badge(s: JobState) -> Markup {
    html! { span class=(format!("state state-{s}")) { (s) } }
}

pub(crate) fn error_page(ctx: &Ctx, e: &PageError) -> Markup {
    layout(
        ctx,
        "Error",
        "",
        html! {
            h1 { "Error " (e.status) }
            p.notice { (e.message) }
            p { a href=(ctx.url("/")) { "Back to the overview" } }
        },
    )
}

// ---- overview -------------------------------------------------------------------------------

pub(crate) async fn overview(client: &Client, ctx: &Ctx<'_>) -> Page {
    let stats = client.stats().await?;
    let workers = client.workers().await?;
    // A Machines API that cannot be reached must not take the whole page down.
    let (machines, machines_error) = match client.machines().await {
        Ok(m) => (m, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let failures = client.boot_failures(0).await?;
    let open_failures = failures.iter().filter(|f| !f.cleared).count();
    let now = Utc::now();
    let since = now - chrono::Duration::minutes(WINDOW_MIN as i64);
    let finished = client.finished_since(since, CHART_JOBS).await?;
    let (throughput, latency) = activity(&finished, now);
    let today = client
        .usage(flyjobs::cost::today_utc(now))
        .await?
        .per_queue();
    // Queues past their daily budget: the scaler boots nothing for them until midnight UTC.
    let over_budget: Vec<(String, String)> = stats
        .iter()
        .filter_map(|s| {
            let budget = client.config().queue(&s.queue).budget?;
            let why = budget.exhausted(&today.get(&s.queue).copied().unwrap_or_default())?;
            Some((s.queue.clone(), why))
        })
        .collect();

    let mut by_queue: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for m in &machines {
        *by_queue
            .entry(m.queue.clone().unwrap_or_else(|| "?".into()))
            .or_default()
            .entry(m.state.clone())
            .or_default() += 1;
    }
    let body = html! {
        h1 { "Overview" }
        label.muted { input type="checkbox" data-live; " refresh every 5 s" }
        @if open_failures > 0 {
            p.notice {
                (open_failures) " machine boot failure(s) recorded: "
                a href=(ctx.url("/boot_failures")) { "see why" }
            }
        }
        @for (q, why) in &over_budget {
            p.notice { "Queue " strong { (q) } " is " (why) ": no machine is booted for it until midnight UTC; its jobs wait." }
        }
        h2 { "Queues" }
        table {
            thead { tr {
                th { "Queue" } th.num { "Ready" } th.num { "Scheduled" } th.num { "Running" }
                th.num { "Dead" } th.num { "Completed" } th { "Oldest ready" } th { "Machines" }
                th.num { "Cost today" }
            } }
            tbody {
                @if stats.is_empty() { tr { td colspan="9" .muted { "No jobs yet." } } }
                @for s in &stats {
                    tr {
                        td { a href=(ctx.url(&format!("/jobs?queue={}", url_enc(&s.queue)))) { (s.queue) } }
                        td.num { (s.ready) }
                        td.num { a href=(ctx.url(&format!("/scheduled?queue={}", url_enc(&s.queue)))) { (s.scheduled) } }
                        td.num { (s.running) }
                        td.num { a href=(ctx.url(&format!("/dead?queue={}", url_enc(&s.queue)))) { (s.dead) } }
                        td.num { (s.completed) }
                        td { @if let Some(age) = s.oldest_ready_age { (humanize(age)) } @else { span.muted { "—" } } }
                        td {
                            @match by_queue.get(&s.queue) {
                                Some(states) => { @for (st, n) in states { (n) " " (st) " " } }
                                None => span.muted { "none" },
                            }
                        }
                        td.num {
                            (usd(today.get(&s.queue).map_or(0.0, |t| t.1)))
                            @if let Some(b) = client.config().queue(&s.queue).budget { span.muted { " of " (b) } }
                        }
                    }
                }
            }
        }
        h2 { "Last hour" }
        div.charts {
            (chart::line_chart("Jobs finished per minute", "", WINDOW_MIN, &LAST_HOUR, &throughput))
            (chart::line_chart("Enqueue → start latency (p50 per minute)", " ms", WINDOW_MIN, &LAST_HOUR, &latency))
        }
        h2 { "Workers" }
        @if let Some(e) = machines_error { p.notice { "Machines API: " (e) } }
        table {
            thead { tr { th { "Worker" } th { "Queues" } th { "State" } th.num { "Running" } th.num { "Slots" } th { "Started" } th { "Heartbeat" } } }
            tbody {
                @if workers.is_empty() { tr { td colspan="7" .muted { "No worker is registered." } } }
                @for w in &workers {
                    tr {
                        td { code { (w.id) } }
                        td { (w.queues.join(", ")) }
                        td { (format!("{:?}", w.state).to_lowercase()) }
                        td.num { (w.running) }
                        td.num { (w.concurrency) }
                        td { (time(w.started_at)) }
                        td { (time(w.last_heartbeat_at)) }
                    }
                }
            }
        }
    };
    Ok(layout(ctx, "Overview", "/", body))
}

/// Jobs finished per minute per queue, and the enqueue→start latency's median per minute.
fn activity(finished: &[Job], now: DateTime<Utc>) -> (Vec<Series>, Vec<Series>) {
    let bucket = |t: DateTime<Utc>| -> Option<usize> {
        let ago = (now - t).num_seconds();
        (0..(WINDOW_MIN as i64 * 60))
            .contains(&ago)
            .then(|| WINDOW_MIN - 1 - (ago / 60) as usize)
    };
    let queues: BTreeSet<&str> = finished.iter().map(|j| j.queue.as_str()).collect();
    let mut counts: BTreeMap<&str, Vec<f64>> =
        queues.iter().map(|q| (*q, vec![0.0; WINDOW_MIN])).collect();
    let mut waits: Vec<Vec<f64>> = vec![Vec::new(); WINDOW_MIN];
    for j in finished {
        let Some(at) = j.finished_at else { continue };
        let Some(b) = bucket(at) else { continue };
        if let Some(c) = counts.get_mut(j.queue.as_str()) {
            c[b] += 1.0;
        }
        if let Some(started) = j.started_at {
            let ready = j.run_at.max(j.created_at);
            let ms = (started - ready).num_milliseconds().max(0) as f64;
            waits[b].push(ms);
        }
    }
    let throughput = counts
        .into_iter()
        .map(|(q, v)| Series {
            label: q.to_owned(),
            values: v.into_iter().map(Some).collect(),
        })
        .collect();
    let latency = if waits.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        vec![Series {
            label: "p50, all queues".into(),
            values: waits
                .into_iter()
                .map(|mut w| {
                    (!w.is_empty()).then(|| {
                        w.sort_by(f64::total_cmp);
                        w[w.len() / 2]
                    })
                })
                .collect(),
        }]
    };
    (throughput, latency)
}

fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn url_enc(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

// ---- job lists ------------------------------------------------------------------------------

pub(crate) async fn jobs(
    client: &Client,
    ctx: &Ctx<'_>,
    q: &BTreeMap<String, String>,
    fixed: Option<JobState>,
) -> Page {
    let param = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let state = match fixed {
        Some(s) => Some(s),
        None => param("state")
            .map(|s| {
                s.parse::<JobState>().map_err(|_| PageError {
                    status: 400,
                    message: format!("unknown state {s:?}"),
                })
            })
            .transpose()?,
    };
    let after = param("after")
        .and_then(|a| a.parse::<i64>().ok())
        .map(JobId);
    let filter = JobFilter {
        state,
        queue: param("queue").map(str::to_owned),
        name: param("name").map(str::to_owned),
        after_id: after,
        limit: PAGE,
    };
    let list = client.jobs(filter).await?;
    let (title, active) = match fixed {
        Some(JobState::Dead) => ("Dead jobs", "/dead"),
        Some(JobState::Scheduled) => ("Scheduled jobs", "/scheduled"),
        _ => ("Jobs", "/jobs"),
    };
    let base = ctx.url(active);
    let here = {
        let mut s = base.clone();
        if !q.is_empty() {
            s.push('?');
            s.push_str(&serde_urlencoded::to_string(q).unwrap_or_default());
        }
        s
    };
    let next = list.last().filter(|_| list.len() == PAGE).map(|last| {
        let mut next = q.clone();
        next.insert("after".into(), last.id.0.to_string());
        format!(
            "{base}?{}",
            serde_urlencoded::to_string(&next).unwrap_or_default()
        )
    });
    let queue_value = param("queue").unwrap_or("");
    let body = html! {
        h1 { (title) }
        form.filters method="get" action=(base) {
            label { "Queue" input name="queue" value=(queue_value); }
            @if fixed.is_none() {
                label { "State"
                    select name="state" {
                        option value="" { "any" }
                        @for s in JobState::ALL {
                            option value=(s) selected[state == Some(s)] { (s) }
                        }
                    }
                }
            }
            label { "Class" input name="name" value=(param("name").unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        @if fixed == Some(JobState::Dead) && !ctx.read_only && !list.is_empty() {
            p {
                @for (verb, label, class) in [("retry_all", "Retry all", "primary"), ("discard_all", "Discard all", "danger")] {
                    form.inline method="post" action=(ctx.url(&format!("/dead/{verb}")))
                        data-confirm=(format!("{label} dead jobs{}?", if queue_value.is_empty() { String::new() } else { format!(" of {queue_value}") })) {
                        input type="hidden" name=(CSRF_FIELD) value=(ctx.csrf);
                        input type="hidden" name="queue" value=(queue_value);
                        button class=(class) type="submit" { (label) @if !queue_value.is_empty() { " (" (queue_value) ")" } }
                    }
                    " "
                }
            }
        }
        table {
            thead { tr {
                th.num { "Id" } th { "Class" } th { "Queue" } th { "State" } th.num { "Attempts" }
                th { @if fixed == Some(JobState::Scheduled) { "Runs" } @else { "Run at" } }
                th { "Last error" } th {}
            } }
            tbody {
                @if list.is_empty() { tr { td colspan="8" .muted { "No jobs." } } }
                @for j in &list {
                    tr {
                        td.num { a href=(ctx.url(&format!("/jobs/{}", j.id.0))) { (j.id.0) } }
                        td { (j.name) }
                        td { (j.queue) }
                        td { (state_badge(j.state)) }
                        td.num { (j.attempts) @if let Some(m) = j.max_attempts { " / " (m) } }
                        td { (time(j.run_at)) }
                        td { @if let Some(e) = &j.last_error { code { (e.class) } ": " (truncate(&e.message, 120)) } }
                        td { (row_actions(ctx, j, &here)) }
                    }
                }
            }
        }
        @if let Some(next) = next { p.pager { a href=(next) { "Next page →" } } }
    };
    Ok(layout(ctx, title, active, body))
}

fn row_actions(ctx: &Ctx, j: &Job, here: &str) -> Markup {
    let id = j.id.0;
    html! {
        @match j.state {
            JobState::Dead | JobState::Discarded => {
                (action(ctx, &format!("/jobs/{id}/retry"), "Retry", "primary", None, here))
                @if j.state == JobState::Dead {
                    " " (action(ctx, &format!("/jobs/{id}/discard"), "Discard", "danger", Some("Discard this job? It will not run again."), here))
                }
            }
            JobState::Scheduled | JobState::Ready => {
                @if j.state == JobState::Scheduled {
                    (action(ctx, &format!("/jobs/{id}/run_now"), "Run now", "primary", None, here)) " "
                }
                (action(ctx, &format!("/jobs/{id}/cancel"), "Cancel", "danger", Some("Cancel this job? It will not run."), here))
            }
            _ => {}
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

// ---- one job --------------------------------------------------------------------------------

pub(crate) async fn job(client: &Client, ctx: &Ctx<'_>, id: i64) -> Page {
    let j = client.job(JobId(id)).await?.ok_or_else(|| {
        PageError::not_found(format!(
            "job {id} not found (finished jobs are pruned after their retention)"
        ))
    })?;
    let here = ctx.url(&format!("/jobs/{id}"));
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let cost = match &j.lease_owner {
        Some(machine) if j.finished_at.is_some() => client
            .usage(Utc::now())
            .await?
            .machines
            .iter()
            .find(|c| &c.machine_id == machine)
            .and_then(|c| {
                let concurrency = client.config().queue(&j.queue).concurrency;
                flyjobs::cost::job_cost(&j, c, concurrency, client.config().prices())
            }),
        _ => None,
    };
    let attempts = client.attempts(JobId(id)).await?;
    let body = html! {
        h1 { "Job " (id) " " (state_badge(j.state)) }
        p { (row_actions(ctx, &j, &here)) }
        dl.facts {
            dt { "Class" } dd { (j.name) }
            dt { "Queue" } dd { a href=(ctx.url(&format!("/jobs?queue={}", url_enc(&j.queue)))) { (j.queue) } }
            dt { "Priority" } dd { (j.priority) }
            dt { "Attempts" } dd { (j.attempts) @if let Some(m) = j.max_attempts { " of " (m) } @else { " (the queue's retry policy decides)" } }
            dt { "Lost leases" } dd { (j.lost_leases) }
            dt { "Enqueued" } dd { (time(j.created_at)) }
            dt { "Run at" } dd { (time(j.run_at)) }
            dt { "Started" } dd { @if let Some(t) = j.started_at { (time(t)) } @else { span.muted { "—" } } }
            dt { "Finished" } dd { @if let Some(t) = j.finished_at { (time(t)) } @else { span.muted { "—" } } }
            dt { "Machine" } dd { @if let Some(o) = &j.lease_owner { code { (o) } } @else { span.muted { "—" } } }
            dt { "Release" } dd { @if let Some(i) = &j.image_ref { code { (i) } } @else { span.muted { "—" } } }
            dt { "Cost" } dd {
                @if let Some(c) = cost { (usd(c)) " " span.muted { "(its share of its machine while it ran)" } }
                @else { span.muted { "—" } }
            }
            @if let Some(k) = &j.unique_key { dt { "Unique key" } dd { code { (k) } } }
        }
        @if let Some(e) = &j.last_error {
            h2 { "Last error" }
            p { code { (e.class) } ": " (e.message) }
            @if !e.backtrace.is_empty() { pre { (e.backtrace.join("\n")) } }
        }
        @if !attempts.is_empty() {
            h2 { "Failed attempts" }
            table.attempts {
                thead { tr { th.num { "#" } th { "Machine" } th { "Started" } th.num { "Ran" } th { "Then" } th { "Error" } } }
                tbody {
                    @for a in &attempts {
                        tr {
                            td.num { (a.attempt) }
                            td { @if let Some(m) = &a.machine { code { (m) } } }
                            td { @if let Some(t) = a.started_at { (time(t)) } }
                            td.num {
                                @if let Some(t) = a.started_at {
                                    (format!("{:.1} s", (a.ended_at - t).as_seconds_f64().max(0.0)))
                                }
                            }
                            td { (state_badge(a.outcome)) }
                            td {
                                code { (a.error.class) } ": " (a.error.message)
                                @if !a.error.backtrace.is_empty() {
                                    details { summary { "backtrace" } pre { (a.error.backtrace.join("\n")) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Arguments" }
        pre { (pretty(&j.payload)) }
        @if let Some(r) = &j.result {
            h2 { "Result" }
            pre { (pretty(r)) }
        }
    };
    Ok(layout(ctx, &format!("Job {id}"), "/jobs", body))
}

// ---- machines and boot failures -------------------------------------------------------------

pub(crate) async fn machines(client: &Client, ctx: &Ctx<'_>) -> Page {
    let list = client.machines().await?;
    let workers = client.workers().await?;
    // Best effort: the figures shown are as of the last count if this one fails.
    let _ = client.record_usage().await;
    let usage = client.usage(Utc::now()).await?;
    let cost: BTreeMap<&str, f64> = usage
        .machines
        .iter()
        .map(|c| (c.machine_id.as_str(), c.cost_usd))
        .collect();
    let running: BTreeMap<&str, u32> = workers.iter().map(|w| (w.id.as_str(), w.running)).collect();
    let body = html! {
        h1 { "Machines" }
        p.muted { "Worker machines as the Machines API reports them." }
        table {
            thead { tr {
                th { "Machine" } th { "State" } th { "Queue" } th { "Region" } th { "Size" }
                th { "Release" } th { "Created" } th { "Up for" } th.num { "Jobs running" } th.num { "Cost so far" }
            } }
            tbody {
                @if list.is_empty() { tr { td colspan="10" .muted { "No worker machines." } } }
                @for m in &list {
                    tr {
                        td { code { (m.id) } }
                        td { (m.state) }
                        td { (m.queue.as_deref().unwrap_or("")) }
                        td { (m.region.as_deref().unwrap_or("")) }
                        td {
                            (m.cpu_kind.as_deref().unwrap_or("")) " "
                            @if let Some(c) = m.cpus { (c) "×" }
                            @if let Some(mem) = m.memory_mb { " " (mem) " MB" }
                        }
                        td { code { (m.release.as_deref().unwrap_or("")) } }
                        td { (m.created_at.as_deref().unwrap_or("")) }
                        td { @if let Some(t) = m.started_at { (uptime(t)) } @else { span.muted { "—" } } }
                        td.num { @if let Some(n) = running.get(m.id.as_str()) { (n) } @else { span.muted { "—" } } }
                        td.num { @if let Some(c) = cost.get(m.id.as_str()) { (usd(*c)) } @else { span.muted { "—" } } }
                    }
                }
            }
        }
    };
    Ok(layout(ctx, "Machines", "/machines", body))
}

pub(crate) async fn boot_failures(client: &Client, ctx: &Ctx<'_>) -> Page {
    let list = client.boot_failures(0).await?;
    let here = ctx.url("/boot_failures");
    let body = html! {
        h1 { "Boot failures" }
        p.muted {
            "Worker machines that exited or hung before their worker registered. After 5 in a row "
            "the scaler stops booting machines for the queue's release until a new release or a reset."
        }
        @if list.iter().any(|f| !f.cleared) {
            p { (action(ctx, "/boot_failures/reset", "Reset all", "primary", Some("Boot machines again for every queue?"), &here)) }
        }
        table {
            thead { tr { th { "When" } th { "Queue" } th { "Machine" } th { "Exit" } th { "Reason" } th { "Log tail" } th {} } }
            tbody {
                @if list.is_empty() { tr { td colspan="7" .muted { "None recorded." } } }
                @for f in &list {
                    tr {
                        td { (time(f.at)) }
                        td { (f.queue) }
                        td { code { (f.machine_id) } }
                        td { @if let Some(c) = f.exit_code { (c) } }
                        td { (f.reason) @if f.cleared { " " span.muted { "(cleared)" } } }
                        td { @if !f.log_tail.is_empty() { pre { (f.log_tail) } } }
                        td {
                            @if !f.cleared && !ctx.read_only {
                                form.inline method="post" action=(ctx.url("/boot_failures/reset")) {
                                    input type="hidden" name=(CSRF_FIELD) value=(ctx.csrf);
                                    input type="hidden" name="queue" value=(f.queue);
                                    button type="submit" { "Reset " (f.queue) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(ctx, "Boot failures", "/boot_failures", body))
}

// ---- cost -----------------------------------------------------------------------------------

/// Dollars, with enough digits for fractions of a cent.
fn usd(v: f64) -> String {
    if v >= 1.0 {
        format!("${v:.2}")
    } else {
        format!("${v:.5}")
    }
}

pub(crate) async fn cost(client: &Client, ctx: &Ctx<'_>) -> Page {
    // Count what happened since the last pass (best effort: the page shows the last count).
    let recorded = client.record_usage().await.err().map(|e| e.to_string());
    let now = Utc::now();
    let midnight = flyjobs::cost::today_utc(now);
    let since = now - chrono::Duration::hours(24);
    let usage = client.usage(since.min(midnight)).await?;
    let today = flyjobs::cost::Usage {
        hours: usage
            .hours
            .iter()
            .filter(|h| h.hour >= midnight)
            .cloned()
            .collect(),
        machines: Vec::new(),
    }
    .per_queue();
    let day = usage.per_queue();
    // cost per hour per queue, over the last 24 hours
    let queues: BTreeSet<&str> = usage.hours.iter().map(|h| h.queue.as_str()).collect();
    let hour0 = since.timestamp() / 3600;
    let series: Vec<Series> = queues
        .iter()
        .map(|q| {
            let mut values = vec![Some(0.0); 24];
            for h in usage.hours.iter().filter(|h| h.queue == *q) {
                let i = h.hour.timestamp() / 3600 - hour0;
                if let Some(v) = usize::try_from(i).ok().and_then(|i| values.get_mut(i)) {
                    *v = Some(v.unwrap_or(0.0) + h.cost_usd * 100.0);
                }
            }
            Series {
                label: (*q).to_owned(),
                values,
            }
        })
        .collect();
    let mut machines = usage.machines.clone();
    machines.sort_by_key(|m| std::cmp::Reverse(m.through_ms));
    machines.truncate(100);
    let body = html! {
        h1 { "Cost" }
        p.muted {
            "Machine time billed by state, from the Machines API's events, at Fly's per-second "
            "prices (CPU and memory while started, the root filesystem while stopped or suspended)."
        }
        @if let Some(e) = recorded { p.notice { "Could not count the latest machine time: " (e) } }
        table {
            thead { tr {
                th { "Queue" } th.num { "Machine-hours today" } th.num { "Cost today (UTC)" }
                th.num { "Machine-hours, 24 h" } th.num { "Cost, 24 h" }
            } }
            tbody {
                @if day.is_empty() { tr { td colspan="5" .muted { "No machine time recorded yet." } } }
                @for (q, (secs, cost)) in &day {
                    @let t = today.get(q);
                    tr {
                        td { (q) }
                        td.num { (format!("{:.3}", t.map_or(0.0, |t| t.0.started) / 3600.0)) }
                        td.num { (usd(t.map_or(0.0, |t| t.1))) }
                        td.num { (format!("{:.3}", secs.started / 3600.0)) }
                        td.num { (usd(*cost)) }
                    }
                }
            }
        }
        h2 { "Last 24 hours" }
        div.charts {
            (chart::line_chart("Cost per hour (cents)", "¢", 24, &chart::Axis {
                from: "24 h ago",
                empty: "no machine time in this window",
            }, &series))
        }
        h2 { "Machines" }
        table {
            thead { tr {
                th { "Machine" } th { "Queue" } th { "Size" } th { "State" }
                th.num { "Started" } th.num { "Stopped / suspended" } th.num { "Cost" }
            } }
            tbody {
                @if machines.is_empty() { tr { td colspan="7" .muted { "None yet." } } }
                @for m in &machines {
                    tr {
                        td { code { (m.machine_id) } }
                        td { (m.queue) }
                        td { (m.cpu_kind) " " (m.cpus) "× " (m.memory_mb) " MB" }
                        td { (m.status) }
                        td.num { (humanize(std::time::Duration::from_secs_f64(m.seconds.started.max(0.0)))) }
                        td.num { (humanize(std::time::Duration::from_secs_f64((m.seconds.stopped + m.seconds.suspended).max(0.0)))) }
                        td.num { (usd(m.cost_usd)) }
                    }
                }
            }
        }
    };
    Ok(layout(ctx, "Cost", "/cost", body))
}
