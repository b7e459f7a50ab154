-- A recovery indexed again from the repository's records after the backup
-- it started from was deleted keeps its row: planning reads when its
-- timeline began from it. Such a row names no backup.
ALTER TABLE recoveries ALTER COLUMN backup_job_id DROP NOT NULL;
