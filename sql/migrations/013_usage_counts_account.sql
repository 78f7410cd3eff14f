-- Exact usage counts per account and 15-minute UTC bucket, all apps summed: what the console's
-- usage series reads when it shows every app of an account (its default view).
--
-- Why: that series summed usage_counts FINAL over every app of the account: 30 days of a 200-app
-- account is 576,000 rows to replace and sum (~70 ms of the request); here it is 2,880.
--
-- How it stays exact (consumers/clickhouse/counts.py, docs/usage-counts.md): after a writer has
-- recounted the apps' rows of usage_counts, it reads the server's clock again and sums those rows
-- (FINAL) per account and bucket under that second version. The sum with the greatest version
-- started after every app recount a write owed had landed, so it saw all of them; a crash between
-- the two steps is repaired as a missed app recount is (the sink's redelivered batch, the end of a
-- repair run).
CREATE TABLE IF NOT EXISTS {database:Identifier}.usage_counts_account
(
    account_id String,
    bucket DateTime('UTC'),
    usage_sessions UInt32,
    voice_sessions UInt32,
    alert_sessions UInt32,
    conversations UInt32,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(bucket)
ORDER BY (account_id, bucket);

-- What was counted before: every account's buckets summed once.
INSERT INTO {database:Identifier}.usage_counts_account
    (account_id, bucket, usage_sessions, voice_sessions, alert_sessions, conversations, version)
SELECT
    account_id,
    bucket,
    toUInt32(sum(usage_sessions)),
    toUInt32(sum(voice_sessions)),
    toUInt32(sum(alert_sessions)),
    toUInt32(sum(conversations)),
    toUnixTimestamp64Nano(now64(9))
FROM {database:Identifier}.usage_counts FINAL
GROUP BY account_id, bucket
SETTINGS do_not_merge_across_partitions_select_final = 1;
