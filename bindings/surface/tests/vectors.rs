//! The shared vectors of tests/vectors/, run through the binding surface: what every language
//! binding must also pass.

use flyjobs_binding as surface;
use serde_json::Value;

fn vectors(name: &str) -> Value {
    let path = format!("{}/../../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn options_resolve_or_fail_as_the_vectors_say() {
    let v = vectors("options.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let got = surface::resolve_config(&case["options"], &case["env"]);
        match (&case["expect"], &case["error"]) {
            (Value::Object(expect), Value::Null) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                for (pointer, want) in expect {
                    assert_eq!(
                        got.pointer(pointer),
                        Some(want),
                        "{name}: {pointer} in {got}"
                    );
                }
            }
            (Value::Null, Value::Object(err)) => {
                let e = got.expect_err(name);
                assert_eq!(e.kind().as_str(), err["kind"], "{name}: {e}");
                for needle in err["contains"].as_array().unwrap() {
                    let needle = needle.as_str().unwrap();
                    assert!(
                        e.message().contains(needle),
                        "{name}: {needle:?} not in {:?}",
                        e.message()
                    );
                }
            }
            _ => panic!("{name}: a case has expect or error"),
        }
    }
}

#[test]
fn every_error_kind_is_listed_with_its_retryability() {
    let v = vectors("errors.json");
    let kinds = v["kinds"].as_array().unwrap();
    assert_eq!(kinds.len(), surface::ErrorKind::ALL.len());
    for (k, listed) in surface::ErrorKind::ALL.iter().zip(kinds) {
        assert_eq!(listed["kind"], k.as_str());
        assert_eq!(listed["retryable"], k.default_retryable(), "{k}");
    }
    for case in v["cases"].as_array().unwrap() {
        let view: surface::ErrorView = serde_json::from_value(case["view"].clone()).unwrap();
        let e = surface::Error::from_view(&view).unwrap();
        let back = surface::error_view(&e);
        // Causes are not rebuilt (they are text); every other field round-trips.
        for f in [
            "kind",
            "message",
            "retryable",
            "status",
            "request_id",
            "job_id",
        ] {
            assert_eq!(back[f], case["view"][f], "{f}");
        }
    }
}

#[test]
fn outcomes_serialise_as_listed() {
    for case in vectors("outcomes.json")["cases"].as_array().unwrap() {
        let o: flyjobs::retry::Outcome = serde_json::from_value(case["outcome"].clone()).unwrap();
        assert_eq!(serde_json::to_value(o).unwrap(), case["outcome"]);
    }
}

#[test]
fn the_option_specs_name_every_option_once() {
    let specs = surface::option_specs();
    for list in ["options", "queue_settings", "worker_options"] {
        let names: Vec<&str> = specs[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let mut dedup = names.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "{list}");
    }
    // Every option is settable by name, and read from its env var.
    for spec in flyjobs::config::OPTIONS {
        let r = flyjobs::Config::builder().set(spec.name, Value::Null);
        assert!(r.is_ok(), "{}", spec.name);
        assert!(spec.env.starts_with("FLY"), "{}", spec.name);
    }
}

#[test]
fn the_readme_settings_table_lists_every_option() {
    let readme =
        std::fs::read_to_string(format!("{}/../../README.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    for spec in flyjobs::config::OPTIONS {
        let row = format!("| `{}` | `{}` |", spec.name, spec.env);
        assert!(readme.contains(&row), "README's settings table lacks {row}");
    }
    for spec in flyjobs::config::QUEUE_SETTINGS {
        assert!(
            readme.contains(&format!("`{}`", spec.name)),
            "{}",
            spec.name
        );
    }
}
