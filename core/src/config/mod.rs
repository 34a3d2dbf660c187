//! Settings: explicit option > environment variable > documented default, resolved here only.
//!
//! Language packages pass options they were not given as `nil`/`None`/`undefined`; the core
//! fills them from the environment and defaults, and [`ConfigBuilder::build`] rejects bad values
//! with an [`ErrorKind::Config`](crate::ErrorKind::Config) error that names the variable.
//!
//! ```
//! use std::collections::HashMap;
//! use flyjobs::Config;
//! let env = HashMap::from([("FLY_APP_NAME", "shop"), ("FLY_API_TOKEN", "FlyV1 fm2_secret")]);
//! let cfg = Config::builder().lookup(move |k| env.get(k).map(|v| v.to_string())).build().unwrap();
//! assert_eq!(cfg.app_name(), Some("shop"));
//! assert!(!format!("{cfg:?}").contains("fm2_secret"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

pub mod options;
pub use options::{Kind, OPTIONS, OptionSpec, Origin, QUEUE_SETTINGS, WORKER_OPTIONS};

/// Default base URL of the public Machines API.
pub const DEFAULT_API_HOSTNAME: &str = "https://api.machines.dev";
/// Default largest payload accepted by enqueue (1 MiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// A secret string (the Fly API token) that never shows in `Debug`, `Display` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself: call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Resolved, validated settings. Build one with [`Config::builder`] or [`Config::from_env`].
#[derive(Clone, Debug)]
pub struct Config {
    api_token: Option<Secret>,
    api_hostname: String,
    app_name: Option<String>,
    image_ref: Option<String>,
    machine_id: Option<String>,
    region: Option<String>,
    database_url: Option<String>,
    worker_app: Option<String>,
    max_payload_bytes: usize,
    request_timeout: Duration,
    queues: BTreeMap<String, QueueSettings>,
    default_queue: QueueSettings,
    max_machines: u32,
    worker_command: Option<Vec<String>>,
    env_allowlist: Vec<String>,
    boot_timeout: Duration,
    lease_duration: Duration,
    shutdown_timeout: Duration,
    pin_for: Duration,
    prices: crate::cost::Prices,
    retain_completed: Duration,
    retain_dead: Duration,
}

impl Config {
    /// A builder with nothing set explicitly.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Settings from the process environment and defaults only.
    pub fn from_env() -> Result<Config> {
        Config::builder().build()
    }

    /// Settings from an options map (keys of [`OPTIONS`]), then the environment and defaults:
    /// what every language package calls with its `configure(...)` options.
    pub fn from_options(options: &serde_json::Map<String, Value>) -> Result<Config> {
        Config::builder().options(options)?.build()
    }

