//! Placement: the machine a job needs. A job may carry a size and a region list (its
//! [`Shape`]); unset parts fall back to its queue's settings. The store keeps a shape as an
//! opaque canonical key ([`Shape::key`]) that the scaler groups by and a worker claims by.
//!
//! ```
//! use flyjobs::placement::Shape;
//! let shape = Shape::from_job(Some(&"performance-2x".into()), Some(&"ams,fra".into())).unwrap();
//! assert_eq!(shape.key(), "performance-2x@ams,fra");
//! assert_eq!(Shape::parse(&shape.key()).unwrap(), shape);
//! assert_eq!(Shape::default().key(), "");
//! // After an OOM kill the next attempt gets twice the memory, same CPU kind.
//! let size = Shape::parse("shared-cpu-1x").unwrap().size.unwrap();
//! assert_eq!(flyjobs::placement::grown(&size, 2048).unwrap().to_string(), "shared-cpu-1x:512");
//! ```
//!
//! Key grammar: `[SIZE][@REGION,REGION…]`, SIZE = `shared-cpu-Nx` or `performance-Nx`, with
//! `:MEMORY_MB` when the memory is not the preset's. `""` is the queue's default machine.

use std::fmt;

use serde_json::Value;

use crate::config::MachineSize;
use crate::error::{Error, Result};

/// CPU counts Fly sells per CPU kind, and the memory range per CPU (machines-api.md §3.2).
struct Kind {
    name: &'static str,
    prefix: &'static str,
    cpus: &'static [u32],
    min_per_cpu: u32,
    max_per_cpu: u32,
    /// CPU counts that have a named preset (`shared-cpu-6x` exists, `performance-6x` does not).
    presets: &'static [u32],
}

const KINDS: [Kind; 2] = [
    Kind {
        name: "shared",
        prefix: "shared-cpu-",
        cpus: &[1, 2, 4, 6, 8],
        min_per_cpu: 256,
        max_per_cpu: 2048,
        presets: &[1, 2, 4, 6, 8],
    },
    Kind {
        name: "performance",
        prefix: "performance-",
        cpus: &[1, 2, 4, 6, 8, 10, 12, 14, 16],
        min_per_cpu: 2048,
        max_per_cpu: 8192,
        presets: &[1, 2, 4, 8, 16],
    },
];

fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The named sizes, smallest first per kind: what an error lists.
pub fn valid_sizes() -> Vec<String> {
    KINDS
        .iter()
        .flat_map(|k| k.presets.iter().map(move |n| format!("{}{n}x", k.prefix)))
        .collect()
}

fn unknown_size(what: &str, got: &str) -> Error {
    Error::config(format!(
        "{what}: unknown machine size {got:?}; valid sizes: {} (memory other than the \
         preset's as SIZE:MEMORY_MB, e.g. shared-cpu-1x:1024, or {{cpus, memory_mb, cpu_kind}})",
        valid_sizes().join(", ")
    ))
}

impl fmt::Display for MachineSize {
    /// The canonical form: `shared-cpu-2x`, or `shared-cpu-1x:1024` for a non-preset memory.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = kind(&self.cpu_kind).unwrap_or(&KINDS[0]);
        write!(f, "{}{}x", k.prefix, self.cpus)?;
        if self.memory_mb != self.cpus * k.min_per_cpu {
            write!(f, ":{}", self.memory_mb)?;
        }
        Ok(())
    }
}

/// Parses `shared-cpu-2x`, `performance-4x` or `shared-cpu-1x:1024` and checks Fly sells it.
pub fn parse_size(what: &str, text: &str) -> Result<MachineSize> {
    let bad = || unknown_size(what, text);
    let (name, memory) = match text.trim().split_once(':') {
        Some((n, m)) => (n, Some(m.trim().parse::<u32>().map_err(|_| bad())?)),
        None => (text.trim(), None),
    };
    let (k, n) = KINDS
        .iter()
        .find_map(|k| name.strip_prefix(k.prefix).map(|n| (k, n)))
        .ok_or_else(bad)?;
    let cpus: u32 = n
        .strip_suffix('x')
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    if !k.cpus.contains(&cpus) {
        return Err(bad());
    }
    let size = MachineSize {
        cpu_kind: k.name.into(),
        cpus,
        memory_mb: memory.unwrap_or(cpus * k.min_per_cpu),
    };
    check_size(what, &size)?;
    Ok(size)
}

