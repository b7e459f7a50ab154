-- A deployment's backup configuration (the service core's BackupConfig,
-- JSON): schedule, recovery window, backups kept. NULL: the defaults.
ALTER TABLE deployments ADD COLUMN backup_config TEXT;
