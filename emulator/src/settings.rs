//! Emulator settings: latencies, rate limits, faults, capacity, tokens, images.
//!
//! [`EmulatorSettings::from_lookup`] reads them from `FLYJOBS_EMULATOR_*` variables (see
//! [`env`]); `flyjobs emulator` maps its flags onto the same names, so the CLI, the embedded
//! default and tests share one parser.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// How long the emulated platform takes for the slow transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Latencies {
    /// From a create (without `skip_launch`) to `started`; Fly needs ~1.5 s and more.
    pub create: Duration,
    /// From `start` of a created/stopped machine to `started` (Fly: ~300 ms).
    pub start: Duration,
    /// From `start` of a suspended machine to `started` (Fly: a few hundred ms).
    pub resume: Duration,
}

impl Latencies {
    /// Figures close to what Fly documents (machines-api.md §9).
    pub fn fly_like() -> Self {
        Self {
            create: Duration::from_millis(1500),
            start: Duration::from_millis(300),
            resume: Duration::from_millis(200),
        }
    }

    /// No artificial delay at all (tests).
    pub fn zero() -> Self {
        Self {
            create: Duration::ZERO,
            start: Duration::ZERO,
            resume: Duration::ZERO,
        }
    }
}

/// Fault injection: fractions (0.0..=1.0) of `/v1` requests answered with an error instead of
/// being performed. Applied after authentication, before the request does anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Fraction answered 429 `rate limit exceeded`.
    pub rate_limited: f64,
    /// Fraction answered 503.
    pub unavailable: f64,
    /// Fraction of machine creates answered with the capacity error of machines-api.md §7.
    pub capacity: f64,
    /// Fraction of requests delayed by [`Faults::delay`] before being handled.
    pub delayed: f64,
    /// How long a delayed request waits.
    pub delay: Duration,
    /// The next N machine creates are performed, then their connection is dropped without a
    /// response (a lost create response). Counts down to 0.
    pub drop_after_create: u32,
    /// Fraction of machine creates that are performed but whose response is lost (the
    /// connection closes without an answer), like [`Faults::drop_after_create`] at random.
    pub dropped_create: f64,
}

/// The capacity of one region: running (started, starting, suspended, …) machines there may
/// not need more than this.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Total CPUs available to machines.
    pub cpus: u32,
    /// Total memory available to machines, in MB.
    pub memory_mb: u64,
}

/// What an image reference means locally: the directory a machine runs in and the command to
/// run when `config.init` names none (the image's ENTRYPOINT/CMD).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Image {
    /// Working directory of the machine's process.
    pub dir: PathBuf,
    /// Default command (argv) when `config.init` has no exec/entrypoint/cmd; empty = none.
    pub cmd: Vec<String>,
}

