//! Test helpers: a small HTTP client over reqwest that checks every JSON body it receives
//! against the schemas of machines-openapi.json.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flyjobs_emulator::{Emulator, EmulatorHandle, EmulatorSettings};
use reqwest::Method;
use serde_json::{Value, json};

pub const APP: &str = "test-app";
pub const TOKEN: &str = "test-token";

/// The spec, copied into the repo so that CI from a clean clone has it.
fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/spec/machines-openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("spec file")).expect("spec JSON")
    })
}

/// Validates `v` against `#/components/schemas/<name>` of the spec: the validator's root is a
/// document holding the spec's components, so the spec's own `$ref`s resolve.
pub fn conform(name: &str, v: &Value) {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let validator = {
        let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
        cache
            .entry(name.to_string())
            .or_insert_with(|| {
                let schema = json!({
                    "$ref": format!("#/components/schemas/{name}"),
                    "components": spec()["components"],
                });
                Arc::new(jsonschema::validator_for(&schema).expect("schema compiles"))
            })
            .clone()
    };
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "response does not match schema {name}: {errors:?}\n{v:#}"
    );
}

/// Validates an array of `name`.
pub fn conform_array(name: &str, v: &Value) {
    for item in v.as_array().expect("array") {
        conform(name, item);
    }
}

/// A response: status, JSON body (Null if none or not JSON), raw text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    pub fn new(emu: &EmulatorHandle) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base: emu.base_url().to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap(),
            token: Some(TOKEN.to_string()),
        }
    }

    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            base: self.base.clone(),
            http: self.http.clone(),
            token: token.map(String::from),
        }
    }

    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<Resp> {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        // Every error body must be an ErrorResponse.
        if status >= 400 && !body.is_null() {
            let mut b = body.clone();
            // The real API (fly-go, machines-api.md §3.5) answers `status: "name_taken"`, which
            // the spec's enum lacks: follow the real API, check the rest.
            if b["status"] == "name_taken" {
                b.as_object_mut().unwrap().remove("status");
            }
            conform("ErrorResponse", &b);
        }
        Ok(Resp { status, body, text })
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.try_send(method, path, body, headers)
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    pub fn m(&self, id: &str) -> String {
        format!("/v1/apps/{APP}/machines/{id}")
    }

    /// Creates a machine in APP; asserts 200 and the Machine schema.
    pub async fn create(&self, body: Value) -> Value {
        let r = self.post(&format!("/v1/apps/{APP}/machines"), body).await;
        assert_eq!(r.status, 200, "create: {}", r.text);
        conform("Machine", &r.body);
        r.body
    }

    pub async fn machine(&self, id: &str) -> Resp {
        let r = self.get(&self.m(id)).await;
        if r.status == 200 {
            conform("Machine", &r.body);
        }
        r
    }

    pub async fn wait(&self, id: &str, state: &str, timeout: u64) -> Resp {
        // Fly wants the version to wait for `stopped` (machines-api.md §4.4): send the current
        // one, as the Python SDK does.
        let mut version = String::new();
        if state.contains("stopped") {
            let m = self.get(&self.m(id)).await;
            if let Some(v) = m.body["instance_id"].as_str() {
                version = format!("&version={v}");
            }
        }
        let r = self
            .get(&format!(
                "{}/wait?state={state}&timeout={timeout}{version}",
                self.m(id)
            ))
            .await;
        if r.status == 200 {
            conform("WaitMachineResponse", &r.body);
        }
        r
    }

    /// Waits (API) and asserts the state was reached.
    pub async fn reach(&self, id: &str, state: &str) {
        let r = self.wait(id, state, 30).await;
        assert_eq!(r.status, 200, "wait {state}: {}", r.text);
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let r = self.get(&format!("{}/events", self.m(id))).await;
        assert_eq!(r.status, 200, "events: {}", r.text);
        conform_array("MachineEvent", &r.body);
        r.body.as_array().unwrap().clone()
    }

    pub async fn exit_events(&self, id: &str) -> Vec<Value> {
        self.events(id)
            .await
            .into_iter()
            .filter(|e| e["type"] == "exit")
            .collect()
    }
}

pub async fn emulator(settings: EmulatorSettings) -> (EmulatorHandle, Api) {
    let emu = Emulator::start(settings.app(APP))
        .await
        .expect("emulator starts");
    let api = Api::new(&emu);
    (emu, api)
}

pub async fn test_emulator() -> (EmulatorHandle, Api) {
    emulator(EmulatorSettings::for_tests()).await
}

/// A create body running `sh -c script`.
pub fn sh(script: &str) -> Value {
    json!({"config": {"image": "test-image", "init": {"exec": ["sh", "-c", script]}, "restart": {"policy": "no"}}})
}

/// Whether a pid is alive (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => proc_state(&s) != Some('Z'),
        Err(_) => false,
    }
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `T`, `Z`, …).
pub fn pid_state(pid: i32) -> Option<char> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| proc_state(&s))
}

fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Polls `f` until true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// The pid of a machine's process, from the in-process snapshot.
pub fn pid_of(emu: &EmulatorHandle, id: &str) -> Option<i32> {
    emu.machines(APP)
        .into_iter()
        .find(|m| m.id == id)
        .and_then(|m| m.pid)
}

/// Every live process of these process groups, from /proc.
pub fn processes_in_groups(groups: &std::collections::HashSet<i32>) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state ppid pgrp ...
        if f.len() > 2 && f[0] != "Z" && groups.contains(&f[2].parse::<i32>().unwrap_or(-1)) {
            out.push(pid);
        }
    }
    out
}
