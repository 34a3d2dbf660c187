//! What worker machines cost: billed seconds by state from the Machines API's events, priced per
//! size, split into hours per queue.
//!
//! Fly bills a machine's CPU and memory per second while it runs, and its root filesystem while
//! it is stopped or suspended. A machine's events (`launch` → created, `start` → started,
//! `exit`/`stop` → stopped, `suspend` → suspended, `destroy` → destroyed) give the state it was
//! in between two events; the time from one event to the next is billed in the bucket of the
//! earlier one's status — the same buckets as the emulator's billing ledger (`stopping`,
//! `replacing`, `restarting` bill as started; `created`, `starting`, `failed` as stopped).
//!
//! The Machines API keeps only a machine's recent events (at most 50), so accounting is
//! incremental: a [`UsageCursor`] remembers how far a machine's events have been counted
//! (`through_ms` and the status then) and [`advance`] adds what happened since, up to now.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::machines::Machines;
use crate::machines::types::{ListMachinesQuery, MachineEvent};
use crate::store::Store;

/// Per-second prices in US dollars. Defaults: Fly's published usage prices (shared CPU
/// $0.0000003/s per vCPU, performance $0.0000082/s per vCPU, memory $0.0000019/s per GB,
/// root filesystem of a stopped machine $0.15 per GB-month), which reproduce Fly's table
/// (shared-cpu-1x 256 MB ≈ $1.94/month, performance-1x 2 GB ≈ $31/month).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// One shared vCPU, per second started.
    pub shared_cpu_per_s: f64,
    /// One performance (dedicated) vCPU, per second started.
    pub performance_cpu_per_s: f64,
    /// One GB of memory, per second started.
    pub memory_gb_per_s: f64,
    /// One GB of root filesystem, per second stopped or suspended.
    pub rootfs_gb_per_s: f64,
    /// Root filesystem size billed while stopped or suspended, in GB.
    pub rootfs_gb: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            shared_cpu_per_s: 0.000_000_3,
            performance_cpu_per_s: 0.000_008_2,
            memory_gb_per_s: 0.000_001_9,
            rootfs_gb_per_s: 0.15 / (30.0 * 86_400.0),
            rootfs_gb: 1.0,
        }
    }
}

impl Prices {
    /// The names of the prices, as the `prices` setting takes them.
    pub const NAMES: &'static [&'static str] = &[
        "shared_cpu_per_s",
        "performance_cpu_per_s",
        "memory_gb_per_s",
        "rootfs_gb_per_s",
        "rootfs_gb",
    ];

    /// The price called `name` (one of [`Prices::NAMES`]).
    pub fn by_name(&mut self, name: &str) -> Option<&mut f64> {
        Some(match name {
            "shared_cpu_per_s" => &mut self.shared_cpu_per_s,
            "performance_cpu_per_s" => &mut self.performance_cpu_per_s,
            "memory_gb_per_s" => &mut self.memory_gb_per_s,
            "rootfs_gb_per_s" => &mut self.rootfs_gb_per_s,
            "rootfs_gb" => &mut self.rootfs_gb,
            _ => return None,
        })
    }

    /// Dollars per second while started, for a guest.
    pub fn started_per_s(&self, cpu_kind: &str, cpus: u32, memory_mb: u32) -> f64 {
        let cpu = if cpu_kind == "performance" {
            self.performance_cpu_per_s
        } else {
            self.shared_cpu_per_s
        };
        f64::from(cpus) * cpu + f64::from(memory_mb) / 1024.0 * self.memory_gb_per_s
    }

    /// Dollars per second while stopped or suspended.
    pub fn idle_per_s(&self) -> f64 {
        self.rootfs_gb * self.rootfs_gb_per_s
    }
}

/// Where a second of a machine's life is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// CPU and memory.
    Started,
    /// Root filesystem (and the memory snapshot, which Fly does not bill separately today).
    Suspended,
    /// Root filesystem.
    Stopped,
}