/// Settings of an [`crate::Emulator`]. `Default` is Fly-like; [`EmulatorSettings::for_tests`] is
/// instant and unthrottled. `Debug` never shows the accepted tokens.
#[derive(Clone)]
pub struct EmulatorSettings {
    /// Loopback port to bind; `None` = a free port.
    pub port: Option<u16>,
    /// Artificial latencies of create/start/resume.
    pub latencies: Latencies,
    /// Enforce the per-action rate limits of machines-api.md §6.
    pub rate_limits: bool,
    /// Fault injection (can be changed later with `EmulatorHandle::set_faults`).
    pub faults: Faults,
    /// Capacity of every region not in [`EmulatorSettings::region_capacity`]; `None` =
    /// unlimited.
    pub capacity: Option<Capacity>,
    /// Capacity of named regions (overrides [`EmulatorSettings::capacity`] there).
    pub region_capacity: HashMap<String, Capacity>,
    /// Accepted tokens: `None` = any non-empty token; `Some(map)` = token → app names it may
    /// use (`"*"` = every app).
    pub tokens: Option<HashMap<String, Vec<String>>>,
    /// Image ref → local image. Unknown refs use [`EmulatorSettings::default_image`].
    pub images: HashMap<String, Image>,
    /// Image used for refs not in `images` (default: the current directory, no default command).
    pub default_image: Image,
    /// How long a destroyed machine still answers 200 with `state: destroyed` before 404.
    pub destroyed_visible_for: Duration,
    /// Region of machines created without one.
    pub default_region: String,
    /// Apps that exist from the start.
    pub apps: Vec<String>,
    /// Names of variables copied from the emulator's own environment into every machine
    /// (only these: the emulator's env may hold secrets such as FLY_API_TOKEN).
    pub inherit_env: Vec<String>,
    /// Lease TTL when a lease request gives none (unconfirmed on Fly; 30 s like mudflaps).
    pub default_lease_ttl: Duration,
    /// Bytes of stdout+stderr kept per machine (the oldest are dropped).
    pub log_limit: usize,
    /// Serve `POST /emulator/apps/{app}/machines/{id}/panic`, whose handler panics while
    /// holding the machine (tests of the panic guard). Off by default.
    pub test_routes: bool,
    /// OOM-kill a machine whose processes hold more resident memory than its
    /// `guest.memory_mb`, as Fly's VMs do (exit event `oom_killed: true`). On by default.
    pub memory_limits: bool,
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        Self {
            port: None,
            latencies: Latencies::fly_like(),
            rate_limits: true,
            faults: Faults::default(),
            capacity: None,
            region_capacity: HashMap::new(),
            tokens: None,
            images: HashMap::new(),
            default_image: Image {
                dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
                cmd: Vec::new(),
            },
            destroyed_visible_for: Duration::from_secs(5),
            default_region: "lax".to_string(),
            apps: Vec::new(),
            inherit_env: [
                "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            default_lease_ttl: Duration::from_secs(30),
            log_limit: 1 << 20,
            test_routes: false,
            memory_limits: true,
        }
    }
}

impl EmulatorSettings {
    /// Zero latencies and no rate limits: what tests want.
    pub fn for_tests() -> Self {
        Self {
            latencies: Latencies::zero(),
            rate_limits: false,
            ..Self::default()
        }
    }

    /// Adds an app that exists from the start.
    pub fn app(mut self, name: impl Into<String>) -> Self {
        self.apps.push(name.into());
        self
    }

    /// Maps an image ref to a local directory (and default command).
    pub fn image(mut self, image_ref: impl Into<String>, image: Image) -> Self {
        self.images.insert(image_ref.into(), image);
        self
    }

