-- The same tables, columns and indexes as the PostgreSQL catalog's
-- migrations build (a test compares them): job messages get an id of
-- their own (ordered by it, as there), recoveries lose the never-used
-- `plan` column.
CREATE TABLE job_messages_new (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL REFERENCES jobs(id),
    at       TEXT NOT NULL,
    message  TEXT NOT NULL
);
INSERT INTO job_messages_new (id, job_id, at, message) SELECT rowid, job_id, at, message FROM job_messages ORDER BY rowid;
DROP TABLE job_messages;
ALTER TABLE job_messages_new RENAME TO job_messages;
CREATE INDEX job_messages_job ON job_messages(job_id);
ALTER TABLE recoveries DROP COLUMN plan;
