-- Recoveries: one row per recovery job, naming what the request asked for
-- and the backup the API chose for it.
CREATE TABLE recoveries (
    job_id          INTEGER PRIMARY KEY REFERENCES jobs(id),
    domain          TEXT NOT NULL,
    deployment      TEXT NOT NULL,
    -- The request's target as the client named it, JSON, e.g. {"latest": true}.
    target          TEXT NOT NULL,
    backup_job_id   INTEGER NOT NULL REFERENCES backups(job_id),
    status          TEXT NOT NULL,            -- IN PROGRESS | COMPLETED | FAILED
    started_at      TEXT NOT NULL,
    completed_at    TEXT
);
CREATE INDEX recoveries_deployment ON recoveries(domain, deployment);
