//! Request validation as Fly does it: JSON types (Fly's API server is Go, so a wrong type is a
//! 400 from `encoding/json`), the enums Fly checks, and the guest sizes Fly sells.
//!
//! Types come from the vendored spec (`emulator/spec/machines-openapi.json`), so every field the
//! spec knows is checked; unknown fields are ignored and `null` means "unset", as in Go.
//! Where Fly's exact error text is unknown, the text below is ours and says so in a comment.

use std::sync::OnceLock;

use serde_json::Value;

/// The vendored Machines API spec (also what the conformance test runs against).
pub(crate) const SPEC: &str = include_str!("../spec/machines-openapi.json");

pub(crate) fn spec() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(SPEC).expect("the vendored spec is valid JSON"))
}

fn schema(name: &str) -> Option<&'static Value> {
    spec().pointer(&format!("/components/schemas/{}", name.replace('/', "~1")))
}

/// Checks `body` against `#/components/schemas/<name>` the way Go's `encoding/json` would
/// decode it into the server's struct. The error text follows Go's (`json: cannot unmarshal
/// string into Go struct field MachineConfig.config.auto_destroy of type bool`).
pub(crate) fn check_types(name: &str, body: &Value) -> Result<(), String> {
    let Some(s) = schema(name) else {
        return Ok(());
    };
    if body.is_null() {
        return Ok(());
    }
    if !body.is_object() {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type main.{}",
            json_kind(body),
            go_name(name)
        ));
    }
    walk(s, body, "", go_name(name))
}

fn go_name(schema_name: &str) -> &str {
    schema_name.rsplit('.').next().unwrap_or(schema_name)
}

fn json_kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// Resolves `$ref` and single-element `allOf` (how the spec wraps `config`).
fn resolve(mut s: &'static Value) -> &'static Value {
    for _ in 0..8 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix("#/components/schemas/").and_then(schema) {
                Some(t) => s = t,
                None => return s,
            }
        } else if let Some([one]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            s = one;
        } else {
            return s;
        }
    }
    s
}

fn ref_name(s: &Value) -> Option<&str> {
    s.get("$ref")
        .or_else(|| s.pointer("/allOf/0/$ref"))
        .and_then(Value::as_str)
        .map(|r| go_name(r.rsplit('/').next().unwrap_or(r)))
}

fn go_type(s: &'static Value) -> String {
    if let Some(n) = ref_name(s) {
        return n.to_string();
    }
    let s = resolve(s);
    match s.get("type").and_then(Value::as_str) {
        Some("integer") => "int".into(),
        Some("number") => "float64".into(),
        Some("boolean") => "bool".into(),
        Some("array") => format!("[]{}", s.get("items").map(go_type).unwrap_or_default()),
        Some("object") => match s.get("additionalProperties") {
            Some(ap) if ap.is_object() => format!("map[string]{}", go_type(ap)),
            _ => "map[string]interface {}".into(),
        },
        Some(t) => t.to_string(),
        None => "interface {}".into(),
    }
}

/// Fields that Fly decodes with a custom unmarshaller and so accept more than the spec says:
/// durations (`fly.Duration`: a string or integer nanoseconds) and `autostop` (a string or,
/// the old form, a bool).
fn lenient(field: &str, v: &Value) -> bool {
    match field {
        "timeout" | "interval" | "grace_period" => v.is_i64() || v.is_u64(),
        "autostop" => v.is_boolean(),
        _ => false,
    }
}

