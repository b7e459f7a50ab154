-- What the API planned for a recovery (the worker runs exactly that: the
-- base backup's position, the timeline history, the goal; JSON), and where
-- the recovery ended (the new timeline, the position and last commit
-- replay stopped at; JSON).
ALTER TABLE recoveries ADD COLUMN plan TEXT;
ALTER TABLE recoveries ADD COLUMN reached TEXT;
