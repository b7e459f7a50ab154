-- A recovery indexed again from the repository's records after the backup
-- it started from was deleted keeps its row: planning reads when its
-- timeline began from it. Such a row names no backup. SQLite cannot drop
-- a NOT NULL, so the table is built again (same columns, same order).
CREATE TABLE recoveries_new (
    job_id          INTEGER PRIMARY KEY REFERENCES jobs(id),
    domain          TEXT NOT NULL,
    deployment      TEXT NOT NULL,
    target          TEXT NOT NULL,
    backup_job_id   INTEGER REFERENCES backups(job_id),
    status          TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    completed_at    TEXT,
    reached         TEXT
);
INSERT INTO recoveries_new (job_id, domain, deployment, target, backup_job_id, status, started_at, completed_at, reached)
    SELECT job_id, domain, deployment, target, backup_job_id, status, started_at, completed_at, reached FROM recoveries;
DROP TABLE recoveries;
ALTER TABLE recoveries_new RENAME TO recoveries;
CREATE INDEX recoveries_deployment ON recoveries(domain, deployment);
