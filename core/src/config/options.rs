//! The one vocabulary of settings: every option's name (the same in Ruby, Python, Node, the CLI
//! and the environment), its env var, what it accepts, and the parsers that turn a structured
//! value into a setting.
//!
//! Language packages hand the core a map of options as JSON-like values (string, number, bool,
//! list, nested map); the environment hands it strings. Both go through the same parser of the
//! option's [`Kind`], so `max_machines: 2` (Ruby), `max_machines=2` (`FLYJOBS_QUEUES`) and
//! `FLYJOBS_MAX_MACHINES=2` accept the same values and fail with the same words. An error names
//! where the value came from ([`Origin`]): the option's key, or the env var.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// What an option accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// A URL (`http://`, `https://`).
    Url,
    /// An integer `>= min`, given as a number or a string of digits.
    Integer {
        /// Smallest accepted value.
        min: u64,
    },
    /// A duration: seconds as a number (`30`, `0.5`) or a string (`"30"`, `"10m"`, `"1h 30m"`).
    Duration,
    /// A duration, or `forever`.
    Wait,
    /// A list of words: a list of strings, or one string split on spaces and commas.
    Words,
    /// A list of regions: a list of strings, or one string split on `|` (or `,` and spaces).
    Regions,
    /// One of fixed names.
    OneOf(&'static [&'static str]),
    /// Prices overriding Fly's: a map of price names to dollars, or `"name=value,…"`.
    Prices,
    /// Per-queue settings: a map `{queue => {setting => value}}` (`"*"` sets the defaults), or
    /// the `FLYJOBS_QUEUES` string `name:key=value,key=value;name2:…`.
    Queues,
}

impl Kind {
    /// What the kind accepts, in words for error messages and the docs.
    pub fn accepts(self) -> String {
        match self {
            Kind::Text => "a string".into(),
            Kind::Url => "an http:// or https:// URL".into(),
            Kind::Integer { min } => format!("an integer >= {min}"),
            Kind::Duration => "seconds (a number) or a duration like \"30s\", \"10m\"".into(),
            Kind::Wait => "seconds (a number), a duration like \"10m\", or \"forever\"".into(),
            Kind::Words => "a list of strings, or one string of words".into(),
            Kind::Regions => "a list of region codes, or \"ord|iad\"".into(),
            Kind::OneOf(names) => format!("one of {}", names.join(", ")),
            Kind::Prices => format!(
                "a map of prices in dollars (any of {}), or \"name=value,…\"",
                crate::cost::Prices::NAMES.join(", ")
            ),
            Kind::Queues => "a map of queue name to settings, or \
                \"name:key=value,…;name2:…\""
                .into(),
        }
    }
}

/// One setting of the client, or of one queue.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    /// The key, in every language and in `FLYJOBS_QUEUES` (snake_case; camelCase in JS).
    pub name: &'static str,
    /// The environment variable read when the option is not given ("" for none).
    pub env: &'static str,
    /// What it accepts.
    pub kind: Kind,
    /// The default, in words.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

const POOL: &[&str] = &["none", "stop", "suspend"];

