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
    }

    /// Read env vars through `lookup` instead of the process environment (tests pass a map).
    #[must_use]
    pub fn lookup(mut self, lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
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
            Error::config(format!("FLY_API_HOSTNAME is not a URL ({e}): {api_hostname:?}"))
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

        Ok(Config {
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
        Error::config(format!("{var} must be a non-negative integer, got {value:?}"))
    })
}

/// Parse a duration setting: plain seconds (`600`) or humantime (`10m`, `1h 30m`).
pub fn parse_duration(var: &str, value: &str) -> Result<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).map_err(|e| {
        Error::config(format!("{var} must be seconds or a duration like 10m, got {value:?} ({e})"))
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
        let env: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::builder().lookup(move |k| env.get(k).cloned()).build()
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
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.internal:5432/jobs"),
            "postgres://app:***@db.internal:5432/jobs"
        );
        assert_eq!(redact_url("sqlite://jobs.db"), "sqlite://jobs.db");
    }
}