/// The bucket of a machine status; None once destroyed (nothing is billed).
pub fn bucket(status: &str) -> Option<Bucket> {
    match status {
        "started" | "stopping" | "replacing" | "suspending" | "restarting" => Some(Bucket::Started),
        "suspended" => Some(Bucket::Suspended),
        "destroyed" | "destroying" => None,
        _ => Some(Bucket::Stopped),
    }
}

/// Seconds by bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Seconds {
    /// Started (CPU and memory billed).
    pub started: f64,
    /// Suspended.
    pub suspended: f64,
    /// Stopped (incl. created and starting).
    pub stopped: f64,
}

impl Seconds {
    fn add(&mut self, b: Bucket, s: f64) {
        match b {
            Bucket::Started => self.started += s,
            Bucket::Suspended => self.suspended += s,
            Bucket::Stopped => self.stopped += s,
        }
    }

    /// Their price for a guest.
    pub fn cost(&self, prices: &Prices, cpu_kind: &str, cpus: u32, memory_mb: u32) -> f64 {
        self.started * prices.started_per_s(cpu_kind, cpus, memory_mb)
            + (self.suspended + self.stopped) * prices.idle_per_s()
    }
}

/// How far one machine's events have been counted, and what they added up to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageCursor {
    /// The machine.
    pub machine_id: String,
    /// The queue it was booted for.
    pub queue: String,
    /// `shared` or `performance`.
    pub cpu_kind: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory.
    pub memory_mb: u32,
    /// Events up to this time (Unix ms) are counted.
    pub through_ms: i64,
    /// The machine's status at `through_ms`.
    pub status: String,
    /// Ids of the events at exactly `through_ms` already counted (several can share a
    /// millisecond: `launch` and `start` of a fast boot).
    #[serde(default)]
    pub through_ids: Vec<String>,
    /// Billed seconds so far.
    pub seconds: Seconds,
    /// Their price so far, in dollars.
    pub cost_usd: f64,
}

/// One queue's machine time in one clock hour (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourUsage {
    /// The queue.
    pub queue: String,
    /// Start of the hour.
    pub hour: DateTime<Utc>,
    /// Billed seconds in it.
    pub seconds: Seconds,
    /// Their price, in dollars.
    pub cost_usd: f64,
}

impl UsageCursor {
    /// A cursor at a machine's first event (usually `launch`, status `created`).
    pub fn new(
        machine_id: impl Into<String>,
        queue: impl Into<String>,
        guest: (&str, u32, u32),
        first: &MachineEvent,
    ) -> Option<UsageCursor> {
        Some(UsageCursor {
            machine_id: machine_id.into(),
            queue: queue.into(),
            cpu_kind: guest.0.to_owned(),
            cpus: guest.1,
            memory_mb: guest.2,
            through_ms: first.timestamp?,
            status: first.status.clone()?,
            through_ids: first.id.iter().cloned().collect(),
            seconds: Seconds::default(),
            cost_usd: 0.0,
        })
    }
}