    /// `FLY_API_TOKEN`: the Machines API token (`Bearer` or `FlyV1 …` macaroon). Required to
    /// scale on Fly; never logged.
    pub fn api_token(&self) -> Option<&Secret> {
        self.api_token.as_ref()
    }
    /// `FLY_API_HOSTNAME`: base URL of the Machines API (default `https://api.machines.dev`;
    /// `http://_api.internal:4280` inside Fly).
    pub fn api_hostname(&self) -> &str {
        &self.api_hostname
    }
    /// `FLY_APP_NAME`: the app whose machines run the workers (Fly sets it in every machine).
    pub fn app_name(&self) -> Option<&str> {
        self.app_name.as_deref()
    }
    /// `FLY_IMAGE_REF`: the image new worker machines boot (Fly sets it in every machine).
    pub fn image_ref(&self) -> Option<&str> {
        self.image_ref.as_deref()
    }
    /// `FLY_MACHINE_ID`: this machine's id; set means "running on Fly".
    pub fn machine_id(&self) -> Option<&str> {
        self.machine_id.as_deref()
    }
    /// `FLY_REGION`: this machine's region.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    /// `FLYJOBS_DATABASE_URL`: `postgres://…` or `sqlite://…`; unset means the embedded SQLite.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }
    /// `FLYJOBS_WORKER_APP`: a separate app to create worker machines in (credential isolation).
    pub fn worker_app(&self) -> Option<&str> {
        self.worker_app.as_deref()
    }
    /// `FLYJOBS_MAX_PAYLOAD_BYTES`: the largest payload enqueue accepts (default 1 MiB).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }
    /// `FLYJOBS_REQUEST_TIMEOUT`: per-request timeout of Machines API calls (default 30 s; a
    /// `wait` call adds its own timeout to it).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Whether this process runs on a Fly Machine (`FLY_MACHINE_ID` is set).
    pub fn on_fly(&self) -> bool {
        self.machine_id.is_some()
    }
    /// The settings of `queue`: its entry in `FLYJOBS_QUEUES`, else the defaults.
    pub fn queue(&self, queue: &str) -> &QueueSettings {
        self.queues.get(queue).unwrap_or(&self.default_queue)
    }
    /// Queues named in `FLYJOBS_QUEUES` (others get the defaults when jobs arrive).
    pub fn queues(&self) -> &BTreeMap<String, QueueSettings> {
        &self.queues
    }
    /// `FLYJOBS_MAX_MACHINES`: worker machines of all queues together (default 20).
    pub fn max_machines(&self) -> u32 {
        self.max_machines
    }
    /// `FLYJOBS_WORKER_COMMAND`: the command a worker machine runs (split on whitespace), to
    /// which the scaler appends `--queues Q --concurrency N --wait W`. Unset: the language
    /// package's default (`bin/fly-machine-worker`, `python -m flyjobs worker`, `flyjobs worker`).
    pub fn worker_command(&self) -> Option<&[String]> {
        self.worker_command.as_deref()
    }
    /// `FLYJOBS_ENV_ALLOWLIST`: names of process env vars copied into worker machines. Empty by
    /// default: a worker's env comes from the parent machine's *config*, never the process env.
    pub fn env_allowlist(&self) -> &[String] {
        &self.env_allowlist
    }
    /// `FLYJOBS_BOOT_TIMEOUT`: a machine that has not registered as a worker this long after it
    /// was booted is destroyed and replaced (default 60 s).
    pub fn boot_timeout(&self) -> Duration {
        self.boot_timeout
    }
    /// `FLYJOBS_LEASE_DURATION`: how long a claimed job stays leased without a heartbeat
    /// (default 30 s; the worker extends it every third of that).
    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }
    /// `FLYJOBS_SHUTDOWN_TIMEOUT`: how long a stopping worker lets running jobs finish before it
    /// releases them (default 4 s).
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// How long a job stays pinned to the release that enqueued it (default 1 h).
    pub fn pin_for(&self) -> Duration {
        self.pin_for
    }
    /// `FLYJOBS_PRICES`: the per-second prices of cost accounting and budgets (Fly's, unless
    /// overridden).
    pub fn prices(&self) -> &crate::cost::Prices {
        &self.prices
    }

    /// `FLYJOBS_RETAIN_COMPLETED`: how long a completed job is kept before it is pruned
    /// (default 24 h).
    pub fn retain_completed(&self) -> Duration {
        self.retain_completed
    }

    /// `FLYJOBS_RETAIN_DEAD`: how long dead and discarded jobs are kept before they are pruned
    /// (default 183 days, about six months, like Sidekiq's dead set).
    pub fn retain_dead(&self) -> Duration {
        self.retain_dead
    }
}

/// How long a worker lingers when its queues are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Exit (or stop/suspend, for a pool member) after this long idle.
    Idle(Duration),
    /// Never leave.
    Forever,
}

impl Wait {
    /// Parse `600`, `"10m"` or `"forever"` from an option or env value.
    pub fn from_value(origin: &Origin, value: &Value) -> Result<Wait> {
        match value {
            Value::String(s) if s.trim().eq_ignore_ascii_case("forever") => Ok(Wait::Forever),
            Value::String(_) | Value::Number(_) => options::duration(origin, value)
                .map(Wait::Idle)
                .map_err(|_| options::bad(origin, Kind::Wait, value)),
            other => Err(options::bad(origin, Kind::Wait, other)),
        }
    }
    /// The `--wait` argument form: seconds, or `forever`.
    pub fn to_arg(self) -> String {
        match self {
            Wait::Idle(d) => d.as_secs().to_string(),
            Wait::Forever => "forever".into(),
        }
    }
}

/// What an idle worker machine of a queue does when it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// Exit; the machine is destroyed (`auto_destroy`). The default.
    None,
    /// Exit and stay `stopped`, to be started again (about 300 ms on Fly).
    Stop,
    /// Suspend itself (memory snapshot), to be resumed (a few hundred ms; cheapest to wake).
    Suspend,
}

impl PoolMode {
    /// Parse `none`, `stop` or `suspend`.
    pub fn from_value(origin: &Origin, value: &Value) -> Result<PoolMode> {
        Ok(
            match options::one_of(origin, &["none", "stop", "suspend"], value)?.as_str() {
                "stop" => PoolMode::Stop,
                "suspend" => PoolMode::Suspend,
                _ => PoolMode::None,
            },
        )
    }
    /// The stable name (`none`, `stop`, `suspend`).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::None => "none",
            PoolMode::Stop => "stop",
            PoolMode::Suspend => "suspend",
        }
    }
}

/// Machine size of a queue's workers: a Fly preset or explicit cpus and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineSize {
    /// `shared` or `performance`.
    pub cpu_kind: String,
    /// Number of CPUs.
    pub cpus: u32,
    /// Memory in MB.
    pub memory_mb: u32,
}

