-- flyjobs schema v5 (SQLite): the history of a job's failed attempts, for the dashboard's job
-- page. A trigger writes it, so every way a run ends in a failure is recorded in the same
-- statement that records the failure: fail (retry or dead), a lost lease (reap), an OOM kill
-- (requeue on a bigger machine), a discard with a reason. A graceful release (the attempt is
-- given back: attempts goes down) and a discard without a new reason record nothing. Times are
-- INTEGER microseconds since the Unix epoch, as everywhere.
CREATE TABLE flyjobs_attempts (
    job_id     INTEGER NOT NULL REFERENCES flyjobs_jobs (id) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL,
    machine    TEXT,
    started_at INTEGER,
    ended_at   INTEGER NOT NULL,
    outcome    TEXT    NOT NULL,
    error      TEXT    NOT NULL
);
CREATE INDEX flyjobs_attempts_job ON flyjobs_attempts (job_id, attempt);

CREATE TRIGGER flyjobs_jobs_attempt AFTER UPDATE ON flyjobs_jobs FOR EACH ROW
    WHEN OLD.state = 'running' AND NEW.state IN ('scheduled', 'ready', 'dead', 'discarded')
         AND NEW.last_error IS NOT NULL AND NEW.attempts = OLD.attempts
         AND (NEW.state <> 'discarded' OR NEW.last_error IS NOT OLD.last_error)
BEGIN
    INSERT INTO flyjobs_attempts (job_id, attempt, machine, started_at, ended_at, outcome, error)
    VALUES (NEW.id, NEW.attempts, OLD.lease_owner, OLD.started_at,
            CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER), NEW.state,
            NEW.last_error);
END;

-- Deleting a job (retention, clearing a queue) deletes its history, whether or not the
-- connection enforces foreign keys.
CREATE TRIGGER flyjobs_jobs_attempts_gone AFTER DELETE ON flyjobs_jobs FOR EACH ROW
BEGIN
    DELETE FROM flyjobs_attempts WHERE job_id = OLD.id;
END;