/// Count `events` (newest first, as the Machines API lists them; those already counted are
/// skipped) and then the time up to `now_ms` in the last status, into `cursor`; returns what was
/// added, per clock hour. After a `destroyed` status nothing more is billed.
pub fn advance(
    cursor: &mut UsageCursor,
    events: &[MachineEvent],
    now_ms: i64,
    prices: &Prices,
) -> Vec<HourUsage> {
    // Oldest first; events of one millisecond keep the API's order (a stable sort of the
    // reversed list).
    let mut news: Vec<(i64, &str, Option<&str>)> = events
        .iter()
        .rev()
        .filter_map(|e| Some((e.timestamp?, e.status.as_deref()?, e.id.as_deref())))
        .filter(|(ts, _, id)| {
            *ts > cursor.through_ms
                || (*ts == cursor.through_ms
                    && id.is_some_and(|id| !cursor.through_ids.iter().any(|c| c == id)))
        })
        .collect();
    news.sort_by_key(|(ts, _, _)| *ts);
    let mut hours: Vec<HourUsage> = Vec::new();
    let mut book = |cursor: &mut UsageCursor, until: i64| {
        let Some(b) = bucket(&cursor.status) else {
            if until > cursor.through_ms {
                cursor.through_ms = until;
                cursor.through_ids.clear();
            }
            return;
        };
        let mut from = cursor.through_ms;
        while from < until {
            let hour = hour_start(from);
            let next_hour = hour.timestamp_millis() + 3_600_000;
            let to = until.min(next_hour);
            let secs = (to - from) as f64 / 1000.0;
            let mut s = Seconds::default();
            s.add(b, secs);
            let cost = s.cost(prices, &cursor.cpu_kind, cursor.cpus, cursor.memory_mb);
            cursor.seconds.add(b, secs);
            cursor.cost_usd += cost;
            match hours.iter_mut().find(|h| h.hour == hour) {
                Some(h) => {
                    h.seconds.add(b, secs);
                    h.cost_usd += cost;
                }
                None => hours.push(HourUsage {
                    queue: cursor.queue.clone(),
                    hour,
                    seconds: s,
                    cost_usd: cost,
                }),
            }
            from = to;
        }
        if until > cursor.through_ms {
            cursor.through_ms = until;
            cursor.through_ids.clear();
        }
    };
    for (ts, status, id) in news {
        book(cursor, ts);
        cursor.status = status.to_owned();
        cursor.through_ids.extend(id.map(str::to_owned));
    }
    if now_ms > cursor.through_ms {
        book(cursor, now_ms);
    }
    hours
}

/// A queue's daily spending limit: past it the scaler boots no machine for the queue (its jobs
/// wait) until the next day (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Dollars per day, at [`Prices`].
    UsdPerDay(f64),
    /// Started machine-hours per day.
    MachineHoursPerDay(f64),
}

impl Budget {
    /// `"$5/day"` (dollars) or `"2h/day"` (machine-hours; also `"90m/day"`).
    pub fn parse(text: &str) -> std::result::Result<Budget, String> {
        let t = text.trim();
        let amount = t
            .strip_suffix("/day")
            .ok_or_else(|| format!("{t:?} is not a budget: use \"$5/day\" or \"2h/day\""))?
            .trim();
        let (value, budget): (&str, fn(f64) -> Budget) = if let Some(d) = amount.strip_prefix('$') {
            (d, Budget::UsdPerDay)
        } else if let Some(h) = amount.strip_suffix('h') {
            (h, Budget::MachineHoursPerDay)
        } else if let Some(m) = amount.strip_suffix('m') {
            (m, |m| Budget::MachineHoursPerDay(m / 60.0))
        } else {
            return Err(format!(
                "{t:?} is not a budget: use dollars (\"$5/day\") or machine-hours (\"2h/day\")"
            ));
        };
        match value.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(budget(v)),
            _ => Err(format!(
                "{t:?} is not a budget: the amount must be a number >= 0"
            )),
        }
    }

    /// Whether `spent` (today's billed seconds and dollars of the queue) reaches the budget;
    /// then the words saying so.
    pub fn exhausted(&self, spent: &(Seconds, f64)) -> Option<String> {
        match *self {
            Budget::UsdPerDay(max) if spent.1 >= max => Some(format!(
                "over its budget: ${:.4} of ${max}/day spent today (UTC)",
                spent.1
            )),
            Budget::MachineHoursPerDay(max) if spent.0.started / 3600.0 >= max => Some(format!(
                "over its budget: {:.3} of {max} machine-hours/day used today (UTC)",
                spent.0.started / 3600.0
            )),
            _ => None,
        }
    }
}

// Amounts are finite numbers (parse refuses NaN and infinities), so equality is total.
impl Eq for Budget {}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::UsdPerDay(v) => write!(f, "${v}/day"),
            Budget::MachineHoursPerDay(v) => write!(f, "{v}h/day"),
        }
    }
}

/// The start of today (UTC), where daily budgets reset.
pub fn today_utc(now: DateTime<Utc>) -> DateTime<Utc> {
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |t| t.and_utc())
}

/// Usage as recorded: per queue per hour, and per machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Per queue per clock hour.
    pub hours: Vec<HourUsage>,
    /// Per machine, since it was created.
    pub machines: Vec<UsageCursor>,
}

