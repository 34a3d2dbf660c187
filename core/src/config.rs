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

use crate::error::{Error, Result};

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
    /// Parse `600`, `10m` or `forever`.
    pub fn parse(var: &str, value: &str) -> Result<Wait> {
        if value.trim().eq_ignore_ascii_case("forever") {
            Ok(Wait::Forever)
        } else {
            parse_duration(var, value).map(Wait::Idle)
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
    fn parse(var: &str, value: &str) -> Result<PoolMode> {
        match value.trim() {
            "" | "none" | "off" => Ok(PoolMode::None),
            "stop" | "stopped" => Ok(PoolMode::Stop),
            "suspend" | "suspended" => Ok(PoolMode::Suspend),
            other => Err(Error::config(format!(
                "{var}: pool must be none, stop or suspend, got {other:?}"
            ))),
        }
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

/// Per-queue scaling settings.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }
}

impl QueueSettings {
    /// Apply `key=value` pairs (as in `FLYJOBS_QUEUES`) on top of `self`; `var` names the
    /// setting in errors.
    pub fn apply(mut self, var: &str, pairs: &str) -> Result<QueueSettings> {
        let mut cpus = None;
        let mut memory = None;
        for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::config(format!("{var}: expected key=value, got {pair:?}")))?;
            let (k, v) = (k.trim(), v.trim());
            let num = |v: &str| -> Result<u32> {
                v.parse::<u32>().map_err(|_| {
                    Error::config(format!(
                        "{var}: {k} must be a non-negative integer, got {v:?}"
                    ))
                })
            };
            match k {
                "max_machines" | "max" => self.max_machines = num(v)?,
                "min_machines" | "min" => self.min_machines = num(v)?,
                "concurrency" => self.concurrency = num(v)?,
                "wait" => self.wait = Wait::parse(&format!("{var}: wait"), v)?,
                "pool" => self.pool = PoolMode::parse(var, v)?,
                "size" => self.size = MachineSize::preset(v)?,
                "cpus" => cpus = Some(num(v)?),
                "memory_mb" | "memory" => memory = Some(num(v)?),
                "region" | "regions" => {
                    self.regions = v.split('|').map(|r| r.trim().to_string()).collect();
                }
                "max_attempts" => self.max_attempts = num(v)?,
                other => {
                    return Err(Error::config(format!(
                        "{var}: unknown queue setting {other:?} (known: max_machines, \
                         min_machines, concurrency, wait, pool, size, cpus, memory_mb, region, \
                         max_attempts)"
                    )));
                }
            }
        }
        if let Some(c) = cpus {
            self.size.cpus = c;
        }
        if let Some(m) = memory {
            self.size.memory_mb = m;
        }
        self.validate(var)?;
        Ok(self)
    }

    /// Reject settings that cannot work, naming `var`.
    pub fn validate(&self, var: &str) -> Result<()> {
        if self.concurrency == 0 {
            return Err(Error::config(format!("{var}: concurrency must be >= 1")));
        }
        if self.min_machines > self.max_machines {
            return Err(Error::config(format!(
                "{var}: min_machines ({}) is above max_machines ({})",
                self.min_machines, self.max_machines
            )));
        }
        if self.size.cpus == 0 || self.size.memory_mb == 0 {
            return Err(Error::config(format!(
                "{var}: cpus and memory_mb must be >= 1"
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::config(format!("{var}: max_attempts must be >= 1")));
        }
        Ok(())
    }
}

/// Parse `FLYJOBS_QUEUES`: `name:key=value,key=value;name2:…`. A `*` entry sets the defaults
/// for every queue not listed.
pub fn parse_queues(
    var: &str,
    spec: &str,
) -> Result<(QueueSettings, BTreeMap<String, QueueSettings>)> {
    let mut default = QueueSettings::default();
    let mut entries = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, pairs) = entry.split_once(':').unwrap_or((entry, ""));
        let name = name.trim();
        if name == "*" {
            default = default.apply(&format!("{var} (*)"), pairs)?;
        } else {
            crate::job::validate_queue(name)
                .map_err(|e| Error::config(format!("{var}: {}", e.message())))?;
            entries.push((name.to_string(), pairs.to_string()));
        }
    }
    let mut queues = BTreeMap::new();
    for (name, pairs) in entries {
        let settings = default.clone().apply(&format!("{var} ({name})"), &pairs)?;
        queues.insert(name, settings);
    }
    Ok((default, queues))
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds a [`Config`]; every field not set explicitly comes from its env var, then its default.
#[derive(Default)]
pub struct ConfigBuilder {
    api_token: Option<String>,
    api_hostname: Option<String>,
    app_name: Option<String>,
    image_ref: Option<String>,
    machine_id: Option<String>,
    region: Option<String>,
    database_url: Option<String>,
    worker_app: Option<String>,
    max_payload_bytes: Option<usize>,
    request_timeout: Option<Duration>,
    queues: Option<String>,
    queue_overrides: Vec<(String, QueueSettings)>,
    max_machines: Option<u32>,
    worker_command: Option<Vec<String>>,
    env_allowlist: Option<Vec<String>>,
    boot_timeout: Option<Duration>,
    lease_duration: Option<Duration>,
    lookup: Option<Lookup>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("api_hostname", &self.api_hostname)
            .field("app_name", &self.app_name)
            .finish_non_exhaustive()
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {$(
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: impl Into<$ty>) -> Self {
            self.$name = Some(value.into());
            self
        }
    )*};
}

