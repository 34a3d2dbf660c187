//! The emulator's state: apps, machines, leases, events, the billing ledger, rate limits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

/// One app.
#[derive(Debug, Clone)]
pub(crate) struct AppRec {
    pub id: String,
    pub name: String,
    pub org_slug: String,
    pub network: String,
}

/// A lease on a machine (machines-api.md §5).
#[derive(Debug, Clone)]
pub(crate) struct LeaseRec {
    pub nonce: String,
    pub owner: String,
    pub description: String,
    pub expires_at: SystemTime,
    pub version: String,
}

/// What the machine's process is being stopped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    None,
    /// API stop: end in `stopped` (or `destroyed` with auto_destroy).
    Stop,
    /// API destroy: end in `destroyed`.
    Destroy,
    /// Update of a running machine: start the new version once the old process is gone.
    Replace,
}

/// The running process of a machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcRec {
    pub pid: i32,
    /// Incremented per process; an exit of an older one is ignored.
    pub generation: u64,
}

/// Time spent per billing bucket.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Billing {
    pub started: Duration,
    pub suspended: Duration,
    pub stopped: Duration,
}

/// The billing bucket of a state: running states bill as started; `starting` and `created`
/// bill as stopped (Fly charges CPU/RAM for running machines, rootfs for stopped ones).
fn bucket(state: &str) -> Option<u8> {
    match state {
        "started" | "stopping" | "replacing" | "suspending" | "restarting" => Some(0),
        "suspended" => Some(1),
        "destroyed" => None,
        _ => Some(2),
    }
}

/// One machine.
#[derive(Debug)]
pub(crate) struct MachineRec {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub instance_id: String,
    pub private_ip: String,
    pub config: Value,
    pub state: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// Oldest first; served newest first.
    pub events: Vec<Value>,
    pub lease: Option<LeaseRec>,
    pub proc: Option<ProcRec>,
    /// PID of the latest process, kept after it exits (tests check it is gone).
    pub last_pid: Option<i32>,
    pub generation: u64,
    /// Bumped by every user operation that supersedes a pending start.
    pub op_seq: u64,
    pub pending: Pending,
    /// Created without skip_launch and not yet moved to starting (the create latency).
    pub launching: bool,
    pub restart_count: u32,
    pub destroyed_at: Option<Instant>,
    pub log: Arc<Mutex<Vec<u8>>>,
    pub billing: Billing,
    pub state_since: Instant,
    pub cpus: u32,
    pub memory_mb: u64,
    /// The process generation the memory watcher killed for going over `memory_mb`: its exit
    /// event says `oom_killed`.
    pub oom_killed_generation: Option<u64>,
    /// Taken out of Fly Proxy routing (`cordon`, or created with skip_service_registration).
    pub cordoned: bool,
    /// Every config version, oldest first: (version, config).
    pub versions: Vec<(String, Value)>,
}

impl MachineRec {
    /// Records the current version and config in the history `versions` serves.
    pub fn remember_version(&mut self) {
        self.versions
            .push((self.instance_id.clone(), self.config.clone()));
        // Bounded like events: a machine updated forever must not grow without limit.
        if self.versions.len() > 50 {
            self.versions.drain(..self.versions.len() - 50);
        }
    }

    /// Billing so far, including the current state's running time.
    pub fn billing_now(&self) -> Billing {
        let mut b = self.billing;
        let el = self.state_since.elapsed();
        match bucket(&self.state) {
            Some(0) => b.started += el,
            Some(1) => b.suspended += el,
            Some(_) => b.stopped += el,
            None => {}
        }
        b
    }

