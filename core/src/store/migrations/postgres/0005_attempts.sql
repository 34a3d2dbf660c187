-- flyjobs schema v5 (PostgreSQL): the history of a job's failed attempts, for the dashboard's
-- job page. A trigger writes it, so every way a run ends in a failure is recorded in the same
-- statement that records the failure: fail (retry or dead), a lost lease (reap), an OOM kill
-- (requeue on a bigger machine), a discard with a reason. A graceful release (the attempt is
-- given back: attempts goes down) and a discard without a new reason record nothing.
CREATE TABLE flyjobs_attempts (
    job_id     BIGINT      NOT NULL REFERENCES flyjobs_jobs (id) ON DELETE CASCADE,
    attempt    INTEGER     NOT NULL,
    machine    TEXT,
    started_at TIMESTAMPTZ,
    ended_at   TIMESTAMPTZ NOT NULL,
    outcome    TEXT        NOT NULL,
    error      JSONB       NOT NULL
);
CREATE INDEX flyjobs_attempts_job ON flyjobs_attempts (job_id, attempt);

CREATE FUNCTION flyjobs_record_attempt() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO flyjobs_attempts (job_id, attempt, machine, started_at, ended_at, outcome, error)
    VALUES (NEW.id, NEW.attempts, OLD.lease_owner, OLD.started_at, clock_timestamp(), NEW.state,
            NEW.last_error);
    RETURN NULL;
END
$$;

CREATE TRIGGER flyjobs_jobs_attempt AFTER UPDATE ON flyjobs_jobs FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state IN ('scheduled', 'ready', 'dead', 'discarded')
          AND NEW.last_error IS NOT NULL AND NEW.attempts = OLD.attempts
          AND (NEW.state <> 'discarded' OR NEW.last_error IS DISTINCT FROM OLD.last_error))
    EXECUTE FUNCTION flyjobs_record_attempt();