fn walk(s: &'static Value, v: &Value, path: &str, strukt: &str) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    let s = resolve(s);
    let field = path.rsplit('.').next().unwrap_or(path);
    let mismatch = || {
        Err(format!(
            "json: cannot unmarshal {} into Go struct field {strukt}.{path} of type {}",
            json_kind(v),
            go_type(s)
        ))
    };
    match s.get("type").and_then(Value::as_str) {
        Some("object") | None
            if s.get("properties").is_some() || s.get("additionalProperties").is_some() =>
        {
            let Some(obj) = v.as_object() else {
                return mismatch();
            };
            let props = s.get("properties").and_then(Value::as_object);
            for (k, item) in obj {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    walk_field(p, item, &sub, strukt)?;
                } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    walk(ap, item, &sub, strukt)?;
                }
            }
            Ok(())
        }
        Some("object") => {
            if v.is_object() {
                Ok(())
            } else {
                mismatch()
            }
        }
        Some("array") => {
            let Some(items) = v.as_array() else {
                return mismatch();
            };
            if let Some(is) = s.get("items") {
                for item in items {
                    walk_field(is, item, path, strukt)?;
                }
            }
            Ok(())
        }
        Some("string") if v.is_string() || lenient(field, v) => Ok(()),
        Some("boolean") if v.is_boolean() => Ok(()),
        // Go decodes an integer field only from an integer literal that fits.
        Some("integer") if v.is_i64() || v.is_u64() => Ok(()),
        Some("number") if v.is_number() => Ok(()),
        Some("string" | "boolean" | "integer" | "number") => mismatch(),
        _ => Ok(()),
    }
}

/// One field: errors inside a struct-typed field name that struct, errors about the field
/// itself name the struct holding it (as Go does).
fn walk_field(p: &'static Value, v: &Value, path: &str, outer: &str) -> Result<(), String> {
    match ref_name(p) {
        Some(inner) if resolve(p).get("properties").is_some() && v.is_object() => {
            walk(p, v, path, inner)
        }
        _ => walk(p, v, path, outer),
    }
}

/// `body` as Fly echoes it after Go decoded it into its struct: a `null` member is unset (left
/// out), a `null` item of an array or map is the zero value of its type. Call after
/// [`check_types`] passed.
pub(crate) fn normalize(name: &str, body: &mut Value) {
    if let Some(s) = schema(name) {
        norm(Some(s), body);
    }
}

fn norm(s: Option<&'static Value>, v: &mut Value) {
    let s = s.map(resolve);
    match v {
        Value::Object(o) => {
            let props = s.and_then(|s| s.get("properties"));
            let map_of = s
                .and_then(|s| s.get("additionalProperties"))
                .filter(|a| a.is_object());
            match (props, map_of) {
                // A map: a null value is the zero value of the map's value type.
                (None, Some(ap)) => o.values_mut().for_each(|item| norm(Some(ap), item)),
                // A struct (or unknown): a null member is unset.
                _ => {
                    o.retain(|_, item| !item.is_null());
                    for (k, item) in o.iter_mut() {
                        norm(props.and_then(|p| p.get(k)), item);
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_schema = s.and_then(|s| s.get("items"));
            for item in items.iter_mut() {
                norm(item_schema, item);
            }
        }
        Value::Null => *v = s.map(zero).unwrap_or(Value::Null),
        _ => {}
    }
}

/// Go's zero value of a schema's type, as JSON.
fn zero(s: &'static Value) -> Value {
    match resolve(s).get("type").and_then(Value::as_str) {
        Some("string") => Value::from(""),
        Some("integer" | "number") => Value::from(0),
        Some("boolean") => Value::from(false),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => Value::Object(Default::default()),
        _ => Value::Null,
    }
}

/// `Some(i)` for an integer JSON number.
fn int(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_i64)
}

fn str_at<'v>(v: &'v Value, ptr: &str) -> Option<&'v str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Named sizes Fly sells (fly-go `MachinePresets`): CPUs and memory of each.
pub(crate) fn preset(size: &str) -> Option<(&'static str, u32, u64)> {
    let n = |p: &str| {
        size.strip_prefix(p)
            .and_then(|r| r.strip_suffix('x'))
            .and_then(|n| n.parse::<u32>().ok())
    };
    if let Some(c) = n("shared-cpu-").filter(|c| SHARED_CPUS.contains(c)) {
        return Some(("shared", c, u64::from(c) * 256));
    }
    if let Some(c) = n("performance-").filter(|c| [1, 2, 4, 8, 16].contains(c)) {
        return Some(("performance", c, u64::from(c) * 2048));
    }
    None
}

const SHARED_CPUS: &[u32] = &[1, 2, 4, 6, 8];
const PERFORMANCE_CPUS: &[u32] = &[1, 2, 4, 6, 8, 10, 12, 14, 16];

/// Checks a machine config beyond types: enums Fly checks and the guest size. Returns the
/// guest's (cpus, memory_mb).
pub(crate) fn check_config(config: &Value) -> Result<(u32, u64), String> {
    // Enum texts are ours: Fly rejects these values but its exact words are not known.
    if let Some(p) = str_at(config, "/restart/policy")
        && !["no", "always", "on-failure", "spot-price"].contains(&p)
    {
        return Err(format!(
            "invalid_argument: invalid restart policy '{p}', must be one of no, always, on-failure, spot-price"
        ));
    }
    if let Some(r) = int(config.pointer("/restart/max_retries"))
        && r < 0
    {
        return Err(format!(
            "invalid_argument: invalid config.restart.max_retries {r}, must not be negative"
        ));
    }
    if let Some(sig) = str_at(config, "/stop_config/signal")
        && !STOP_SIGNALS.contains(&sig)
    {
        return Err(format!(
            "invalid_argument: invalid stop signal '{sig}', must be one of {}",
            STOP_SIGNALS.join(", ")
        ));
    }
    if let Some(s) = str_at(config, "/schedule")
        && !["hourly", "daily", "weekly", "monthly"].contains(&s)
    {
        return Err(format!(
            "invalid_argument: invalid schedule '{s}', must be one of hourly, daily, weekly, monthly"
        ));
    }
    guest(config)
}

/// Signals `stop` and `stop_config.signal` accept (the spec's enum).
pub(crate) const STOP_SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM",
];