    /// Accepts `token` for the given apps (`"*"` = all); switches token checking on.
    pub fn token(mut self, token: impl Into<String>, apps: &[&str]) -> Self {
        self.tokens
            .get_or_insert_with(HashMap::new)
            .insert(token.into(), apps.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Sets the capacity of every region (each region on its own).
    pub fn capacity(mut self, cpus: u32, memory_mb: u64) -> Self {
        self.capacity = Some(Capacity { cpus, memory_mb });
        self
    }

    /// Sets the capacity of one region.
    pub fn region_capacity(mut self, region: &str, cpus: u32, memory_mb: u64) -> Self {
        self.region_capacity
            .insert(region.to_string(), Capacity { cpus, memory_mb });
        self
    }

    /// The capacity of `region`, `None` = unlimited.
    pub fn capacity_of(&self, region: &str) -> Option<&Capacity> {
        self.region_capacity.get(region).or(self.capacity.as_ref())
    }

    /// Settings from the process environment: [`EmulatorSettings::from_lookup`] over
    /// `std::env::var`.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Settings from `FLYJOBS_EMULATOR_*` values given by `lookup` (names in [`env`]); unset or
    /// empty names keep their defaults. Starts from `Default` (Fly-like) or, with
    /// `FLYJOBS_EMULATOR_LATENCY=none`, from [`EmulatorSettings::for_tests`]. Bad values are
    /// errors naming the variable; token values never appear in them.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut s = match get(env::LATENCY).as_deref() {
            None | Some("fly") => Self::default(),
            Some("none" | "zero" | "0") => Self::for_tests(),
            Some(other) => return Err(SettingsError::new(env::LATENCY, "fly or none", other)),
        };
        if let Some(v) = get(env::PORT) {
            s.port = Some(
                v.parse()
                    .map_err(|_| SettingsError::new(env::PORT, "a port number", &v))?,
            );
        }
        for (name, slot) in [
            (env::CREATE_LATENCY, &mut s.latencies.create),
            (env::START_LATENCY, &mut s.latencies.start),
            (env::RESUME_LATENCY, &mut s.latencies.resume),
        ] {
            if let Some(v) = get(name) {
                *slot = parse_duration(name, &v)?;
            }
        }
        if let Some(v) = get(env::RATE_LIMITS) {
            s.rate_limits = match v.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" | "yes" => true,
                "off" | "false" | "0" | "no" => false,
                _ => return Err(SettingsError::new(env::RATE_LIMITS, "on or off", &v)),
            };
        }
        for (name, slot) in [
            (env::FAULT_429, &mut s.faults.rate_limited),
            (env::FAULT_5XX, &mut s.faults.unavailable),
            (env::FAULT_CAPACITY, &mut s.faults.capacity),
            (env::FAULT_DELAY, &mut s.faults.delayed),
            (env::FAULT_DROP_CREATE, &mut s.faults.dropped_create),
        ] {
            if let Some(v) = get(name) {
                *slot = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| (0.0..=1.0).contains(f))
                    .ok_or_else(|| SettingsError::new(name, "a fraction from 0 to 1", &v))?;
            }
        }
        s.faults.delay = match get(env::FAULT_DELAY_FOR) {
            Some(v) => parse_duration(env::FAULT_DELAY_FOR, &v)?,
            None => Duration::from_secs(2),
        };
        if let Some(v) = get(env::MEMORY_LIMITS) {
            s.memory_limits = match v.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" | "yes" => true,
                "off" | "false" | "0" | "no" => false,
                _ => return Err(SettingsError::new(env::MEMORY_LIMITS, "on or off", &v)),
            };
        }
        if let Some(v) = get(env::CAPACITY) {
            parse_capacity(&v, &mut s)?;
        }
        if let Some(v) = get(env::REGION) {
            s.default_region = v;
        }
        if let Some(v) = get(env::APPS) {
            s.apps.extend(
                v.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|a| !a.is_empty())
                    .map(String::from),
            );
        }
        if let Some(v) = get(env::IMAGES) {
            for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let (image_ref, image) = Image::parse_spec(line)
                    .map_err(|e| SettingsError(format!("{}: {e}", env::IMAGES)))?;
                s.images.insert(image_ref, image);
            }
        }
        if let Some(v) = lookup(env::TOKENS) {
            parse_tokens(env::TOKENS, &v, &mut s)?;
        }
        if let Some(path) = get(env::TOKENS_FILE) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                SettingsError(format!("{}: cannot read {path:?}: {e}", env::TOKENS_FILE))
            })?;
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            parse_tokens(env::TOKENS_FILE, &lines.join(","), &mut s)?;
            if s.tokens.is_none() {
                return Err(SettingsError(format!(
                    "{}: {path:?} lists no token",
                    env::TOKENS_FILE
                )));
            }
        }
        Ok(s)
    }
}

impl std::fmt::Debug for EmulatorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: show only how many there are and the apps they open.
        let tokens = self.tokens.as_ref().map(|t| {
            let mut apps: Vec<&Vec<String>> = t.values().collect();
            apps.sort();
            format!("{} token(s) for {apps:?}", t.len())
        });
        f.debug_struct("EmulatorSettings")
            .field("port", &self.port)
            .field("latencies", &self.latencies)
            .field("rate_limits", &self.rate_limits)
            .field("faults", &self.faults)
            .field("capacity", &self.capacity)
            .field("region_capacity", &self.region_capacity)
            .field("tokens", &tokens)
            .field("images", &self.images)
            .field("default_image", &self.default_image)
            .field("default_region", &self.default_region)
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

