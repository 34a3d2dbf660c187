//! Emulator settings: latencies, rate limits, faults, capacity, tokens, images.

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
}

/// Host capacity: running (started, starting, suspended, …) machines may not need more than this.
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
/// instant and unthrottled.
#[derive(Debug, Clone)]
pub struct EmulatorSettings {
    /// Loopback port to bind; `None` = a free port.
    pub port: Option<u16>,
    /// Artificial latencies of create/start/resume.
    pub latencies: Latencies,
    /// Enforce the per-action rate limits of machines-api.md §6.
    pub rate_limits: bool,
    /// Fault injection (can be changed later with `EmulatorHandle::set_faults`).
    pub faults: Faults,
    /// Host capacity; `None` = unlimited.
    pub capacity: Option<Capacity>,
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
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        Self {
            port: None,
            latencies: Latencies::fly_like(),
            rate_limits: true,
            faults: Faults::default(),
            capacity: None,
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

    /// Sets the host capacity.
    pub fn capacity(mut self, cpus: u32, memory_mb: u64) -> Self {
        self.capacity = Some(Capacity { cpus, memory_mb });
        self
    }
}