/// Options of a client (`Client.open`, `config.flyjobs`, `flyjobs.configure`, `configure({...})`).
/// The README's settings table is this list.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "api_token",
        env: "FLY_API_TOKEN",
        kind: Kind::Text,
        default: "required on Fly",
        doc: "Machines API token (`fly tokens create deploy`); keep it a Fly secret. Never logged, \
              never given to a worker machine.",
    },
    OptionSpec {
        name: "api_hostname",
        env: "FLY_API_HOSTNAME",
        kind: Kind::Url,
        default: "https://api.machines.dev",
        doc: "Machines API base URL.",
    },
    OptionSpec {
        name: "app_name",
        env: "FLY_APP_NAME",
        kind: Kind::Text,
        default: "set by Fly",
        doc: "The app whose machines run the workers.",
    },
    OptionSpec {
        name: "image_ref",
        env: "FLY_IMAGE_REF",
        kind: Kind::Text,
        default: "set by Fly",
        doc: "The image worker machines boot; jobs remember the release that enqueued them.",
    },
    OptionSpec {
        name: "machine_id",
        env: "FLY_MACHINE_ID",
        kind: Kind::Text,
        default: "set by Fly",
        doc: "This machine's id; set means \"on Fly\" (unset: the embedded default).",
    },
    OptionSpec {
        name: "region",
        env: "FLY_REGION",
        kind: Kind::Text,
        default: "set by Fly",
        doc: "This machine's region.",
    },
    OptionSpec {
        name: "database_url",
        env: "FLYJOBS_DATABASE_URL",
        kind: Kind::Text,
        default: "sqlite://./flyjobs.sqlite3 off Fly; required on Fly",
        doc: "The queue: `postgres://…` or `sqlite://path`.",
    },
    OptionSpec {
        name: "queues",
        env: "FLYJOBS_QUEUES",
        kind: Kind::Queues,
        default: "see the queue settings",
        doc: "Per-queue settings; `*` sets the defaults of every queue.",
    },
    OptionSpec {
        name: "max_machines",
        env: "FLYJOBS_MAX_MACHINES",
        kind: Kind::Integer { min: 1 },
        default: "20",
        doc: "Worker machines of all queues together.",
    },
    OptionSpec {
        name: "worker_app",
        env: "FLYJOBS_WORKER_APP",
        kind: Kind::Text,
        default: "the same app",
        doc: "Create workers in a separate app (credential isolation).",
    },
    OptionSpec {
        name: "worker_command",
        env: "FLYJOBS_WORKER_COMMAND",
        kind: Kind::Words,
        default: "the language's worker",
        doc: "What a worker machine runs; the scaler appends `--queues Q --concurrency N --wait W`.",
    },
    OptionSpec {
        name: "env_allowlist",
        env: "FLYJOBS_ENV_ALLOWLIST",
        kind: Kind::Words,
        default: "none",
        doc: "Process env vars copied into worker machines (never a token).",
    },
    OptionSpec {
        name: "max_payload_bytes",
        env: "FLYJOBS_MAX_PAYLOAD_BYTES",
        kind: Kind::Integer { min: 1 },
        default: "1048576",
        doc: "Largest encoded job payload.",
    },
    OptionSpec {
        name: "request_timeout",
        env: "FLYJOBS_REQUEST_TIMEOUT",
        kind: Kind::Duration,
        default: "30s",
        doc: "Timeout of one Machines API request.",
    },
    OptionSpec {
        name: "prices",
        env: "FLYJOBS_PRICES",
        kind: Kind::Prices,
        default: "Fly's published prices",
        doc: "Override the per-second prices used for cost and budgets, e.g. \
              `memory_gb_per_s=0.0000021` (a negotiated rate, another currency's figures).",
    },
    OptionSpec {
        name: "lease_duration",
        env: "FLYJOBS_LEASE_DURATION",
        kind: Kind::Duration,
        default: "30s",
        doc: "A claimed job's lease without a heartbeat (at least 1s).",
    },
    OptionSpec {
        name: "boot_timeout",
        env: "FLYJOBS_BOOT_TIMEOUT",
        kind: Kind::Duration,
        default: "60s",
        doc: "A machine that never registers as a worker is replaced after this.",
    },
    OptionSpec {
        name: "shutdown_timeout",
        env: "FLYJOBS_SHUTDOWN_TIMEOUT",
        kind: Kind::Duration,
        default: "4s",
        doc: "Grace for running jobs when a worker is told to stop (SIGTERM).",
    },
    OptionSpec {
        name: "retain_completed",
        env: "FLYJOBS_RETAIN_COMPLETED",
        kind: Kind::Duration,
        default: "24h",
        doc: "How long a completed job is kept (for inspection) before the scaler's leader deletes it.",
    },
    OptionSpec {
        name: "retain_dead",
        env: "FLYJOBS_RETAIN_DEAD",
        kind: Kind::Duration,
        default: "183d",
        doc: "How long dead and discarded jobs are kept (for inspection and manual retry) before \
              the scaler's leader deletes them.",
    },
    OptionSpec {
        name: "pin_for",
        env: "FLYJOBS_PIN_FOR",
        kind: Kind::Duration,
        default: "1h",
        doc: "A job runs on the release (image) that enqueued it for this long; older jobs may \
              run on the current release. Machines of an old release boot only for its pinned jobs.",
    },
];