/// Names of the variables [`EmulatorSettings::from_lookup`] reads.
pub mod env {
    /// `fly` (default: Fly-like latencies, rate limits on) or `none` (no latencies, no rate
    /// limits); the variables below refine either.
    pub const LATENCY: &str = "FLYJOBS_EMULATOR_LATENCY";
    /// Loopback port (0 = any free port).
    pub const PORT: &str = "FLYJOBS_EMULATOR_PORT";
    /// From create to `started`, e.g. `1500ms`, `2s`, `0`.
    pub const CREATE_LATENCY: &str = "FLYJOBS_EMULATOR_CREATE_LATENCY";
    /// From start of a stopped machine to `started`.
    pub const START_LATENCY: &str = "FLYJOBS_EMULATOR_START_LATENCY";
    /// From start of a suspended machine to `started`.
    pub const RESUME_LATENCY: &str = "FLYJOBS_EMULATOR_RESUME_LATENCY";
    /// `on` or `off`: Fly's per-action rate limits (1 req/s, burst 3; get 5 req/s, burst 10).
    pub const RATE_LIMITS: &str = "FLYJOBS_EMULATOR_RATE_LIMITS";
    /// `on` (default) or `off`: OOM-kill a machine whose processes' resident memory exceeds
    /// its `guest.memory_mb`.
    pub const MEMORY_LIMITS: &str = "FLYJOBS_EMULATOR_MEMORY_LIMITS";
    /// Fraction (0–1) of requests answered 429.
    pub const FAULT_429: &str = "FLYJOBS_EMULATOR_FAULT_429";
    /// Fraction of requests answered 503.
    pub const FAULT_5XX: &str = "FLYJOBS_EMULATOR_FAULT_5XX";
    /// Fraction of creates answered with the capacity error (412 `insufficient_capacity`).
    pub const FAULT_CAPACITY: &str = "FLYJOBS_EMULATOR_FAULT_CAPACITY";
    /// Fraction of requests delayed by `FLYJOBS_EMULATOR_FAULT_DELAY_FOR`.
    pub const FAULT_DELAY: &str = "FLYJOBS_EMULATOR_FAULT_DELAY";
    /// How long a delayed request waits (default 2s).
    pub const FAULT_DELAY_FOR: &str = "FLYJOBS_EMULATOR_FAULT_DELAY_FOR";
    /// Fraction of creates that happen but whose response is lost (connection closed).
    pub const FAULT_DROP_CREATE: &str = "FLYJOBS_EMULATOR_FAULT_DROP_CREATE";
    /// Capacity, comma separated: `CPUS:MEMORY_MB` for every region and/or
    /// `REGION=CPUS:MEMORY_MB`, e.g. `lax=4:4096,ord=2:2048`.
    pub const CAPACITY: &str = "FLYJOBS_EMULATOR_CAPACITY";
    /// Accepted tokens, comma separated: `TOKEN` (every app) or `TOKEN@APP1+APP2`. When set,
    /// any other token gets 401. Never printed.
    pub const TOKENS: &str = "FLYJOBS_EMULATOR_TOKENS";
    /// A file with accepted tokens, one `TOKEN[@APP1+APP2]` per line (`#` comments).
    pub const TOKENS_FILE: &str = "FLYJOBS_EMULATOR_TOKENS_FILE";
    /// Region of machines created without one (default `lax`).
    pub const REGION: &str = "FLYJOBS_EMULATOR_REGION";
    /// Apps that exist from the start, comma separated.
    pub const APPS: &str = "FLYJOBS_EMULATOR_APPS";
    /// Images, one `REF=DIR[:CMD …]` per line (see [`super::Image::parse_spec`]).
    pub const IMAGES: &str = "FLYJOBS_EMULATOR_IMAGES";
}

/// A bad setting: the message names the variable and the expected form.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

impl SettingsError {
    fn new(name: &str, expected: &str, got: &str) -> Self {
        Self(format!("{name} must be {expected}, got {got:?}"))
    }
}

fn parse_duration(name: &str, v: &str) -> Result<Duration, SettingsError> {
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(v)
        .map_err(|_| SettingsError::new(name, "a duration such as 300ms or 2s", v))
}

fn parse_capacity(v: &str, s: &mut EmulatorSettings) -> Result<(), SettingsError> {
    let bad = |item: &str| {
        SettingsError::new(
            env::CAPACITY,
            "CPUS:MEMORY_MB or REGION=CPUS:MEMORY_MB, comma separated",
            item,
        )
    };
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (region, size) = match item.split_once('=') {
            Some((r, size)) => (Some(r.trim()), size),
            None => (None, item),
        };
        let (cpus, mem) = size.split_once(':').ok_or_else(|| bad(item))?;
        let cap = Capacity {
            cpus: cpus.trim().parse().map_err(|_| bad(item))?,
            memory_mb: mem
                .trim()
                .trim_end_matches("mb")
                .trim_end_matches("MB")
                .parse()
                .map_err(|_| bad(item))?,
        };
        match region {
            Some("") => return Err(bad(item)),
            Some(r) => {
                s.region_capacity.insert(r.to_string(), cap);
            }
            None => s.capacity = Some(cap),
        }
    }
    Ok(())
}

