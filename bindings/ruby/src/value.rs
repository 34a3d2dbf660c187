//! JSON values as Ruby objects, built directly (what `JSON.parse` would return: String keys,
//! Integer/Float numbers), so a job's payload crosses without being printed and parsed again.

use magnus::{Error, IntoValue, Ruby, Value, prelude::*};
use serde_json::Value as Json;

/// `v` as a new Ruby object tree.
pub fn to_ruby(ruby: &Ruby, v: &Json) -> Result<Value, Error> {
    Ok(match v {
        Json::Null => ruby.qnil().as_value(),
        Json::Bool(b) => b.into_value_with(ruby),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ruby.integer_from_i64(i).as_value()
            } else if let Some(u) = n.as_u64() {
                ruby.integer_from_u64(u).as_value()
            } else {
                ruby.float_from_f64(n.as_f64().unwrap_or(f64::NAN))
                    .as_value()
            }
        }
        Json::String(s) => ruby.str_new(s).as_value(),
        Json::Array(items) => {
            let a = ruby.ary_new_capa(items.len());
            for item in items {
                a.push(to_ruby(ruby, item)?)?;
            }
            a.as_value()
        }
        Json::Object(map) => {
            let h = ruby.hash_new();
            for (k, item) in map {
                // Hash#[]= keeps a frozen copy of a String key, as JSON.parse's keys are.
                h.aset(ruby.str_new(k), to_ruby(ruby, item)?)?;
            }
            h.as_value()
        }
    })
}
