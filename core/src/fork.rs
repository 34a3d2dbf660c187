//! A worker machine's config, derived from the parent machine (a "fork" of the running app).
//!
//! On Fly the scaler reads its *own* machine's config through the Machines API and keeps the
//! image, the config's `env` (what `fly.toml` and `fly deploy` set; never the process
//! environment, which holds the app's secrets and the API token), the guest and the region. It
//! drops `services`, `checks` and `mounts`: a worker must get no public traffic and cannot share
//! the parent's volume. App secrets reach the worker the way they reach every machine of the
//! app: Fly injects them. Put workers in a separate app (`FLYJOBS_WORKER_APP`) to give them
//! other secrets.
//!
//! Off Fly (the embedded default) the template is the image from `FLY_IMAGE_REF`, or the
//! emulator's default image (the current directory).

use std::collections::BTreeMap;

use crate::config::{Config, PoolMode, QueueSettings};
use crate::error::{Error, Result};
use crate::machines::Machines;
use crate::machines::types::{Guest, MachineConfig, MachineInit, RestartPolicy};

/// Image ref used for worker machines off Fly when `FLY_IMAGE_REF` is unset: the embedded
/// emulator maps it to the current directory.
pub const EMBEDDED_IMAGE: &str = "flyjobs-embedded:local";

/// The parts of a worker machine that do not depend on the queue.
#[derive(Clone, Debug)]
pub struct Template {
    /// The config every worker starts from (image, env, guest, files, dns …).
    pub config: MachineConfig,
    /// The region of the parent, if known.
    pub region: Option<String>,
    /// The release the workers run: the image ref (used for release pinning).
    pub release: String,
    /// The command the machine runs; the scaler appends `--queues … --concurrency … --wait …`.
    pub command: Vec<String>,
}

/// Build the template: from the parent machine on Fly, from settings off Fly.
/// `extra_env` is what the caller adds on purpose (the embedded default passes the local
/// database URL); the allowlisted process env vars are added here.
pub async fn template(
    config: &Config,
    machines: &dyn Machines,
    default_command: &[String],
    extra_env: BTreeMap<String, String>,
) -> Result<Template> {
    let command = config
        .worker_command()
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| default_command.to_vec());
    if command.is_empty() {
        return Err(Error::config(
            "no worker command: set FLYJOBS_WORKER_COMMAND",
        ));
    }
    if let Some(name) = config.env_allowlist().iter().find(|n| is_token_var(n)) {
        return Err(Error::config(format!(
            "FLYJOBS_ENV_ALLOWLIST names {name}: API tokens are never given to worker \
             machines; remove it from the allowlist"
        )));
    }
    let (mut machine_config, region) = match (config.on_fly(), config.worker_app()) {
        // A separate worker app has its own image and secrets; the parent's config is not
        // its business beyond the image.
        (true, _) => {
            let app = config
                .app_name()
                .ok_or_else(|| Error::config("FLY_APP_NAME is not set"))?;
            let id = config
                .machine_id()
                .expect("on_fly() means FLY_MACHINE_ID is set");
            let parent = machines.get_machine(app, id).await?;
            let mut c = parent.config.unwrap_or_default();
            strip_for_worker(&mut c);
            (c, parent.region)
        }
        (false, _) => {
            let image = config.image_ref().unwrap_or(EMBEDDED_IMAGE).to_string();
            (
                MachineConfig {
                    image: Some(image),
                    ..MachineConfig::default()
                },
                config.region().map(str::to_string),
            )
        }
    };
    let release = machine_config
        .image
        .clone()
        .or_else(|| config.image_ref().map(str::to_string))
        .ok_or_else(|| {
            Error::config("FLY_IMAGE_REF is not set and the parent machine has no image")
        })?;
    machine_config.image = Some(release.clone());
    let env = machine_config.env.get_or_insert_with(Default::default);
    for name in config.env_allowlist() {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.clone(), v);
        }
    }
    env.extend(extra_env);
    // Whatever the parent's config or the caller put there, a worker never gets a token.
    env.retain(|name, _| !is_token_var(name));
    Ok(Template {
        config: machine_config,
        region,
        release,
        command,
    })
}

/// Whether an environment variable holds an API token that must never reach a worker
/// machine: `FLY_API_TOKEN*` and `FLYJOBS_*TOKEN*` (case-insensitive).
pub fn is_token_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("FLY_API_TOKEN")
        || (upper.starts_with("FLYJOBS_") && upper["FLYJOBS_".len()..].contains("TOKEN"))
}

/// Remove what a worker must not inherit from the parent's config.
pub fn strip_for_worker(c: &mut MachineConfig) {
    c.services = None;
    c.checks = None;
    c.mounts = None;
    c.metadata = None;
    c.init = None;
    c.auto_destroy = None;
    c.restart = None;
    c.stop_config = None;
    // A scheduled parent (cron machine) must not make its workers scheduled too; processes,
    // standbys and statics describe the parent's role, not the worker's.
    c.schedule = None;
    c.processes = None;
    for k in ["standbys", "statics"] {
        c.extra.remove(k);
    }
    if let Some(env) = c.env.as_mut() {
        env.retain(|name, _| !is_token_var(name));
    }
}

impl Template {
    /// The machine config of one worker of `queue`.
    pub fn worker_config(&self, queue: &str, settings: &QueueSettings) -> MachineConfig {
        let mut c = self.config.clone();
        let mut cmd = self.command.clone();
        cmd.extend([
            "--queues".to_string(),
            queue.to_string(),
            "--concurrency".to_string(),
            settings.concurrency.to_string(),
            "--wait".to_string(),
            settings.wait.to_arg(),
            "--pool".to_string(),
            settings.pool.as_str().to_string(),
        ]);
        c.init = Some(MachineInit {
            cmd: Some(cmd),
            ..MachineInit::default()
        });
        c.guest = Some(Guest {
            cpu_kind: Some(settings.size.cpu_kind.clone()),
            cpus: Some(settings.size.cpus),
            memory_mb: Some(settings.size.memory_mb),
            ..Guest::default()
        });
        // A worker's exit is its decision (idle, or done): never restart it. One-shot workers
        // are destroyed when they exit; pool members stay stopped/suspended for reuse.
        c.restart = Some(RestartPolicy {
            policy: Some("no".into()),
            ..RestartPolicy::default()
        });
        c.auto_destroy = Some(settings.pool == PoolMode::None);
        c.metadata = Some(BTreeMap::from([
            ("flyjobs_role".to_string(), "worker".to_string()),
            ("flyjobs_queue".to_string(), queue.to_string()),
            ("flyjobs_release".to_string(), self.release.clone()),
            (
                "flyjobs_pool".to_string(),
                settings.pool.as_str().to_string(),
            ),
        ]));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_vars_are_recognised() {
        for n in [
            "FLY_API_TOKEN",
            "fly_api_token",
            "FLY_API_TOKEN_DEPLOY",
            "FLYJOBS_API_TOKEN",
            "FLYJOBS_TOKEN",
            "FLYJOBS_MY_TOKENS",
        ] {
            assert!(is_token_var(n), "{n}");
        }
        for n in ["FLY_APP_NAME", "TOKEN", "FLYJOBS_DATABASE_URL", "MY_TOKEN"] {
            assert!(!is_token_var(n), "{n}");
        }
    }
}
