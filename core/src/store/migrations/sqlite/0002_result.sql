-- flyjobs schema v2 (SQLite): what a completed job returned (JSON text), for bindings whose
-- frameworks read results back (Django Tasks' get_result).
ALTER TABLE flyjobs_jobs ADD COLUMN result TEXT;