impl MachineSize {
    /// A Fly preset: `shared-cpu-{1,2,4,6,8}x` (N cpus × 256 MB) or `performance-{1,2,4,8,16}x`
    /// (N × 2048 MB). Unknown presets are a config error naming the preset.
    pub fn preset(name: &str) -> Result<MachineSize> {
        let bad = || {
            Error::config(format!(
                "unknown machine size {name:?}; use shared-cpu-{{1,2,4,6,8}}x or \
                 performance-{{1,2,4,8,16}}x, or cpus and memory_mb"
            ))
        };
        let (kind, n, per_cpu, allowed): (&str, &str, u32, &[u32]) =
            if let Some(n) = name.strip_prefix("shared-cpu-") {
                ("shared", n, 256, &[1, 2, 4, 6, 8])
            } else if let Some(n) = name.strip_prefix("performance-") {
                ("performance", n, 2048, &[1, 2, 4, 8, 16])
            } else {
                return Err(bad());
            };
        let cpus: u32 = n
            .strip_suffix('x')
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        if !allowed.contains(&cpus) {
            return Err(bad());
        }
        Ok(MachineSize {
            cpu_kind: kind.into(),
            cpus,
            memory_mb: cpus * per_cpu,
        })
    }
}

impl Default for MachineSize {
    fn default() -> Self {
        MachineSize {
            cpu_kind: "shared".into(),
            cpus: 1,
            memory_mb: 256,
        }
    }
}

/// Per-queue scaling settings (keys: [`QUEUE_SETTINGS`]).
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Most worker machines of this queue at once (default 5).
    pub max_machines: u32,
    /// Machines kept even when the queue is empty (default 0).
    pub min_machines: u32,
    /// Jobs one machine runs at once (default 1).
    pub concurrency: u32,
    /// How long an idle worker lingers (default 600 s).
    pub wait: Wait,
    /// What an idle worker does when it leaves (default: exit and be destroyed).
    pub pool: PoolMode,
    /// Size of the queue's machines (default shared-cpu-1x).
    pub size: MachineSize,
    /// Regions to create machines in, in order of preference (default: the parent's region).
    pub regions: Vec<String>,
    /// Attempts before a job of this queue goes dead (default 25; a job may override it).
    pub max_attempts: u32,
    /// Most memory an OOM-killed job's machine grows to (default 2048).
    pub max_memory_mb: u32,
    /// Daily spending limit (default none): past it the scaler boots no machine for the queue.
    pub budget: Option<crate::cost::Budget>,
    /// Most one run of a job may cost in dollars (default none); see [`crate::worker`].
    pub max_cost_per_job: Option<f64>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_machines: 5,
            min_machines: 0,
            concurrency: 1,
            wait: Wait::Idle(Duration::from_secs(600)),
            pool: PoolMode::None,
            size: MachineSize::default(),
            regions: Vec::new(),
            max_attempts: 25,
            max_memory_mb: 2048,
            budget: None,
            max_cost_per_job: None,
        }
    }
}

