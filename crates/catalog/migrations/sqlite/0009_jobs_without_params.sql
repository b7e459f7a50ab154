-- A job's request is its typed spec (`jobs.spec`, with what the client
-- named); the copy of the request body kept beside it goes.
ALTER TABLE jobs DROP COLUMN params;