/// `TOKEN` or `TOKEN@APP1+APP2`, comma or whitespace separated. Errors never quote a token.
fn parse_tokens(name: &str, v: &str, s: &mut EmulatorSettings) -> Result<(), SettingsError> {
    for (i, item) in v
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .enumerate()
    {
        let (token, apps) = match item.rsplit_once('@') {
            Some((t, apps)) => (t, apps.split('+').map(str::trim).collect::<Vec<_>>()),
            None => (item, vec!["*"]),
        };
        if token.is_empty() || apps.iter().any(|a| a.is_empty()) {
            return Err(SettingsError(format!(
                "{name}: entry {} must be TOKEN or TOKEN@APP1+APP2",
                i + 1
            )));
        }
        s.tokens.get_or_insert_with(HashMap::new).insert(
            token.to_string(),
            apps.into_iter().map(String::from).collect(),
        );
    }
    Ok(())
}

impl Image {
    /// Parses `REF=DIR[:CMD …]` (what `--image` takes): the image ref, the directory its
    /// machines run in, and the command an image-only create runs (the image's CMD), split
    /// like a shell would (single and double quotes, backslash escapes; no expansion).
    pub fn parse_spec(spec: &str) -> Result<(String, Image), SettingsError> {
        let bad =
            |why: &str| SettingsError(format!("image {spec:?}: {why}; expected REF=DIR[:CMD …]"));
        // Image refs hold no '=', commands may: split at the first one.
        let (image_ref, rest) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
        let (dir, cmd) = match rest.split_once(':') {
            Some((dir, cmd)) => (dir, split_words(cmd).map_err(|e| bad(&e))?),
            None => (rest, Vec::new()),
        };
        if image_ref.trim().is_empty() || dir.trim().is_empty() {
            return Err(bad("empty ref or directory"));
        }
        Ok((
            image_ref.trim().to_string(),
            Image {
                dir: PathBuf::from(dir.trim()),
                cmd,
            },
        ))
    }
}

