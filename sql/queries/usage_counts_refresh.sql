-- Recount usage_counts (migration 012) for some keys: |sessions| - |voided| per kind of each
-- (account, app, 15-minute bucket) from the sets of usage_15m and voids_15m, written under the
-- version the caller read from the server's clock after its writes (consumers/clickhouse/counts.py).
--
-- Parameters (all bound):
--   database   Identifier
--   keys       Array(Tuple(String, String, DateTime('UTC')))  (account_id, app_id, bucket) to recount;
--              empty: every key of the range
--   first, end DateTime('UTC')   the buckets' range [first, end): prunes partitions, and bounds an
--                                empty keys list (a repair run's period)
--   version    UInt64            the server's clock (ns) read after the writes being counted
--
-- A key that usage_15m holds is never missing here (sets never lose a member; a void only
-- subtracts), so a recount always writes a row for every key it was given that has usage.
-- Grouped in usage_15m's order (a prefix of its sorting key), so a long range streams.
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
    {version:UInt64}
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
    WHERE bucket >= {first:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (
            empty({keys:Array(Tuple(String, String, DateTime('UTC')))})
            OR (account_id, app_id, bucket) IN {keys:Array(Tuple(String, String, DateTime('UTC')))}
        )
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
    WHERE bucket >= {first:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (
            empty({keys:Array(Tuple(String, String, DateTime('UTC')))})
            OR (account_id, app_id, bucket) IN {keys:Array(Tuple(String, String, DateTime('UTC')))}
        )
    GROUP BY account_id, app_id, bucket
) AS v USING (account_id, app_id, bucket)
SETTINGS optimize_aggregation_in_order = 1, join_use_nulls = 0