impl Usage {
    /// Per queue: billed seconds and cost over the hours in this report.
    pub fn per_queue(&self) -> BTreeMap<String, (Seconds, f64)> {
        let mut out: BTreeMap<String, (Seconds, f64)> = BTreeMap::new();
        for h in &self.hours {
            let e = out.entry(h.queue.clone()).or_default();
            e.0.started += h.seconds.started;
            e.0.suspended += h.seconds.suspended;
            e.0.stopped += h.seconds.stopped;
            e.1 += h.cost_usd;
        }
        out
    }
}

/// A job's share of its machine's cost: the machine's started price for as long as the job ran,
/// divided among the jobs the machine runs at once (`concurrency`). None until it has run and
/// its machine is accounted.
pub fn job_cost(
    job: &crate::job::Job,
    machine: &UsageCursor,
    concurrency: u32,
    prices: &Prices,
) -> Option<f64> {
    let ran = (job.finished_at? - job.started_at?)
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    let per_s = prices.started_per_s(&machine.cpu_kind, machine.cpus, machine.memory_mb);
    Some(ran * per_s / f64::from(concurrency.max(1)))
}

/// What one [`record_usage`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Recorded {
    /// Worker machines whose usage moved on.
    pub machines: usize,
    /// Billed seconds added (all buckets).
    pub seconds: f64,
    /// Machines another recorder had already moved on (skipped this time).
    pub raced: usize,
}

/// Count the machine time of every worker machine of `app` (destroyed ones included) since the
/// last pass into `store`. Safe to run from several processes at once: a cursor only moves on
/// from where its reader found it, so no interval is counted twice.
pub async fn record_usage(
    api: &dyn Machines,
    app: &str,
    store: &dyn Store,
    prices: &Prices,
    now: DateTime<Utc>,
) -> Result<Recorded> {
    let machines = api
        .list_machines(
            app,
            &ListMachinesQuery {
                include_deleted: true,
                metadata: BTreeMap::from([("flyjobs_role".into(), "worker".into())]),
                ..Default::default()
            },
        )
        .await?;
    let known: HashMap<String, UsageCursor> = store
        .usage_cursors()
        .await?
        .into_iter()
        .map(|c| (c.machine_id.clone(), c))
        .collect();
    let now_ms = now.timestamp_millis();
    let mut done = Recorded::default();
    for m in &machines {
        let events = m.events.as_deref().unwrap_or_default();
        let (mut cursor, read) = match known.get(&m.id) {
            // destroyed: nothing more to bill
            Some(c) if bucket(&c.status).is_none() => continue,
            Some(c) => (c.clone(), Some(c.through_ms)),
            None => {
                let guest = m.config.as_ref().and_then(|c| c.guest.as_ref());
                let queue = m
                    .config
                    .as_ref()
                    .and_then(|c| c.metadata.as_ref())
                    .and_then(|md| md.get("flyjobs_queue"))
                    .cloned()
                    .unwrap_or_default();
                // the oldest event the API still lists (newest first)
                let Some(first) = events.iter().rev().find(|e| e.timestamp.is_some()) else {
                    continue;
                };
                let Some(c) = UsageCursor::new(
                    &m.id,
                    queue,
                    (
                        guest
                            .and_then(|g| g.cpu_kind.as_deref())
                            .unwrap_or("shared"),
                        guest.and_then(|g| g.cpus).unwrap_or(1),
                        guest.and_then(|g| g.memory_mb).unwrap_or(256),
                    ),
                    first,
                ) else {
                    continue;
                };
                (c, None)
            }
        };
        let before = cursor.seconds;
        let hours = advance(&mut cursor, events, now_ms, prices);
        if read.is_some() && hours.is_empty() && cursor.through_ms == read.unwrap_or_default() {
            continue;
        }
        if store.record_usage(&cursor, read, &hours).await? {
            done.machines += 1;
            done.seconds += (cursor.seconds.started - before.started)
                + (cursor.seconds.suspended - before.suspended)
                + (cursor.seconds.stopped - before.stopped);
        } else {
            done.raced += 1;
        }
    }
    Ok(done)
}

