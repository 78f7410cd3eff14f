-- Sum the apps' counts of usage_counts per account and 15-minute bucket into usage_counts_account
-- (migration 013), under a version the caller read from the server's clock after recounting those
-- apps' rows (consumers/clickhouse/counts.py).
--
-- Parameters (all bound):
--   database   Identifier
--   accounts   Array(String)       account ids to sum (empty: all)
--   first, end DateTime('UTC')     the buckets [first, end) to sum
--   version    UInt64              the server's clock (ns), read after the apps' recounts
INSERT INTO {database:Identifier}.usage_counts_account
    (account_id, bucket, usage_sessions, voice_sessions, alert_sessions, conversations, version)
SELECT
    account_id,
    bucket,
    toUInt32(sum(usage_sessions)),
    toUInt32(sum(voice_sessions)),
    toUInt32(sum(alert_sessions)),
    toUInt32(sum(conversations)),
    {version:UInt64}
FROM {database:Identifier}.usage_counts FINAL
WHERE bucket >= {first:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
    AND (empty({accounts:Array(String)}) OR account_id IN {accounts:Array(String)})
GROUP BY account_id, bucket
SETTINGS do_not_merge_across_partitions_select_final = 1