/// Settings of one queue: keys of an entry of `queues` and of `FLYJOBS_QUEUES`.
pub const QUEUE_SETTINGS: &[OptionSpec] = &[
    OptionSpec {
        name: "max_machines",
        env: "",
        kind: Kind::Integer { min: 0 },
        default: "5",
        doc: "Most worker machines of this queue at once; 0: the scaler never boots machines for \
              it (its jobs wait for workers you run yourself).",
    },
    OptionSpec {
        name: "min_machines",
        env: "",
        kind: Kind::Integer { min: 0 },
        default: "0",
        doc: "Machines kept even when the queue is empty (a warm pool).",
    },
    OptionSpec {
        name: "concurrency",
        env: "",
        kind: Kind::Integer { min: 1 },
        default: "1",
        doc: "Jobs one machine runs at once.",
    },
    OptionSpec {
        name: "wait",
        env: "",
        kind: Kind::Wait,
        default: "600s",
        doc: "How long an idle worker lingers before it leaves.",
    },
    OptionSpec {
        name: "pool",
        env: "",
        kind: Kind::OneOf(POOL),
        default: "none",
        doc: "What a leaving worker's machine does: none (destroyed), stop, suspend.",
    },
    OptionSpec {
        name: "size",
        env: "",
        kind: Kind::Text,
        default: "shared-cpu-1x",
        doc: "A Fly preset: shared-cpu-{1,2,4,6,8}x, performance-{1,2,4,8,16}x.",
    },
    OptionSpec {
        name: "cpus",
        env: "",
        kind: Kind::Integer { min: 1 },
        default: "from size",
        doc: "CPUs, instead of a preset.",
    },
    OptionSpec {
        name: "memory_mb",
        env: "",
        kind: Kind::Integer { min: 1 },
        default: "from size",
        doc: "Memory in MB, instead of a preset.",
    },
    OptionSpec {
        name: "region",
        env: "",
        kind: Kind::Regions,
        default: "the parent's region",
        doc: "Regions to create machines in, in order of preference (next on capacity errors).",
    },
    OptionSpec {
        name: "max_attempts",
        env: "",
        kind: Kind::Integer { min: 1 },
        default: "25",
        doc: "Runs before a job goes to the dead set (a job may set its own).",
    },
    OptionSpec {
        name: "max_memory_mb",
        env: "",
        kind: Kind::Integer { min: 256 },
        default: "2048",
        doc: "After an OOM kill a job's next attempt gets twice the memory (same CPU kind, the next \
              size Fly sells), up to this; then the normal retries.",
    },
    OptionSpec {
        name: "budget",
        env: "",
        kind: Kind::Text,
        default: "none",
        doc: "Daily limit, \"$5/day\" or \"2h/day\" (machine-hours): past it the scaler boots no \
              machine for the queue until the next day (UTC); its jobs wait.",
    },
    OptionSpec {
        name: "max_cost_per_job",
        env: "",
        kind: Kind::Text,
        default: "none",
        doc: "Most one run of a job may cost, in dollars (\"$0.05\"): its machine's price per \
              second ÷ concurrency × run time. Past it the job is discarded with \
              FlyJobs::CostLimitExceeded and not retried.",
    },
];