/// Splits a command line into words: whitespace separates, '…' and "…" quote, backslash
/// escapes (outside single quotes).
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated ' in command".into()),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => w.push(c),
                            None => return Err("trailing \\ in command".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated \" in command".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => cur.get_or_insert_with(String::new).push(c),
                None => return Err("trailing \\ in command".into()),
            },
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn every_variable_is_read() {
        let s = EmulatorSettings::from_lookup(lookup(&[
            ("FLYJOBS_EMULATOR_LATENCY", "none"),
            ("FLYJOBS_EMULATOR_PORT", "0"),
            ("FLYJOBS_EMULATOR_CREATE_LATENCY", "1500ms"),
            ("FLYJOBS_EMULATOR_START_LATENCY", "2s"),
            ("FLYJOBS_EMULATOR_RESUME_LATENCY", "0"),
            ("FLYJOBS_EMULATOR_RATE_LIMITS", "on"),
            ("FLYJOBS_EMULATOR_FAULT_429", "0.1"),
            ("FLYJOBS_EMULATOR_FAULT_5XX", "0.2"),
            ("FLYJOBS_EMULATOR_FAULT_CAPACITY", "0.3"),
            ("FLYJOBS_EMULATOR_FAULT_DELAY", "0.4"),
            ("FLYJOBS_EMULATOR_FAULT_DELAY_FOR", "3s"),
            ("FLYJOBS_EMULATOR_FAULT_DROP_CREATE", "1"),
            ("FLYJOBS_EMULATOR_CAPACITY", "8:16384, ord=2:512"),
            ("FLYJOBS_EMULATOR_TOKENS", "tok-a, tok-b@app1+app2"),
            ("FLYJOBS_EMULATOR_REGION", "ams"),
            ("FLYJOBS_EMULATOR_APPS", "one,two"),
            (
                "FLYJOBS_EMULATOR_IMAGES",
                "reg/app:v1=/srv/app:sh -c 'echo hi'\nother=/tmp",
            ),
        ]))
        .unwrap();
        assert_eq!(s.port, Some(0));
        assert_eq!(
            s.latencies,
            Latencies {
                create: Duration::from_millis(1500),
                start: Duration::from_secs(2),
                resume: Duration::ZERO
            }
        );
        assert!(s.rate_limits, "explicit on wins over the none preset");
        assert_eq!(
            s.faults,
            Faults {
                rate_limited: 0.1,
                unavailable: 0.2,
                capacity: 0.3,
                delayed: 0.4,
                delay: Duration::from_secs(3),
                drop_after_create: 0,
                dropped_create: 1.0,
            }
        );
        assert_eq!(
            s.capacity_of("lax"),
            Some(&Capacity {
                cpus: 8,
                memory_mb: 16384
            })
        );
        assert_eq!(
            s.capacity_of("ord"),
            Some(&Capacity {
                cpus: 2,
                memory_mb: 512
            })
        );
        let tokens = s.tokens.as_ref().unwrap();
        assert_eq!(tokens["tok-a"], vec!["*"]);
        assert_eq!(tokens["tok-b"], vec!["app1", "app2"]);
        assert_eq!(s.default_region, "ams");
        assert_eq!(s.apps, vec!["one", "two"]);
        assert_eq!(
            s.images["reg/app:v1"],
            Image {
                dir: "/srv/app".into(),
                cmd: vec!["sh".into(), "-c".into(), "echo hi".into()]
            }
        );
        assert_eq!(
            s.images["other"],
            Image {
                dir: "/tmp".into(),
                cmd: vec![]
            }
        );
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("tok-a") && !debug.contains("tok-b"),
            "{debug}"
        );
    }

    #[test]
    fn defaults_without_variables() {
        let s = EmulatorSettings::from_lookup(|_| None).unwrap();
        assert_eq!(s.latencies, Latencies::fly_like());
        assert!(s.rate_limits);
        assert!(s.tokens.is_none());
        assert_eq!(s.capacity_of("lax"), None);
    }

    #[test]
    fn bad_values_name_the_variable_and_never_echo_tokens() {
        for (k, v, want) in [
            (
                "FLYJOBS_EMULATOR_FAULT_429",
                "1.5",
                "FLYJOBS_EMULATOR_FAULT_429 must be a fraction",
            ),
            (
                "FLYJOBS_EMULATOR_RATE_LIMITS",
                "maybe",
                "FLYJOBS_EMULATOR_RATE_LIMITS must be on or off",
            ),
            (
                "FLYJOBS_EMULATOR_CAPACITY",
                "lax=4",
                "FLYJOBS_EMULATOR_CAPACITY must be CPUS:MEMORY_MB",
            ),
            (
                "FLYJOBS_EMULATOR_START_LATENCY",
                "soon",
                "FLYJOBS_EMULATOR_START_LATENCY must be a duration",
            ),
            (
                "FLYJOBS_EMULATOR_LATENCY",
                "slow",
                "FLYJOBS_EMULATOR_LATENCY must be fly or none",
            ),
            (
                "FLYJOBS_EMULATOR_TOKENS",
                "secret-tok@",
                "FLYJOBS_EMULATOR_TOKENS: entry 1",
            ),
            (
                "FLYJOBS_EMULATOR_IMAGES",
                "no-equals",
                "FLYJOBS_EMULATOR_IMAGES: image",
            ),
        ] {
            let e = EmulatorSettings::from_lookup(lookup(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{k}={v}: {e}");
            assert!(!e.contains("secret-tok"), "{e}");
        }
    }

    #[test]
    fn image_specs() {
        let (r, i) = Image::parse_spec("registry.fly.io/app:deployment-1=/srv/app").unwrap();
        assert_eq!(
            (r.as_str(), i.dir.to_str().unwrap(), i.cmd.len()),
            ("registry.fly.io/app:deployment-1", "/srv/app", 0)
        );
        let (_, i) = Image::parse_spec(r#"x=/d:env A=1 "two words" it\'s"#).unwrap();
        assert_eq!(i.cmd, vec!["env", "A=1", "two words", "it's"]);
        assert!(Image::parse_spec("x=/d:sh -c 'unterminated").is_err());
        assert!(Image::parse_spec("=/d").is_err());
    }
}
