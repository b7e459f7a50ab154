-- The last restore drill of each backup (issue 31): when, whether the
-- restored database passed its engine's check (OK / FAILED), and what the
-- check or the failure said.
ALTER TABLE backups ADD COLUMN verified_at TEXT;
ALTER TABLE backups ADD COLUMN verify_status TEXT;
ALTER TABLE backups ADD COLUMN verify_message TEXT;
