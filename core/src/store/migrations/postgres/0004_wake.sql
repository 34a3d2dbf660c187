-- flyjobs schema v4 (PostgreSQL): nothing to change. SQLite's v4 adds the cross-process wake
-- counter (Postgres wakes other processes with NOTIFY); this keeps the numbers of both dialects
-- in step, so the next migration is 0005 on both.
SELECT 1;
