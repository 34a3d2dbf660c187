//! Wire types of the Machines API, after `shared/reference/machines-openapi.json`.
//!
//! Every struct keeps the fields it does not know in `extra` and writes them back out, so a
//! config read from the API (the parent machine's, for a fork) survives a round trip even when
//! Fly adds fields; optional fields are left out of requests when `None`.
//!
//! ```
//! use flyjobs::machines::types::{MachineConfig, Machine, MachineState, Guest};
//! let m: Machine = serde_json::from_str(r#"{"id":"1857156b526dd8","state":"started","new_field":1}"#).unwrap();
//! assert_eq!(m.state, Some(MachineState::Started));
//! assert_eq!(serde_json::to_value(&m).unwrap()["new_field"], 1);
//! assert_eq!(Guest::preset("performance-2x").unwrap().memory_mb, Some(4096));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Fields the client does not model, kept verbatim.
pub type Extra = Map<String, Value>;

/// A machine's state (machines-api.md §4.1), string-backed with a fallback for new states.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MachineState {
    /// `creating`
    Creating,
    /// `created`: exists, never started.
    Created,
    /// `starting`
    Starting,
    /// `started`
    Started,
    /// `stopping`
    Stopping,
    /// `stopped`
    Stopped,
    /// `suspending`
    Suspending,
    /// `suspended`
    Suspended,
    /// `restarting`
    Restarting,
    /// `updating`
    Updating,
    /// `replacing`
    Replacing,
    /// `replaced`: an old version.
    Replaced,
    /// `destroying`
    Destroying,
    /// `destroyed`
    Destroyed,
    /// `failed`
    Failed,
    /// `launch_failed`
    LaunchFailed,
    /// `migrated`
    Migrated,
    /// `settled`: a wait target only ("any persistent state").
    Settled,
    /// A state this client does not know yet.
    Other(String),
}

impl MachineState {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            MachineState::Creating => "creating",
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Restarting => "restarting",
            MachineState::Updating => "updating",
            MachineState::Replacing => "replacing",
            MachineState::Replaced => "replaced",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
            MachineState::LaunchFailed => "launch_failed",
            MachineState::Migrated => "migrated",
            MachineState::Settled => "settled",
            MachineState::Other(s) => s,
        }
    }
}

impl FromStr for MachineState {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "creating" => MachineState::Creating,
            "created" => MachineState::Created,
            "starting" => MachineState::Starting,
            "started" => MachineState::Started,
            "stopping" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            "suspending" => MachineState::Suspending,
            "suspended" => MachineState::Suspended,
            "restarting" => MachineState::Restarting,
            "updating" => MachineState::Updating,
            "replacing" => MachineState::Replacing,
            "replaced" => MachineState::Replaced,
            "destroying" => MachineState::Destroying,
            "destroyed" => MachineState::Destroyed,
            "failed" => MachineState::Failed,
            "launch_failed" => MachineState::LaunchFailed,
            "migrated" => MachineState::Migrated,
            "settled" => MachineState::Settled,
            other => MachineState::Other(other.to_string()),
        })
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MachineState {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MachineState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or_else(|never| match never {}))
    }
}

/// Format a duration as the API's duration string (`"10s"`, `"1500ms"`).
pub fn duration_string(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `POST /apps` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateAppRequest {
    /// App name (global across Fly).
    pub name: String,
    /// Organization slug (`personal` allowed).
    #[serde(default)]
    pub org_slug: String,
    /// Custom 6PN network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An app (`GET /apps/{app}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// App id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// App name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Status text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Organization `{name, slug, …}` (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<Value>,
    /// Number of machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_count: Option<i64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /apps/{app}/machines` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateMachineRequest {
    /// The machine config (`config.image` is required by the API).
    pub config: MachineConfig,
    /// Unique name in the app. When `None` the client picks one per request, so that a retried
    /// create can be recognised (see [`crate::machines::Machines::create_machine`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Region code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Create without booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
    /// Take a lease at once (seconds); the answer then carries `nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
    /// Create the machine already cordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_service_registration: Option<bool>,
    /// Do not inject app secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_secrets: Option<bool>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST /apps/{app}/machines/{id}` body: the whole config again (no partial update).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateMachineRequest {
    /// The complete new config.
    pub config: MachineConfig,
    /// The version (`instance_id`) this update is based on; a stale one gets 412 (conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Leave a stopped machine stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fly.MachineConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables (an explicit allowlist; never the whole process env).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Start command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<MachineInit>,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    /// Deprecated named size (`shared-cpu-2x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Destroy the machine once it stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_destroy: Option<bool>,
    /// Restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// Signal and grace period used on stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// Metadata (also filterable on list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Services exposed through Fly Proxy (kept as JSON: flyjobs strips them for workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<Value>>,
    /// Health checks by name (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, Value>>,
    /// Volume mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    /// Processes (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<Value>>,
    /// Files written into the guest (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<Value>>,
    /// Schedule (`hourly`, `daily`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Unknown fields (dns, statics, metrics, rootfs, containers, …).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fly.MachineInit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineInit {
    /// Overrides every other start command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Replaces the image ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Allocate a TTY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// Swap size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<u64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fly.MachineGuest`: CPU kind, CPUs, memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Guest {
    /// `shared` or `performance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kind: Option<String>,
    /// Number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// GPU kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    /// Number of GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Guest {
    /// A named size: `shared-cpu-{1,2,4,6,8}x` = N CPUs × 256 MB, `performance-{1,2,4,8,16}x` =
    /// N CPUs × 2048 MB (fly-go `MachinePresets`). An unknown name is a `config` error naming it.
    pub fn preset(name: &str) -> Result<Guest> {
        let parse = |rest: &str, allowed: &[u32]| {
            rest.strip_suffix('x')
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| allowed.contains(n))
        };
        let (kind, cpus, per_cpu) = if let Some(rest) = name.strip_prefix("shared-cpu-") {
            ("shared", parse(rest, &[1, 2, 4, 6, 8]), 256)
        } else if let Some(rest) = name.strip_prefix("performance-") {
            ("performance", parse(rest, &[1, 2, 4, 8, 16]), 2048)
        } else {
            ("", None, 0)
        };
        let cpus = cpus.ok_or_else(|| {
            Error::config(format!(
                "unknown machine size {name:?}: expected shared-cpu-{{1,2,4,6,8}}x or performance-{{1,2,4,8,16}}x"
            ))
        })?;
        Ok(Guest {
            cpu_kind: Some(kind.to_string()),
            cpus: Some(cpus),
            memory_mb: Some(cpus * per_cpu),
            ..Guest::default()
        })
    }
}