impl QueueSettings {
    /// Apply `{key => value}` settings (an entry of the `queues` option, or the pairs of one
    /// `FLYJOBS_QUEUES` entry as strings) on top of `self`, then validate. `origin` names the
    /// entry in errors (`queues.mail`, `FLYJOBS_QUEUES (mail)`).
    pub fn apply<'a>(
        mut self,
        origin: &Origin,
        settings: impl IntoIterator<Item = (&'a str, &'a Value)>,
    ) -> Result<QueueSettings> {
        let (mut cpus, mut memory) = (None, None);
        for (key, v) in settings {
            let at = origin.child(key);
            match key {
                "max_machines" => self.max_machines = options::integer_u32(&at, 0, v)?,
                "min_machines" => self.min_machines = options::integer_u32(&at, 0, v)?,
                "concurrency" => self.concurrency = options::integer_u32(&at, 1, v)?,
                "wait" => self.wait = Wait::from_value(&at, v)?,
                "pool" => self.pool = PoolMode::from_value(&at, v)?,
                "size" => {
                    self.size =
                        crate::placement::parse_size(&at.to_string(), &options::text(&at, v)?)?;
                }
                "cpus" => cpus = Some(options::integer_u32(&at, 1, v)?),
                "memory_mb" => memory = Some(options::integer_u32(&at, 1, v)?),
                "region" => self.regions = regions(&at, v)?,
                "max_attempts" => self.max_attempts = options::integer_u32(&at, 1, v)?,
                "max_memory_mb" => self.max_memory_mb = options::integer_u32(&at, 256, v)?,
                "budget" => {
                    let text = options::text(&at, v)?;
                    self.budget = match text.trim() {
                        "" | "none" => None,
                        t => Some(
                            crate::cost::Budget::parse(t)
                                .map_err(|e| Error::config(format!("{at}: {e}")))?,
                        ),
                    };
                }
                "max_cost_per_job" => {
                    self.max_cost_per_job = match v {
                        Value::String(t) if matches!(t.trim(), "" | "none") => None,
                        _ => match options::dollars(&at, v)? {
                            0.0 => return Err(options::bad_with(&at, "dollars > 0", v)),
                            d => Some(d),
                        },
                    };
                }
                other => {
                    return Err(options::unknown(
                        origin,
                        "queue setting",
                        other,
                        QUEUE_SETTINGS,
                    ));
                }
            }
        }
        if let Some(c) = cpus {
            self.size.cpus = c;
        }
        if let Some(m) = memory {
            self.size.memory_mb = m;
        }
        self.validate(origin)?;
        Ok(self)
    }

    /// Reject combinations that cannot work, naming `origin`.
    pub fn validate(&self, origin: &Origin) -> Result<()> {
        if self.min_machines > self.max_machines {
            return Err(Error::config(format!(
                "{origin}: min_machines ({}) is above max_machines ({})",
                self.min_machines, self.max_machines
            )));
        }
        for (what, n) in [
            ("concurrency", self.concurrency),
            ("cpus", self.size.cpus),
            ("memory_mb", self.size.memory_mb),
            ("max_attempts", self.max_attempts),
        ] {
            if n == 0 {
                return Err(Error::config(format!(
                    "{origin}: {what} must be >= 1, got 0"
                )));
            }
        }
        Ok(())
    }
}

/// A region list: `["ord", "iad"]` or `"ord|iad"`; no empty names.
fn regions(origin: &Origin, v: &Value) -> Result<Vec<String>> {
    let list: Vec<String> = match v {
        Value::String(s) => s
            .split(['|', ',', ' '])
            .map(|r| r.trim().to_string())
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(|s| s.trim().to_string()))
            .collect::<Option<_>>()
            .ok_or_else(|| options::bad(origin, Kind::Regions, v))?,
        other => return Err(options::bad(origin, Kind::Regions, other)),
    };
    let valid = |r: &String| {
        !r.is_empty()
            && r.len() <= 8
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if list.is_empty() || !list.iter().all(valid) {
        return Err(options::bad_with(
            origin,
            "a list of region codes like \"ord\" (lowercase letters and digits), or \"ord|iad\"",
            v,
        ));
    }
    Ok(list)
}

/// Per-queue settings: the defaults (`*`) and each named queue.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Queues {
    /// Settings of every queue not listed.
    pub default: QueueSettings,
    /// Settings of listed queues.
    pub named: BTreeMap<String, QueueSettings>,
}

impl Queues {
    /// Parse the `queues` option (a map) or `FLYJOBS_QUEUES` (a string:
    /// `name:key=value,key=value;name2:…`). `*` sets the defaults of every queue; a queue listed
    /// twice is an error.
    pub fn from_value(origin: &Origin, value: &Value) -> Result<Queues> {
        // (name, [(key, value)]) in order, from either form.
        let mut entries: Vec<(String, Vec<(String, Value)>)> = Vec::new();
        match value {
            Value::Object(map) => {
                for (name, settings) in map {
                    let at = origin.child(name);
                    let settings = match settings {
                        Value::Null => Vec::new(),
                        other => options::object(&at, other, "a map of queue settings")?
                            .iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    };
                    entries.push((name.clone(), settings));
                }
            }
            Value::String(spec) => {
                for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
                    let (name, pairs) = entry.split_once(':').unwrap_or((entry, ""));
                    let at = origin.child(name.trim());
                    let mut settings = Vec::new();
                    for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').ok_or_else(|| {
                            Error::config(format!("{at}: expected key=value, got {pair:?}"))
                        })?;
                        settings.push((k.trim().to_string(), Value::String(v.trim().to_string())));
                    }
                    entries.push((name.trim().to_string(), settings));
                }
            }
            other => return Err(options::bad(origin, Kind::Queues, other)),
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &entries {
            if !seen.insert(name.as_str()) {
                return Err(Error::config(format!(
                    "{origin}: queue {name:?} is listed twice"
                )));
            }
        }
        let mut queues = Queues::default();
        let pairs = |s: &[(String, Value)]| -> Vec<(String, Value)> { s.to_vec() };
        if let Some((_, s)) = entries.iter().find(|(n, _)| n == "*") {
            let s = pairs(s);
            queues.default = QueueSettings::default()
                .apply(&origin.child("*"), s.iter().map(|(k, v)| (k.as_str(), v)))?;
        }
        for (name, s) in entries.iter().filter(|(n, _)| n != "*") {
            crate::job::validate_queue(name)
                .map_err(|e| Error::config(format!("{origin}: {}", e.message())))?;
            let settings = queues
                .default
                .clone()
                .apply(&origin.child(name), s.iter().map(|(k, v)| (k.as_str(), v)))?;
            queues.named.insert(name.clone(), settings);
        }
        Ok(queues)
    }
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds a [`Config`]: every option not given comes from its env var, then its default.
///
/// Language packages pass their options map to [`ConfigBuilder::options`]; Rust code may use
/// the typed setters. Both end in the same parsers ([`options`]).
#[derive(Default)]
pub struct ConfigBuilder {
    /// Explicit options by key (a key of [`OPTIONS`]); null values are "not given".
    given: BTreeMap<&'static str, Value>,
    lookup: Option<Lookup>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("given", &self.given.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => $conv:expr),* $(,)?) => {$(
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: impl Into<$ty>) -> Self {
            let v: $ty = value.into();
            #[allow(clippy::redundant_closure_call)]
            self.given.insert(stringify!($name), ($conv)(v));
            self
        }
    )*};
}

