-- flyjobs schema v3 (PostgreSQL): the machine shape a job runs on ('' = the queue's default machine;
-- otherwise an opaque canonical key made by the placement code, e.g. 'performance-2x@ams,fra').
ALTER TABLE flyjobs_jobs ADD COLUMN shape TEXT NOT NULL DEFAULT '';