/// Options of a worker (`flyjobs worker`, `bin/fly-machine-worker`, `python -m flyjobs worker`,
/// `flyjobs-worker`): the flags the scaler gives a worker machine, and their env vars.
pub const WORKER_OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "queues",
        env: "FLYJOBS_WORKER_QUEUES",
        kind: Kind::Words,
        default: "default",
        doc: "Queues this worker serves (a list; not the per-queue settings of FLYJOBS_QUEUES).",
    },
    OptionSpec {
        name: "concurrency",
        env: "FLYJOBS_WORKER_CONCURRENCY",
        kind: Kind::Integer { min: 1 },
        default: "the queue's concurrency",
        doc: "Jobs run at once.",
    },
    OptionSpec {
        name: "wait",
        env: "FLYJOBS_WORKER_WAIT",
        kind: Kind::Wait,
        default: "the queue's wait",
        doc: "Idle time before the worker leaves, or forever.",
    },
    OptionSpec {
        name: "pool",
        env: "FLYJOBS_WORKER_POOL",
        kind: Kind::OneOf(POOL),
        default: "the queue's pool",
        doc: "What to do when leaving: none/stop (exit), suspend (suspend this machine).",
    },
    OptionSpec {
        name: "shape",
        env: "FLYJOBS_WORKER_SHAPE",
        kind: Kind::Text,
        default: "any",
        doc: "Claim only jobs of this machine shape (`default`, `performance-2x`, \
              `shared-cpu-1x:512@ams`; the scaler sets it), or `any`.",
    },
    OptionSpec {
        name: "release",
        env: "FLYJOBS_WORKER_RELEASE",
        kind: Kind::OneOf(RELEASE),
        default: "any",
        doc: "Which jobs by release: any; current (jobs of this image, of none, or older than \
              pin_for); pinned (only jobs of this image). The scaler sets it.",
    },
];

const RELEASE: &[&str] = &["any", "current", "pinned"];

/// Where a value came from, for error messages: an option key (`queues.mail.wait`) or an env var.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An option given by the app (`max_machines`, `queues.mail.wait`).
    Option(String),
    /// An environment variable (`FLYJOBS_MAX_MACHINES`, `FLYJOBS_QUEUES (mail)`).
    Env(String),
}

impl Origin {
    /// The origin of a nested key: `queues` + `mail` → `queues.mail`.
    pub fn child(&self, key: &str) -> Origin {
        match self {
            Origin::Option(o) => Origin::Option(format!("{o}.{key}")),
            Origin::Env(v) => Origin::Env(format!("{v} ({key})")),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Option(o) => write!(f, "option {o}"),
            Origin::Env(v) => f.write_str(v),
        }
    }
}

/// `"<origin> must be <accepts>, got <value>"`.
pub fn bad(origin: &Origin, kind: Kind, value: &Value) -> Error {
    bad_with(origin, &kind.accepts(), value)
}

/// A config error naming the origin, what is accepted and the value.
pub fn bad_with(origin: &Origin, accepts: &str, value: &Value) -> Error {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    let shown = if shown.len() > 120 {
        format!("{}…", &shown[..shown.floor_char_boundary(120)])
    } else {
        shown
    };
    Error::config(format!("{origin} must be {accepts}, got {shown}"))
}

/// A string option.
pub fn text(origin: &Origin, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(bad(origin, Kind::Text, other)),
    }
}

/// An integer `>= min` (a number, or digits in a string).
pub fn integer(origin: &Origin, min: u64, v: &Value) -> Result<u64> {
    let kind = Kind::Integer { min };
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            // 2.0 is an integer; 2.5 and -1 are not.
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= min => Ok(n),
        _ => Err(bad(origin, kind, v)),
    }
}

/// An integer option that must fit a `u32`.
pub fn integer_u32(origin: &Origin, min: u64, v: &Value) -> Result<u32> {
    let n = integer(origin, min, v)?;
    u32::try_from(n)
        .map_err(|_| bad_with(origin, &format!("an integer from {min} to {}", u32::MAX), v))
}

/// The longest duration accepted anywhere (100 years): bigger values are typos, and would
/// overflow date arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A duration: seconds as a number, or a string of seconds or humantime (`10m`).
pub fn duration(origin: &Origin, v: &Value) -> Result<Duration> {
    let d = match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= MAX_DURATION.as_secs_f64())
            .map(Duration::from_secs_f64),
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => humantime::parse_duration(s).ok(),
            }
        }
        _ => None,
    };
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(bad(origin, Kind::Duration, v)),
    }
}

/// A list of words: a list of strings, or one string split on spaces and commas.
pub fn words(origin: &Origin, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(s
            .split([',', ' '])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                _ => Err(bad(origin, Kind::Words, v)),
            })
            .collect(),
        other => Err(bad(origin, Kind::Words, other)),
    }
}