fn hour_start(ms: i64) -> DateTime<Utc> {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    t.with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(status: &str, ts: i64) -> MachineEvent {
        serde_json::from_value(serde_json::json!({
            "id": format!("{status}-{ts}"), "type": "x", "status": status, "timestamp": ts
        }))
        .unwrap()
    }

    const H: i64 = 3_600_000;

    #[test]
    fn budgets_parse_and_say_when_they_are_spent() {
        assert_eq!(Budget::parse("$5/day"), Ok(Budget::UsdPerDay(5.0)));
        assert_eq!(
            Budget::parse(" 2h/day "),
            Ok(Budget::MachineHoursPerDay(2.0))
        );
        assert_eq!(
            Budget::parse("90m/day"),
            Ok(Budget::MachineHoursPerDay(1.5))
        );
        for bad in ["5", "$5", "$x/day", "$-1/day", "5/day", "$inf/day"] {
            let e = Budget::parse(bad).unwrap_err();
            assert!(e.contains("budget"), "{bad}: {e}");
        }
        let hour = Seconds {
            started: 3600.0,
            ..Seconds::default()
        };
        assert!(Budget::UsdPerDay(1.0).exhausted(&(hour, 0.5)).is_none());
        let why = Budget::UsdPerDay(0.25).exhausted(&(hour, 0.5)).unwrap();
        assert!(
            why.contains("over its budget") && why.contains("$0.25/day"),
            "{why}"
        );
        assert!(
            Budget::MachineHoursPerDay(1.0)
                .exhausted(&(hour, 0.0))
                .is_some()
        );
        assert!(
            Budget::MachineHoursPerDay(2.0)
                .exhausted(&(hour, 9.0))
                .is_none()
        );
        assert_eq!(Budget::parse("$5/day").unwrap().to_string(), "$5/day");
    }

    #[test]
    fn prices_reproduce_flys_table() {
        let p = Prices::default();
        let month = 30.0 * 86_400.0;
        let shared_256 = p.started_per_s("shared", 1, 256) * month;
        assert!((shared_256 - 1.94).abs() < 0.1, "{shared_256}");
        let perf_2g = p.started_per_s("performance", 1, 2048) * month;
        assert!((perf_2g - 31.0).abs() < 1.0, "{perf_2g}");
        let perf2x_4g = p.started_per_s("performance", 2, 4096) * month;
        assert!((perf2x_4g - 62.0).abs() < 2.0, "{perf2x_4g}");
    }

    #[test]
    fn time_between_events_is_billed_in_the_earlier_status() {
        let p = Prices::default();
        let t0 = 10 * H; // on an hour boundary
        let events = [
            ev("created", t0),
            ev("started", t0 + 1_000),
            ev("stopped", t0 + 61_000),
            ev("destroyed", t0 + 62_000),
        ];
        let mut c = UsageCursor::new("m1", "mail", ("shared", 1, 256), &events[0]).unwrap();
        // newest first, as the API lists them
        let mut rev = events.to_vec();
        rev.reverse();
        let hours = advance(&mut c, &rev, t0 + 10 * H, &p);
        assert_eq!(
            c.seconds,
            Seconds {
                started: 60.0,
                suspended: 0.0,
                stopped: 2.0
            }
        );
        assert_eq!(c.status, "destroyed");
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].hour.timestamp_millis(), t0);
        let want = 60.0 * p.started_per_s("shared", 1, 256) + 2.0 * p.idle_per_s();
        assert!((c.cost_usd - want).abs() < 1e-12);
        // nothing more after destroy, and the same events again add nothing
        assert!(advance(&mut c, &rev, t0 + 20 * H, &p).is_empty());
        assert_eq!(c.seconds.started, 60.0);
    }

    #[test]
    fn a_running_machine_is_billed_up_to_now_across_hours() {
        let p = Prices::default();
        let t0 = 5 * H + 30 * 60_000; // 05:30
        // launch and start in the same millisecond: the API lists start first (newest)
        let events = [ev("started", t0), ev("created", t0)];
        let mut c = UsageCursor::new("m1", "q", ("performance", 2, 4096), &events[1]).unwrap();
        let hours = advance(&mut c, &events, t0 + H, &p); // to 06:30
        assert_eq!(c.status, "started");
        assert_eq!(c.seconds.started, 3600.0);
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[0].seconds.started, 1800.0);
        assert_eq!(hours[1].seconds.started, 1800.0);
        // later: a suspend event, then more time
        let later = [ev("suspended", t0 + 2 * H)];
        let hours = advance(&mut c, &later, t0 + 3 * H, &p);
        assert_eq!(c.seconds.started, 7200.0);
        assert_eq!(c.seconds.suspended, 3600.0);
        assert_eq!(hours.iter().map(|h| h.seconds.started).sum::<f64>(), 3600.0);
        assert_eq!(c.status, "suspended");
    }
}