/// `fly.MachineRestart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `no`, `always`, `on-failure` (the API default) or `spot-price`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Retries for `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fly.StopConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopConfig {
    /// Signal name (`SIGINT` by default on Fly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace period before SIGKILL, as a duration string (`"10s"`); old APIs sent nanoseconds,
    /// hence `Value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fly.MachineMount`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    /// Volume id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Mount path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Volume name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<u32>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A machine (`Machine` in the spec).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Machine id (14 hex chars on Fly).
    #[serde(default)]
    pub id: String,
    /// Name, unique in the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MachineState>,
    /// Region code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Config version (ULID); changes with every update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Same as `instance_id` where present (fly-go prefers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// 6PN address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    /// The config as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    /// Image reference parts (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<Value>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Recent events, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<MachineEvent>>,
    /// Check statuses (kept as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<Value>>,
    /// `ok`, `unknown`, `unreachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_status: Option<String>,
    /// Lease nonce when created with `lease_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Machine {
    /// `version`, else `instance_id`.
    pub fn current_version(&self) -> Option<&str> {
        self.version.as_deref().or(self.instance_id.as_deref())
    }

    /// The state's wire name (`""` when the answer had none).
    pub fn state_str(&self) -> &str {
        self.state.as_ref().map_or("", MachineState::as_str)
    }

    /// One value of `config.metadata`.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.config
            .as_ref()?
            .metadata
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

/// A machine event (`MachineEvent`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineEvent {
    /// Event id (usable as wait's `from_event_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `launch`, `start`, `update`, `exit`, …
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Status after the event (`created`, `started`, `stopped`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `user` or `flyd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// Free-form details; `exit_event` lives here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl MachineEvent {
    /// The `exit_event` of an `exit` event (`request.exit_event`, or flyctl's
    /// `request.MonitorEvent.exit_event`).
    pub fn exit_event(&self) -> Option<ExitEvent> {
        let req = self.request.as_ref()?;
        let ev = req
            .get("exit_event")
            .or_else(|| req.get("MonitorEvent").and_then(|m| m.get("exit_event")))?;
        serde_json::from_value(ev.clone()).ok()
    }
}

/// Details of a process exit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// Exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that killed it (-1 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed by the OOM killer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_killed: Option<bool>,
    /// The exit followed a stop request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_stop: Option<bool>,
    /// The machine is being restarted by its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarting: Option<bool>,
    /// When (ms integer in old APIs, RFC 3339 now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<Value>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A lease (`Lease`; on the wire inside the `{status, data}` envelope).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Send as `fly-machine-lease-nonce` on guarded calls.
    #[serde(default)]
    pub nonce: String,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Machine version at lease time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST …/lease` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateLeaseRequest {
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `GET …/wait` answer (`WaitMachineResponse`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaitResponse {
    /// Always true on 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// The state reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MachineState>,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The event that satisfied the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST …/start` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StartResponse {
    /// State before the start (`stopped`, `suspended`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<MachineState>,
    /// Moved to another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated: Option<bool>,
    /// New host, if migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_host: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `POST …/stop` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Signal name (`SIGTERM`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Grace period before SIGKILL as a duration string; see [`StopRequest::with_timeout`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl StopRequest {
    /// Set the signal.
    #[must_use]
    pub fn with_signal(mut self, signal: impl Into<String>) -> Self {
        self.signal = Some(signal.into());
        self
    }
    /// Set the grace period.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(duration_string(timeout));
        self
    }
}

/// Filters of `GET /apps/{app}/machines`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListMachinesQuery {
    /// Only these states (sent comma-separated).
    pub states: Vec<MachineState>,
    /// `metadata.{key}=value` filters (all must match).
    pub metadata: BTreeMap<String, String>,
    /// Also list destroyed machines.
    pub include_deleted: bool,
    /// Leave out config, checks, events.
    pub summary: bool,
    /// Only this region.
    pub region: Option<String>,
}

/// Parameters of `GET …/wait`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitQuery {
    /// Target states (any of them); empty means the API default, `started`.
    pub states: Vec<MachineState>,
    /// How long the server blocks; clamped to 1..=60 s (the API's limit); `None` = 60 s.
    pub timeout: Option<Duration>,
    /// Only this version (`instance_id`).
    pub version: Option<String>,
    /// Only events after this one.
    pub from_event_id: Option<String>,
}

impl WaitQuery {
    /// Wait for one state.
    pub fn state(state: MachineState) -> Self {
        WaitQuery {
            states: vec![state],
            ..WaitQuery::default()
        }
    }
    /// Set the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// The timeout actually sent, in whole seconds, within 1..=60.
    pub fn timeout_secs(&self) -> u64 {
        self.timeout
            .map_or(60, |t| t.as_secs_f64().ceil() as u64)
            .clamp(1, 60)
    }
}