/// Prices: Fly's, with the ones given replaced (a map of dollars, or `"name=value,…"`). Each
/// must be a finite number >= 0; an unknown name is an error listing the known ones.
pub fn prices(origin: &Origin, v: &Value) -> Result<crate::cost::Prices> {
    let given: Vec<(String, Value)> = match v {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::String(s) => s
            .split([',', ';', ' '])
            .filter(|kv| !kv.trim().is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), Value::String(v.trim().to_string()))),
                None => Err(bad(origin, Kind::Prices, v)),
            })
            .collect::<Result<_>>()?,
        other => return Err(bad(origin, Kind::Prices, other)),
    };
    let mut prices = crate::cost::Prices::default();
    for (name, value) in given {
        let here = origin.child(&name);
        let dollars = dollars(&here, &value)?;
        let slot = prices.by_name(&name).ok_or_else(|| {
            Error::config(format!(
                "{origin}: unknown price {name:?} (known: {})",
                crate::cost::Prices::NAMES.join(", ")
            ))
        })?;
        *slot = dollars;
    }
    Ok(prices)
}

/// An amount of dollars >= 0: a number, or a string with or without `$` (`"$0.05"`).
pub fn dollars(origin: &Origin, v: &Value) -> Result<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_start_matches('$').parse::<f64>().ok(),
        _ => None,
    }
    .filter(|d| d.is_finite() && *d >= 0.0)
    .ok_or_else(|| bad_with(origin, "a number of dollars >= 0", v))
}

/// One of fixed names.
pub fn one_of(origin: &Origin, names: &'static [&'static str], v: &Value) -> Result<String> {
    match v {
        Value::String(s) if names.contains(&s.trim()) => Ok(s.trim().to_string()),
        other => Err(bad(origin, Kind::OneOf(names), other)),
    }
}

/// The key list of `specs`, for "unknown key" errors.
pub fn known(specs: &[OptionSpec]) -> String {
    specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

/// "unknown <what> `key` (known: …)".
pub fn unknown(origin: &Origin, what: &str, key: &str, specs: &[OptionSpec]) -> Error {
    let place = match origin {
        Origin::Option(o) if o.is_empty() => String::new(),
        o => format!("{o}: "),
    };
    Error::config(format!(
        "{place}unknown {what} {key:?} (known: {})",
        known(specs)
    ))
}

/// A JSON object's entries, or an error naming `origin`.
pub fn object<'a>(
    origin: &Origin,
    v: &'a Value,
    accepts: &str,
) -> Result<&'a serde_json::Map<String, Value>> {
    v.as_object().ok_or_else(|| bad_with(origin, accepts, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn o(k: &str) -> Origin {
        Origin::Option(k.into())
    }

    #[test]
    fn integers_from_numbers_and_strings() {
        assert_eq!(integer(&o("n"), 1, &json!(3)).unwrap(), 3);
        assert_eq!(integer(&o("n"), 1, &json!("3")).unwrap(), 3);
        assert_eq!(integer(&o("n"), 1, &json!(3.0)).unwrap(), 3);
        for bad in [
            json!(0),
            json!(-1),
            json!(2.5),
            json!("x"),
            json!(true),
            json!(null),
        ] {
            let e = integer(&o("n"), 1, &bad).unwrap_err().to_string();
            assert!(e.contains("option n must be an integer >= 1"), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration(&o("d"), &json!(1.5)).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            duration(&o("d"), &json!("10m")).unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            duration(&o("d"), &json!("42")).unwrap(),
            Duration::from_secs(42)
        );
        for bad in [
            json!(-1),
            json!("soon"),
            json!("300000y"),
            json!(1e300),
            json!([1]),
        ] {
            let e = duration(&Origin::Env("X_T".into()), &bad)
                .unwrap_err()
                .message()
                .to_string();
            assert!(e.starts_with("X_T must be seconds"), "{e}");
        }
    }

    #[test]
    fn words_from_lists_and_strings() {
        assert_eq!(words(&o("w"), &json!("a, b c")).unwrap(), ["a", "b", "c"]);
        assert_eq!(words(&o("w"), &json!(["a b", "c"])).unwrap(), ["a b", "c"]);
        assert!(words(&o("w"), &json!([1])).is_err());
    }
}
