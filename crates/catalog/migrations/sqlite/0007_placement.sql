-- Placement: a deployment may name the label of the servers that run its
-- jobs (a physical PostgreSQL backup runs where the data directory is);
-- servers announce their labels here, refreshed while they live.
ALTER TABLE deployments ADD COLUMN runs_on TEXT;
CREATE TABLE servers (
    owner    TEXT PRIMARY KEY,   -- as in jobs.lease_owner
    labels   TEXT NOT NULL,      -- JSON array of strings
    seen_at  INTEGER NOT NULL    -- unix seconds
);
