-- flyjobs schema v6 (SQLite): an enqueue bumps the wake counter (0004) from a trigger, in the
-- INSERT itself, so that enqueueing one job is one statement in autocommit: no BEGIN, no
-- second UPDATE, no COMMIT (each a round trip to the connection's thread).
CREATE TRIGGER flyjobs_jobs_wake AFTER INSERT ON flyjobs_jobs FOR EACH ROW
BEGIN
    UPDATE flyjobs_wake SET n = n + 1 WHERE id = 1;
END;
