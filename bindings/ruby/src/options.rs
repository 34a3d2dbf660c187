//! `Client._open(hash)`: Ruby options -> the core's `ConfigBuilder`. A key left out or nil is not
//! set, so the core applies its env var and default; values are parsed by the core's own parsers
//! (durations, queue settings), so Ruby and the env vars accept the same forms. An unknown key is
//! a `FlyJobs::ConfigError`.

use std::time::Duration;

use flyjobs::config::{QueueSettings, parse_duration};
use magnus::{Error, RArray, RHash, Ruby, TryConvert, Value, prelude::*, r_hash::ForEach};

use crate::error::to_ruby;

fn pairs(hash: RHash) -> Result<Vec<(String, Value)>, Error> {
    let mut out = Vec::new();
    hash.foreach(|k: Value, v: Value| {
        out.push((k.to_r_string()?.to_string()?, v));
        Ok(ForEach::Continue)
    })?;
    Ok(out)
}

/// Builds the core's config from the options hash.
pub fn config(ruby: &Ruby, opts: RHash) -> Result<flyjobs::Config, Error> {
    let core = |e: flyjobs::Error| to_ruby(ruby, &e);
    let mut b = flyjobs::Config::builder();
    for (key, value) in pairs(opts)? {
        if value.is_nil() {
            continue;
        }
        b = match key.as_str() {
            "database_url" => b.database_url(String::try_convert(value)?),
            "app_name" => b.app_name(String::try_convert(value)?),
            "api_token" => b.api_token(String::try_convert(value)?),
            "api_hostname" => b.api_hostname(String::try_convert(value)?),
            "image_ref" => b.image_ref(String::try_convert(value)?),
            "machine_id" => b.machine_id(String::try_convert(value)?),
            "region" => b.region(String::try_convert(value)?),
            "worker_app" => b.worker_app(String::try_convert(value)?),
            "max_payload_bytes" => b.max_payload_bytes(usize::try_convert(value)?),
            "max_machines" => b.max_machines(u32::try_convert(value)?),
            "worker_command" => b.worker_command(words(value)?),
            "env_allowlist" => b.env_allowlist(words(value)?),
            "request_timeout" => b.request_timeout(duration(&key, value).map_err(core)?),
            "boot_timeout" => b.boot_timeout(duration(&key, value).map_err(core)?),
            "lease_duration" => b.lease_duration(duration(&key, value).map_err(core)?),
            "queues" => {
                let mut b = b;
                for (name, settings) in pairs(RHash::try_convert(value)?)? {
                    let spec = queue_spec(RHash::try_convert(settings)?)?;
                    let parsed = QueueSettings::default()
                        .apply(&format!("queue {name}"), &spec)
                        .map_err(core)?;
                    b = b.queue(name, parsed);
                }
                b
            }
            _ => {
                return Err(core(flyjobs::Error::config(format!(
                    "unknown flyjobs option {key:?}"
                ))));
            }
        };
    }
    b.build().map_err(core)
}

/// `{max_machines: 2, wait: "forever", region: ["ams", "fra"]}` -> `max_machines=2,wait=forever,region=ams|fra`,
/// the form of `FLYJOBS_QUEUES`, which the core parses and validates.
fn queue_spec(settings: RHash) -> Result<String, Error> {
    let mut parts = Vec::new();
    for (k, v) in pairs(settings)? {
        if v.is_nil() {
            continue;
        }
        let v = match RArray::from_value(v) {
            Some(a) => a
                .into_iter()
                .map(|x| x.to_r_string()?.to_string())
                .collect::<Result<Vec<_>, _>>()?
                .join("|"),
            None => v.to_r_string()?.to_string()?,
        };
        parts.push(format!("{k}={v}"));
    }
    Ok(parts.join(","))
}

/// A command or a list of names: an Array of Strings, or one String split on whitespace.
fn words(value: Value) -> Result<Vec<String>, Error> {
    match RArray::from_value(value) {
        Some(a) => a.to_vec::<String>(),
        None => Ok(String::try_convert(value)?
            .split_whitespace()
            .map(str::to_string)
            .collect()),
    }
}

/// Seconds (Integer/Float) or a String the core parses (`30`, `10m`).
fn duration(key: &str, value: Value) -> flyjobs::Result<Duration> {
    if let Ok(s) = String::try_convert(value) {
        return parse_duration(key, &s);
    }
    match f64::try_convert(value) {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(flyjobs::Error::config(format!(
            "{key} must be seconds or a duration like 10m"
        ))),
    }
}
