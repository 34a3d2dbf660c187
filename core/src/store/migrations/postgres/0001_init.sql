-- flyjobs schema v1 (PostgreSQL). Every table is prefixed flyjobs_.
CREATE TABLE flyjobs_jobs (
    id               BIGSERIAL PRIMARY KEY,
    queue            TEXT        NOT NULL,
    name             TEXT        NOT NULL DEFAULT '',
    payload          JSONB       NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('scheduled','ready','running','completed','dead','discarded')),
    priority         INTEGER     NOT NULL DEFAULT 0,
    run_at           TIMESTAMPTZ NOT NULL,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER,
    lost_leases      INTEGER     NOT NULL DEFAULT 0,
    last_error       JSONB,
    image_ref        TEXT,
    unique_key       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    lease_token      BIGINT      NOT NULL DEFAULT 0
);
-- Claim order: priority, run_at, id among waiting jobs only (the partial index stays small).
CREATE INDEX flyjobs_jobs_claim ON flyjobs_jobs (queue, priority, run_at, id)
    WHERE state IN ('scheduled','ready');
-- Reaper: expired leases.
CREATE INDEX flyjobs_jobs_lease ON flyjobs_jobs (lease_expires_at) WHERE state = 'running';
-- Listing by state/queue with id paging.
CREATE INDEX flyjobs_jobs_state ON flyjobs_jobs (state, queue, id);
-- Retention pruning.
CREATE INDEX flyjobs_jobs_finished ON flyjobs_jobs (finished_at)
    WHERE state IN ('completed','dead','discarded');
-- A unique key is held only while the job is pending.
CREATE UNIQUE INDEX flyjobs_jobs_unique ON flyjobs_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled','ready','running');

CREATE TABLE flyjobs_workers (
    id                TEXT        PRIMARY KEY,
    queues            JSONB       NOT NULL,
    concurrency       INTEGER     NOT NULL,
    image_ref         TEXT,
    state             TEXT        NOT NULL,
    running           INTEGER     NOT NULL DEFAULT 0,
    started_at        TIMESTAMPTZ NOT NULL,
    last_heartbeat_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE flyjobs_locks (
    name       TEXT        PRIMARY KEY,
    owner      TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
