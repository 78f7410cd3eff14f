-- Exact usage counts per account, app and 15-minute UTC bucket, kept up to date by their writers:
-- what the console's usage series and `metering usage` read (sums of plain integers).
--
-- Why: a 30-day series of a 200-app account is about 700,000 uniqExact states of usage_15m, which
-- take 0.4 to 1.5 s to merge; migration 006 cached hourly counts behind versions that every read
-- had to check (about 100 ms, and whole-hour zones only). Here every count is exact when it is
-- read, whatever the zone, because whoever writes a session or a void recounts what it touched.
--
-- How a count stays exact (consumers/clickhouse/counts.py, docs/usage-counts.md):
--   * a row is |sessions| - |voided| of one (account, app, bucket) per kind, computed from the
--     sets of usage_15m and voids_15m, which replays, late sessions, voids and moves keep exact;
--   * SessionStore.insert (the sink, reconcile's inserts) and reconcile's voids recount the keys of
--     what they wrote right after writing it; the sink commits its offsets only after both, so a
--     crash in between is repaired by the redelivered batch (same insert token: dropped, then
--     recounted), and a repair run recounts its whole period when it ends;
--   * version is the server's clock in nanoseconds read after the write and before the recount
--     reads the sets: of two recounts of a key, the later version read a later snapshot, so
--     ReplacingMergeTree (and FINAL before merges) keeps a count that saw every write.
-- A key's rows never move between partitions (bucket decides both), so FINAL need not merge
-- across partitions.

DROP VIEW IF EXISTS {database:Identifier}.usage_1h_mv;
DROP VIEW IF EXISTS {database:Identifier}.voids_1h_mv;
DROP TABLE IF EXISTS {database:Identifier}.usage_1h;
DROP TABLE IF EXISTS {database:Identifier}.voids_1h;
DROP TABLE IF EXISTS {database:Identifier}.usage_day_counts;

CREATE TABLE IF NOT EXISTS {database:Identifier}.usage_counts
(
    account_id String,
    app_id String,
    bucket DateTime('UTC'),
    usage_sessions UInt32,
    voice_sessions UInt32,
    alert_sessions UInt32,
    conversations UInt32,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(bucket)
ORDER BY (account_id, bucket, app_id);

-- What was stored before: every key counted once, streaming in usage_15m's order.
INSERT INTO {database:Identifier}.usage_counts
    (account_id, app_id, bucket, usage_sessions, voice_sessions, alert_sessions, conversations, version)
SELECT
    u.account_id,
    u.app_id,
    u.bucket,
    toUInt32(u.usage_n - v.usage_n),
    toUInt32(u.voice_n - v.voice_n),
    toUInt32(u.alert_n - v.alert_n),
    toUInt32(u.conversations_n - v.conversations_n),
    toUnixTimestamp64Nano(now64(9))
FROM
(
    SELECT
        account_id,
        app_id,
        bucket,
        uniqExactMergeIf(sessions, kind = 'usage') AS usage_n,
        uniqExactMergeIf(sessions, kind = 'voice') AS voice_n,
        uniqExactMergeIf(sessions, kind = 'alert') AS alert_n,
        uniqExactMergeIf(conversations, kind = 'usage') + uniqExactMergeIf(conversations, kind = 'voice')
            AS conversations_n
    FROM {database:Identifier}.usage_15m
    GROUP BY account_id, app_id, bucket
) AS u
LEFT JOIN
(
    SELECT
        account_id,
        app_id,
        bucket,
        uniqExactMergeIf(sessions, kind = 'usage') AS usage_n,
        uniqExactMergeIf(sessions, kind = 'voice') AS voice_n,
        uniqExactMergeIf(sessions, kind = 'alert') AS alert_n,
        uniqExactMergeIf(conversations, kind = 'usage') + uniqExactMergeIf(conversations, kind = 'voice')
            AS conversations_n
    FROM {database:Identifier}.voids_15m
    GROUP BY account_id, app_id, bucket
) AS v USING (account_id, app_id, bucket)
SETTINGS optimize_aggregation_in_order = 1, join_use_nulls = 0
