-- Where a backup sits in its database's history (JSON, engine-defined;
-- for PostgreSQL base backups: timeline, start and stop LSN, stop time),
-- so point-in-time recoveries can be planned without reading the repository.
ALTER TABLE backups ADD COLUMN position TEXT;