impl ConfigBuilder {
    setters! {
        /// Explicit `FLY_API_TOKEN`.
        api_token: String,
        /// Explicit `FLY_API_HOSTNAME`.
        api_hostname: String,
        /// Explicit `FLY_APP_NAME`.
        app_name: String,
        /// Explicit `FLY_IMAGE_REF`.
        image_ref: String,
        /// Explicit `FLY_MACHINE_ID`.
        machine_id: String,
        /// Explicit `FLY_REGION`.
        region: String,
        /// Explicit `FLYJOBS_DATABASE_URL`.
        database_url: String,
        /// Explicit `FLYJOBS_WORKER_APP`.
        worker_app: String,
        /// Explicit `FLYJOBS_MAX_PAYLOAD_BYTES`.
        max_payload_bytes: usize,
        /// Explicit `FLYJOBS_REQUEST_TIMEOUT`.
        request_timeout: Duration,
        /// Explicit `FLYJOBS_QUEUES` (`name:key=value,…;name2:…`).
        queues: String,
        /// Explicit `FLYJOBS_MAX_MACHINES`.
        max_machines: u32,
        /// Explicit `FLYJOBS_WORKER_COMMAND`.
        worker_command: Vec<String>,
        /// Explicit `FLYJOBS_ENV_ALLOWLIST`.
        env_allowlist: Vec<String>,
        /// Explicit `FLYJOBS_BOOT_TIMEOUT`.
        boot_timeout: Duration,
        /// Explicit `FLYJOBS_LEASE_DURATION`.
        lease_duration: Duration,
    }