/// The guest size rules of machines-api.md §3.2 (D-SIZE): shared CPUs come in 1, 2, 4, 6, 8
/// with 256–2048 MB each; performance CPUs in 1, 2, 4, 6, 8 … 16 with 2048–8192 MB each; memory in
/// 256 MB steps. The "minimum required" text is Fly's as observed (flyctl #1648, #2329); the
/// others follow its form.
fn guest(config: &Value) -> Result<(u32, u64), String> {
    let size = str_at(config, "/size");
    let (preset_kind, preset_cpus, preset_mem) = match size {
        None => ("shared", 1, 256),
        Some(s) => {
            preset(s).ok_or_else(|| format!("invalid_argument: invalid machine size '{s}'"))?
        }
    };
    let g = config.get("guest").filter(|g| g.is_object());
    let kind = g
        .and_then(|g| g.get("cpu_kind"))
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .unwrap_or(preset_kind);
    let per_cpu = match kind {
        "shared" => (256, 2048, SHARED_CPUS),
        "performance" => (2048, 8192, PERFORMANCE_CPUS),
        other => {
            return Err(format!(
                "invalid_argument: invalid config.guest.cpu_kind '{other}', must be shared or performance"
            ));
        }
    };
    let cpus = match int(g.and_then(|g| g.get("cpus"))) {
        None | Some(0) => preset_cpus,
        Some(c) => u32::try_from(c)
            .ok()
            .filter(|c| per_cpu.2.contains(c))
            .ok_or_else(|| {
                format!(
                    "invalid config.guest.cpus, {c} is not a valid number of {kind} CPUs (valid: {})",
                    per_cpu.2.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                )
            })?,
    };
    let default_mem = if size.is_some() && g.is_none_or(|g| g.get("cpus").is_none()) {
        preset_mem
    } else {
        u64::from(cpus) * per_cpu.0
    };
    let mem = match int(g.and_then(|g| g.get("memory_mb"))) {
        None | Some(0) => default_mem,
        Some(m) if m < 0 => {
            return Err(format!(
                "invalid config.guest.memory_mb, minimum required {} MiB",
                u64::from(cpus) * per_cpu.0
            ));
        }
        Some(m) => m as u64,
    };
    let (min, max) = (u64::from(cpus) * per_cpu.0, u64::from(cpus) * per_cpu.1);
    if mem < min {
        return Err(format!(
            "invalid config.guest.memory_mb, minimum required {min} MiB"
        ));
    }
    if mem > max {
        return Err(format!(
            "invalid config.guest.memory_mb, maximum allowed {max} MiB for {cpus} {kind} CPU(s)"
        ));
    }
    if mem % 256 != 0 {
        return Err(format!(
            "invalid config.guest.memory_mb, {mem} MiB is not a multiple of 256 MiB"
        ));
    }
    Ok((cpus, mem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_style_type_errors() {
        let e = check_types(
            "CreateMachineRequest",
            &json!({"config": {"image": "x", "auto_destroy": "yes"}}),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "json: cannot unmarshal string into Go struct field MachineConfig.config.auto_destroy of type bool"
        );
        let e = check_types(
            "CreateMachineRequest",
            &json!({"config": {"restart": {"max_retries": -1.8e37}}}),
        )
        .unwrap_err();
        // Go quotes the literal as sent (-1.8e37); serde_json keeps only the value.
        assert_eq!(
            e,
            "json: cannot unmarshal number -1.8e+37 into Go struct field MachineRestart.config.restart.max_retries of type int"
        );
        let e = check_types("StopRequest", &json!([1])).unwrap_err();
        assert_eq!(
            e,
            "json: cannot unmarshal array into Go value of type main.StopRequest"
        );
        // Durations take integers, autostop takes bools, unknown fields and nulls pass.
        check_types(
            "CreateMachineRequest",
            &json!({"config": {"image": "x", "stop_config": {"timeout": 5_000_000_000u64},
                "services": [{"autostop": true}], "whatever": 1, "env": null}}),
        )
        .unwrap();
        let e = check_types(
            "CreateMachineRequest",
            &json!({"config": {"env": {"A": 1}}}),
        )
        .unwrap_err();
        assert!(e.contains("config.env.A of type string"), "{e}");
    }

    #[test]
    fn nulls_are_unset_as_in_go() {
        let mut b = json!({"config": {"image": "x", "env": {"A": null}, "services": [{"ports": [{"port": null}]}],
            "init": {"cmd": [null, "a"]}, "auto_destroy": null}});
        check_types("CreateMachineRequest", &b).unwrap();
        normalize("CreateMachineRequest", &mut b);
        assert_eq!(
            b,
            json!({"config": {"image": "x", "env": {"A": ""}, "services": [{"ports": [{}]}], "init": {"cmd": ["", "a"]}}})
        );
    }

    #[test]
    fn guest_sizes() {
        let ok = |c: Value| check_config(&c).unwrap();
        let bad = |c: Value| check_config(&c).unwrap_err();
        assert_eq!(ok(json!({})), (1, 256));
        assert_eq!(ok(json!({"size": "performance-2x"})), (2, 4096));
        assert_eq!(
            ok(json!({"guest": {"cpus": 2, "memory_mb": 4096}})),
            (2, 4096)
        );
        assert_eq!(
            ok(json!({"guest": {"cpu_kind": "performance", "cpus": 1}})),
            (1, 2048)
        );
        assert!(
            bad(json!({"guest": {"cpus": 64, "memory_mb": 1048576}})).contains("config.guest.cpus")
        );
        assert_eq!(
            bad(json!({"guest": {"cpus": 1, "memory_mb": 100}})),
            "invalid config.guest.memory_mb, minimum required 256 MiB"
        );
        assert!(bad(json!({"guest": {"cpus": 1, "memory_mb": 300}})).contains("multiple of 256"));
        assert!(
            bad(json!({"guest": {"cpus": 1, "memory_mb": 4096}})).contains("maximum allowed 2048")
        );
        assert_eq!(
            bad(json!({"guest": {"cpu_kind": "performance", "cpus": 1, "memory_mb": 1024}})),
            "invalid config.guest.memory_mb, minimum required 2048 MiB"
        );
        assert!(bad(json!({"guest": {"cpu_kind": "gpu"}})).contains("cpu_kind"));
        assert!(bad(json!({"size": "huge"})).contains("invalid machine size"));
        assert!(
            bad(json!({"restart": {"policy": "on-fail"}})).contains("restart policy 'on-fail'")
        );
    }
}