fn secs(d: Duration) -> Value {
    serde_json::json!(d.as_secs_f64())
}

impl ConfigBuilder {
    setters! {
        /// Explicit `api_token` (`FLY_API_TOKEN`).
        api_token: String => Value::String,
        /// Explicit `api_hostname` (`FLY_API_HOSTNAME`).
        api_hostname: String => Value::String,
        /// Explicit `app_name` (`FLY_APP_NAME`).
        app_name: String => Value::String,
        /// Explicit `image_ref` (`FLY_IMAGE_REF`).
        image_ref: String => Value::String,
        /// Explicit `machine_id` (`FLY_MACHINE_ID`).
        machine_id: String => Value::String,
        /// Explicit `region` (`FLY_REGION`).
        region: String => Value::String,
        /// Explicit `database_url` (`FLYJOBS_DATABASE_URL`).
        database_url: String => Value::String,
        /// Explicit `worker_app` (`FLYJOBS_WORKER_APP`).
        worker_app: String => Value::String,
        /// Explicit `max_payload_bytes` (`FLYJOBS_MAX_PAYLOAD_BYTES`).
        max_payload_bytes: usize => |v: usize| serde_json::json!(v),
        /// Explicit `request_timeout` (`FLYJOBS_REQUEST_TIMEOUT`).
        request_timeout: Duration => secs,
        /// Explicit `queues` in the `FLYJOBS_QUEUES` string form.
        queues: String => Value::String,
        /// Explicit `max_machines` (`FLYJOBS_MAX_MACHINES`).
        max_machines: u32 => |v: u32| serde_json::json!(v),
        /// Explicit `worker_command` (`FLYJOBS_WORKER_COMMAND`).
        worker_command: Vec<String> => |v: Vec<String>| serde_json::json!(v),
        /// Explicit `env_allowlist` (`FLYJOBS_ENV_ALLOWLIST`).
        env_allowlist: Vec<String> => |v: Vec<String>| serde_json::json!(v),
        /// Explicit `boot_timeout` (`FLYJOBS_BOOT_TIMEOUT`).
        boot_timeout: Duration => secs,
        /// Explicit `lease_duration` (`FLYJOBS_LEASE_DURATION`).
        lease_duration: Duration => secs,
        /// Explicit `shutdown_timeout` (`FLYJOBS_SHUTDOWN_TIMEOUT`).
        shutdown_timeout: Duration => secs,
        /// Explicit `pin_for` (`FLYJOBS_PIN_FOR`).
        pin_for: Duration => secs,
        /// Explicit `prices` in the `FLYJOBS_PRICES` string form (`"name=value,…"`).
        prices: String => Value::String,
        /// Explicit `retain_completed` (`FLYJOBS_RETAIN_COMPLETED`).
        retain_completed: Duration => secs,
        /// Explicit `retain_dead` (`FLYJOBS_RETAIN_DEAD`).
        retain_dead: Duration => secs,
    }

    /// Set one option by its key (a key of [`OPTIONS`]). A null value means "not given" (the
    /// env var and default apply). An unknown key is an error listing the known ones; values
    /// are checked in [`ConfigBuilder::build`].
    pub fn set(mut self, key: &str, value: Value) -> Result<Self> {
        let spec = OPTIONS.iter().find(|s| s.name == key).ok_or_else(|| {
            options::unknown(&Origin::Option(String::new()), "option", key, OPTIONS)
        })?;
        if value.is_null() {
            self.given.remove(spec.name);
        } else {
            self.given.insert(spec.name, value);
        }
        Ok(self)
    }

