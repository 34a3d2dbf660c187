-- flyjobs schema v1 (SQLite). Times are INTEGER microseconds since the Unix epoch (UTC) so that
-- comparisons and ordering are exact; JSON is TEXT.
CREATE TABLE flyjobs_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    name             TEXT    NOT NULL DEFAULT '',
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('scheduled','ready','running','completed','dead','discarded')),
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER,
    lost_leases      INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    image_ref        TEXT,
    unique_key       TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    lease_token      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX flyjobs_jobs_claim ON flyjobs_jobs (queue, priority, run_at, id)
    WHERE state IN ('scheduled','ready');
CREATE INDEX flyjobs_jobs_lease ON flyjobs_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX flyjobs_jobs_state ON flyjobs_jobs (state, queue, id);
CREATE INDEX flyjobs_jobs_finished ON flyjobs_jobs (finished_at)
    WHERE state IN ('completed','dead','discarded');
CREATE UNIQUE INDEX flyjobs_jobs_unique ON flyjobs_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled','ready','running');

CREATE TABLE flyjobs_workers (
    id                TEXT    PRIMARY KEY,
    queues            TEXT    NOT NULL,
    concurrency       INTEGER NOT NULL,
    image_ref         TEXT,
    state             TEXT    NOT NULL,
    running           INTEGER NOT NULL DEFAULT 0,
    started_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL
);

CREATE TABLE flyjobs_locks (
    name       TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