    /// Whether this machine holds host resources (for the capacity check).
    pub fn holds_capacity(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "created" | "stopped" | "failed" | "destroyed"
        )
    }

    /// Appends an event (id = ULID, timestamp = unix ms). An empty `request` is left out, as
    /// Fly does (one SDK's parser breaks on `"request": {}`).
    pub fn event(&mut self, kind: &str, status: &str, source: &str, request: Value) {
        let mut e = json!({
            "id": ulid::Ulid::new().to_string(),
            "type": kind,
            "status": status,
            "source": source,
            "timestamp": unix_ms(SystemTime::now()),
        });
        if !(request.is_null() || request.as_object().is_some_and(|o| o.is_empty())) {
            e["request"] = request;
        }
        self.events.push(e);
        // Bounded: a machine restarting forever must not grow without limit.
        if self.events.len() > 200 {
            self.events.drain(..self.events.len() - 200);
        }
    }

    /// The active lease, if not expired.
    pub fn active_lease(&self) -> Option<&LeaseRec> {
        self.lease
            .as_ref()
            .filter(|l| l.expires_at > SystemTime::now())
    }

    /// The API representation (`Machine` schema).
    pub fn to_json(&self, nonce: Option<&str>) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "instance_id": self.instance_id,
            "version": self.instance_id,
            "private_ip": self.private_ip,
            "config": self.config,
            "image_ref": image_ref(self.config.get("image").and_then(Value::as_str).unwrap_or("")),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "events": self.events.iter().rev().take(20).cloned().collect::<Vec<_>>(),
            "checks": [],
            "host_status": "ok",
            "cordoned": self.cordoned,
        });
        if let Some(n) = nonce {
            v["nonce"] = json!(n);
        }
        v
    }
}

/// Counters across machines.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub started_now: usize,
    pub peak_started: usize,
}

/// Everything behind the emulator's one lock (never held across an await).
#[derive(Debug, Default)]
pub(crate) struct World {
    pub apps: BTreeMap<String, AppRec>,
    pub machines: HashMap<String, MachineRec>,
    pub counters: Counters,
}

impl World {
    /// Moves a machine to `state`, booking its billing time and the started counters.
    pub fn set_state(&mut self, id: &str, state: &str) {
        let Some(m) = self.machines.get_mut(id) else {
            return;
        };
        if m.state == state {
            return;
        }
        m.billing = m.billing_now();
        m.state_since = Instant::now();
        if m.state == "started" {
            self.counters.started_now -= 1;
        }
        if state == "started" {
            self.counters.started_now += 1;
            self.counters.peak_started = self.counters.peak_started.max(self.counters.started_now);
        }
        m.state = state.to_string();
        m.updated_at = SystemTime::now();
    }

    /// CPUs and memory held in `region` by machines that hold capacity.
    pub fn used_capacity(&self, region: &str) -> (u64, u64) {
        self.machines
            .values()
            .filter(|m| m.region == region && m.holds_capacity())
            .fold((0, 0), |(c, mem), m| (c + m.cpus as u64, mem + m.memory_mb))
    }
}

/// Per-machine line of the billing ledger.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LedgerMachine {
    /// App name.
    pub app: String,
    /// Machine ID.
    pub id: String,
    /// Machine name.
    pub name: String,
    /// Current state.
    pub state: String,
    /// Seconds spent started (incl. stopping/replacing/suspending).
    pub started_s: f64,
    /// Seconds spent suspended.
    pub suspended_s: f64,
    /// Seconds spent stopped (incl. created/starting/failed).
    pub stopped_s: f64,
}

/// The billing ledger: machine-seconds by state (what the cost benchmarks read).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ledger {
    /// Every machine ever created, destroyed ones included.
    pub machines: Vec<LedgerMachine>,
    /// Sum of `started_s`.
    pub started_s: f64,
    /// Sum of `suspended_s`.
    pub suspended_s: f64,
    /// Sum of `stopped_s`.
    pub stopped_s: f64,
    /// Machines in state `started` right now.
    pub started_now: usize,
    /// Most machines ever in state `started` at the same time.
    pub peak_started: usize,
}

