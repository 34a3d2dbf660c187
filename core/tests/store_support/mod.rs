//! Shared helpers of the store tests: a fresh SQLite file or a fresh Postgres schema per test.
//!
//! Postgres comes from `FLYJOBS_TEST_DATABASE_URL` (set by `scripts/with-postgres.sh`). Without
//! it the Postgres tests FAIL, because a silently skipped check is a defect; set
//! `FLYJOBS_SKIP_PG=1` to skip them on purpose (each skip prints a loud line on stderr).
#![allow(dead_code)]

use std::sync::Arc;

use flyjobs::store::{self, Store, StoreOptions};

/// A store plus whatever must live as long as it (the SQLite temp dir).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub url: String,
    pub opts: StoreOptions,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite(opts: StoreOptions) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("jobs.db").display());
    let store = store::open(&url, opts.clone()).await.unwrap();
    Some(Fixture {
        store,
        url,
        opts,
        _dir: Some(dir),
    })
}

/// The Postgres URL, or `None` (after a loud message) when FLYJOBS_SKIP_PG=1.
pub fn pg_url() -> Option<String> {
    match std::env::var("FLYJOBS_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("FLYJOBS_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: Postgres test skipped because FLYJOBS_SKIP_PG=1");
            None
        }
        _ => panic!(
            "FLYJOBS_TEST_DATABASE_URL is not set: run through scripts/with-postgres.sh, \
             or set FLYJOBS_SKIP_PG=1 to skip the Postgres tests on purpose"
        ),
    }
}

/// A fresh schema name, unique per test process and call.
pub fn fresh_schema() -> String {
    format!("t_{}_{:08x}", std::process::id(), rand::random::<u32>())
}

pub async fn postgres(mut opts: StoreOptions) -> Option<Fixture> {
    let url = pg_url()?;
    opts.pg_schema = Some(fresh_schema());
    let store = store::open(&url, opts.clone()).await.unwrap();
    Some(Fixture {
        store,
        url,
        opts,
        _dir: None,
    })
}
