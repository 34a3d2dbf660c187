//! The core's log events, captured for the language's own logger.
//!
//! Rust never calls into Ruby, Python or JavaScript from its own threads, so the core cannot
//! write to `Rails.logger` itself. Instead [`install`] sets a `tracing` subscriber that keeps
//! formatted records in a bounded buffer, and the language drains it from one of its own
//! threads ([`drain`], with its lock released) and writes each record to its logger. When the
//! buffer is full the oldest records are dropped and counted, so a language that stops
//! draining never makes the core wait or grow.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

const CAPACITY: usize = 10_000;

/// One log record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: String,
    /// The Rust module that logged it (`flyjobs::scaler`).
    pub target: String,
    /// The message with its fields (`worker registered worker=… queues=…`).
    pub message: String,
}

struct Buffer {
    records: Mutex<(VecDeque<Record>, u64)>,
    ready: Condvar,
}

static BUFFER: OnceLock<Buffer> = OnceLock::new();

fn buffer() -> &'static Buffer {
    BUFFER.get_or_init(|| Buffer {
        records: Mutex::new((VecDeque::new(), 0)),
        ready: Condvar::new(),
    })
}

struct Capture;

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let meta = event.metadata();
        let record = Record {
            level: meta.level().as_str().to_ascii_lowercase(),
            target: meta.target().to_string(),
            message: format!("{}{}", text.message, text.fields),
        };
        let b = buffer();
        let mut guard = b.records.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0.len() >= CAPACITY {
            guard.0.pop_front();
            guard.1 += 1;
        }
        guard.0.push_back(record);
        drop(guard);
        b.ready.notify_one();
    }
}

/// Capture the core's events at `filter` (`info`, `flyjobs=debug`, …; `FLYJOBS_LOG` wins when
/// set). Returns `false` when the process already has a global subscriber (then that one gets
/// the events). Safe to call more than once.
pub fn install(filter: &str) -> bool {
    let filter = std::env::var("FLYJOBS_LOG").unwrap_or_else(|_| filter.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(Capture.with_filter(filter))
        .try_init()
        .is_ok()
}

/// Wait up to `max_wait` for records, then take them all (oldest first), with the number of
/// records dropped since the last drain because the buffer was full.
pub fn drain(max_wait: Duration) -> (Vec<Record>, u64) {
    let b = buffer();
    let guard = b.records.lock().unwrap_or_else(|p| p.into_inner());
    let (mut guard, _) = b
        .ready
        .wait_timeout_while(guard, max_wait, |(q, _)| q.is_empty())
        .unwrap_or_else(|p| p.into_inner());
    let records = guard.0.drain(..).collect();
    let dropped = std::mem::take(&mut guard.1);
    (records, dropped)
}

/// Log `message` at `level` (`error`, `warn`, `info`, `debug`) as the core would: for each
/// language's test of its log forwarding.
pub fn emit(level: &str, message: &str) {
    match level {
        "error" => tracing::error!(target: "flyjobs", "{message}"),
        "warn" => tracing::warn!(target: "flyjobs", "{message}"),
        "info" => tracing::info!(target: "flyjobs", "{message}"),
        _ => tracing::debug!(target: "flyjobs", "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_events_are_drained_in_order() {
        assert!(install("info"));
        tracing::info!(worker = "w1", "first");
        tracing::warn!("second");
        tracing::debug!("filtered out");
        let (records, dropped) = drain(Duration::from_secs(1));
        assert_eq!(dropped, 0);
        let texts: Vec<_> = records
            .iter()
            .map(|r| (r.level.as_str(), r.message.as_str()))
            .collect();
        assert_eq!(texts, [("info", "first worker=w1"), ("warn", "second")]);
        let (empty, _) = drain(Duration::from_millis(10));
        assert!(empty.is_empty());
    }
}
