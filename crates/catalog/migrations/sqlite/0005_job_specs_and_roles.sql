-- The typed job (the service core's JobSpec, JSON) each job was queued
-- with; the catalog stores it and interprets none of it.
ALTER TABLE jobs ADD COLUMN spec TEXT;
-- What a user may do: 'reader' reads, 'operator' also starts jobs.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'operator';
