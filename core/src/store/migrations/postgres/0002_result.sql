-- flyjobs schema v2 (PostgreSQL): what a completed job returned, for bindings whose frameworks
-- read results back (Django Tasks' get_result).
ALTER TABLE flyjobs_jobs ADD COLUMN IF NOT EXISTS result jsonb;
