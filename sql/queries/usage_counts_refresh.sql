-- Recount usage_counts (migration 012): |sessions| - |voided| per kind of every (account, app,
-- 15-minute bucket) in a range, from the sets of usage_15m and voids_15m, written under the version
-- the caller read from the server's clock after its writes (consumers/clickhouse/counts.py).
--
-- Parameters (all bound):
--   database   Identifier
--   accounts   Array(String)       account ids to recount (empty: all)
--   apps       Array(String)       app ids to recount (empty: all)
--   first, end DateTime('UTC')     the buckets [first, end) to recount
--   version    UInt64              the server's clock (ns), read after the writes being counted
--
-- The keys recounted are every key of the accounts x apps x buckets given: a superset of what a
-- write touched is harmless (a recount writes the value the sets hold), and lists of ids are much
-- cheaper to bind than lists of keys. A key that usage_15m holds never disappears from it (sets
-- never lose a member; a void only subtracts), so every key recounted gets its row.
INSERT INTO {database:Identifier}.usage_counts
    (account_id, app_id, bucket, usage_sessions, voice_sessions, alert_sessions, conversations, version)
SELECT
    account_id,
    app_id,
    bucket,
    toUInt32(sumIf(n, kind = 'usage')),
    toUInt32(sumIf(n, kind = 'voice')),
    toUInt32(sumIf(n, kind = 'alert')),
    toUInt32(sumIf(c, kind IN ('usage', 'voice'))),
    {version:UInt64}
FROM
(
    SELECT account_id, app_id, bucket, kind,
        toInt64(uniqExactMerge(sessions)) AS n, toInt64(uniqExactMerge(conversations)) AS c
    FROM {database:Identifier}.usage_15m
    WHERE bucket >= {first:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (empty({accounts:Array(String)}) OR account_id IN {accounts:Array(String)})
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY account_id, app_id, bucket, kind
    UNION ALL
    SELECT account_id, app_id, bucket, kind,
        -toInt64(uniqExactMerge(sessions)), -toInt64(uniqExactMerge(conversations))
    FROM {database:Identifier}.voids_15m
    WHERE bucket >= {first:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
        AND (empty({accounts:Array(String)}) OR account_id IN {accounts:Array(String)})
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
    GROUP BY account_id, app_id, bucket, kind
)
GROUP BY account_id, app_id, bucket
