-- Which copies (the further repositories of `copies` in the server's
-- configuration) hold each backup's snapshot: written once a copy has it.
CREATE TABLE backup_copies (
    backup_job_id  INTEGER NOT NULL REFERENCES jobs(id),
    domain         TEXT NOT NULL,
    deployment     TEXT NOT NULL,
    copy           TEXT NOT NULL,
    copied_at      TEXT NOT NULL,
    PRIMARY KEY (backup_job_id, copy)
);
CREATE INDEX backup_copies_by_deployment ON backup_copies (domain, deployment);
