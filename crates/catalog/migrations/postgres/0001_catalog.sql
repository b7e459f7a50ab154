-- The catalog on PostgreSQL, for several server replicas sharing the work:
-- the same tables as the SQLite catalog's migrations 0001-0006 build, in
-- one step. Times are RFC 3339 text and JSON documents text, as there: the
-- service core reads them, the catalog interprets none of them.
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
    -- 'reader' reads, 'operator' also starts jobs, 'admin' also registers.
    role           TEXT NOT NULL DEFAULT 'operator',
    created_at     TEXT NOT NULL
);

CREATE TABLE deployments (
    domain         TEXT NOT NULL REFERENCES identity_domains(name),
    name           TEXT NOT NULL,
    engine         TEXT NOT NULL,
    -- Engine settings as JSON; may hold secrets, never returned by the API.
    connection     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    -- The service core's BackupConfig (JSON); NULL: the server's defaults.
    backup_config  TEXT,
    PRIMARY KEY (domain, name)
);

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    domain           TEXT NOT NULL,
    deployment       TEXT NOT NULL,
    operation        TEXT NOT NULL,
    status           TEXT NOT NULL,          -- queued | running | succeeded | failed
    -- The service core's JobSpec (JSON).
    spec             TEXT,
    params           TEXT NOT NULL,          -- the request, JSON
    created_by       TEXT NOT NULL,
    idempotency_key  TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL,
    lease_owner      TEXT,
    lease_expires    BIGINT,                 -- unix seconds, the database's clock
    attempts         BIGINT NOT NULL DEFAULT 0,
    bytes_done       BIGINT NOT NULL DEFAULT 0,
    bytes_total      BIGINT,
    message          TEXT,
    FOREIGN KEY (domain, deployment) REFERENCES deployments(domain, name)
);
-- One queued or running job per deployment, whichever replica queues it.
CREATE UNIQUE INDEX jobs_one_active ON jobs(domain, deployment) WHERE status IN ('queued', 'running');
CREATE UNIQUE INDEX jobs_idempotency ON jobs(domain, deployment, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs(status, id);

CREATE TABLE job_messages (
    id       BIGSERIAL PRIMARY KEY,
    job_id   BIGINT NOT NULL REFERENCES jobs(id),
    at       TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX job_messages_job ON job_messages(job_id);

CREATE TABLE backups (
    job_id         BIGINT PRIMARY KEY REFERENCES jobs(id),
    domain         TEXT NOT NULL,
    deployment     TEXT NOT NULL,
    db_tag         TEXT NOT NULL,
    status         TEXT NOT NULL,            -- IN PROGRESS | COMPLETED | FAILED | DELETED
    keep_forever   BOOLEAN NOT NULL,
    started_at     TEXT NOT NULL,
    completed_at   TEXT,
    snapshot_id    TEXT,
    logical_bytes  BIGINT,
    stored_bytes   BIGINT,
    -- Where the backup sits in its database's history (JSON, engine-defined).
    position       TEXT,
    UNIQUE (domain, deployment, db_tag)
);

CREATE TABLE recoveries (
    job_id          BIGINT PRIMARY KEY REFERENCES jobs(id),
    domain          TEXT NOT NULL,
    deployment      TEXT NOT NULL,
    -- The recovery target (JSON).
    target          TEXT NOT NULL,
    backup_job_id   BIGINT NOT NULL REFERENCES backups(job_id),
    status          TEXT NOT NULL,            -- IN PROGRESS | COMPLETED | FAILED
    started_at      TEXT NOT NULL,
    completed_at    TEXT,
    -- Where the recovery ended (JSON).
    reached         TEXT
);
CREATE INDEX recoveries_deployment ON recoveries(domain, deployment);