impl Ledger {
    pub(crate) fn from_world(w: &World) -> Self {
        let mut machines: Vec<LedgerMachine> = w
            .machines
            .values()
            .map(|m| {
                let b = m.billing_now();
                LedgerMachine {
                    app: m.app.clone(),
                    id: m.id.clone(),
                    name: m.name.clone(),
                    state: m.state.clone(),
                    started_s: b.started.as_secs_f64(),
                    suspended_s: b.suspended.as_secs_f64(),
                    stopped_s: b.stopped.as_secs_f64(),
                }
            })
            .collect();
        machines.sort_by(|a, b| (&a.app, &a.id).cmp(&(&b.app, &b.id)));
        Self {
            started_s: machines.iter().map(|m| m.started_s).sum(),
            suspended_s: machines.iter().map(|m| m.suspended_s).sum(),
            stopped_s: machines.iter().map(|m| m.stopped_s).sum(),
            machines,
            started_now: w.counters.started_now,
            peak_started: w.counters.peak_started,
        }
    }
}

/// Snapshot of one machine for in-process tests.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSnapshot {
    /// Machine ID.
    pub id: String,
    /// Machine name.
    pub name: String,
    /// Current state.
    pub state: String,
    /// Current version (instance_id).
    pub version: String,
    /// PID (= process group ID) of the running process, if any.
    pub pid: Option<i32>,
    /// PID of the latest process, also after it exited.
    pub last_pid: Option<i32>,
    /// Restarts done by the restart policy.
    pub restart_count: u32,
    /// The image ref of its config.
    pub image: String,
    /// Its guest's memory.
    pub memory_mb: u64,
    /// Whether one of its processes was OOM-killed (over `guest.memory_mb`).
    pub oom_killed: bool,
    /// Its config's metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl From<&MachineRec> for MachineSnapshot {
    fn from(m: &MachineRec) -> Self {
        Self {
            id: m.id.clone(),
            name: m.name.clone(),
            state: m.state.clone(),
            version: m.instance_id.clone(),
            pid: m.proc.map(|p| p.pid),
            last_pid: m.last_pid,
            restart_count: m.restart_count,
            image: m
                .config
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            memory_mb: m.memory_mb,
            oom_killed: m.oom_killed_generation.is_some(),
            metadata: m
                .config
                .get("metadata")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Token buckets per (action, key) for machines-api.md §6.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: HashMap<(String, String), (f64, Instant)>,
}

impl RateLimiter {
    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, action: &str, key: &str, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        let e = self
            .buckets
            .entry((action.to_string(), key.to_string()))
            .or_insert((burst, now));
        e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate).min(burst);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Unix milliseconds.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with seconds, as the API shows (`2023-11-08T01:52:30Z`).
/// Never panics: a time chrono cannot represent (beyond year 262143) shows as the latest it can.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `n` random lowercase hex chars.
pub(crate) fn hex_id(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("digit < 16"))
        .collect()
}

/// A Fly-style generated machine name (`aged-thunder-7371`).
pub(crate) fn machine_name() -> String {
    use rand::Rng;
    const ADJ: &[&str] = &[
        "aged", "bold", "calm", "dry", "late", "quiet", "red", "snowy", "still", "young",
    ];
    const NOUN: &[&str] = &[
        "thunder", "river", "forest", "meadow", "field", "smoke", "dawn", "frost", "wave", "leaf",
    ];
    let mut rng = rand::rng();
    format!(
        "{}-{}-{}",
        ADJ[rng.random_range(0..ADJ.len())],
        NOUN[rng.random_range(0..NOUN.len())],
        rng.random_range(1000..10000)
    )
}

/// A 6PN-looking private IPv6 address.
pub(crate) fn private_ip() -> String {
    format!(
        "fdaa:0:18:a7b:{}:{}:{}:2",
        &hex_id(3),
        &hex_id(4),
        &hex_id(4)
    )
}

/// `ImageRef` from an image string like `registry.fly.io/app:deployment-1`.
pub(crate) fn image_ref(image: &str) -> Value {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_string()),
        None => (image, String::new()),
    };
    let (repo_full, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    let (registry, repository) = match repo_full.split_once('/') {
        Some((r, rest)) if r.contains('.') || r.contains(':') || r == "localhost" => {
            (r.to_string(), rest.to_string())
        }
        Some(_) => ("registry-1.docker.io".to_string(), repo_full.to_string()),
        None => (
            "registry-1.docker.io".to_string(),
            format!("library/{repo_full}"),
        ),
    };
    json!({"registry": registry, "repository": repository, "tag": tag, "digest": digest, "labels": {}})
}