/// What [`enforce_max_cost`] did to one job.
#[derive(Debug, Clone, PartialEq)]
pub struct OverCost {
    /// The job discarded.
    pub job: crate::job::JobId,
    /// Its queue.
    pub queue: String,
    /// What its run had cost.
    pub cost_usd: f64,
    /// Whether its machine was stopped (it ran nothing else: concurrency 1).
    pub machine_stopped: bool,
}

/// `max_cost_per_job`: every running job whose run has cost more than its queue's limit (its
/// run time × its machine's price per second ÷ the queue's concurrency, as [`job_cost`] counts
/// it) is discarded with `FlyJobs::CostLimitExceeded` (a retry would cost as much again). No
/// language can interrupt a running job safely, so when the machine runs only that job
/// (concurrency 1) it is stopped: that ends the job's code and the machine's billing. With
/// more jobs per machine the code runs on and its result is refused. The scaler's leader calls
/// this every tick with the running jobs and the machines it listed.
pub async fn enforce_max_cost(
    config: &crate::config::Config,
    store: &dyn Store,
    machines: &dyn Machines,
    app: &str,
    running: &[crate::job::Job],
    by_id: &HashMap<&str, &crate::machines::types::Machine>,
    now: DateTime<Utc>,
) -> Vec<OverCost> {
    let mut over = Vec::new();
    for job in running {
        let settings = config.queue(&job.queue);
        let (Some(max), Some(started), Some(owner)) = (
            settings.max_cost_per_job,
            job.started_at,
            job.lease_owner.as_deref(),
        ) else {
            continue;
        };
        let Some(guest) = by_id
            .get(owner)
            .and_then(|m| m.config.as_ref())
            .and_then(|c| c.guest.as_ref())
        else {
            continue;
        };
        let concurrency = settings.concurrency.max(1);
        let per_s = config.prices().started_per_s(
            guest.cpu_kind.as_deref().unwrap_or("shared"),
            guest.cpus.unwrap_or(1),
            guest.memory_mb.unwrap_or(256),
        ) / f64::from(concurrency);
        let ran = (now - started).num_milliseconds().max(0) as f64 / 1000.0;
        let cost = ran * per_s;
        if cost <= max {
            continue;
        }
        let failure = crate::job::Failure::new(
            crate::job::Failure::COST_LIMIT_EXCEEDED,
            format!(
                "ran {ran:.1} s on machine {owner} at ${per_s:.7}/s: ${cost:.6}, over \
                 max_cost_per_job ${max}"
            ),
        );
        match store
            .discard(job.id, Some(job.lease_token), Some(failure))
            .await
        {
            Ok(_) => {}
            // Finished or reaped since the listing: nothing to stop.
            Err(e) if e.kind() == crate::ErrorKind::Conflict => continue,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not discard a job over max_cost_per_job");
                continue;
            }
        }
        let machine_stopped = concurrency == 1
            && match machines
                .stop_machine(app, owner, &Default::default(), None)
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(machine = owner, error = %e, "could not stop the machine of a job over max_cost_per_job");
                    false
                }
            };
        tracing::warn!(job = %job.id, queue = %job.queue, cost, max, machine_stopped, "over max_cost_per_job: discarded");
        over.push(OverCost {
            job: job.id,
            queue: job.queue.clone(),
            cost_usd: cost,
            machine_stopped,
        });
    }
    over
}
