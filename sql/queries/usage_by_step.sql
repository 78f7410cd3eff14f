-- Billing sessions and conversations per account, app, kind and time step, for the dashboards'
-- time series. Read from usage_15m minus the voids of `metering reconcile --repair`, bucket by
-- bucket as usage_by_period.sql does, then added up per step: a session lives in one bucket, so
-- the steps add up exactly to what `metering usage` prints for the same buckets.
--
-- Parameters (all bound, none formatted in):
--   database  Identifier               the metering database
--   from, to  DateTime('UTC')          the 15-minute buckets that start from `from` to `to`,
--                                      both included (as Grafana's time filter)
--   step      UInt32                   seconds per step, rounded up to whole 15-minute buckets
--                                      (a bucket is never split); steps are aligned on the Unix
--                                      epoch, so a day step is a UTC day
--   apps      Array(String)            app ids to keep (empty: all)
--   account   Nullable(String)         account id to keep (NULL: all)
SELECT
    toStartOfInterval(bucket, toIntervalSecond(intDiv(greatest({step:UInt32}, 1) + 899, 900) * 900)) AS time,
    account_id,
    app_id,
    kind,
    sum(bucket_sessions) AS sessions,
    sum(bucket_conversations) AS conversations
FROM
(
    SELECT
        account_id,
        app_id,
        kind,
        bucket,
        toInt64(uniqExactMerge(sessions)) AS bucket_sessions,
        toInt64(uniqExactMerge(conversations)) AS bucket_conversations
    FROM {database:Identifier}.usage_15m
    WHERE
        bucket >= {from:DateTime('UTC')} AND bucket <= {to:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
        AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
    GROUP BY account_id, app_id, kind, bucket
    UNION ALL
    SELECT
        account_id,
        app_id,
        kind,
        bucket,
        -toInt64(uniqExactMerge(sessions)),
        -toInt64(uniqExactMerge(conversations))
    FROM {database:Identifier}.voids_15m
    WHERE
        bucket >= {from:DateTime('UTC')} AND bucket <= {to:DateTime('UTC')}
        AND (empty({apps:Array(String)}) OR app_id IN {apps:Array(String)})
        AND ({account:Nullable(String)} IS NULL OR account_id = assumeNotNull({account:Nullable(String)}))
    GROUP BY account_id, app_id, kind, bucket
)
GROUP BY time, account_id, app_id, kind
HAVING sessions != 0 OR conversations != 0
ORDER BY time, account_id, app_id, kind
