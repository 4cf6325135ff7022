-- A transaction that queues a notification takes a database-wide lock at commit and holds it
-- through its WAL flush, so every committing transaction that NOTIFYs waits for the previous
-- one's fsync: no group commit. With a callback request in nearly every collect_info
-- transaction, that serialised the call path (pg_stat_activity: COMMITs waiting on
-- Lock:object). Sessions that announce queued work themselves after their commit (lifeline
-- serve's call path, coalesced into few notifications outside any data-writing transaction)
-- set lifeline.queue_notify = 'after_commit'; every other writer (workers, the CLI, older
-- versions during a deploy) still notifies from the trigger, as before.
CREATE OR REPLACE FUNCTION lifeline_notify_queue() RETURNS trigger AS $$
BEGIN
  IF current_setting('lifeline.queue_notify', true) IS DISTINCT FROM 'after_commit' THEN
    PERFORM pg_notify('lifeline_queue', TG_TABLE_NAME);
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