    /// Settings of one queue, given as a value (language packages: `queues: {mail: {…}}`);
    /// overrides `FLYJOBS_QUEUES` for that queue.
    #[must_use]
    pub fn queue(mut self, name: impl Into<String>, settings: QueueSettings) -> Self {
        self.queue_overrides.push((name.into(), settings));
        self
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

    /// Resolve every setting and validate it.
    pub fn build(self) -> Result<Config> {
        let env = |k: &str| -> Option<String> {
            let v = match &self.lookup {
                Some(l) => l(k),
                None => std::env::var(k).ok(),
            };
            v.filter(|v| !v.trim().is_empty())
        };
        let pick = |explicit: &Option<String>, var: &str| explicit.clone().or_else(|| env(var));

        let api_hostname = pick(&self.api_hostname, "FLY_API_HOSTNAME")
            .unwrap_or_else(|| DEFAULT_API_HOSTNAME.to_string());
        let parsed = url::Url::parse(&api_hostname).map_err(|e| {
            Error::config(format!(
                "FLY_API_HOSTNAME is not a URL ({e}): {api_hostname:?}"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::config(format!(
                "FLY_API_HOSTNAME must be http:// or https://, got {api_hostname:?}"
            )));
        }

        let max_payload_bytes = match self.max_payload_bytes {
            Some(v) => v,
            None => match env("FLYJOBS_MAX_PAYLOAD_BYTES") {
                Some(v) => parse_positive("FLYJOBS_MAX_PAYLOAD_BYTES", &v)?,
                None => DEFAULT_MAX_PAYLOAD_BYTES,
            },
        };
        if max_payload_bytes == 0 {
            return Err(Error::config("FLYJOBS_MAX_PAYLOAD_BYTES must be > 0"));
        }
        let request_timeout = match self.request_timeout {
            Some(v) => v,
            None => match env("FLYJOBS_REQUEST_TIMEOUT") {
                Some(v) => parse_duration("FLYJOBS_REQUEST_TIMEOUT", &v)?,
                None => Duration::from_secs(30),
            },
        };

        let database_url = pick(&self.database_url, "FLYJOBS_DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return Err(Error::config(format!(
                "FLYJOBS_DATABASE_URL must start with postgres://, postgresql:// or sqlite:, got {:?}",
                redact_url(url)
            )));
        }

        let queues_spec = pick(&self.queues, "FLYJOBS_QUEUES").unwrap_or_default();
        let (default_queue, mut queues) = parse_queues("FLYJOBS_QUEUES", &queues_spec)?;
        for (name, settings) in &self.queue_overrides {
            crate::job::validate_queue(name)
                .map_err(|e| Error::config(format!("queue settings: {}", e.message())))?;
            settings.validate(&format!("queue {name}"))?;
            queues.insert(name.clone(), settings.clone());
        }
        let max_machines = match self.max_machines {
            Some(v) => v,
            None => match env("FLYJOBS_MAX_MACHINES") {
                Some(v) => u32::try_from(parse_positive("FLYJOBS_MAX_MACHINES", &v)?)
                    .map_err(|_| Error::config("FLYJOBS_MAX_MACHINES is too large"))?,
                None => 20,
            },
        };
        let words = |v: String| -> Vec<String> {
            v.split([',', ' '])
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        let worker_command = self.worker_command.clone().or_else(|| {
            env("FLYJOBS_WORKER_COMMAND")
                .map(|v| v.split_whitespace().map(str::to_string).collect())
        });
        if worker_command.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config("FLYJOBS_WORKER_COMMAND is empty"));
        }
        let env_allowlist = self
            .env_allowlist
            .clone()
            .or_else(|| env("FLYJOBS_ENV_ALLOWLIST").map(words))
            .unwrap_or_default();
        let dur = |explicit: Option<Duration>, var: &str, default: u64| -> Result<Duration> {
            match explicit {
                Some(d) => Ok(d),
                None => match env(var) {
                    Some(v) => parse_duration(var, &v),
                    None => Ok(Duration::from_secs(default)),
                },
            }
        };
        let boot_timeout = dur(self.boot_timeout, "FLYJOBS_BOOT_TIMEOUT", 60)?;
        let lease_duration = dur(self.lease_duration, "FLYJOBS_LEASE_DURATION", 30)?;
        if lease_duration < Duration::from_secs(1) {
            return Err(Error::config("FLYJOBS_LEASE_DURATION must be at least 1s"));
        }

        Ok(Config {
            queues,
            default_queue,
            max_machines,
            worker_command,
            env_allowlist,
            boot_timeout,
            lease_duration,
            api_token: pick(&self.api_token, "FLY_API_TOKEN").map(Secret),
            api_hostname: api_hostname.trim_end_matches('/').to_string(),
            app_name: pick(&self.app_name, "FLY_APP_NAME"),
            image_ref: pick(&self.image_ref, "FLY_IMAGE_REF"),
            machine_id: pick(&self.machine_id, "FLY_MACHINE_ID"),
            region: pick(&self.region, "FLY_REGION"),
            database_url,
            worker_app: pick(&self.worker_app, "FLYJOBS_WORKER_APP"),
            max_payload_bytes,
            request_timeout,
        })
    }
}

/// Parse a positive integer setting, naming the variable on error.
pub fn parse_positive(var: &str, value: &str) -> Result<usize> {
    value.trim().parse::<usize>().map_err(|_| {
        Error::config(format!(
            "{var} must be a non-negative integer, got {value:?}"
        ))
    })
}

/// Parse a duration setting: plain seconds (`600`) or humantime (`10m`, `1h 30m`).
pub fn parse_duration(var: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| {
        Error::config(format!(
            "{var} must be seconds or a duration like 10m, got {value:?} ({e})"
        ))
    })
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
    fn queues_parse_with_defaults_and_star() {
        let c = build(&[(
            "FLYJOBS_QUEUES",
            "*:concurrency=2;mail:max_machines=2,wait=forever,min=1,pool=suspend;img:size=performance-2x",
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
            ("mail:min=3,max=2", "min_machines"),
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