/// Checks a size against what Fly sells: CPU counts per kind, memory per CPU, 256 MB steps.
pub fn check_size(what: &str, s: &MachineSize) -> Result<()> {
    let k = kind(&s.cpu_kind).ok_or_else(|| {
        Error::config(format!(
            "{what}: unknown cpu_kind {:?}; use shared or performance",
            s.cpu_kind
        ))
    })?;
    if !k.cpus.contains(&s.cpus) {
        return Err(Error::config(format!(
            "{what}: {} is not a number of {} CPUs Fly sells ({}); valid sizes: {}",
            s.cpus,
            k.name,
            k.cpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            valid_sizes().join(", ")
        )));
    }
    let (min, max) = (s.cpus * k.min_per_cpu, s.cpus * k.max_per_cpu);
    if s.memory_mb < min || s.memory_mb > max || !s.memory_mb.is_multiple_of(256) {
        return Err(Error::config(format!(
            "{what}: {} MB is not sold with {} {} CPU(s): use {min}..={max} MB in steps of 256",
            s.memory_mb, s.cpus, k.name
        )));
    }
    Ok(())
}

/// The size after an OOM kill: twice the memory, same CPU kind, on the fewest CPUs that Fly
/// sells with that much memory (never fewer than now); `None` when that is above
/// `max_memory_mb` or above anything Fly sells.
pub fn grown(size: &MachineSize, max_memory_mb: u32) -> Option<MachineSize> {
    let k = kind(&size.cpu_kind)?;
    let memory_mb = size.memory_mb.checked_mul(2)?;
    if memory_mb > max_memory_mb {
        return None;
    }
    let cpus = *k
        .cpus
        .iter()
        .find(|&&c| c >= size.cpus && memory_mb <= c * k.max_per_cpu)?;
    Some(MachineSize {
        cpu_kind: k.name.into(),
        cpus,
        memory_mb,
    })
}

/// What a job asks of its machine. Unset parts are the queue's ([`Shape::resolve`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// The machine size; `None` = the queue's size.
    pub size: Option<MachineSize>,
    /// Regions in order of preference; empty = the queue's regions.
    pub regions: Vec<String>,
}

impl Shape {
    /// The shape of a job from its `machine` and `region` options, as every binding passes
    /// them: `machine` is a size name (`"performance-2x"`, `"shared-cpu-1x:1024"`) or a map
    /// `{cpus, memory_mb, cpu_kind}`; `region` is `"ams"`, `"ams,fra"` or a list.
    pub fn from_job(machine: Option<&Value>, region: Option<&Value>) -> Result<Shape> {
        let size = match machine {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_size("job machine", s)?),
            Some(Value::Object(m)) => Some(size_from_map(m)?),
            Some(other) => return Err(unknown_size("job machine", &other.to_string())),
        };
        let regions = match region {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => split_regions(s)?,
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for i in items {
                    let s = i.as_str().ok_or_else(|| {
                        Error::config(format!("job region must be region codes, got {i}"))
                    })?;
                    out.extend(split_regions(s)?);
                }
                out
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "job region must be a region code or a list of them, got {other}"
                )));
            }
        };
        Ok(Shape { size, regions })
    }

    /// The canonical key stored on the job (`""` for the queue's default machine).
    pub fn key(&self) -> String {
        let mut k = self
            .size
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        if !self.regions.is_empty() {
            k.push('@');
            k.push_str(&self.regions.join(","));
        }
        k
    }

    /// Parses a key made by [`Shape::key`].
    pub fn parse(key: &str) -> Result<Shape> {
        let (size, regions) = key.split_once('@').unwrap_or((key, ""));
        Ok(Shape {
            size: (!size.is_empty())
                .then(|| parse_size("shape", size))
                .transpose()?,
            regions: if regions.is_empty() {
                Vec::new()
            } else {
                split_regions(regions)?
            },
        })
    }

    /// Whether the queue's defaults apply entirely.
    pub fn is_default(&self) -> bool {
        self.size.is_none() && self.regions.is_empty()
    }

    /// The size and regions a machine for this shape gets on a queue with `size` and
    /// `regions` as its settings.
    pub fn resolve(&self, size: &MachineSize, regions: &[String]) -> (MachineSize, Vec<String>) {
        (
            self.size.clone().unwrap_or_else(|| size.clone()),
            if self.regions.is_empty() {
                regions.to_vec()
            } else {
                self.regions.clone()
            },
        )
    }
}