    /// Set every option of a map (`{"database_url": …, "queues": {"mail": {…}}}`), as the
    /// language packages pass them.
    pub fn options(mut self, options: &serde_json::Map<String, Value>) -> Result<Self> {
        for (k, v) in options {
            self = self.set(k, v.clone())?;
        }
        Ok(self)
    }

    /// Read env vars through `lookup` instead of the process environment (tests pass a map).
    #[must_use]
    pub fn lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.lookup = Some(Box::new(lookup));
        self
    }

    /// An env var: `None` if unset or blank; an error if it is not UTF-8 (it would otherwise
    /// look unset, and e.g. a database URL would silently fall back to the local default).
    fn env(&self, var: &str) -> Result<Option<String>> {
        let v = match &self.lookup {
            Some(l) => l(var),
            None => match std::env::var(var) {
                Ok(v) => Some(v),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Error::config(format!("{var} is not valid UTF-8")));
                }
            },
        };
        Ok(v.filter(|v| !v.trim().is_empty()))
    }

    /// The value of option `key`: given, else its env var (as a string); with its origin.
    fn value(&self, key: &'static str) -> Result<Option<(Origin, Value)>> {
        if let Some(v) = self.given.get(key) {
            return Ok(Some((Origin::Option(key.into()), v.clone())));
        }
        let spec = OPTIONS
            .iter()
            .find(|s| s.name == key)
            .expect("every key read by build() is in OPTIONS");
        Ok(self
            .env(spec.env)?
            .map(|v| (Origin::Env(spec.env.into()), Value::String(v))))
    }

    fn text(&self, key: &'static str) -> Result<Option<String>> {
        self.value(key)?
            .map(|(o, v)| options::text(&o, &v))
            .transpose()
    }

    fn duration(&self, key: &'static str, default: Duration) -> Result<Duration> {
        Ok(self
            .value(key)?
            .map(|(o, v)| options::duration(&o, &v))
            .transpose()?
            .unwrap_or(default))
    }

    fn integer(&self, key: &'static str, min: u64, default: u64) -> Result<u64> {
        Ok(self
            .value(key)?
            .map(|(o, v)| options::integer(&o, min, &v))
            .transpose()?
            .unwrap_or(default))
    }

    /// Resolve every setting and validate it.
    pub fn build(self) -> Result<Config> {
        let api_hostname = match self.value("api_hostname")? {
            Some((origin, v)) => {
                let url = options::text(&origin, &v)?;
                match url::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => url,
                    _ => return Err(options::bad(&origin, Kind::Url, &v)),
                }
            }
            None => DEFAULT_API_HOSTNAME.to_string(),
        };
        let max_payload_bytes = usize::try_from(self.integer(
            "max_payload_bytes",
            1,
            DEFAULT_MAX_PAYLOAD_BYTES as u64,
        )?)
        .map_err(|_| Error::config("max_payload_bytes is too large"))?;
        let request_timeout = self.duration("request_timeout", Duration::from_secs(30))?;

        let database_url = match self.value("database_url")? {
            Some((origin, v)) => Some(validate_database_url(
                &origin,
                &options::text(&origin, &v)?,
            )?),
            None => None,
        };

        let queues = match self.value("queues")? {
            Some((origin, v)) => Queues::from_value(&origin, &v)?,
            None => Queues::default(),
        };
        let max_machines = u32::try_from(self.integer("max_machines", 1, 20)?)
            .map_err(|_| Error::config("max_machines is too large"))?;
        let worker_command = match self.value("worker_command")? {
            Some((origin, v)) => {
                let words = options::words(&origin, &v)?;
                if words.is_empty() {
                    return Err(options::bad_with(&origin, "a non-empty command", &v));
                }
                Some(words)
            }
            None => None,
        };
        let env_allowlist = match self.value("env_allowlist")? {
            Some((origin, v)) => options::words(&origin, &v)?,
            None => Vec::new(),
        };
        let boot_timeout = self.duration("boot_timeout", Duration::from_secs(60))?;
        let lease_duration = self.duration("lease_duration", Duration::from_secs(30))?;
        if lease_duration < Duration::from_secs(1) {
            let (origin, v) = self
                .value("lease_duration")?
                .expect("set when below the default");
            return Err(options::bad_with(&origin, "a duration of at least 1s", &v));
        }
        let shutdown_timeout = self.duration("shutdown_timeout", Duration::from_secs(4))?;
        let pin_for = self.duration("pin_for", Duration::from_secs(3600))?;
        let prices = match self.value("prices")? {
            Some((origin, v)) => options::prices(&origin, &v)?,
            None => crate::cost::Prices::default(),
        };
        let retain_completed =
            self.duration("retain_completed", crate::store::DEFAULT_RETAIN_COMPLETED)?;
        let retain_dead = self.duration("retain_dead", crate::store::DEFAULT_RETAIN_DEAD)?;

        Ok(Config {
            default_queue: queues.default,
            queues: queues.named,
            max_machines,
            worker_command,
            env_allowlist,
            boot_timeout,
            lease_duration,
            shutdown_timeout,
            pin_for,
            prices,
            retain_completed,
            retain_dead,
            api_token: self.text("api_token")?.map(Secret),
            api_hostname: api_hostname.trim_end_matches('/').to_string(),
            app_name: self.text("app_name")?,
            image_ref: self.text("image_ref")?,
            machine_id: self.text("machine_id")?,
            region: self.text("region")?,
            database_url,
            worker_app: self.text("worker_app")?,
            max_payload_bytes,
            request_timeout,
        })
    }
}

