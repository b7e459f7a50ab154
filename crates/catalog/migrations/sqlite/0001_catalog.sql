-- Identity domains, users, deployments, jobs and backups.
CREATE TABLE identity_domains (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

-- A user belongs to exactly one identity domain; names are global so that
-- HTTP Basic credentials identify the user without the domain.
CREATE TABLE users (
    name           TEXT PRIMARY KEY,
    domain         TEXT NOT NULL REFERENCES identity_domains(name),
    password_hash  TEXT NOT NULL,
    created_at     TEXT NOT NULL
);

CREATE TABLE deployments (
    domain      TEXT NOT NULL REFERENCES identity_domains(name),
    name        TEXT NOT NULL,
    engine      TEXT NOT NULL,
    -- Engine settings as JSON; may hold secrets, never returned by the API.
    connection  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (domain, name)
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    domain           TEXT NOT NULL,
    deployment       TEXT NOT NULL,
    operation        TEXT NOT NULL,          -- backup | recovery
    status           TEXT NOT NULL,          -- queued | running | succeeded | failed
    params           TEXT NOT NULL,          -- the request, JSON
    created_by       TEXT NOT NULL,
    idempotency_key  TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL,
    lease_owner      TEXT,
    lease_expires    INTEGER,                -- unix seconds
    attempts         INTEGER NOT NULL DEFAULT 0,
    bytes_done       INTEGER NOT NULL DEFAULT 0,
    bytes_total      INTEGER,
    message          TEXT,
    FOREIGN KEY (domain, deployment) REFERENCES deployments(domain, name)
);
-- One queued or running job per deployment, enforced by the database so
-- that it holds across server replicas.
CREATE UNIQUE INDEX jobs_one_active ON jobs(domain, deployment) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX jobs_idempotency ON jobs(domain, deployment, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs(status, id);

CREATE TABLE job_messages (
    job_id   INTEGER NOT NULL REFERENCES jobs(id),
    at       TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX job_messages_job ON job_messages(job_id);

CREATE TABLE backups (
    job_id         INTEGER PRIMARY KEY REFERENCES jobs(id),
    domain         TEXT NOT NULL,
    deployment     TEXT NOT NULL,
    db_tag         TEXT NOT NULL,
    status         TEXT NOT NULL,            -- IN PROGRESS | COMPLETED | FAILED
    keep_forever   INTEGER NOT NULL,
    started_at     TEXT NOT NULL,
    completed_at   TEXT,
    snapshot_id    TEXT,
    logical_bytes  INTEGER,
    stored_bytes   INTEGER,
    UNIQUE (domain, deployment, db_tag)
);