fn size_from_map(m: &serde_json::Map<String, Value>) -> Result<MachineSize> {
    let int = |k: &str| -> Result<Option<u32>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::config(format!("job machine.{k} must be an integer, got {v}"))
                }),
        }
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["cpus", "memory_mb", "cpu_kind"].contains(&k.as_str()))
    {
        return Err(Error::config(format!(
            "job machine: unknown key {k:?} (known: cpus, memory_mb, cpu_kind)"
        )));
    }
    let cpu_kind = match m.get("cpu_kind") {
        None | Some(Value::Null) => "shared".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(Error::config(format!(
                "job machine.cpu_kind must be shared or performance, got {v}"
            )));
        }
    };
    let cpus = int("cpus")?.unwrap_or(1);
    let per_cpu = kind(&cpu_kind).map_or(256, |k| k.min_per_cpu);
    let size = MachineSize {
        memory_mb: int("memory_mb")?.unwrap_or(cpus * per_cpu),
        cpu_kind,
        cpus,
    };
    check_size("job machine", &size)?;
    Ok(size)
}

/// `"ams,fra"` / `"ams|fra"` / `"ams fra"` → region codes (lower-case letters and digits).
fn split_regions(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in text
        .split([',', '|', ' '])
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let ok = r.len() <= 16
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(Error::config(format!(
                "job region {r:?} is not a region code (lower-case letters, like ams or iad)"
            )));
        }
        if !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    }
    if out.is_empty() {
        return Err(Error::config(format!(
            "job region {text:?} names no region"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn size(s: &str) -> MachineSize {
        parse_size("t", s).unwrap()
    }

    #[test]
    fn keys_round_trip_and_are_canonical() {
        for (machine, region, key) in [
            (json!(null), json!(null), ""),
            (json!("performance-2x"), json!(null), "performance-2x"),
            (
                json!("shared-cpu-1x:1024"),
                json!(["ams", "fra"]),
                "shared-cpu-1x:1024@ams,fra",
            ),
            (json!("shared-cpu-2x:512"), json!(null), "shared-cpu-2x"),
            (
                json!({"cpus": 2, "memory_mb": 8192, "cpu_kind": "performance"}),
                json!(null),
                "performance-2x:8192",
            ),
            (
                json!({"cpus": 1, "memory_mb": 512}),
                json!("iad|ord iad"),
                "shared-cpu-1x:512@iad,ord",
            ),
            (json!(null), json!("ams"), "@ams"),
        ] {
            let s = Shape::from_job(Some(&machine), Some(&region)).unwrap();
            assert_eq!(s.key(), key, "{machine} {region}");
            assert_eq!(Shape::parse(key).unwrap(), s);
        }
        assert_eq!(size("performance-2x").memory_mb, 4096);
    }

    #[test]
    fn sizes_nobody_sells_name_the_valid_list() {
        for bad in [
            json!("huge-9x"),
            json!("shared-cpu-3x"),
            json!("performance-6x:100"),
            json!("shared-cpu-1x:300"),
            json!("shared-cpu-1x:4096"),
            json!({"cpus": 3}),
            json!({"cpus": 1, "cpu_kind": "gpu"}),
            json!(7),
        ] {
            let e = Shape::from_job(Some(&bad), None).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{bad}");
            assert!(e.message().contains("job machine"), "{e}");
        }
        let e = Shape::from_job(Some(&json!("huge-9x")), None).unwrap_err();
        assert!(e.message().contains("\"huge-9x\""), "{e}");
        assert!(e.message().contains("shared-cpu-1x, shared-cpu-2x"), "{e}");
        assert!(e.message().contains("performance-16x"), "{e}");
        for bad in [json!(""), json!("AMS"), json!(["ams", 3]), json!(4)] {
            let e = Shape::from_job(None, Some(&bad)).unwrap_err();
            assert!(e.message().contains("job region"), "{e}");
        }
    }

    #[test]
    fn oom_growth_doubles_memory_on_the_same_kind() {
        let chain = |start: &str, max: u32| {
            let mut s = size(start);
            let mut out = vec![s.to_string()];
            while let Some(n) = grown(&s, max) {
                out.push(n.to_string());
                s = n;
            }
            out
        };
        assert_eq!(
            chain("shared-cpu-1x", 2048),
            [
                "shared-cpu-1x",
                "shared-cpu-1x:512",
                "shared-cpu-1x:1024",
                "shared-cpu-1x:2048"
            ]
        );
        // Past 2 GB per shared CPU the next size Fly sells has more CPUs.
        assert_eq!(
            chain("shared-cpu-1x:2048", 16384),
            [
                "shared-cpu-1x:2048",
                "shared-cpu-2x:4096",
                "shared-cpu-4x:8192",
                "shared-cpu-8x:16384"
            ]
        );
        assert_eq!(
            chain("performance-1x", 20000),
            [
                "performance-1x",
                "performance-1x:4096",
                "performance-1x:8192",
                "performance-2x:16384"
            ]
        );
        assert_eq!(grown(&size("shared-cpu-1x"), 256), None);
    }
}