/// A database URL the stores can open and that keeps jobs: `postgres://…`, `postgresql://…` or
/// `sqlite:` with a file path. `sqlite::memory:` and a `sqlite://` without a path are refused:
/// each connection would get its own throwaway database and enqueued jobs would vanish.
fn validate_database_url(origin: &Origin, url: &str) -> Result<String> {
    let shown = redact_url(url);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_string());
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or("");
        if path.is_empty() || path == ":memory:" || rest.contains("mode=memory") {
            return Err(Error::config(format!(
                "{origin}: {shown:?} names no database file (an in-memory SQLite database is \
                 private to one connection, so jobs would be lost); use sqlite://path/to/jobs.db"
            )));
        }
        return Ok(url.to_string());
    }
    Err(Error::config(format!(
        "{origin} must start with postgres://, postgresql:// or sqlite:, got {shown:?}"
    )))
}

/// Parse a duration given to a command-line flag or read by hand (`--in 5m`), naming it.
pub fn parse_duration(name: &str, value: &str) -> Result<Duration> {
    options::duration(&Origin::Env(name.into()), &Value::String(value.into()))
}

/// A database URL with its password replaced by `***`, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // Not a URL we can parse: hide everything between "://" and "@".
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(a)) if a > s => format!("{}://***{}", &url[..s], &url[a..]),
            _ => url.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(pairs: &[(&str, &str)]) -> Result<Config> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::builder()
            .lookup(move |k| env.get(k).cloned())
            .build()
    }

    #[test]
    fn retention_is_a_setting_the_store_takes() {
        let day = Duration::from_secs(24 * 3600);
        let c = build(&[]).unwrap();
        assert_eq!(c.retain_completed(), day);
        assert_eq!(c.retain_dead(), 183 * day);
        let c = build(&[
            ("FLYJOBS_RETAIN_COMPLETED", "90m"),
            ("FLYJOBS_RETAIN_DEAD", "30d"),
        ])
        .unwrap();
        let opts = crate::store::StoreOptions::from_config(&c);
        assert_eq!(opts.retain_completed, Duration::from_secs(90 * 60));
        assert_eq!(opts.retain_dead, 30 * day);
        let mut options = serde_json::Map::new();
        options.insert("retain_completed".into(), serde_json::json!("2h"));
        options.insert("retain_dead".into(), serde_json::json!(3600));
        let c = Config::builder()
            .lookup(|_| None)
            .options(&options)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.retain_completed(), Duration::from_secs(7200));
        assert_eq!(c.retain_dead(), Duration::from_secs(3600));
        let e = build(&[("FLYJOBS_RETAIN_DEAD", "half a year")]).unwrap_err();
        assert!(e.to_string().contains("FLYJOBS_RETAIN_DEAD"), "{e}");
        assert!(e.to_string().contains("half a year"), "{e}");
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = build(&[]).unwrap();
        assert_eq!(c.api_hostname(), DEFAULT_API_HOSTNAME);
        assert_eq!(c.max_payload_bytes(), DEFAULT_MAX_PAYLOAD_BYTES);
        assert!(!c.on_fly());
        assert!(c.api_token().is_none());
    }

    #[test]
    fn explicit_beats_env() {
        let env = HashMap::from([("FLY_APP_NAME".to_string(), "from-env".to_string())]);
        let c = Config::builder()
            .app_name("explicit")
            .lookup(move |k| env.get(k).cloned())
            .build()
            .unwrap();
        assert_eq!(c.app_name(), Some("explicit"));
    }

    #[test]
    fn token_is_redacted_everywhere() {
        let c = build(&[("FLY_API_TOKEN", "FlyV1 fm2_topsecret")]).unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
        assert_eq!(c.api_token().unwrap().expose(), "FlyV1 fm2_topsecret");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = build(&[("FLYJOBS_MAX_PAYLOAD_BYTES", "lots")]).unwrap_err();
        assert!(e.to_string().contains("FLYJOBS_MAX_PAYLOAD_BYTES"), "{e}");
        let e = build(&[("FLY_API_HOSTNAME", "ftp://x")]).unwrap_err();
        assert!(e.to_string().contains("FLY_API_HOSTNAME"), "{e}");
        let e = build(&[("FLYJOBS_DATABASE_URL", "mysql://u:pw@h/db")]).unwrap_err();
        assert!(e.to_string().contains("FLYJOBS_DATABASE_URL"), "{e}");
        assert!(!e.to_string().contains("pw@"), "{e}");
    }

    #[test]
    fn prices_override_fly_s_one_by_one_and_bad_ones_are_named() {
        let fly = crate::cost::Prices::default();
        assert_eq!(build(&[]).unwrap().prices(), &fly);
        let c = build(&[("FLYJOBS_PRICES", "memory_gb_per_s=0.000002, rootfs_gb=$3")]).unwrap();
        assert_eq!(c.prices().memory_gb_per_s, 0.000002);
        assert_eq!(c.prices().rootfs_gb, 3.0);
        assert_eq!(c.prices().shared_cpu_per_s, fly.shared_cpu_per_s);
        let map = serde_json::json!({"prices": {"performance_cpu_per_s": 0.00001}});
        let c = Config::from_options(map.as_object().unwrap()).unwrap();
        assert_eq!(c.prices().performance_cpu_per_s, 0.00001);
        let e = build(&[("FLYJOBS_PRICES", "gpu_per_s=1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLYJOBS_PRICES") && e.contains("unknown price \"gpu_per_s\""),
            "{e}"
        );
        assert!(e.contains("memory_gb_per_s"), "lists the known ones: {e}");
        let map = serde_json::json!({"prices": {"memory_gb_per_s": -1}});
        let e = Config::from_options(map.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prices.memory_gb_per_s must be a number of dollars >= 0"),
            "{e}"
        );
        let e = build(&[("FLYJOBS_PRICES", "cheap")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLYJOBS_PRICES must be a map of prices"), "{e}");
    }

    #[test]
    fn max_cost_per_job_takes_dollars_and_names_a_bad_value() {
        let c = build(&[(
            "FLYJOBS_QUEUES",
            "a:max_cost_per_job=$0.05;b:max_cost_per_job=1",
        )])
        .unwrap();
        assert_eq!(c.queue("a").max_cost_per_job, Some(0.05));
        assert_eq!(c.queue("b").max_cost_per_job, Some(1.0));
        assert_eq!(c.queue("other").max_cost_per_job, None);
        for bad in ["0", "-1", "cheap", "$"] {
            let e = build(&[("FLYJOBS_QUEUES", &format!("a:max_cost_per_job={bad}"))])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("max_cost_per_job") && e.contains("dollars"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn queues_parse_with_defaults_and_star() {
        let c = build(&[(
            "FLYJOBS_QUEUES",
            "*:concurrency=2;mail:max_machines=2,wait=forever,min_machines=1,pool=suspend;img:size=performance-2x",
        )])
        .unwrap();
        let mail = c.queue("mail");
        assert_eq!(
            (mail.max_machines, mail.min_machines, mail.concurrency),
            (2, 1, 2)
        );
        assert_eq!(mail.wait, Wait::Forever);
        assert_eq!(mail.pool, PoolMode::Suspend);
        assert_eq!(
            c.queue("img").size,
            MachineSize {
                cpu_kind: "performance".into(),
                cpus: 2,
                memory_mb: 4096
            }
        );
        assert_eq!(c.queue("unlisted").concurrency, 2);
        assert_eq!(c.queue("unlisted").max_machines, 5);
    }

    #[test]
    fn bad_queue_settings_are_named() {
        for (spec, needle) in [
            ("mail:max_machines=-1", "max_machines"),
            ("mail:min_machines=3,max_machines=2", "min_machines"),
            ("mail:size=huge-9x", "huge-9x"),
            ("mail:colour=red", "colour"),
            ("bad queue!:max=1", "bad queue!"),
            ("mail:concurrency=0", "concurrency"),
        ] {
            let e = build(&[("FLYJOBS_QUEUES", spec)]).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            assert!(e.to_string().contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn presets() {
        assert_eq!(MachineSize::preset("shared-cpu-2x").unwrap().memory_mb, 512);
        assert_eq!(
            MachineSize::preset("performance-4x").unwrap().memory_mb,
            8192
        );
        assert!(MachineSize::preset("shared-cpu-3x").is_err());
    }

    #[test]
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.internal:5432/jobs"),
            "postgres://app:***@db.internal:5432/jobs"
        );
        assert_eq!(redact_url("sqlite://jobs.db"), "sqlite://jobs.db");
    }
}
