-- flyjobs schema v4 (SQLite): a counter bumped by every write that makes jobs runnable
-- (enqueue, release, retry, reap, promote). Other processes watch PRAGMA data_version and read
-- it when the file changed, so they wake for new work and not for every completion or
-- heartbeat (Postgres has NOTIFY for this).
CREATE TABLE flyjobs_wake (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO flyjobs_wake (id, n) VALUES (1, 0);
