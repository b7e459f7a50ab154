-- keep_forever as 0 or 1, as in the SQLite catalog: one statement reads
-- both through sqlx's Any driver.
ALTER TABLE backups ALTER COLUMN keep_forever TYPE BIGINT USING keep_forever::int;
